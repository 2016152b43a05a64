"""The nightly steps: each reads its inputs, checks them, does its work and writes its tables."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from llmrank_spark.config import Config
from llmrank_spark.lakehouse import (
    FAIRNESS_STRENGTH,
    REQUEST_KEY,
    checkpointed,
    frame_from_pandas,
    read_table,
    request_batch,
)
from llmrank_spark.pipeline.preflight import (
    PreflightError,
    check_partition,
    check_run_date,
    check_unique_keys,
    fairness_runs,
)
from llmrank_spark.pipeline.run_log import StepRun, materialised

if TYPE_CHECKING:
    from llmrank_spark.postprocess import Calibration

# The fairness pass's working columns: a row's batch of lists, and its request_id while request_id holds
# the full request key.
_BATCH, _REQUEST_ID = "_batch", "_request_id"


def _write_input_tables(spark: SparkSession, config: Config, step: str, frames: dict) -> StepRun:
    with StepRun(spark, config, step) as run:
        for table, frame in frames.items():
            run.write(table, frame_from_pandas(spark, frame, table))
    return run


def generate_sample(spark: SparkSession, config: Config) -> StepRun:
    """Write the seeded sample lakehouse (catalogue, behaviour, queries, ground truth) as Delta tables."""
    from llmrank_spark.data import generate_sample as generate

    return _write_input_tables(spark, config, "generate-sample", generate(config.sample))


def ingest_movielens(spark: SparkSession, config: Config, path: str | Path) -> StepRun:
    """Turn MovieLens 100K files into the items, interactions and users input tables."""
    from llmrank_spark.data import load_movielens

    return _write_input_tables(spark, config, "ingest-movielens", load_movielens(path))


def candidates(spark: SparkSession, config: Config) -> StepRun:
    """First stage: blended multi-source candidate lists for every active user and every search query."""
    from llmrank_spark.retrieval import build_candidates, refresh_item_vectors
    from llmrank_spark.retrieval.semantic import QueryEncoder
    from llmrank_spark.training import registered_query_encoder

    with StepRun(spark, config, "candidates") as run:
        run.check_outputs("candidates", "rejects", "item_embeddings")
        items, interactions, users = run.read("items"), run.read("interactions"), run.read_optional("users")
        queries = run.read_optional("queries") if config.candidates.rank_queries else None
        _check_inputs(config, items=items, interactions=interactions, users=users, queries=queries)
        refresh = refresh_item_vectors(spark, config, items, config.run.run_date)
        run.record("item_embeddings", refresh.encoded)
        run.notes.append(refresh.describe())
        registered = registered_query_encoder(config) if queries is not None else None
        query_encoder = None
        if registered is not None:
            # The query encoder's item vectors are kept beside the packaged ones, under its own name.
            for_queries = refresh_item_vectors(spark, config, items, config.run.run_date, registered)
            run.record("item_embeddings", refresh.encoded + for_queries.encoded)
            run.notes.append(f"{for_queries.describe()} ({registered.directory})")
            query_encoder = QueryEncoder(registered, for_queries.vectors)
        lists = build_candidates(
            spark,
            items,
            interactions,
            users,
            config.candidates,
            config.run.run_date,
            queries=queries,
            item_vectors=refresh.vectors,
            query_encoder=query_encoder,
        )
        with materialised(lists.candidates):
            run.write("candidates", lists.candidates)
            run.write("rejects", lists.rejects)
    return run


def rerank(spark: SparkSession, config: Config) -> StepRun:
    """Second stage: score every candidate with the broadcast BERT model and keep each list's top-K."""
    from llmrank_spark.rerank import model_for, rerank_candidates
    from llmrank_spark.retrieval import item_vectors
    from llmrank_spark.training import served_config

    with StepRun(spark, config, "rerank") as run:
        requested, config = config, served_config(_with_registered_model(config))
        spec, served = model_for(config.rerank)  # preflight: the model artifact exists and is complete
        run.check_outputs("ranked", "rejects")
        candidates = run.read("candidates")
        check_partition(candidates, "candidates", config.run.run_date, "candidates")
        items, interactions, queries = (
            run.read("items"),
            run.read("interactions"),
            run.read_optional("queries"),
        )
        # Read only when the served model states user text, so `runs` lists what the step used.
        users = run.read_optional("users") if served.user_template else None
        _check_inputs(config, items=items, interactions=interactions, users=users, queries=queries)
        # Events of a type the candidates step rejected (no weight) are not history here either.
        known_events = interactions.where(F.col("event_type").isin(list(config.candidates.event_weights)))
        fair = fairness_runs(items, known_events, config, run.warn)
        todays = candidates.where(F.col("run_date") == F.lit(config.run.run_date))
        result = rerank_candidates(
            spark,
            todays,
            items,
            known_events,
            config.rerank,
            config.run.run_date,
            queries=queries,
            users=users,
            faults=config.faults,
            candidates_cfg=config.candidates,
            item_vectors=item_vectors(run.read_optional("item_embeddings"), items, config.candidates),
        )
        run.notes.append(f"served model: {spec.version}{_registry_note(requested, config)}")
        with (
            materialised(result.outcome, run.progress.sized(todays.count(), "pairs")),
            # Ranked once, before any write (a failure in it commits nothing), however often the
            # fairness pass reads the lists: to sample, calibrate on, re-order and write them.
            materialised(result.ranked) as model_order,
        ):
            ranked, calibration = (
                fairness_pass(model_order, items, known_events, config)
                if fair
                else (_with_strength(model_order, None), None)
            )
            if calibration is not None:
                note = calibration.note(config.fairness.strategy)
                run.notes.append(note) if calibration.met else run.warn(note)
            run.write("ranked", ranked)
            run.write("rejects", result.rejects)
    return run


