"""The evaluate step: quality, exposure fairness and diversity of one run's lists, in every order it had.

Each run is measured in up to four orders (`evaluation.orders`), so the `metrics` table shows what each
stage added: the retrieval order (``candidates``), the model order (``rerank``), the served order after
the fairness pass (``fairness``) and, with `fairness.mode` sweep, each sweep point.

With ``fairness.control`` target, the ``fairness`` order also gets the target checked on the whole run:
``target_required``, ``target_reached`` and ``target_met`` (1 or 0) per goal (the slice, e.g.
``provider_gini@10``), and ``fairness_strength``, the strength the pass used.

Every order but the model's also gets ``ndcg@k_change`` against the model order, with its 95% bootstrap
interval over the evaluated requests (``ndcg@k_change_low``, ``ndcg@k_change_high``); the served order
gets ``ndcg@k_lift`` against the retrieval order the same way.

Request types. A run with both shoppers and search queries gets its quality metrics, and the served
order's lift, also per type (slices ``request_type=user`` and ``request_type=query``): the two are
judged by different labels and should never be read as one figure.

Labels. Query requests are judged by `query_labels`. A user request is judged by what the user did
AFTER the run: their events in the `evaluate.label_days` days after run_date, graded by event type
(`evaluate.label_grades`, the best grade per item). So a run for today has no user labels yet (only
exposure, coverage and diversity are measured); quality is measured on back-dated runs, or by
re-running evaluate for a date once its label window has passed.

Where it runs. Every per-request value (NDCG, recall, MAP, MRR, intra-list diversity, the prefix
guarantee) is computed in Spark, by the pure `metrics` functions over groups of whole lists
(`per_request`), and averaged per slice in Spark (`slices`); exposure is summed per provider and bucket
in Spark (`exposure`); each change's interval is a Poisson bootstrap in Spark (`bootstrap`). What
reaches the driver: one row per (order, metric, slice), per (order, k, provider) and per bootstrap
replicate, the catalogue (one row per item: providers, categories, popularity buckets) and the item
interaction counts; never the lists, the labels or the users. A sweep's fairness points re-order each
list in Spark; their strength or boosts are fitted on a hashed sample of whole lists.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping

import pandas as pd
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from llmrank_spark.config import Config, EvaluateConfig, FairnessConfig, FairnessTargetConfig
from llmrank_spark.evaluation.bootstrap import BASELINE, OTHER, relative_changes
from llmrank_spark.evaluation.exposure import exposure_totals, shown_items
from llmrank_spark.evaluation.orders import FAIR, MODEL, RETRIEVAL, RunOrders, run_orders
from llmrank_spark.evaluation.per_request import (
    PREFIX_HELD,
    REQUEST_VALUES_SCHEMA,
    PrefixCheck,
    request_values,
)
from llmrank_spark.evaluation.request_keys import one_request_column
from llmrank_spark.evaluation.slices import ALL, REQUEST_TYPE, request_slices, slice_means
from llmrank_spark.events import ITEM_EVENTS, end_of_day, item_event_counts
from llmrank_spark.lakehouse import FAIRNESS_STRENGTH
from llmrank_spark.metrics import ITEM, METRIC_COLUMNS, REQUEST, gini, popularity_buckets, shares_of
from llmrank_spark.metrics.exposure import HEAD, MID, TAIL
from llmrank_spark.postprocess import ProviderPolicy, provider_policy, targets_reached, with_providers

METRICS_COLUMNS = ["step", "model_version", "metric", "slice", "value"]
_EMBEDDING = "embedding"
# Per-request values averaged over all requests only, never per group: the intra-list diversities. (The
# prefix guarantee is no metric row at all: `_mean_rows` leaves it to the target rows.)
_NOT_PER_GROUP = ("ild_category@", "ild_embedding@")


def measure_run(
    ranked: DataFrame,
    retrieval: DataFrame,
    items: pd.DataFrame,
    item_counts: pd.Series,
    evaluate: EvaluateConfig,
    fairness: FairnessConfig,
    *,
    labels: DataFrame | None = None,
    users: DataFrame | None = None,
    embeddings: DataFrame | None = None,
) -> pd.DataFrame:
    """The run's `metrics` rows (step, model_version, metric, slice, value), run_date added on write.

    `ranked` is the run's `ranked` partition and `retrieval` its candidates (request_id, item_id,
    retrieval_rank), both with one request column (`one_request_column`, request_type kept). `items` is
    the catalogue (item_id, category, brand, attributes); providers follow `fairness.provider_attribute`.
    `item_counts` maps item_id -> interactions up to the run: it sets the popularity buckets and the
    long-tail providers. `labels` (request_id, item_id, relevance) switch on the quality metrics,
    `users` (the users table) the per-group quality, `embeddings` (item_id, embedding) the embedding
    diversity.
    """
    spark = ranked.sparkSession
    catalogue = _catalogue_with_providers(items, fairness)
    popular = bool(item_counts.sum() > 0)
    has_providers = bool(catalogue["brand"].notna().any())
    # Without events or providers (the step warns) popularity buckets and long-tail shares are not measured.
    policy = (
        provider_policy(catalogue, item_counts, fairness.long_tail_head_share)
        if popular and has_providers
        else None
    )
    retrieval = retrieval.where(F.col("retrieval_rank") <= max(evaluate.ks))
    orders = run_orders(ranked, retrieval, policy, catalogue.set_index(ITEM)["category"], fairness)
    facts = spark.createDataFrame(
        _item_facts(catalogue, item_counts if popular else None, evaluate),
        "item_id string, category string, provider string, bucket string, in_catalogue boolean",
    )
    judged = labels is not None and not labels.isEmpty()
    target = fairness.mode != "off" and fairness.control == "target" and policy is not None
    prefix = None
    if target and policy is not None and fairness.target.prefix_share is not None:
        prefix = PrefixCheck(
            frozenset({FAIR}), policy, fairness.target.prefix_share, fairness.target.prefix_alpha
        )
    buckets = int(spark.conf.get("spark.sql.shuffle.partitions") or 8)
    lists = orders.lists.persist()
    values = _request_values(lists, facts, labels if judged else None, embeddings, evaluate, prefix, buckets)
    values = values.persist()
    try:
        slices = request_slices(ranked, users if judged else None, evaluate)
        means = slice_means(values, slices)
        exposure_ks = sorted({*evaluate.ks, fairness.exposure_k})
        providers = exposure_totals(lists, facts.select(ITEM, F.col("provider").alias("group")), exposure_ks)
        steps = orders.steps
        rows = [
            _mean_rows(means, steps, evaluate, judged),
            _coverage_rows(
                shown_items(lists, facts.where("in_catalogue"), evaluate.ks), steps, evaluate, catalogue
            ),
        ]
        if has_providers:
            rows.append(_provider_rows(providers, steps, evaluate, catalogue, policy))
        if popular:
            popularity = exposure_totals(
                lists, facts.select(ITEM, F.col("bucket").alias("group")), evaluate.ks
            )
            rows.append(_bucket_rows(popularity, steps, evaluate))
        if judged:
            rows.append(_change_rows(values, slices, steps, evaluate, buckets))
        if policy is not None:
            rows.append(_target_rows(orders, providers, means, policy, fairness, target))
        metrics = pd.concat(rows, ignore_index=True).dropna(subset=["value"])
    finally:
        values.unpersist()
        lists.unpersist()
    versions = sorted(v[0] for v in ranked.select("model_version").distinct().collect() if v[0] is not None)
    version = ", ".join(versions) or None
    metrics["model_version"] = [None if step == RETRIEVAL else version for step in metrics["step"]]
    return metrics.astype({"value": float})[METRICS_COLUMNS]


def _request_values(
    lists: DataFrame,
    facts: DataFrame,
    labels: DataFrame | None,
    embeddings: DataFrame | None,
    evaluate: EvaluateConfig,
    prefix: PrefixCheck | None,
    buckets: int,
) -> DataFrame:
    """(step, request_id, metric, value) of every list: `per_request.request_values` over groups of whole
    lists (every order of a request in one group, with the request's labels), hashed into `buckets`."""
    rows = lists.join(facts.select(ITEM, "category"), ITEM, "left")
    embedding = None
    if embeddings is not None:
        embedding = _EMBEDDING
        rows = rows.join(embeddings.select(ITEM, F.col("embedding").alias(_EMBEDDING)), ITEM, "left")
    bucket = F.pmod(F.xxhash64(REQUEST), F.lit(buckets))
    rows = rows.withColumn("bucket", bucket)
    ks = list(evaluate.ks)

    def measure(group: pd.DataFrame, judged: pd.DataFrame | None) -> pd.DataFrame:
        return request_values(group.drop(columns="bucket"), judged, ks, embedding=embedding, prefix=prefix)

    if labels is None:
        return rows.groupBy("bucket").applyInPandas(lambda group: measure(group, None), REQUEST_VALUES_SCHEMA)
    judged = labels.select(REQUEST, ITEM, F.col("relevance").cast("double")).withColumn("bucket", bucket)
    return (
        rows.groupBy("bucket")
        .cogroup(judged.groupBy("bucket"))
        .applyInPandas(lambda group, own: measure(group, own.drop(columns="bucket")), REQUEST_VALUES_SCHEMA)
    )


def _item_facts(
    catalogue: pd.DataFrame, item_counts: pd.Series | None, evaluate: EvaluateConfig
) -> pd.DataFrame:
    """(item_id, category, provider, bucket, in_catalogue) of every catalogue item and every item with
    interactions: the per-item facts the Spark aggregations join the lists to."""
    if catalogue[ITEM].duplicated().any():
        twice = catalogue.loc[catalogue[ITEM].duplicated(), ITEM].iloc[0]
        raise ValueError(f"items: item_id '{twice}' appears more than once; deduplicate the catalogue")
    facts = catalogue.set_index(ITEM)[["category", "brand"]].rename(columns={"brand": "provider"})
    facts["in_catalogue"] = True
    if item_counts is not None:
        every = facts.index.union(item_counts.index)
        facts = facts.reindex(every)
        facts["in_catalogue"] = facts["in_catalogue"].fillna(False).astype(bool)
        split = (evaluate.popularity_head_share, evaluate.popularity_tail_share)
        facts["bucket"] = popularity_buckets(item_counts.reindex(every, fill_value=0), *split)
    else:
        facts["bucket"] = None
    facts = facts.astype({"category": object, "provider": object, "bucket": object})
    facts = facts.where(facts.notna(), None).rename_axis(ITEM).reset_index()
    return facts[[ITEM, "category", "provider", "bucket", "in_catalogue"]]


def _rows(step: str, rows: list[tuple[str, str, float]]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=METRIC_COLUMNS).assign(step=step)


def _mean_rows(means: pd.DataFrame, steps: list[str], evaluate: EvaluateConfig, judged: bool) -> pd.DataFrame:
    """Each per-request value's mean over all requests; the quality metrics' also per group of requests
    (slice `attribute=group`) with the gap between the best and worst group (`<metric>_gap`), and the
    number of evaluated requests (`evaluated_requests@k`)."""
    frames = []
    for step in steps:
        own = means[(means["step"] == step) & (means["metric"] != PREFIX_HELD)]
        overall = own[own["attribute"] == ALL]
        rows = [(m, ALL, v) for m, v in zip(overall["metric"], overall["value"], strict=True)]
        if judged:
            evaluated = overall.set_index("metric")["requests"]
            rows += [
                (f"evaluated_requests@{k}", ALL, float(evaluated.get(f"ndcg@{k}", 0))) for k in evaluate.ks
            ]
        grouped = own[(own["attribute"] != ALL) & ~own["metric"].str.startswith(_NOT_PER_GROUP)]
        for (metric, attribute), groups in grouped.groupby(["metric", "attribute"], sort=True):
            rows += [
                (metric, f"{attribute}={g}", v) for g, v in zip(groups["group"], groups["value"], strict=True)
            ]
            rows.append((f"{metric}_gap", attribute, float(groups["value"].max() - groups["value"].min())))
        frames.append(_rows(step, rows))
    return pd.concat(frames, ignore_index=True)


def _coverage_rows(
    shown: pd.DataFrame, steps: list[str], evaluate: EvaluateConfig, catalogue: pd.DataFrame
) -> pd.DataFrame:
    """coverage@k: the share of the catalogue's items each order shows in some top k."""
    count = shown.set_index(["step", "k"])["shown"]
    size = catalogue[ITEM].nunique()
    if not size:
        raise ValueError("catalogue coverage: the items table is empty; evaluate needs the catalogue")
    frames = [
        _rows(step, [(f"coverage@{k}", ALL, float(count.get((step, k), 0)) / size) for k in evaluate.ks])
        for step in steps
    ]
    return pd.concat(frames, ignore_index=True)


def _shares(totals: pd.DataFrame, step: str, k: int, groups: list[str]) -> pd.Series | None:
    """The shares of one order's top-k exposure (`totals`: step, k, group, exposure); None when no item of
    its lists has a group."""
    own = totals[(totals["step"] == step) & (totals["k"] == k)].set_index("group")["exposure"]
    return shares_of(own, groups) if own.sum() > 0 else None


def _provider_rows(
    totals: pd.DataFrame,
    steps: list[str],
    evaluate: EvaluateConfig,
    catalogue: pd.DataFrame,
    policy: ProviderPolicy | None,
) -> pd.DataFrame:
    """exposure@k per provider, provider_gini@k, and the long-tail providers' share of exposure."""
    providers = sorted(catalogue["brand"].dropna().unique())
    frames = []
    for step in steps:
        rows = []
        for k in evaluate.ks:
            shares = _shares(totals, step, k, providers)
            if shares is None:
                continue
            rows += [(f"exposure@{k}", f"provider={p}", s) for p, s in shares.items()]
            rows.append((f"provider_gini@{k}", ALL, gini(shares)))
            if policy is not None:
                long_tail = float(shares[shares.index.isin(list(policy.long_tail))].sum())
                rows.append((f"exposure@{k}", "provider_group=long_tail", long_tail))
        frames.append(_rows(step, rows))
    return pd.concat(frames, ignore_index=True)


def _bucket_rows(totals: pd.DataFrame, steps: list[str], evaluate: EvaluateConfig) -> pd.DataFrame:
    """exposure@k per popularity bucket (head, mid, tail)."""
    frames = []
    for step in steps:
        rows = []
        for k in evaluate.ks:
            shares = _shares(totals, step, k, [HEAD, MID, TAIL])
            if shares is not None:
                rows += [(f"exposure@{k}", f"popularity={b}", s) for b, s in shares.items()]
        frames.append(_rows(step, rows))
    return pd.concat(frames, ignore_index=True)


def _change_rows(
    values: DataFrame, slices: DataFrame, steps: list[str], evaluate: EvaluateConfig, buckets: int
) -> pd.DataFrame:
    """ndcg@k_change of every order against the model order and ndcg@k_lift of the served order against
    the retrieval order, each with its 95% bootstrap interval (_low, _high), over all requests and per
    request type (`bootstrap.relative_changes`)."""
    served = FAIR if FAIR in steps else MODEL
    comparisons = [(step, MODEL, "change") for step in steps if step != MODEL]
    comparisons += [(served, RETRIEVAL, "lift")] if RETRIEVAL in steps else []
    ndcg = values.where(F.col("metric").isin([f"ndcg@{k}" for k in evaluate.ks]))
    pairs = None
    for step, baseline, what in comparisons:
        other = ndcg.where(F.col("step") == step).select(REQUEST, "metric", F.col("value").alias(OTHER))
        base = ndcg.where(F.col("step") == baseline).select(REQUEST, "metric", F.col("value").alias(BASELINE))
        one = other.join(base, [REQUEST, "metric"]).select(
            F.lit(step).alias("step"), F.lit(what).alias("what"), "metric", REQUEST, BASELINE, OTHER
        )
        pairs = one if pairs is None else pairs.unionByName(one)
    if pairs is None:
        return pd.DataFrame(columns=[*METRIC_COLUMNS, "step"])
    by_type = slices.where(F.col("attribute").isin(ALL, REQUEST_TYPE)).select(
        REQUEST,
        F.when(F.col("attribute") == ALL, F.lit(ALL))
        .otherwise(F.concat(F.col("attribute"), F.lit("="), F.col("group")))
        .alias("slice"),
    )
    keys = ["step", "what", "metric", "slice"]
    changes = relative_changes(pairs.join(by_type, REQUEST), keys, buckets)
    rows = []
    for row in changes.itertuples(index=False):
        name = f"{row.metric}_{row.what}"
        rows += [
            (row.step, name, row.slice, row.change),
            (row.step, f"{name}_low", row.slice, row.low),
            (row.step, f"{name}_high", row.slice, row.high),
        ]
    return pd.DataFrame(rows, columns=["step", *METRIC_COLUMNS])


def _target_rows(
    orders: RunOrders,
    providers: pd.DataFrame,
    means: pd.DataFrame,
    policy: ProviderPolicy,
    fairness: FairnessConfig,
    target: bool,
) -> pd.DataFrame:
    """The fairness target on the whole run, for the served fair order (control target) and each target
    sweep point: per goal (the slice) the value required, the value reached and whether it is met (1 or
    0), and the strength the pass used (none when the lists stayed in model order)."""
    goals: dict[str, FairnessTargetConfig] = {FAIR: fairness.target} if target else {}
    goals |= {step: FairnessTargetConfig(provider_gini_cut=cut) for step, cut in orders.cuts.items()}
    groups, k = list(policy.need.index), fairness.exposure_k
    model_shares = _shares(providers, MODEL, k, groups)
    held = means[(means["metric"] == PREFIX_HELD) & (means["attribute"] == ALL)].set_index("step")["value"]
    frames = []
    for step, goal in goals.items():
        shares = _shares(providers, step, k, groups)
        if shares is None:
            continue
        checks = targets_reached(shares, model_shares, float(held.get(step, 1.0)), policy, goal, k)
        rows = [
            row
            for c in checks
            for row in (
                ("target_required", c.goal, c.required),
                ("target_reached", c.goal, c.reached),
                ("target_met", c.goal, float(c.met)),
            )
        ]
        if step in orders.strengths:
            rows.append((FAIRNESS_STRENGTH, ALL, orders.strengths[step]))
        frames.append(_rows(step, rows))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=[*METRIC_COLUMNS, "step"])


