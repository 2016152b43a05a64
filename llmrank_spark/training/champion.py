"""The champion: the reranker version `rerank` serves, and the gate a new version must pass to become it.

A trained version is measured on a back-dated run at the start of the last `train.gate_days` days of
the interactions, days it did not train on: the candidates the retrievers built from what came before,
re-ranked by the version exactly as the rerank step serves it, judged by NDCG@10 against the events of
the following `evaluate.label_days`. It becomes the champion only if it beats the retrieval order (the
95% bootstrap interval of the NDCG@10 change lies above zero) and the current champion (no lower mean
NDCG@10 on the same requests). Every version is registered in MLflow with its gate figures and status
(registry.py); a promoted one gets the `champion` alias. `rerank.mode=champion` (the default) serves the
alias (or `mlflow.pinned_version`) and, with neither, the retrieval order itself: never an unvalidated
model.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from llmrank_spark.config import Config
from llmrank_spark.events import end_of_day, events_until
from llmrank_spark.lakehouse import checkpointed, in_hashed_share
from llmrank_spark.metrics import ndcg_at_k, relative_change
from llmrank_spark.rerank import PRERANK_RANK, PairScorer, read_manifest
from llmrank_spark.training.lists import LIST, list_labels, rank_by_score
from llmrank_spark.training.network import FusionRanker
from llmrank_spark.training.registry import SERVES_BERT_TAG, artifact_dir, served_version
from llmrank_spark.training.trainer import score_lists

CHAMPION, REJECTED, REGISTERED = "champion", "rejected", "registered"  # a version's gate status
GATE_K = 10


@dataclass(frozen=True)
class GateResult:
    """What the gate measured; `promoted` says whether the version becomes the champion, `reason` why."""

    requests: int
    version_ndcg: float
    retrieval_ndcg: float
    champion_ndcg: float | None
    change: float  # relative NDCG@10 change of the version against the retrieval order
    change_low: float
    change_high: float
    promoted: bool
    reason: str
    # The version's prerank alone (its features-only LambdaMART, no BERT) on the same requests, and the
    # change BERT brings on top of it with its interval. None: the version has no prerank.
    features_ndcg: float | None = None
    bert_change: tuple[float, float, float] | None = None
    # Whether the version is served with BERT: only if BERT beat its prerank beyond chance. If not, the
    # figures above (version_ndcg, change) are those of the prerank, what the version then serves.
    serves_bert: bool = True

    def metrics(self) -> dict[str, float]:
        figures = {
            "gate_requests": float(self.requests),
            f"gate_ndcg@{GATE_K}": self.version_ndcg,
            f"gate_retrieval_ndcg@{GATE_K}": self.retrieval_ndcg,
            "gate_change": self.change,
            "gate_change_low": self.change_low,
            "gate_change_high": self.change_high,
        }
        if self.champion_ndcg is not None:
            figures[f"gate_champion_ndcg@{GATE_K}"] = self.champion_ndcg
        if self.features_ndcg is not None:
            figures[f"gate_features_ndcg@{GATE_K}"] = self.features_ndcg
        if self.bert_change is not None:
            names = ("gate_bert_change", "gate_bert_change_low", "gate_bert_change_high")
            figures |= dict(zip(names, self.bert_change, strict=True))
        return figures


def decide(version: pd.Series, retrieval: pd.Series, champion: pd.Series | None) -> GateResult:
    """The promotion decision from per-request NDCG@10 of the version, the retrieval order and the champion
    (indexed by request): beat the retrieval order beyond chance, and do no worse than the champion."""
    change, low, high = relative_change(retrieval, version)
    champion_mean = None if champion is None else float(champion.mean())
    version_mean = float(version.mean())
    if not version.size:
        promoted, reason = False, "no request of the gate slice has labels"
    elif not low > 0:
        promoted, reason = False, f"does not beat the retrieval order beyond chance ({low:+.1%} at worst)"
    elif champion_mean is not None and version_mean < champion_mean:
        promoted, reason = False, f"ranks below the champion ({version_mean:.4f} < {champion_mean:.4f})"
    else:
        against = "" if champion is None else " and the champion"
        promoted, reason = True, f"beats the retrieval order{against}"
    return GateResult(
        requests=int(version.size),
        version_ndcg=version_mean,
        retrieval_ndcg=float(retrieval.mean()),
        champion_ndcg=champion_mean,
        change=change,
        change_low=low,
        change_high=high,
        promoted=promoted,
        reason=reason,
    )


def query_verdict(model: FusionRanker, scorer: PairScorer, heldout: pd.DataFrame) -> GateResult:
    """Whether a version may rank search queries: `decide` on the held-out queries' whole candidate lists
    (`query_lists.served_query_lists`, graded by `query_labels`), the version's order as served against
    their retrieval order. A version that trained on no query, or does not beat retrieval beyond chance
    there, leaves queries in their retrieval order."""
    labels = list_labels(heldout)
    requests = pd.Index(sorted(heldout[LIST].unique()), name="request_id")
    version = rank_by_score(heldout, score_lists(model, scorer, heldout))
    retrieval = rank_by_score(heldout, -heldout["retrieval_rank"].to_numpy(dtype=np.float64))
    return decide(
        per_request_ndcg(version, labels, requests), per_request_ndcg(retrieval, labels, requests), None
    )


def gate_cutoff(config: Config) -> dt.date:
    """The last day a version trains on; the gate's back-dated run is dated on it."""
    return config.run.run_date - dt.timedelta(days=config.train.gate_days)


def training_end(config: Config) -> dt.datetime:
    """The instant a gated version's training data stops: the end of `gate_cutoff`'s day."""
    return end_of_day(gate_cutoff(config))