def fairness_pass(
    ranked: DataFrame, items: DataFrame, interactions: DataFrame, config: Config
) -> tuple[DataFrame, Calibration | None]:
    """`ranked` (model order) re-ordered by the run's fairness/diversity pass, with the strength it used in
    `fairness_strength` (null: the lists are in model order), and the calibration, if it ran.

    With `fairness.control` target, the strength is calibrated on the driver over a hashed sample of at
    most `fairness.target.calibration_requests` whole lists (`postprocess.calibrate_run`); with
    `fairness.strategy` run the provider boosts are fitted on a sample of at most `fairness.fit_requests`.
    Then every list is re-ordered, in pandas calls over batches of whole lists.
    """
    fairness = config.fairness
    if fairness.mode == "off":
        return _with_strength(ranked, None), None
    from llmrank_spark.evaluation import (
        catalogue_frame,
        hashed_requests,
        item_counts_until,
        one_request_column,
        sampled_lists,
    )
    from llmrank_spark.postprocess import calibrate_run, provider_policy, run_reorderer, with_providers

    catalogue = with_providers(catalogue_frame(items), fairness.provider_attribute)
    counts = item_counts_until(interactions, config.run.run_date)
    policy = provider_policy(catalogue, counts, fairness.long_tail_head_share)
    category = catalogue.set_index("item_id")["category"]
    wanted = [
        *([fairness.fit_requests] if fairness.strategy == "run" else []),
        *([fairness.target.calibration_requests] if fairness.control == "target" else []),
    ]
    sample = sampled_lists(one_request_column(ranked), max(wanted)) if wanted else None
    strength: float | None = fairness.weight
    calibration = None
    if fairness.control == "target" and sample is not None and not sample.empty:
        lists = hashed_requests(sample, fairness.target.calibration_requests)
        calibration = calibrate_run(lists, policy, fairness, category)
        strength = calibration.strength
    if strength is None:
        return _with_strength(ranked, None), calibration
    reorder = run_reorderer(policy, fairness, category, strength, model_order=sample)
    columns = ranked.columns

    def reorder_batch(lists: pd.DataFrame) -> pd.DataFrame:
        fair = reorder(lists.drop(columns=_BATCH))
        return fair.assign(request_id=fair[_REQUEST_ID])[columns]

    # Batches of whole lists per pandas call; within a batch request_id is the full request key, since
    # the re-ordering groups by request_id alone.
    batch = request_batch(ranked.select(*REQUEST_KEY).distinct().count())
    keyed = one_request_column(ranked.withColumn(_REQUEST_ID, F.col("request_id")).withColumn(_BATCH, batch))
    fair = keyed.groupBy(_BATCH).applyInPandas(reorder_batch, ranked.schema)
    return _with_strength(fair, strength), calibration


