"""The evaluate step: quality, exposure fairness and diversity of one run's lists, in every order it had.

Each run is measured in up to four orders, so the `metrics` table shows what each stage added:

- ``candidates``: the retrieval order (the blended candidate list, cut at the deepest k measured);
- ``rerank``: the model order (`ranked.model_rank`), before any fairness or diversity pass;
- ``fairness``: the final order written to `ranked` (only when `fairness.mode` is on or sweep);
- ``fairness[gini_cut=0.20]``: with mode sweep and control target, the model order re-ordered at the
  strength calibrated (on all the run's lists) for each cut of ``fairness.sweep_gini_cuts``; a cut out
  of reach is left out;
- ``fairness[lambda=0.30]``: with mode sweep and control weight, the model order re-ordered at each
  sweep weight.

With ``fairness.control`` target, the ``fairness`` order also gets the target checked on the whole run:
``target_required``, ``target_reached`` and ``target_met`` (1 or 0) per goal (the slice, e.g.
``provider_gini@10``), and ``fairness_strength``, the strength the pass used.

Every order but the model's also gets ``ndcg@k_change`` against the model order, with its 95% bootstrap
interval over the evaluated requests (``ndcg@k_change_low``, ``ndcg@k_change_high``).

Request types. A run with both shoppers and search queries gets its quality metrics, and the served
order's lift, also per type (slices ``request_type=user`` and ``request_type=query``): the two are
judged by different labels and should never be read as one figure.

Labels. Query requests are judged by `query_labels`. A user request is judged by what the user did
AFTER the run: their events in the `evaluate.label_days` days after run_date, graded by event type
(`evaluate.label_grades`, the best grade per item). So a run for today has no user labels yet (only
exposure, coverage and diversity are measured); quality is measured on back-dated runs, or by
re-running evaluate for a date once its label window has passed.

What reaches the driver, and why it is bounded: the lists (requests x top-K rows; the candidates cut at
the deepest k), the labels of the ranked requests, one row per catalogue item (provider, category,
interaction count), the users' group attributes and, with `embedding_diversity`, one 384-float text
vector per item that appears in a list. The metrics themselves are the pure pandas functions of
`metrics` and `fairness`.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping

import pandas as pd
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from llmrank_spark.config import Config, EvaluateConfig, FairnessConfig, FairnessTargetConfig
from llmrank_spark.events import ITEM_EVENTS, end_of_day, item_event_counts
from llmrank_spark.lakehouse import FAIRNESS_STRENGTH, REQUEST_KEY
from llmrank_spark.metrics import (
    ITEM,
    METRIC_COLUMNS,
    RANK,
    REQUEST,
    Embeddings,
    evaluate_lists,
    ndcg_at_k,
    relative_change,
    user_groups,
)
from llmrank_spark.postprocess import (
    MODEL_RANK,
    ProviderPolicy,
    calibrate_run,
    check_targets,
    provider_policy,
    run_reorderer,
    with_providers,
)

RETRIEVAL, MODEL, FAIR = "candidates", "rerank", "fairness"
METRICS_COLUMNS = ["step", "model_version", "metric", "slice", "value"]


def sweep_step(lambda_: float) -> str:
    return f"{FAIR}[lambda={lambda_:.2f}]"


def target_sweep_step(gini_cut: float) -> str:
    return f"{FAIR}[gini_cut={gini_cut:.2f}]"


def orders_of_run(
    ranked: pd.DataFrame,
    retrieval: pd.DataFrame,
    items: pd.DataFrame,
    item_counts: pd.DataFrame | pd.Series,
    fairness: FairnessConfig,
) -> dict[str, pd.DataFrame]:
    """step -> lists (request_id, item_id, rank, score) for each order of the run (see the module doc).

    `ranked` is the run's `ranked` partition, `retrieval` its candidates (request_id, item_id,
    retrieval_rank), `items` the catalogue with providers in `brand` (`fairness.with_providers`).
    """
    model_rank = ranked[MODEL_RANK].fillna(ranked[RANK]) if MODEL_RANK in ranked else ranked[RANK]
    model_order = ranked.assign(**{RANK: model_rank.astype("int32")})
    orders = {
        RETRIEVAL: retrieval.assign(**{RANK: retrieval["retrieval_rank"].astype("int32")}),
        MODEL: model_order,
    }
    if fairness.mode == "off":
        return orders
    orders[FAIR] = ranked
    if fairness.mode != "sweep":
        return orders
    policy = provider_policy(items, item_counts, fairness.long_tail_head_share)
    category = items.set_index(ITEM)["category"]
    if fairness.control == "weight":
        for lambda_ in fairness.sweep_weights:
            reorder = run_reorderer(policy, fairness, category, lambda_, model_order)
            orders[sweep_step(lambda_)] = reorder(model_order)
        return orders
    for cut in fairness.sweep_gini_cuts:
        # Each cut calibrated on the run's own lists, all of them (they are on the driver already).
        cfg = fairness.model_copy(update={"target": FairnessTargetConfig(provider_gini_cut=cut)})
        calibration = calibrate_run(model_order, policy, cfg, category)
        if calibration.strength is not None:
            reorder = run_reorderer(policy, cfg, category, calibration.strength, model_order)
            orders[target_sweep_step(cut)] = reorder(model_order).assign(
                **{FAIRNESS_STRENGTH: calibration.strength}
            )
    return orders


def measure_run(
    ranked: pd.DataFrame,
    retrieval: pd.DataFrame,
    items: pd.DataFrame,
    item_counts: pd.Series,
    evaluate: EvaluateConfig,
    fairness: FairnessConfig,
    *,
    labels: pd.DataFrame | None = None,
    users: pd.DataFrame | None = None,
    request_types: pd.Series | None = None,
    embeddings: Embeddings | None = None,
) -> pd.DataFrame:
    """The run's `metrics` rows (step, model_version, metric, slice, value), run_date added on write.

    `items` is the catalogue (item_id, category, brand, attributes); providers follow
    `fairness.provider_attribute`. `item_counts` maps item_id -> interactions up to the run: it sets the
    popularity buckets and the long-tail providers. `labels` (request_id, item_id, relevance) switch on
    the quality metrics, `users` the per-group quality, `request_types` (request_id -> 'user' or 'query')
    the quality and its lift per request type (slice request_type=...), `embeddings` the embedding
    diversity.
    """
    catalogue = _catalogue_with_providers(items, fairness)
    max_k = max(evaluate.ks)
    retrieval = retrieval[retrieval["retrieval_rank"] <= max_k]
    # Without events or providers (the step warns) popularity buckets and long-tail shares are not measured.
    popular = item_counts.sum() > 0
    policy = (
        provider_policy(catalogue, item_counts, fairness.long_tail_head_share)
        if popular and catalogue["brand"].notna().any()
        else None
    )
    groups = _request_groups(users, evaluate) if users is not None and labels is not None else {}
    by_type = {} if request_types is None else {"request_type": request_types}
    model_version = ranked["model_version"].dropna().unique()
    orders = orders_of_run(ranked, retrieval, catalogue, item_counts, fairness)
    swept_cuts = {target_sweep_step(cut): cut for cut in fairness.sweep_gini_cuts}
    judged = labels is not None and not labels.empty
    # Per-request NDCG of the model order: the baseline every other order's change is measured against.
    model_ndcg = {k: ndcg_at_k(orders[MODEL], labels, k) for k in evaluate.ks} if judged else {}
    # What the run serves (the fair order when the pass ran), and its lift over the retrieval order.
    served = FAIR if FAIR in orders else MODEL
    retrieval_ndcg = {k: ndcg_at_k(orders[RETRIEVAL], labels, k) for k in evaluate.ks} if judged else {}
    frames = []
    for step, lists in orders.items():
        rows = evaluate_lists(
            lists[[REQUEST, ITEM, RANK]],
            catalogue,
            ks=evaluate.ks,
            labels=labels if judged else None,
            item_popularity=item_counts if popular else None,
            popularity_split=(evaluate.popularity_head_share, evaluate.popularity_tail_share),
            long_tail_providers=None if policy is None else policy.long_tail,
            embeddings=embeddings,
            request_groups=groups | by_type,
        )
        if judged and step != MODEL:
            rows = pd.concat([rows, _ndcg_change_rows(model_ndcg, lists, labels, "change", by_type)])
        if judged and step == served:
            rows = pd.concat([rows, _ndcg_change_rows(retrieval_ndcg, lists, labels, "lift", by_type)])
        if step == FAIR and fairness.control == "target" and policy is not None:
            rows = pd.concat([rows, _target_rows(lists, orders[MODEL], policy, fairness)])
        if step in swept_cuts and policy is not None:
            target = FairnessTargetConfig(provider_gini_cut=swept_cuts[step])
            swept = fairness.model_copy(update={"target": target})
            rows = pd.concat([rows, _target_rows(lists, orders[MODEL], policy, swept)])
        version = None if step == RETRIEVAL else ", ".join(sorted(model_version)) or None
        frames.append(rows.assign(step=step, model_version=version))
    return pd.concat(frames, ignore_index=True)[METRICS_COLUMNS]


def _target_rows(
    fair: pd.DataFrame, model_order: pd.DataFrame, policy: ProviderPolicy, fairness: FairnessConfig
) -> pd.DataFrame:
    """The fairness target on the whole run: per goal (the slice) the value required, the value reached
    and whether it is met (1 or 0), and the strength the pass used (`ranked.fairness_strength`; none when
    the lists stayed in model order)."""
    checks = check_targets(fair, model_order, policy, fairness.target, fairness.exposure_k)
    rows = [
        row
        for c in checks
        for row in (
            ("target_required", c.goal, c.required),
            ("target_reached", c.goal, c.reached),
            ("target_met", c.goal, float(c.met)),
        )
    ]
    strength = fair[FAIRNESS_STRENGTH].dropna() if FAIRNESS_STRENGTH in fair else pd.Series(dtype=float)
    if len(strength):
        rows.append((FAIRNESS_STRENGTH, "all", float(strength.iloc[0])))
    return pd.DataFrame(rows, columns=METRIC_COLUMNS)


def _catalogue_with_providers(items: pd.DataFrame, fairness: FairnessConfig) -> pd.DataFrame:
    """The catalogue with providers in `brand` (`with_providers`), or with none when no item names the
    configured provider attribute: the run is then measured without the provider metrics."""
    try:
        return with_providers(items, fairness.provider_attribute)
    except ValueError:
        return items.assign(brand=None)


def _ndcg_change_rows(
    baseline_ndcg: Mapping[int, pd.Series],
    lists: pd.DataFrame,
    labels: pd.DataFrame,
    what: str,
    request_groups: Mapping[str, pd.Series],
) -> pd.DataFrame:
    """ndcg@k_<what>: the relative NDCG@k change of `lists` against a baseline order (k -> its per-request
    NDCG@k), with the 95% paired bootstrap interval over requests as ndcg@k_<what>_low and _high
    (`metrics.relative_change`), over all requests and per group of `request_groups` (attribute ->
    (request_id -> group)). "change" is against the model order, "lift" the served order's against the
    retrieval order."""
    rows = []
    for k, baseline in baseline_ndcg.items():
        other = ndcg_at_k(lists, labels, k)
        slices = {"all": baseline.index}
        for attribute, groups in request_groups.items():
            present = groups.reindex(baseline.index).dropna()
            slices |= {f"{attribute}={g}": present.index[present == g] for g in sorted(present.unique())}
        name = f"ndcg@{k}_{what}"
        for slice_, requests in slices.items():
            change, low, high = relative_change(baseline.loc[requests], other)
            rows += [(name, slice_, change), (f"{name}_low", slice_, low), (f"{name}_high", slice_, high)]
    return pd.DataFrame(rows, columns=METRIC_COLUMNS).dropna(subset=["value"])


def _request_groups(users: pd.DataFrame, evaluate: EvaluateConfig) -> dict[str, pd.Series]:
    """attribute -> (user_id -> group) for the configured attributes the users table has values of."""
    wanted = [
        a
        for a in evaluate.user_group_attributes
        if (a == "age_band" and "age" in users and users["age"].notna().any())
        or (a in users and users[a].notna().any())
    ]
    return user_groups(users, wanted, evaluate.age_band_edges)


# ---- Spark layer --------------------------------------------------------------------------------------


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


# The ASCII unit separator: never part of a request type, so "type<US>id" is one string per request key.
_KEY_SEPARATOR = "\x1f"


def request_key(request_type: Column, request_id: Column) -> Column:
    """One string per full request key (request_type, request_id)."""
    return F.concat_ws(_KEY_SEPARATOR, request_type, request_id)


def one_request_column(frame: DataFrame) -> DataFrame:
    """`frame` with request_id replaced by its `request_key`: the pure per-request functions (metrics,
    fairness) group by request_id alone, and a user and a query of the same id must stay two requests."""
    return frame.withColumn("request_id", request_key(*(F.col(c) for c in REQUEST_KEY)))


def _request_types(ranked: DataFrame) -> pd.Series | None:
    """request key -> request type of the run's requests, when it has both kinds (with one kind, the
    "all" rows are that kind's); one row per request reaches the driver."""
    kinds = ranked.select(*REQUEST_KEY).distinct().withColumn("kind", F.col("request_type"))
    keyed: pd.DataFrame = one_request_column(kinds).toPandas()
    return keyed.set_index("request_id")["kind"] if keyed["kind"].nunique() > 1 else None


