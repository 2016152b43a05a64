"""The rerank stage: score every candidate with the broadcast BERT model, keep each request's top-K.

`ServedModel.scores` is the pure last layer (a batch of scored candidate rows, of any requests -> the
score each is served with); `rerank_candidates` is the Spark layer the pipeline calls: it builds the
texts, checks each request's pairs (`rejects.check_pairs`), scores the valid ones in the pandas UDF of
`scoring`, applies `ServedModel.scores` over Arrow batches and keeps each request's top-K with a window
(`top_k_by_score`); what cannot be ranked goes to `rejects` with a reason.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd
from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F
from pyspark.sql.functions import pandas_udf

from llmrank_spark.config import CandidatesConfig, FaultsConfig, RerankConfig, text_settings
from llmrank_spark.events import ITEM_EVENTS, item_event_counts
from llmrank_spark.lakehouse import (
    CHECKED_SCHEMA,
    COPY_OF,
    NON_FINITE_SCORE,
    PAIR_COLUMNS,
    REQUEST_KEY,
    as_rejects,
    check_pairs,
    conform,
    mark_copies,
)
from llmrank_spark.rerank.artifact import (
    QUERY_LEXICON_FILE,
    RETRIEVAL_VERSION,
    FusionHead,
    FusionSpec,
    ModelSpec,
    cross_encoder_spec,
    read_manifest,
    retrieval_spec,
    zero_shot_spec,
)
from llmrank_spark.rerank.features import FEATURES, ranking_features
from llmrank_spark.rerank.fusion import BERT_SCORE, FusionModel
from llmrank_spark.rerank.query_fusion import QueryFusion
from llmrank_spark.rerank.scorer import ScoringSettings
from llmrank_spark.rerank.udf import scoring_udf, ship_model
from llmrank_spark.text import NEW_SHOPPER_CONTEXT, item_texts, user_contexts

# Best first; equal scores fall back to the retrieval order, then the item id: never to input order.
RANK_ORDER = (("score", False), ("retrieval_rank", True), ("item_id", True))
# The rows `top_k_by_score` keeps per request; model_version and run_date are added once, in Spark.
RANKED_COLUMNS = {
    "request_id": "string",
    "request_type": "string",
    "item_id": "string",
    "rank": "int",
    "score": "double",
    "retrieval_rank": "int",
    "retrieval_score": "double",
    "sources": "array<string>",
    "model_rank": "int",
}
# A fused user's candidate's place in its list by the version's prerank (`cascade_scores`).
PRERANK_RANK = "prerank_rank"


def retrieval_features(rows: pd.DataFrame, features: list[str]) -> np.ndarray:
    """(rows, features) float32 for the fusion head. A retriever's feature is 1 / log2(1 + the item's rank
    in its list, from `source_ranks`), 0 when it did not propose the item; "item_events" is
    log(1 + the `item_events` column), the item's popularity."""
    matrix = np.zeros((len(rows), len(features)), dtype=np.float32)
    column = {name: j for j, name in enumerate(features)}
    if ITEM_EVENTS in column:
        matrix[:, column[ITEM_EVENTS]] = np.log1p(rows[ITEM_EVENTS].fillna(0).to_numpy(dtype=np.float64))
    for i, ranks in enumerate(rows["source_ranks"]):
        if ranks is None or (isinstance(ranks, float) and np.isnan(ranks)):
            continue
        # A map column arrives from Arrow as a dict or as (key, value) pairs, depending on the path.
        for source, rank in ranks.items() if isinstance(ranks, dict) else ranks:
            if source in column and rank is not None:
                matrix[i, column[source]] = 1.0 / np.log2(1.0 + rank)
    return matrix


def fused_scores(logits: np.ndarray, features: np.ndarray, head: FusionHead | None) -> np.ndarray:
    """The served score: the BERT logit, or with a fusion head w_logit * logit + w . features + b."""
    if head is None:
        return np.asarray(logits, dtype=np.float64)
    weights = np.asarray(head.feature_weights, dtype=np.float64)
    return head.logit_weight * np.asarray(logits, dtype=np.float64) + features @ weights + head.bias