def _with_strength(ranked: DataFrame, strength: float | None) -> DataFrame:
    """`ranked` with the fairness pass's strength on every row (null: no pass re-ordered it)."""
    return ranked.withColumn(FAIRNESS_STRENGTH, F.lit(strength).cast("double"))


def evaluate(spark: SparkSession, config: Config) -> StepRun:
    """Measure the run's lists (retrieval, model and fair order) into `metrics` and write the run report."""
    from llmrank_spark.evaluation import evaluate_tables, report_history, write_report

    with StepRun(spark, config, "evaluate") as run:
        run.check_outputs("metrics")
        _check_report_writable(config)
        required = {table: run.read(table) for table in ("ranked", "candidates", "items", "interactions")}
        optional = ("users", "query_labels", "item_embeddings")
        tables = required | {table: run.read_optional(table) for table in optional}
        check_partition(required["ranked"], "ranked", config.run.run_date, "rerank")
        _check_inputs(config, **tables)
        if not fairness_runs(required["items"], required["interactions"], config, run.warn):
            config = config.model_copy(
                update={"fairness": config.fairness.model_copy(update={"mode": "off"})}
            )
        rows = evaluate_tables(tables, config).assign(run_date=config.run.run_date)
        run.write("metrics", frame_from_pandas(spark, rows, "metrics"))
        written = read_table(spark, config, "metrics", version=run.outputs["metrics"])
        history = report_history(written, config.run.run_date, config.evaluate.trend_days)
        report = write_report(history, config)
        run.notes += [f"report: {report.index}", *report.summary]
    return run


def _check_inputs(config: Config, **tables: DataFrame | None) -> None:
    """Preflight of the inputs a step read: unique keys where the contract's key names one row, and a
    run date not before every event."""
    for table, frame in tables.items():
        check_unique_keys(frame, table)
    interactions = tables.get("interactions")
    if interactions is not None:
        check_run_date(interactions, config.run.run_date)


def _check_report_writable(config: Config) -> None:
    """Preflight of the evaluate step's report directory, <lakehouse.root>/reports."""
    reports = Path(config.lakehouse.root) / "reports"
    parent = next(p for p in (reports, *reports.parents) if p.exists())
    if not os.access(parent, os.W_OK) or not parent.is_dir():
        raise PreflightError(
            f"report directory {reports} is not writable ({parent}); make lakehouse.root writable"
        )


def _with_registered_model(config: Config) -> Config:
    """rerank.mode=cross_encoder without a model_path serves the newest registered version, if any (with
    none, `cross_encoder_spec` refuses, naming the fix)."""
    from llmrank_spark.training import artifact_dir, newest_version

    if config.rerank.mode != "cross_encoder" or config.rerank.model_path is not None:
        return config
    version = newest_version(config)
    if version is None:
        return config
    update = {"model_path": artifact_dir(config, version)}
    return config.model_copy(update={"rerank": config.rerank.model_copy(update=update)})


def _registry_note(requested: Config, served: Config) -> str:
    """Which registered version rerank.mode=champion resolved to, for the step's summary."""
    if requested.rerank.mode != "champion":
        return ""
    from llmrank_spark.training import CHAMPION_ALIAS

    pinned, name = requested.mlflow.pinned_version, requested.mlflow.model_name
    if served.rerank.mode == "retrieval":
        return f" (models:/{name} has no {CHAMPION_ALIAS} alias)"
    # Set by served_config when the version's gate found BERT adding nothing to its features.
    alone = ", its features-only prerank: no BERT" if served.rerank.bert_depth == 0 else ""
    source = f"models:/{name}/{pinned}, pinned" if pinned else f"models:/{name}@{CHAMPION_ALIAS}"
    return f" ({source}{alone})"


