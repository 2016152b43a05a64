"""Model loading runs no code from the artifact: safetensors only, never a pickle, never remote code."""

import json
import pickle
import shutil
from pathlib import Path

import pytest
import torch
from tiny_reranker import tiny_artifact

from llmrank_spark.rerank import WEIGHTS_FILE, ArtifactError, load_artifact, load_bi_encoder


class RunsCodeWhenUnpickled:
    """A pickle payload: unpickling it creates the marker file, as a malicious checkpoint would run code."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def artifact_copy(tmp_path: Path) -> Path:
    return Path(shutil.copytree(tiny_artifact(), tmp_path / "artifact"))


def plant_pickle(directory: Path, marker: Path) -> None:
    torch.save(
        {"bert.embeddings.word_embeddings.weight": RunsCodeWhenUnpickled(marker)},
        directory / "pytorch_model.bin",
    )
    with pytest.raises(FileNotFoundError):  # the payload is live: plain unpickling would run it
        pickle.loads(pickle.dumps(RunsCodeWhenUnpickled(marker.parent / "absent" / "x")))


def test_pickled_weights_beside_safetensors_are_never_read(tmp_path):
    artifact, marker = artifact_copy(tmp_path), tmp_path / "pickle-ran"
    plant_pickle(artifact, marker)
    assert load_artifact(artifact).model.config.num_labels == 1
    assert not marker.exists()


def test_an_artifact_with_only_pickled_weights_is_refused(tmp_path):
    artifact, marker = artifact_copy(tmp_path), tmp_path / "pickle-ran"
    plant_pickle(artifact, marker)
    (artifact / WEIGHTS_FILE).unlink()
    with pytest.raises(ArtifactError, match=rf"{artifact} has no {WEIGHTS_FILE}"):
        load_artifact(artifact)
    encoder = tmp_path / "encoder"
    shutil.copytree(artifact, encoder)
    (encoder / "1_Pooling").mkdir()
    (encoder / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_mean_tokens": True}))
    with pytest.raises(OSError, match=r"safetensors|model\.safetensors"):
        load_bi_encoder(encoder)
    assert not marker.exists()


def test_remote_code_named_by_the_artifact_never_runs(tmp_path):
    artifact, marker = artifact_copy(tmp_path), tmp_path / "remote-code-ran"
    (artifact / "evil_model.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    config = json.loads((artifact / "config.json").read_text())
    config["auto_map"] = {"AutoModelForSequenceClassification": "evil_model.EvilModel"}
    (artifact / "config.json").write_text(json.dumps(config))
    loaded = load_artifact(artifact)
    assert type(loaded.model).__name__ == "BertForSequenceClassification"
    assert not marker.exists()