def top_k_by_score(scored: DataFrame, top_k: int) -> DataFrame:
    """Each request's `top_k` rows of `scored` in model order (RANK_ORDER: ties never fall to input order),
    with `rank` = `model_rank` = the place, as RANKED_COLUMNS.

    A window per request, not a pandas call per request: Spark keeps each partition's top-K before the
    shuffle (its window group limit), and sorts only what is left.
    """
    order = Window.partitionBy(*REQUEST_KEY).orderBy(
        *[F.col(name).asc() if ascending else F.col(name).desc() for name, ascending in RANK_ORDER]
    )
    return (
        scored.withColumn("rank", F.row_number().over(order))
        .where(F.col("rank") <= top_k)
        .withColumn("model_rank", F.col("rank"))
        .select(*[F.col(name).cast(kind) for name, kind in RANKED_COLUMNS.items()])
    )


def model_for(cfg: RerankConfig) -> tuple[ModelSpec, RerankConfig]:
    """The model `cfg.mode` asks for, and the text settings to serve it with.

    A fine-tuned artifact brings its own max length and templates (from reranker.json), so it is
    served on text built exactly as in training.
    """
    if cfg.mode == "zero_shot_bi_encoder":
        return zero_shot_spec(), cfg
    if cfg.mode == "retrieval":
        return retrieval_spec(), cfg
    if cfg.mode == "champion":
        raise ValueError(
            "rerank.mode=champion is resolved to the registry's champion by the rerank step "
            "(champion.served_config); call model_for with the resolved config"
        )
    spec = cross_encoder_spec(cfg.model_path)
    manifest = read_manifest(spec.path)
    trained_text = text_settings(manifest)
    if trained_text["context_items"] is None:  # an artifact from before it was recorded
        trained_text["context_items"] = cfg.context_items
    return spec, cfg.model_copy(update=trained_text)


def request_contexts(
    candidates: DataFrame,
    interactions: DataFrame,
    items: DataFrame,
    cfg: RerankConfig,
    run_date: dt.date,
    queries: DataFrame | None,
    users: DataFrame | None = None,
) -> DataFrame:
    """(request_type, request_id, context_text): a user's recent history as of run_date (after their
    `rerank.user_template` text, when `users` is given), or a query's text."""
    requested = (
        candidates.where(F.col("request_type") == "user")
        .select(F.col("request_id").alias("user_id"))
        .distinct()
    )
    history = interactions.join(requested, "user_id", "left_semi")
    if users is not None:
        users = users.join(requested, "user_id", "left_semi")
    contexts = user_contexts(history, items, cfg, as_of=run_date, users=users).withColumn(
        "request_type", F.lit("user")
    )
    if queries is not None:
        contexts = contexts.unionByName(
            queries.select(
                F.col("query_id").alias("request_id"),
                F.col("query_text").alias("context_text"),
                F.lit("query").alias("request_type"),
            )
        )
    return contexts


@dataclass(frozen=True)
class RerankResult:
    """The rerank step's outputs. Both derive from `outcome`, every candidate pair once, scored or rejected:
    persist it before writing (`steps.materialised`) so each pair is scored once and a scoring failure
    happens before either table is written."""

    outcome: DataFrame
    ranked: DataFrame  # the `ranked` table's rows
    rejects: DataFrame  # the `rejects` table's rows of the rerank step