def _catalogue_with_providers(items: pd.DataFrame, fairness: FairnessConfig) -> pd.DataFrame:
    """The catalogue with providers in `brand` (`with_providers`), or with none when no item names the
    configured provider attribute: the run is then measured without the provider metrics."""
    try:
        return with_providers(items, fairness.provider_attribute)
    except ValueError:
        return items.assign(brand=None)


# ---- The step's inputs ---------------------------------------------------------------------------------


def item_counts_until(interactions: DataFrame, run_date: dt.date) -> pd.Series:
    """item_id -> events up to the end of run_date; one row per interacted item reaches the driver."""
    counts: pd.DataFrame = item_event_counts(interactions, run_date).toPandas()
    return counts.set_index("item_id")[ITEM_EVENTS].astype("int64")


def catalogue_frame(items: DataFrame) -> pd.DataFrame:
    """(item_id, category, brand, attributes) of the whole catalogue: one row per item, for providers."""
    return items.select("item_id", "category", "brand", "attributes").toPandas()


def user_labels(
    interactions: DataFrame, requests: DataFrame, run_date: dt.date, cfg: EvaluateConfig
) -> DataFrame:
    """(request_id, item_id, relevance): each ranked user's best-graded event per item in the label window."""
    start = end_of_day(run_date)
    grades = F.create_map(*[F.lit(v) for pair in sorted(cfg.label_grades.items()) for v in pair])
    window = interactions.where(
        (F.col("event_ts") >= F.lit(start))
        & (F.col("event_ts") < F.lit(start + dt.timedelta(days=cfg.label_days)))
        & F.col("event_type").isin(list(cfg.label_grades))
    )
    return (
        window.join(requests, window.user_id == requests.request_id, "left_semi")
        .groupBy(F.col("user_id").alias("request_id"), "item_id")
        .agg(F.max(grades[F.col("event_type")]).cast("double").alias("relevance"))
        .where(F.col("relevance") > 0)
    )


