"""The query fusion's lists, fit and verdict: on the held-out queries, as the version will serve them.

The query encoder and the query lexicon learn from the training queries, so on those queries their
signals are better than on any new one (on the sample the encoder reached 0.927 NDCG@10 on its training
queries against 0.863 on held-out ones) and a fusion fitted there trusts them too much: measured, it
gained 0.8% where one fitted on held-out queries gained 4 to 7% (docs/experiments/2026-12-query-lexicon.md).
So the query fusion learns from the held-out queries' lists, retrieved as the version will serve them,
and is judged out of fold: each fifth of those queries is ordered by a fusion fitted on the other four,
never by one that saw its labels, and `champion.decide` compares that order with their retrieval order.
The fusion the version ships is then fitted on all of them, the usual use of cross-validation: the
verdict measures the way the fusion is made, on queries it did not learn from.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from pyspark.sql import DataFrame, SparkSession

from llmrank_spark.config import Config, TrainConfig
from llmrank_spark.rerank import FusionSettings, fit_fusion
from llmrank_spark.rerank.artifact import QUERY_FUSION_FILE
from llmrank_spark.rerank.query_fusion import (
    QUERY_FUSION_DIRECTIONS,
    QUERY_FUSION_INPUTS,
    QueryFusion,
    query_fusion_inputs,
)
from llmrank_spark.rerank.query_lexicon import QueryLexicon, item_values
from llmrank_spark.retrieval.semantic import QueryEncoder
from llmrank_spark.training.champion import GateResult, decide, per_request_ndcg
from llmrank_spark.training.lists import ITEM, LABEL, LIST, list_labels, rank_by_score
from llmrank_spark.training.query_encoder import QueryEncoderResult
from llmrank_spark.training.query_lists import heldout_queries, query_grades

FOLDS = 5


def served_query_candidates(
    spark: SparkSession,
    items: DataFrame,
    interactions: DataFrame,
    queries: pd.DataFrame,
    config: Config,
    shipped: QueryEncoderResult | None,
    item_vectors: DataFrame | None,
) -> pd.DataFrame:
    """(request_id, item_id, retrieval_rank, source_scores) of `queries` (query_id,
    query_text), retrieved as the candidates step will retrieve them once the version is registered:
    with the query encoder it ships (`shipped`), else the newest registered one; the packaged MiniLM
    (over `item_vectors`) with none, or with candidates.query_encoder "packaged"."""
    from llmrank_spark.retrieval import prepare_inputs
    from llmrank_spark.retrieval.queries import query_lists
    from llmrank_spark.retrieval.retrieved import RETRIEVED_SCHEMA, tag_source
    from llmrank_spark.training.registry import registered_query_encoder

    run_date = config.run.run_date
    inputs = prepare_inputs(spark, items, interactions, None, config.candidates, run_date, item_vectors)
    asked = spark.createDataFrame(queries[["query_id", "query_text"]], "query_id string, query_text string")
    encoder, semantic = None, None
    if config.candidates.query_encoder == "registered" and shipped is not None:
        found = shipped.retrieved(queries, config.candidates.n_per_request)
        semantic = tag_source(spark.createDataFrame(found, RETRIEVED_SCHEMA), "query_semantic")
    elif config.candidates.query_encoder == "registered":
        registered = registered_query_encoder(config)
        encoder = None if registered is None else QueryEncoder(registered)
    lists, _ = query_lists(inputs, asked, run_date, encoder, semantic)
    frame: pd.DataFrame = lists.select("request_id", ITEM, "retrieval_rank", "source_scores").toPandas()
    return frame.sort_values(["request_id", "retrieval_rank"], ignore_index=True)


def query_fusion_lists(
    candidates: pd.DataFrame,
    queries: pd.DataFrame,
    labels: pd.DataFrame,
    items: pd.DataFrame,
    item_events: pd.DataFrame,
    lexicon: QueryLexicon,
) -> pd.DataFrame:
    """(list_id, item_id, label, retrieval_rank and QUERY_FUSION_INPUTS): every query's whole candidate
    list (`candidates`: request_id, item_id, retrieval_rank, source_scores) with its
    `queries` text, the `items` category and attributes, `item_events` and the graded `labels` (query_id,
    item_id, relevance; an unjudged item has 0), in retrieval order."""
    rows = (
        candidates.merge(queries.rename(columns={"query_id": "request_id"}), on="request_id")
        .merge(items[[ITEM, "category", "attributes"]], on=ITEM, how="left")
        .merge(item_events, on=ITEM, how="left")
        .merge(
            query_grades(labels).rename(columns={"query_id": "request_id"}),
            on=["request_id", ITEM],
            how="left",
        )
        .fillna({LABEL: 0.0})
        .sort_values(["request_id", "retrieval_rank"], kind="mergesort", ignore_index=True)
    )
    inputs = query_fusion_inputs(rows, lexicon)
    return pd.concat([rows[["request_id", ITEM, LABEL]].rename(columns={"request_id": LIST}), inputs], axis=1)


@dataclass(frozen=True)
class QueryFusionResult:
    """The fusion a version ships, and the out-of-fold verdict on it."""

    fusion: QueryFusion
    verdict: GateResult

    def metrics(self) -> dict[str, float]:
        return {f"query_fusion_{name}": value for name, value in self.verdict.metrics().items()}

    def describe(self) -> str:
        verdict = self.verdict
        return (
            f"query fusion ({len(self.fusion.lexicon.names)} phrases in the lexicon, "
            f"{self.fusion.model.spec.trees} trees): {verdict.requests} held-out queries out of fold, "
            f"NDCG@10 retrieval {verdict.retrieval_ndcg:.4f} -> fusion {verdict.version_ndcg:.4f} "
            f"({verdict.change:+.1%} [{verdict.change_low:+.1%}, {verdict.change_high:+.1%}]): "
            f"{'ranks queries' if verdict.promoted else 'not served'}, {verdict.reason}"
        )


def train_query_fusion(
    lists: pd.DataFrame, lexicon: QueryLexicon, cfg: TrainConfig
) -> QueryFusionResult | None:
    """LambdaMART over QUERY_FUSION_INPUTS of `lists` (`query_fusion_lists`), judged out of fold over
    FOLDS seeded folds of its queries and then fitted on all of them. None when there are fewer than
    two queries per fold: too few to judge anything."""
    query_ids = np.sort(lists[LIST].unique())
    if len(query_ids) < 2 * FOLDS:
        return None
    settings = FusionSettings(
        trees=cfg.query_fusion_trees,
        learning_rate=cfg.query_fusion_learning_rate,
        leaves=cfg.query_fusion_leaves,
        seed=cfg.seed,
    )
    inputs, directions = list(QUERY_FUSION_INPUTS), QUERY_FUSION_DIRECTIONS
    shuffled = np.random.default_rng(cfg.seed).permutation(query_ids)
    fold = lists[LIST].map(pd.Series(np.arange(len(shuffled)) % FOLDS, index=shuffled)).to_numpy()
    out_of_fold = np.zeros(len(lists))
    for held in range(FOLDS):
        model = fit_fusion(
            lists[fold != held], None, inputs, settings, file=QUERY_FUSION_FILE, directions=directions
        )
        out_of_fold[fold == held] = model.score(lists[fold == held])
    labels = list_labels(lists)
    requests = pd.Index(query_ids, name="request_id")
    retrieval = rank_by_score(lists, -lists["retrieval_rank"].to_numpy(dtype=np.float64))
    verdict = decide(
        per_request_ndcg(rank_by_score(lists, out_of_fold), labels, requests),
        per_request_ndcg(retrieval, labels, requests),
        None,
    )
    shipped = fit_fusion(lists, None, inputs, settings, file=QUERY_FUSION_FILE, directions=directions)
    return QueryFusionResult(QueryFusion(lexicon, shipped), verdict)


def fit_query_fusion(
    spark: SparkSession,
    items: DataFrame,
    interactions: DataFrame,
    config: Config,
    built: dict[str, pd.DataFrame],
    shipped: QueryEncoderResult | None,
    item_vectors: DataFrame | None,
) -> QueryFusionResult | None:
    """The version's query fusion from the training lists' query tables (`extract.training_lists`):
    the lexicon learned from the training queries, the fusion fitted and judged on the held-out queries'
    lists as they will be served (`served_query_candidates`, with the query encoder the version ships).
    None when too few queries are held out."""
    queries = built["judged_queries"]
    held = heldout_queries(queries["query_id"], config.train.heldout_query_share)
    candidates = served_query_candidates(
        spark, items, interactions, queries[held], config, shipped, item_vectors
    )
    labels, items_pd, item_events = built["query_labels"], built["item_values"], built["item_events"]
    return judged_query_fusion(candidates, queries, labels, items_pd, item_events, held, config.train)


def judged_query_fusion(
    candidates: pd.DataFrame,
    queries: pd.DataFrame,
    labels: pd.DataFrame,
    items: pd.DataFrame,
    item_events: pd.DataFrame,
    held: pd.Series,
    cfg: TrainConfig,
) -> QueryFusionResult | None:
    """The query fusion of `queries` split by `held` (a mask over them): the lexicon learned from the
    others' `labels`, the fusion fitted and judged on the held-out queries' `candidates` (their lists as
    served; `query_fusion_lists` says the columns). None when too few queries are held out."""
    lexicon = QueryLexicon.learn(queries[~held], labels, item_values(items))
    lists = query_fusion_lists(candidates, queries[held], labels, items, item_events, lexicon)
    return train_query_fusion(lists, lexicon, cfg)