def checked_pairs(
    candidates: DataFrame, items: DataFrame, contexts: DataFrame, cfg: RerankConfig
) -> DataFrame:
    """Every candidate row with its texts, marked scorable or rejected (`mark_copies`, `check_pairs`).

    Whole requests in one partition, rows in a fixed order (request, item, copy), so Arrow batches (and
    so the scores, bit for bit) are the same on every rerun, and a batch repeats few contexts.
    """
    catalogue = item_texts(items, cfg).withColumn("in_catalogue", F.lit(True))
    pairs = (
        candidates.select(
            "request_id",
            "request_type",
            "item_id",
            "retrieval_rank",
            "retrieval_score",
            "sources",
            "source_ranks",
        )
        .join(catalogue, "item_id", "left")
        .join(contexts.withColumn("context_found", F.lit(True)), ["request_type", "request_id"], "left")
        .select(*PAIR_COLUMNS)
    )
    marked = mark_copies(pairs.repartition(*REQUEST_KEY)).sortWithinPartitions(
        *REQUEST_KEY, "item_id", F.col(COPY_OF).asc_nulls_first(), "retrieval_rank"
    )
    return marked.mapInPandas(lambda batches: map(check_pairs, batches), CHECKED_SCHEMA)


def with_contexts(
    requests: DataFrame,
    interactions: DataFrame,
    items: DataFrame,
    cfg: RerankConfig,
    run_date: dt.date,
    queries: DataFrame | None,
    users: DataFrame | None = None,
) -> DataFrame:
    """`requests` (request_type, request_id, ...) with the context_text the reranker reads for each.

    Users without history get `NEW_SHOPPER_CONTEXT`; a query request without a `queries` row fails.
    """
    missing_query = F.raise_error(
        F.concat(
            F.lit("query request '"),
            F.col("request_id"),
            F.lit("' has no row in the queries table: pass the queries table to the step"),
        )
    )
    contexts = request_contexts(requests, interactions, items, cfg, run_date, queries, users)
    return requests.join(contexts, ["request_type", "request_id"], "left").withColumn(
        "context_text",
        F.coalesce(
            "context_text",
            F.when(F.col("request_type") == "user", F.lit(NEW_SHOPPER_CONTEXT)).otherwise(missing_query),
        ),
    )


def score_by_request(pairs: DataFrame, score, *order: str) -> DataFrame:
    """`pairs` with a `score` column from the scoring UDF, computed request by request.

    Whole requests per partition in a fixed order (request, then `order`): Arrow batches (and so the
    scores, bit for bit) are the same on every rerun, and a batch repeats few contexts.
    """
    return (
        pairs.repartition("request_id", "request_type")
        .sortWithinPartitions("request_id", "request_type", *order)
        .withColumn("score", score("context_text", "item_text"))
    )


@lru_cache(maxsize=4)
def _fusion_model(text: str, inputs: tuple[str, ...], trees: int) -> FusionModel:
    """The shipped LambdaMART, parsed once per Python worker (CPython caches a string's hash)."""
    return FusionModel.from_text(text, FusionSpec(inputs=list(inputs), trees=trees))


def _model_key(path: str, spec: FusionSpec) -> tuple[str, tuple[str, ...], int]:
    """What `_fusion_model` needs, read on the driver: the closure ships the text, not a path."""
    return (Path(path) / spec.file).read_text(), tuple(spec.inputs), spec.trees


def cascade_scores(
    pairs: DataFrame, udf, prerank: tuple[str, tuple[str, ...], int] | None, depth: int
) -> DataFrame:
    """The fused users' `pairs` (with their ranking features) with a `score` and a `prerank_rank`.

    The prerank (the version's features-only LambdaMART) orders each list, and BERT scores only its
    first `depth` candidates: the ranking features are joins, BERT is the cost, and on the held-out
    protocol it moves NDCG little on top of them (docs/results.md). A candidate past the depth keeps
    its prerank score. Without a prerank (an artifact from before it existed) BERT scores every pair.
    """
    if prerank is None:
        return score_by_request(pairs, udf, "item_id").withColumn(PRERANK_RANK, F.lit(None).cast("int"))

    @pandas_udf("double")  # type: ignore[call-overload]  # pyspark's stubs lack the type-hinted form
    def prerank_scores(features: pd.DataFrame) -> pd.Series:
        return pd.Series(_fusion_model(*prerank).score(features), index=features.index)

    order = Window.partitionBy(*REQUEST_KEY).orderBy(
        F.desc("prerank_score"), F.asc("retrieval_rank"), F.asc("item_id")
    )
    ordered = pairs.withColumn("prerank_score", prerank_scores(F.struct(*prerank[1]))).withColumn(
        PRERANK_RANK, F.row_number().over(order)
    )
    # Whole requests per partition, in prerank order: Arrow batches repeat few contexts.
    first = ordered.where(F.col(PRERANK_RANK) <= depth).withColumn("score", udf("context_text", "item_text"))
    rest = ordered.where(F.col(PRERANK_RANK) > depth).withColumn("score", F.col("prerank_score"))
    return first.unionByName(rest).drop("prerank_score")