def query_labels_of(labels: DataFrame, requests: DataFrame) -> DataFrame:
    return labels.select(
        F.col("query_id").alias("request_id"), "item_id", F.col("relevance").cast("double")
    ).join(requests, "request_id", "left_semi")


def _required(tables: Mapping[str, DataFrame | None], table: str) -> DataFrame:
    frame = tables[table]
    if frame is None:
        raise ValueError(f"evaluate_tables: table '{table}' is required")
    return frame


def evaluate_tables(tables: Mapping[str, DataFrame | None], config: Config) -> pd.DataFrame:
    """The run's metrics rows from its Spark tables (ranked, candidates, items, interactions; optionally
    users, query_labels, item_embeddings), each already pinned by the step; see the module doc for what
    is collected."""
    run_date, cfg = config.run.run_date, config.evaluate
    todays = F.col("run_date") == F.lit(run_date)
    ranked = _required(tables, "ranked").where(todays)
    candidates = _required(tables, "candidates").where(todays).where(F.col("retrieval_rank") <= max(cfg.ks))
    interactions, items = _required(tables, "interactions"), _required(tables, "items")
    user_requests = ranked.where(F.col("request_type") == "user").select("request_id").distinct()
    labels = user_labels(interactions, user_requests, run_date, cfg).withColumn("request_type", F.lit("user"))
    query_labels = tables.get("query_labels")
    if query_labels is not None:
        query_requests = ranked.where(F.col("request_type") == "query").select("request_id").distinct()
        query_judged = query_labels_of(query_labels, query_requests)
        labels = labels.unionByName(query_judged.withColumn("request_type", F.lit("query")))
    embeddings = None
    if cfg.embedding_diversity:
        from llmrank_spark.retrieval import item_vectors

        listed = ranked.select("item_id").unionByName(candidates.select("item_id")).distinct()
        listed_items = items.join(listed, "item_id", "left_semi")
        embeddings = item_vectors(tables.get("item_embeddings"), listed_items, config.candidates)
    return measure_run(
        one_request_column(ranked),
        one_request_column(candidates).select(REQUEST, ITEM, "retrieval_rank"),
        catalogue_frame(items),
        item_counts_until(interactions, run_date),
        cfg,
        config.fairness,
        labels=one_request_column(labels).select(REQUEST, ITEM, "relevance"),
        users=tables.get("users"),
        embeddings=embeddings,
    )