def _required(tables: Mapping[str, DataFrame | None], table: str) -> DataFrame:
    frame = tables[table]
    if frame is None:
        raise ValueError(f"evaluate_tables: table '{table}' is required")
    return frame


def evaluate_tables(tables: Mapping[str, DataFrame | None], config: Config) -> pd.DataFrame:
    """The run's metrics rows from its Spark tables (ranked, candidates, items, interactions; optionally
    users, query_labels), each already pinned by the step; see the module doc for what is collected."""
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
        from llmrank_spark.retrieval import item_embeddings

        listed = ranked.select("item_id").unionByName(candidates.select("item_id")).distinct()
        vectors: pd.DataFrame = item_embeddings(
            items.join(listed, "item_id", "left_semi"), config.candidates
        ).toPandas()
        embeddings = vectors.set_index("item_id")["embedding"]
    users = tables.get("users")
    if users is not None:  # groups are looked up by request: a user's key, so no query joins a user group
        users = users.withColumn("user_id", request_key(F.lit("user"), F.col("user_id"))).toPandas()
    return measure_run(
        one_request_column(ranked).toPandas(),
        one_request_column(candidates).select("request_id", "item_id", "retrieval_rank").toPandas(),
        catalogue_frame(items),
        item_counts_until(interactions, run_date),
        cfg,
        config.fairness,
        labels=one_request_column(labels).select("request_id", "item_id", "relevance").toPandas(),
        users=users,
        request_types=_request_types(ranked),
        embeddings=embeddings,
    )