def per_request_ndcg(ranked: pd.DataFrame, labels: pd.DataFrame, requests: pd.Index) -> pd.Series:
    """NDCG@GATE_K of each request in `requests` (0 where none of its labelled items was ranked)."""
    ndcg = ndcg_at_k(ranked, labels, GATE_K)
    return ndcg.reindex(requests).fillna(0.0)


def gate_version(
    spark: SparkSession,
    items: DataFrame,
    interactions: DataFrame,
    config: Config,
    version_path: str,
    champion_path: str | None,
    item_vectors: DataFrame | None = None,
    champion_serves_bert: bool = True,
) -> GateResult:
    """Measure `version_path` (and the champion, as it is served: with BERT or as its prerank) on the
    back-dated run at `gate_cutoff`. The version is served with BERT only if its cascade beats its own
    prerank beyond chance; the promotion is decided on the order it will serve. `item_vectors`
    (item_id, embedding) are the catalogue's stored text vectors, None encodes them."""
    from llmrank_spark.evaluation import user_labels
    from llmrank_spark.rerank import rerank_candidates
    from llmrank_spark.retrieval import build_candidates, item_embeddings

    cutoff = gate_cutoff(config)
    history = interactions.where(F.col("event_ts") < F.lit(training_end(config)))
    everyone = history.select(F.col("user_id").alias("request_id")).distinct()
    # Labels stop at the run date: the gate never reads what a run dated after it will be judged on.
    known = events_until(interactions, config.run.run_date)
    labels = user_labels(known, everyone, cutoff, config.evaluate)
    labelled = labels.select("request_id").distinct()
    share = min(1.0, config.train.gate_max_requests / max(labelled.count(), 1))
    sample = labelled.where(in_hashed_share(share, "request_id"))
    vectors = item_embeddings(items, config.candidates) if item_vectors is None else item_vectors
    candidates = build_candidates(
        spark, items, history, None, config.candidates, cutoff, item_vectors=vectors
    ).candidates
    # Computed once, and its long query plan cut: the rerank below stacks the features' plan on it.
    candidates = checkpointed(candidates.join(sample, "request_id", "left_semi"))
    labels_pd: pd.DataFrame = labels.join(sample, "request_id", "left_semi").toPandas()
    requests = pd.Index(sorted(labels_pd["request_id"].unique()), name="request_id")
    top_k = config.rerank.top_k

    def served(path: str) -> tuple[pd.Series, pd.Series | None]:
        """Per-request NDCG@10 of the version at `path` as served and, when it has a prerank, of its
        prerank's order: the first `top_k` of the cascade's `prerank_rank`, from the same scoring pass."""
        cfg = config.rerank.model_copy(update={"mode": "cross_encoder", "model_path": path})
        result = rerank_candidates(
            spark,
            candidates,
            items,
            history,
            cfg,
            cutoff,
            candidates_cfg=config.candidates,
            item_vectors=vectors,
        )
        outcome = result.outcome.persist()  # read twice below; BERT scores each pair once
        try:
            ranked = result.ranked.select("request_id", "item_id", "rank").toPandas()
            prerank = None
            if read_manifest(path).prerank is not None:
                prerank = (
                    outcome.where(F.col(PRERANK_RANK) <= top_k)
                    .select("request_id", "item_id", F.col(PRERANK_RANK).alias("rank"))
                    .toPandas()
                )
        finally:
            outcome.unpersist()
        return (
            per_request_ndcg(ranked, labels_pd, requests),
            None if prerank is None else per_request_ndcg(prerank, labels_pd, requests),
        )

    retrieval = (
        candidates.where(F.col("retrieval_rank") <= top_k)
        .select("request_id", "item_id", F.col("retrieval_rank").alias("rank"))
        .toPandas()
    )
    with_bert, features_alone = served(version_path)
    bert_change = None if features_alone is None else relative_change(features_alone, with_bert)
    # BERT is nearly all of the rerank step's cost: it is served only where it earns its place.
    bert_earned = bert_change is None or bert_change[1] > 0
    champion = None
    if champion_path is not None:
        champion_bert, champion_alone = served(champion_path)
        champion = champion_bert if champion_serves_bert or champion_alone is None else champion_alone
    result = decide(
        with_bert if bert_earned or features_alone is None else features_alone,
        per_request_ndcg(retrieval, labels_pd, requests),
        champion,
    )
    if features_alone is None:
        return result
    return replace(
        result,
        features_ndcg=float(features_alone.mean()),
        bert_change=bert_change,
        serves_bert=bert_earned,
    )


def served_config(config: Config) -> Config:
    """`config` with `rerank.mode=champion` resolved through the registry: the artifact of the pinned
    version or of the `champion` alias (as its prerank alone when its gate found BERT added nothing and
    rerank.bert_depth is unset), or, with neither, the retrieval order."""
    if config.rerank.mode != "champion":
        return config
    version = served_version(config)
    update: dict[str, object] = (
        {"mode": "retrieval"}
        if version is None
        else {"mode": "cross_encoder", "model_path": artifact_dir(config, version)}
    )
    if version is not None and not serves_bert(version) and config.rerank.bert_depth is None:
        update["bert_depth"] = 0
    return config.model_copy(update={"rerank": config.rerank.model_copy(update=update)})


def serves_bert(version) -> bool:
    """Whether a registered version is served with BERT: unless its gate found BERT added nothing beyond
    chance to its features-only prerank (tag SERVES_BERT_TAG)."""
    return version.tags.get(SERVES_BERT_TAG) != "false"
