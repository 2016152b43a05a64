"""The query encoder: MiniLM fine-tuned as a bi-encoder on judged queries, for the query semantic retriever.

Re-ordering a query's candidates cannot find what retrieval missed: on the sample, sorting the held-out
queries' lists by their true grades reached 0.890 NDCG@10, and the packaged MiniLM retrieves only 57% of
the items that match a value a query names. The query encoder raises that ceiling. It learns from the
training queries' judged items with sentence-transformers' MultipleNegativesRankingLoss: each (query,
best-graded item) pair against a hard negative (an item of the query's category without the values it
names) and the batch's other items. It ships only if it retrieves better than the packaged MiniLM for
the held-out queries beyond chance (`query_encoder_verdict`).
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from llmrank_spark.config import TrainConfig
from llmrank_spark.metrics import ndcg_at_k
from llmrank_spark.retrieval.vector_search import rank_against
from llmrank_spark.training.champion import GATE_K, GateResult, decide

ENCODE_BATCH_SIZE = 64
TRIPLE_COLUMNS = ["anchor", "positive", "negative"]


def encoder_triples(
    queries: pd.DataFrame,
    labels: pd.DataFrame,
    item_text: pd.Series,
    per_query: int,
    rng: np.random.Generator,
) -> pd.DataFrame:
    """(anchor, positive, negative) texts: per query of `queries` (query_id, query_text) with `labels`
    (query_id, item_id, relevance), up to `per_query` of its best-graded items, each with one of its
    lowest-graded relevant items (grade 1: the category alone) as the hard negative. Queries whose best
    grade is below 2, or without such a negative, teach nothing about the values they name."""
    text_of = queries.set_index("query_id")["query_text"]
    rows = []
    for query_id, judged in labels[labels["query_id"].isin(text_of.index)].groupby("query_id", sort=True):
        best_grade = judged["relevance"].max()
        best = np.sort(judged.loc[judged["relevance"] == best_grade, "item_id"].to_numpy())
        near = np.sort(judged.loc[judged["relevance"] == 1, "item_id"].to_numpy())
        if best_grade < 2 or not len(near):
            continue
        chosen = rng.permutation(best)[:per_query]
        negatives = rng.choice(near, size=len(chosen), replace=len(near) < len(chosen))
        rows += [
            (text_of[query_id], item_text[positive], item_text[negative])
            for positive, negative in zip(chosen, negatives, strict=True)
        ]
    triples = pd.DataFrame(rows, columns=TRIPLE_COLUMNS)
    return triples.iloc[rng.permutation(len(triples))].reset_index(drop=True)


def fine_tune_query_encoder(triples: pd.DataFrame, cfg: TrainConfig):
    """The packaged MiniLM fine-tuned as a bi-encoder on `triples` with
    sentence-transformers' trainer and MultipleNegativesRankingLoss; batches never hold one text twice,
    so no in-batch negative is a copy of a positive."""
    from datasets import Dataset
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss
    from sentence_transformers.sentence_transformer.trainer import SentenceTransformerTrainer
    from sentence_transformers.sentence_transformer.training_args import (
        BatchSamplers,
        SentenceTransformerTrainingArguments,
    )
    from transformers.trainer_callback import PrinterCallback

    from llmrank_spark.rerank import base_model_dir

    model = SentenceTransformer(str(base_model_dir()), device="cpu", trust_remote_code=False)
    with tempfile.TemporaryDirectory() as scratch:
        args = SentenceTransformerTrainingArguments(
            output_dir=scratch,
            num_train_epochs=cfg.query_encoder_epochs,
            per_device_train_batch_size=cfg.query_encoder_batch_size,
            learning_rate=5e-5,
            warmup_steps=0.1,
            batch_sampler=BatchSamplers.NO_DUPLICATES,
            save_strategy="no",
            report_to=[],
            seed=cfg.seed,
            disable_tqdm=True,
            use_cpu=True,
        )
        trainer = SentenceTransformerTrainer(
            model=model,
            args=args,
            train_dataset=Dataset.from_pandas(triples[TRIPLE_COLUMNS], preserve_index=False),
            loss=MultipleNegativesRankingLoss(model),
        )
        # Without progress bars the trainer prints its log dictionaries; the step prints its own line.
        trainer.remove_callback(PrinterCallback)
        trainer.train()
    return model


def encoded(encoder, texts: list[str]) -> np.ndarray:
    """Unit-length vectors of `texts` by `encoder`, as the query semantic retriever compares them."""
    return encoder.encode(
        texts, batch_size=ENCODE_BATCH_SIZE, normalize_embeddings=True, convert_to_numpy=True
    )


def retrieved_lists(
    encoder, queries: pd.DataFrame, item_text: pd.Series, depth: int, item_vectors: np.ndarray | None = None
) -> pd.DataFrame:
    """(request_id, item_id, rank): each query's `depth` items whose text (`item_text`, by item id) is
    nearest its own by the cosine of `encoder`'s vectors, by the retrievers' own exact top-k
    (`rank_against`: equal scores fall to the lower item_id). `item_vectors`: those of `item_text` sorted
    by item id, when already encoded."""
    ordered = item_text.sort_index()
    items = encoded(encoder, ordered.tolist()) if item_vectors is None else item_vectors
    vectors = encoded(encoder, queries["query_text"].tolist())
    found = rank_against(
        queries["query_id"].tolist(), vectors, [None] * len(queries), ordered.index.to_numpy(), items, depth
    )
    return found.rename(columns={"source_rank": "rank"})[["request_id", "item_id", "rank"]]


@dataclass(frozen=True)
class QueryEncoderResult:
    """A fine-tuned query encoder, the verdict on it and the seconds its fine-tuning took."""

    encoder: Any  # sentence_transformers.SentenceTransformer (untyped)
    verdict: GateResult
    seconds: float
    pairs: int
    # The catalogue's item ids, sorted, and their vectors by the fine-tuned encoder, row by row.
    item_ids: np.ndarray
    item_vectors: np.ndarray

    def metrics(self) -> dict[str, float]:
        return {f"query_encoder_{name}": value for name, value in self.verdict.metrics().items()} | {
            "query_encoder_seconds": self.seconds,
            "query_encoder_pairs": float(self.pairs),
        }

    def retrieved(self, queries: pd.DataFrame, depth: int) -> pd.DataFrame:
        """The query semantic retriever's lists (request_id, item_id, source_score, source_rank) of
        `queries` (query_id, query_text) with this encoder, as the candidates step would find them."""
        vectors = encoded(self.encoder, queries["query_text"].tolist()).astype(np.float32)
        nothing_excluded = [None] * len(queries)
        return rank_against(
            queries["query_id"].tolist(), vectors, nothing_excluded, self.item_ids, self.item_vectors, depth
        )

    def describe(self) -> str:
        verdict = self.verdict
        shipped = "ships in the artifact" if verdict.promoted else "not shipped"
        return (
            f"query encoder: {self.pairs} pairs, {self.seconds:.0f} s; {verdict.requests} held-out queries, "
            f"semantic retrieval NDCG@{GATE_K} packaged {verdict.retrieval_ndcg:.4f} -> fine-tuned "
            f"{verdict.version_ndcg:.4f} ({verdict.change:+.1%} [{verdict.change_low:+.1%}, "
            f"{verdict.change_high:+.1%}]): {shipped}"
        )


def train_query_encoder(
    triples: pd.DataFrame,
    heldout: pd.DataFrame,
    item_text: pd.Series,
    cfg: TrainConfig,
) -> QueryEncoderResult:
    """Fine-tune the packaged MiniLM on `triples` and judge it on the `heldout` queries (query_id,
    query_text, item_id, relevance), which it never trained on: per-query NDCG@10 of whole-catalogue
    retrieval (`item_text`) by the fine-tuned encoder against the packaged one, by the gate's `decide`."""
    from llmrank_spark.rerank import load_sentence_encoder

    started = time.perf_counter()
    encoder = fine_tune_query_encoder(triples, cfg)
    seconds = time.perf_counter() - started
    queries = heldout.drop_duplicates("query_id")[["query_id", "query_text"]]
    labels = heldout[heldout["relevance"] > 0].rename(columns={"query_id": "request_id"})
    requests = pd.Index(sorted(queries["query_id"]), name="request_id")
    catalogue = item_text.sort_index()

    def per_query(model, item_vectors: np.ndarray | None = None) -> pd.Series:
        lists = retrieved_lists(model, queries, catalogue, GATE_K, item_vectors)
        return ndcg_at_k(lists, labels, GATE_K).reindex(requests).fillna(0.0)

    # Kept in the result: the query fusion's lists are retrieved with them (query_fusion.py).
    fine_tuned = encoded(encoder, catalogue.tolist()).astype(np.float32)
    verdict = decide(per_query(encoder, fine_tuned), per_query(load_sentence_encoder("cpu")), None)
    return QueryEncoderResult(encoder, verdict, seconds, len(triples), catalogue.index.to_numpy(), fine_tuned)