@lru_cache(maxsize=4)
def _query_fusion(lexicon: str, text: str, inputs: tuple[str, ...], trees: int) -> QueryFusion:
    """The shipped query fusion, parsed once per Python worker."""
    return QueryFusion.from_texts(lexicon, text, FusionSpec(inputs=list(inputs), trees=trees))


@dataclass(frozen=True)
class ServedModel:
    """What turns a scored candidate row into the score it is served with, read on the driver and shipped
    in the closure (texts, not paths). Rows are independent: a batch may hold any requests' rows.

    A request type the version was not trained on keeps its score (the retrieval score). Query rows of a
    version with a query fusion get its score; user rows of a version with a LambdaMART fusion get the
    fusion's score over their features and BERT score, or keep the prerank's at depth 0
    (`prerank_only`); other served rows go through the linear head, when there is one.
    """

    served_types: frozenset[str] | None  # None: every type (an untrained or zero-shot model)
    fusion: tuple[str, tuple[str, ...], int] | None = None  # `_fusion_model`'s arguments
    query_fusion: tuple[str, str, tuple[str, ...], int] | None = None  # `_query_fusion`'s arguments
    head: FusionHead | None = None
    prerank_only: bool = False

    def scores(self, rows: pd.DataFrame) -> np.ndarray:
        """The served score of each row (request_type, score and the inputs the version reads)."""
        scores = rows["score"].to_numpy(dtype=np.float64, copy=True)
        types = rows["request_type"]
        served = types.isin(self.served_types) if self.served_types is not None else types.notna()
        queries = users = np.zeros(len(rows), dtype=bool)
        if self.query_fusion is not None:
            queries = (served & (types == "query")).to_numpy()
            if queries.any():
                query_rows = rows[queries].rename(columns={"context_text": "query_text"})
                scores[queries] = _query_fusion(*self.query_fusion).scores(query_rows)
        if self.fusion is not None:
            users = (served & (types == "user")).to_numpy()
            if users.any() and not self.prerank_only:
                inputs = rows[users].assign(**{BERT_SCORE: rows["score"][users]})
                scores[users] = _fusion_model(*self.fusion).score(inputs)
        by_head = served.to_numpy() & ~queries & ~users
        if self.head is not None and by_head.any():
            head_rows = rows[by_head]
            features = retrieval_features(head_rows, self.head.features)
            scores[by_head] = fused_scores(head_rows["score"], features, self.head)
        return scores


def with_query_signals(scorable: DataFrame, candidates: DataFrame, items: DataFrame) -> DataFrame:
    """`scorable` with what the query fusion reads besides the pair (`query_fusion.QUERY_ROW_COLUMNS`):
    each query candidate's retriever scores and the item's category and attributes; null on user rows."""
    is_query = F.col("request_type") == "query"
    signals = candidates.where(is_query).select(*REQUEST_KEY, "item_id", "source_scores")
    attributes = F.col("attributes") if "attributes" in items.columns else F.lit(None)
    values = items.select("item_id", "category", attributes.cast("map<string,string>").alias("attributes"))
    queried = scorable.where(is_query).join(signals, [*REQUEST_KEY, "item_id"], "left")
    return scorable.where(~is_query).unionByName(
        queried.join(values, "item_id", "left"), allowMissingColumns=True
    )