def train(spark: SparkSession, config: Config) -> StepRun:
    """Fine-tune the reranker, gate it against the retrieval order and the champion on the last
    `train.gate_days`, and register it in MLflow (with the `champion` alias only if it passed;
    `champion.py`). Warm-started from the newest registered version when train.warm_start."""
    from llmrank_spark.retrieval import item_vectors
    from llmrank_spark.training import (
        CHAMPION,
        REGISTERED,
        REJECTED,
        SERVES_BERT_TAG,
        artifact_dir,
        champion_version,
        gate_cutoff,
        gate_version,
        newest_version,
        serves_bert,
        train_reranker,
        training_end,
        training_run,
    )

    with StepRun(spark, config, "train") as run, tempfile.TemporaryDirectory() as staging:
        run.check_outputs()
        warm = newest_version(config) if config.train.warm_start else None
        warm_from = None if warm is None else artifact_dir(config, warm)
        champion = champion_version(config)
        items, interactions, users = run.read("items"), run.read("interactions"), run.read_optional("users")
        queries, query_labels = run.read_optional("queries"), run.read_optional("query_labels")
        _check_inputs(
            config,
            items=items,
            interactions=interactions,
            users=users,
            queries=queries,
            query_labels=query_labels,
        )
        # Encoded here at most once: the lists and the gate each collect the vectors (a count, then the
        # rows), which would run the encoder again every time for items the table lacks.
        stored = run.read_optional("item_embeddings")
        vectors = checkpointed(item_vectors(stored, items, config.candidates))
        gated = config.train.gate_days > 0
        # The gate's days stay out of training: the version is judged on days it never saw.
        seen = interactions.where(F.col("event_ts") < F.lit(training_end(config))) if gated else interactions
        data_snapshot = f"interactions@v{run.inputs['interactions']}"
        with training_run(config, run_name=f"train {config.run.run_date}") as mlflow_run:
            manifest, path, fitted = train_reranker(
                spark,
                items,
                seen,
                users,
                config,
                data_snapshot,
                warm_from,
                Path(staging),
                queries,
                query_labels,
                vectors,
            )
            warm_note = "none" if warm is None else f"{warm.name}/{warm.version}"
            params = {**config.train.model_dump(), "data_snapshot": data_snapshot, "warm_from": warm_note}
            mlflow_run.log_training(params, fitted.evaluations, manifest)
            mlflow_run.log_artifact(path)
            status, gate_tags = REGISTERED, {}
            if gated:
                # Measured from the staged copy: the same files as the logged artifact, no download.
                champion_dir = None if champion is None else artifact_dir(config, champion)
                result = gate_version(
                    spark,
                    items,
                    interactions,
                    config,
                    str(path),
                    champion_dir,
                    vectors,
                    champion_serves_bert=champion is None or serves_bert(champion),
                )
                status = CHAMPION if result.promoted else REJECTED
                mlflow_run.log_metrics(result.metrics())
                gate_tags = {
                    "gate_reason": result.reason,
                    SERVES_BERT_TAG: str(result.serves_bert).lower(),
                } | {name: f"{value:.6g}" for name, value in result.metrics().items()}
                alone = ""
                if result.bert_change is not None:
                    change, low, high = result.bert_change
                    alone = (
                        f"; BERT over the features alone {change:+.1%} [{low:+.1%}, {high:+.1%}], "
                        f"served {'with' if result.serves_bert else 'without'} BERT"
                    )
                figures = (
                    f"NDCG@10 retrieval {result.retrieval_ndcg:.4f} -> version {result.version_ndcg:.4f} "
                    f"({result.change:+.1%} [{result.change_low:+.1%}, {result.change_high:+.1%}]{alone}): "
                    if result.requests
                    else ""  # nothing was measured: no figures, the reason says why
                )
                run.notes.append(
                    f"gate on {result.requests} users after {gate_cutoff(config)}: {figures}{status}, "
                    f"{result.reason}"
                )
            version = mlflow_run.register(manifest, status, gate_tags)
            if status == CHAMPION:
                mlflow_run.promote(version)
            run.notes.append(
                f"registered {version.name} version {version.version} ({manifest.version}, {status}), "
                f"MLflow run {mlflow_run.run_id}"
            )
    return run


