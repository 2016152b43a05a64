"""A tiny seeded BERT cross-encoder saved as a real reranker artifact: fast enough for every test run.

It uses the packaged MiniLM tokenizer, so texts are tokenised exactly as in production; only the
network is small (2 layers, hidden size 32) and its weights are a seeded random initialisation.
"""

from __future__ import annotations

import atexit
import datetime as dt
import shutil
import tempfile
from functools import cache
from pathlib import Path

TINY_VERSION = "tiny-test-v1"


def build_tiny_artifact(
    path: Path,
    version: str = TINY_VERSION,
    seed: int = 0,
    architecture: str = "pair",
    request_types: tuple[str, ...] = ("user", "query"),
) -> Path:
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    from llmrank_spark.config import RerankConfig
    from llmrank_spark.rerank import ArtifactManifest, base_model_dir, load_tokenizer, save_artifact

    tokenizer = load_tokenizer(base_model_dir())
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        num_labels=1,
        # Wide initial weights, so scores differ clearly between pairs and a misaligned score shows.
        initializer_range=0.5,
    )
    torch.manual_seed(seed)
    model = BertForSequenceClassification(config).eval()
    defaults = RerankConfig()
    manifest = ArtifactManifest(
        version=version,
        max_length=defaults.max_length,
        context_template=defaults.context_template,
        item_template=defaults.item_template,
        item_attributes=defaults.item_attributes,
        loss="none (seeded random weights for tests)",
        data_snapshot="none",
        metrics={"ndcg@10": 0.0},
        architecture=architecture,
        request_types=list(request_types),
        # Fixed, so every build has the same bytes and executors reuse one unpacked copy.
        created_at=dt.datetime(2026, 11, 20, tzinfo=dt.UTC),
    )
    return save_artifact(model, tokenizer, path, manifest)


@cache
def tiny_artifact(architecture: str = "pair", request_types: tuple[str, ...] = ("user", "query")) -> Path:
    """The tiny artifact of an architecture, built once per test process in a directory removed at exit;
    "trained" on both request types unless `request_types` says otherwise."""
    root = Path(tempfile.mkdtemp(prefix="llmrank-tiny-"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    version = TINY_VERSION if architecture == "pair" else f"{TINY_VERSION}-{architecture}"
    if request_types != ("user", "query"):
        version += "-" + "-".join(request_types)
    return build_tiny_artifact(
        root / version, version, architecture=architecture, request_types=request_types
    )


def register_tiny_version(config, path: Path, status: str, promote: bool = False, tags: dict | None = None):
    """Register the artifact at `path` in the config's MLflow registry as the train step does (a run that
    logs it, a version tagged with `status` and `tags`), with the `champion` alias when `promote`."""
    from llmrank_spark.rerank import read_manifest
    from llmrank_spark.training import training_run

    with training_run(config, run_name=f"test {path.name}") as run:
        run.log_artifact(path)
        version = run.register(read_manifest(path), status, tags or {})
        if promote:
            run.promote(version)
    return version