def rerank_candidates(
    spark: SparkSession,
    candidates: DataFrame,
    items: DataFrame,
    interactions: DataFrame,
    cfg: RerankConfig,
    run_date: dt.date,
    queries: DataFrame | None = None,
    users: DataFrame | None = None,
    faults: FaultsConfig | None = None,
    candidates_cfg: CandidatesConfig | None = None,
    item_vectors: DataFrame | None = None,
) -> RerankResult:
    """The `ranked` rows for one run, each request's top-K candidates by reranker score, and the `rejects`.

    `candidates` follows the `candidates` contract. Pairs the rules of `check_pairs` reject, and pairs the
    model scores NaN or infinite, go to rejects with the reason; so every candidate request is ranked or
    rejected. `ranked` is in model order (`rank` = `model_rank`); the step's fairness pass re-orders it.
    Users without history get `NEW_SHOPPER_CONTEXT`; `users` supplies the fields of `cfg.user_template`.
    An artifact with a LambdaMART fusion is served on the ranking features of every pair
    (`features.ranking_features`, with `candidates_cfg`), after BERT, which scores only each user
    list's first `rerank.bert_depth` by the artifact's prerank (`cascade_scores`); one with a query
    fusion ranks query lists by it alone (`query_fusion.QueryFusion`, no BERT pass);
    `rerank.mode=retrieval` keeps the candidates' own order. Fails, naming what is missing and how to
    fix it, when cfg asks for a cross-encoder that does not exist: it never scores with an untrained
    head. `faults` is test-only fault injection.
    """
    spec, cfg = model_for(cfg)
    manifest = read_manifest(spec.path) if spec.kind == "cross_encoder" else None
    fusion = manifest.fusion if manifest is not None else None
    # Queries are never served by the LambdaMART fusion (it learns from behaviour features of shoppers,
    # which a query does not have): by the version's query fusion, else through the linear head.
    head = manifest.fusion_head if manifest is not None else None
    # A fine-tuned version ranks the request types it was trained on; the others keep their retrieval
    # order (retrieval_score orders the list as retrieval_rank does).
    modelled = F.lit(True) if manifest is None else F.col("request_type").isin(manifest.request_types)
    fused = modelled & (F.col("request_type") == "user") if fusion is not None else F.lit(False)
    # Query lists of a version with a query fusion are ranked by it alone, with no BERT pass.
    query_fusion = manifest.query_fusion if manifest is not None else None
    query_fused = modelled & (F.col("request_type") == "query") if query_fusion else F.lit(False)
    depth = cfg.scored_depth  # of the cascade, for the fused lists
    contexts = request_contexts(candidates, interactions, items, cfg, run_date, queries, users)
    checked = checked_pairs(candidates, items, contexts, cfg)
    rejected = F.col("reason").isNotNull()
    scorable_pairs = checked.where(~rejected)
    if spec.kind == "retrieval":
        with_scores = scorable_pairs.withColumn("score", F.col("retrieval_score"))
    else:
        udf = scoring_udf(ship_model(spark, spec), ScoringSettings.from_config(cfg), faults)
        with_scores = (
            scorable_pairs.where(modelled & ~fused & ~query_fused)
            .withColumn("score", udf("context_text", "item_text"))
            .unionByName(
                scorable_pairs.where(~modelled | query_fused).withColumn("score", F.col("retrieval_score"))
            )
        )
    carried: list[str] = []  # the fusion's inputs, carried to `ServedModel.scores`
    if fusion is not None and manifest is not None:
        if candidates_cfg is None:
            raise ValueError(f"model {spec.version} fuses ranking features: pass candidates_cfg")
        pairs = candidates.where(fused).select(*REQUEST_KEY, "item_id", "retrieval_rank", "source_ranks")
        features = ranking_features(
            spark, pairs, items, interactions, None, candidates_cfg, run_date, item_vectors
        ).select(*REQUEST_KEY, "item_id", *FEATURES)
        to_fuse = scorable_pairs.where(fused).join(features, [*REQUEST_KEY, "item_id"], "left")
        prerank = None if manifest.prerank is None else _model_key(spec.path, manifest.prerank)
        cascaded = cascade_scores(to_fuse, udf, prerank, depth)
        with_scores = with_scores.unionByName(cascaded, allowMissingColumns=True)
        carried = [*FEATURES, PRERANK_RANK]
    finite = F.col("score").isNotNull() & ~F.isnan("score") & (F.abs("score") != F.lit(float("inf")))
    ids = [name for name in RANKED_COLUMNS if name not in ("rank", "model_rank", "score")]
    scored = (
        with_scores.withColumn("reason", F.when(~finite, F.lit(NON_FINITE_SCORE)))
        # Arrow hands a NaN from the UDF to Spark as null (the scorer itself never returns null).
        .withColumn(
            "detail",
            F.when(
                ~finite, F.concat(F.lit("score "), F.coalesce(F.col("score").cast("string"), F.lit("NaN")))
            ),
        )
    )
    carried += ["context_text"] if query_fusion is not None else []  # the query fusion reads the query
    outcome = scored.select(*ids, "source_ranks", "score", "reason", "detail", *carried).unionByName(
        checked.where(rejected).select(
            *ids, "source_ranks", F.lit(None).cast("double").alias("score"), "reason", "detail"
        ),
        allowMissingColumns=True,
    )
    query_fusion_key = None
    if query_fusion is not None:
        query_fusion_key = (
            (Path(spec.path) / QUERY_LEXICON_FILE).read_text(),
            *_model_key(spec.path, query_fusion),
        )
    served_types = None if manifest is None else frozenset(manifest.request_types)
    # The head scores the lists nothing else does: all of them, or with a fusion only the queries (none
    # when a query fusion ranks them).
    head_scores = head is not None and (
        fusion is None or ("query" in (served_types or set()) and query_fusion is None)
    )
    served_model = ServedModel(
        served_types=served_types,
        fusion=None if fusion is None else _model_key(spec.path, fusion),
        query_fusion=query_fusion_key,
        head=head if head_scores else None,
        # At depth 0 a version with a prerank is served in the prerank's order: its scores are the prerank's.
        prerank_only=depth == 0 and manifest is not None and manifest.prerank is not None,
    )
    scorable = outcome.where(~rejected)
    if fusion is not None and not served_model.prerank_only:
        # Past the depth a fused user's score is the prerank's, and only the first `depth` can be served.
        scorable = scorable.where(~F.coalesce(F.col(PRERANK_RANK) > depth, F.lit(False)))
    # What `ServedModel.scores` reads: the prerank's place only filtered the rows above.
    inputs = ["request_type", "score", *[name for name in carried if name != PRERANK_RANK]]
    if head_scores or query_fusion is not None:
        scorable = scorable.join(F.broadcast(item_event_counts(interactions, run_date)), "item_id", "left")
        inputs += ["source_ranks", ITEM_EVENTS]
    if query_fusion is not None:
        scorable = with_query_signals(scorable, candidates, items)
        # QUERY_ROW_COLUMNS; the query's text is carried as context_text
        inputs += ["item_id", "retrieval_rank", "source_scores", "category", "attributes"]

    @pandas_udf("double")  # type: ignore[call-overload]  # pyspark's stubs lack the type-hinted form
    def served_scores(rows: pd.DataFrame) -> pd.Series:
        return pd.Series(served_model.scores(rows), index=rows.index)

    scored_rows = scorable.select(*ids, served_scores(F.struct(*dict.fromkeys(inputs))).alias("score"))
    ranked = top_k_by_score(scored_rows, cfg.top_k)
    version = F.when(modelled, F.lit(spec.version)).otherwise(F.lit(RETRIEVAL_VERSION))
    ranked = ranked.withColumn("model_version", version).withColumn("run_date", F.lit(run_date))
    rejects = as_rejects(outcome.where(rejected), run_date, "rerank", "candidates")
    return RerankResult(outcome, conform(ranked, "ranked"), rejects)