def attributes(spark: SparkSession, config: Config) -> StepRun:
    """Attribute orders: which attributes of each top-ranked item matter most to the request.

    From behaviour by default; by occlusion of the served reranker with `attributes.method: occlusion`.
    """
    with StepRun(spark, config, "attributes") as run:
        run.check_outputs("attribute_order", "attribute_order_by_segment")
        items, interactions = run.read("items"), run.read("interactions")
        queries, users = run.read_optional("queries"), run.read_optional("users")
        ranked = run.read("ranked")
        check_partition(ranked, "ranked", config.run.run_date, "rerank")
        _check_inputs(config, items=items, interactions=interactions, users=users, queries=queries)
        todays_ranked = ranked.where(F.col("run_date") == F.lit(config.run.run_date))
        if config.attributes.method == "behaviour":
            _attributes_from_behaviour(run, config, todays_ranked, items, interactions, users, queries)
        else:
            _attributes_by_occlusion(spark, run, config, todays_ranked, items, interactions, users, queries)
    return run


def _attributes_from_behaviour(
    run: StepRun,
    config: Config,
    ranked: DataFrame,
    items: DataFrame,
    interactions: DataFrame,
    users: DataFrame | None,
    queries: DataFrame | None,
) -> None:
    from llmrank_spark.explain import (
        attribute_model_importance,
        behaviour_by_segment,
        behaviour_importance,
        behaviour_orders,
    )

    importance = behaviour_importance(
        items,
        interactions,
        config.attributes,
        config.run.run_date,
        users=users,
        queries=queries,
        query_labels=run.read_optional("query_labels"),
    )
    cfg = config.attributes
    with materialised(importance.statistics), tempfile.TemporaryDirectory() as staging:
        model, model_rows = None, None
        if cfg.model_epochs and cfg.model_request_types:
            print(f"[attributes] fine-tuning the attribute model ({cfg.model_epochs} epochs)", flush=True)
            model, model_rows = attribute_model_importance(
                ranked,
                items,
                interactions,
                importance,
                cfg,
                config.rerank,
                config.run.run_date,
                Path(staging),
                users,
                queries,
            )
            run.notes.append(model.describe() if model else "attribute model: no context chose enough")
        orders = behaviour_orders(
            ranked,
            items,
            importance,
            cfg,
            config.run.run_date,
            users,
            queries,
            model_rows,
            model.version if model else None,
        )
        run.write("attribute_order", orders)
        run.write("attribute_order_by_segment", behaviour_by_segment(importance, config.run.run_date))


def _attributes_by_occlusion(
    spark: SparkSession,
    run: StepRun,
    config: Config,
    ranked: DataFrame,
    items: DataFrame,
    interactions: DataFrame,
    users: DataFrame | None,
    queries: DataFrame | None,
) -> None:
    from llmrank_spark.explain import attribute_orders, orders_by_segment
    from llmrank_spark.rerank import model_for
    from llmrank_spark.training import served_config

    config = served_config(_with_registered_model(config))
    model_for(config.rerank)  # preflight: the model artifact exists and is complete
    orders = attribute_orders(
        spark,
        ranked,
        items,
        interactions,
        config.rerank,
        config.attributes,
        config.run.run_date,
        queries=queries,
        users=users,
    )
    run.write("attribute_order", orders)
    # The segment table is aggregated from the partition just written, not from `orders`: that would
    # score every variant a second time.
    written = read_table(spark, config, "attribute_order", version=run.outputs["attribute_order"])
    todays = written.where(F.col("run_date") == F.lit(config.run.run_date))
    run.write("attribute_order_by_segment", orders_by_segment(todays, items, users, queries))


NIGHTLY_STEPS: dict[str, Callable[[SparkSession, Config], StepRun]] = {
    "candidates": candidates,
    "rerank": rerank,
    "attributes": attributes,
    "evaluate": evaluate,
}


def nightly(spark: SparkSession, config: Config) -> list[StepRun]:
    """Every nightly step in order, for one run_date."""
    return [step(spark, config) for step in NIGHTLY_STEPS.values()]
