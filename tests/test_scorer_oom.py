"""GPU out-of-memory: the scorer halves its micro-batch and retries down to a floor, then fails clearly.

The OOM is injected on CPU by a wrapper that raises torch's CUDA out-of-memory error for batches above a
size, exactly the exception a full GPU raises; the model inside is the real tiny reranker.
"""

import numpy as np
import pytest
import torch
from test_scoring import CONTEXTS, CPU, ITEMS, direct_scores
from tiny_reranker import tiny_artifact

from llmrank_spark.rerank import PairScorer, ScoringOutOfMemory, ScoringSettings, load_artifact


class OutOfMemoryAbove(torch.nn.Module):
    """Runs the model, but raises CUDA's out-of-memory error for batches of more than `limit` rows."""

    def __init__(self, model: torch.nn.Module, limit: int) -> None:
        super().__init__()
        self.inner, self.limit = model, limit
        self.batch_rows: list[int] = []

    def forward(self, **inputs):
        rows = inputs["input_ids"].shape[0]
        self.batch_rows.append(rows)
        if rows > self.limit:
            raise torch.OutOfMemoryError(f"CUDA out of memory. Tried to allocate a batch of {rows} rows")
        return self.inner(**inputs)


def scorer_with_memory_for(rows: int, **settings) -> tuple[PairScorer, OutOfMemoryAbove]:
    artifact = load_artifact(tiny_artifact())
    model = OutOfMemoryAbove(artifact.model, rows)
    return PairScorer(model, artifact.tokenizer, "cross_encoder", CPU, ScoringSettings(**settings)), model


def test_out_of_memory_halves_the_micro_batch_and_scores_every_pair_correctly():
    scorer, model = scorer_with_memory_for(2, micro_batch_size=8)
    with pytest.warns(UserWarning, match="out of GPU memory at micro-batch 4: retrying at 2"):
        scores = scorer.score(CONTEXTS, ITEMS)
    np.testing.assert_allclose(scores, direct_scores(CONTEXTS, ITEMS), atol=1e-5)
    assert model.batch_rows[:2] == [8, 4], "8 and 4 ran out of memory before 2 fitted"
    assert sum(rows for rows in model.batch_rows if rows <= 2) == len(ITEMS), "each pair scored once"
    assert scorer.micro_batch_size == 2
    model.batch_rows.clear()
    scorer.score(CONTEXTS, ITEMS)
    assert max(model.batch_rows) == 2, "the smaller micro-batch is kept for later batches"


def test_out_of_memory_at_the_floor_fails_naming_the_settings():
    scorer, model = scorer_with_memory_for(2, micro_batch_size=16, min_micro_batch_size=4)
    with (
        pytest.raises(ScoringOutOfMemory, match=r"micro-batch of 4 pairs.*rerank\.min_micro_batch_size=4"),
        pytest.warns(UserWarning),
    ):
        scorer.score(CONTEXTS, ITEMS)
    assert model.batch_rows == [len(ITEMS), 8, 4], "9 pairs, then halved 16 -> 8 -> 4, the floor"
