import json

import pytest
import torch
from safetensors.torch import load_file
from tiny_reranker import TINY_VERSION, tiny_artifact

from llmrank_spark.config import RerankConfig
from llmrank_spark.rerank import (
    MANIFEST_FILE,
    ArtifactError,
    ArtifactManifest,
    cross_encoder_spec,
    load_artifact,
    load_tokenizer,
    save_artifact,
    untrained_cross_encoder,
    zero_shot_spec,
)


def test_artifact_is_safetensors_tokenizer_and_manifest_and_loads_back():
    artifact_dir = tiny_artifact()
    files = {p.name for p in artifact_dir.iterdir()}
    assert {"model.safetensors", "config.json", "tokenizer.json", MANIFEST_FILE} <= files
    assert not [name for name in files if name.endswith((".bin", ".pt", ".pkl", ".pth"))]

    artifact = load_artifact(artifact_dir)
    assert artifact.manifest.version == TINY_VERSION
    assert artifact.model.config.num_labels == 1
    assert not artifact.model.training
    saved = load_file(artifact_dir / "model.safetensors")
    loaded = artifact.model.state_dict()
    assert all(torch.equal(saved[name], loaded[name]) for name in saved)


def test_cross_encoder_mode_without_an_artifact_names_the_fix():
    with pytest.raises(
        ArtifactError, match=r"rerank\.model_path is not set.*llmrank train.*zero_shot_bi_encoder"
    ):
        cross_encoder_spec(None)


def test_incomplete_artifact_names_the_missing_file(tmp_path):
    artifact_dir = tiny_artifact()
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text((artifact_dir / "config.json").read_text())
    (broken / "model.safetensors").write_bytes((artifact_dir / "model.safetensors").read_bytes())
    with pytest.raises(ArtifactError, match=rf"{broken} has no {MANIFEST_FILE}"):
        cross_encoder_spec(str(broken))


def test_spec_version_comes_from_the_manifest():
    artifact_dir = tiny_artifact()
    spec = cross_encoder_spec(str(artifact_dir))
    assert (spec.kind, spec.version) == (
        "cross_encoder",
        json.loads((artifact_dir / MANIFEST_FILE).read_text())["version"],
    )
    assert zero_shot_spec().version == "zero-shot-minilm-bi-encoder"


@pytest.mark.slow
def test_artifact_saved_from_the_packaged_base_loads_with_identical_scores(tmp_path):
    model = untrained_cross_encoder().eval()
    tokenizer = load_tokenizer(zero_shot_spec().path)
    cfg = RerankConfig()
    manifest = ArtifactManifest(
        version="base-roundtrip",
        max_length=cfg.max_length,
        context_template=cfg.context_template,
        item_template=cfg.item_template,
        item_attributes=cfg.item_attributes,
        loss="none",
        data_snapshot="none",
    )
    artifact = load_artifact(save_artifact(model, tokenizer, tmp_path / "base", manifest))
    assert artifact.model.config.num_hidden_layers == 6 and artifact.model.config.hidden_size == 384
    batch = tokenizer(["red running shoes"], ["Trail runner. Brand: Acme."], return_tensors="pt")
    with torch.inference_mode():
        assert torch.equal(model(**batch).logits, artifact.model(**batch).logits)
