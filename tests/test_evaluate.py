"""The fairness pass of the rerank step, the evaluate step's metrics rows, and the run report."""

import datetime as dt
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from test_fairness import catalogue, count_floor, random_lists

from llmrank_spark.config import FairnessConfig, load_config
from llmrank_spark.evaluation import sweep_step
from llmrank_spark.lakehouse import frame_from_pandas, read_table, write_table
from llmrank_spark.pipeline import steps
from llmrank_spark.postprocess import provider_policy, run_reorderer, with_providers
from llmrank_spark.rerank import rerank_candidates

RUN_DATE = dt.date(2026, 11, 20)


def long_tail_prefix_counts(lists: pd.DataFrame, long_tail: frozenset, item_provider: pd.Series) -> pd.Series:
    ordered = lists.sort_values(["request_id", "rank"])
    return ordered.item_id.map(item_provider).isin(long_tail).groupby(ordered.request_id).cumsum()


@pytest.mark.parametrize("strategy", ["list", "run"])
@pytest.mark.parametrize("diversity", [False, True])
def test_fairness_pass_reorders_lists_keeps_model_rank_and_score_and_holds_the_floor(diversity, strategy):
    items, popularity = catalogue(21)
    lists = random_lists(21, items, popularity).drop(columns="sources")
    cfg = FairnessConfig(
        mode="on", strategy=strategy, weight=0.4, min_long_tail_share=0.3, diversity=diversity
    )
    policy = provider_policy(items, popularity, cfg.long_tail_head_share)
    reordered = run_reorderer(policy, cfg, items.set_index("item_id")["category"], model_order=lists)(lists)

    merged = reordered.merge(lists, on=["request_id", "item_id"], suffixes=("", "_model"))
    assert len(merged) == len(lists), "the pass re-orders whole lists; it drops no item"
    assert (merged.model_rank == merged.rank_model).all() and (merged.score == merged.score_model).all()
    assert (merged["rank"] != merged.model_rank).mean() > 0.3, "lambda 0.4 must move many items"
    for _, one in reordered.groupby("request_id"):
        assert sorted(one["rank"]) == list(range(1, len(one) + 1))
    prefix = reordered.sort_values(["request_id", "rank"]).assign(
        long_tail=long_tail_prefix_counts(reordered, policy.long_tail, policy.item_provider).to_numpy()
    )
    available = lists.item_id.map(policy.item_provider).isin(policy.long_tail).groupby(lists.request_id).sum()
    for row in prefix.itertuples():
        assert row.long_tail >= min(count_floor(0.3, row.rank), available[row.request_id]), row


@pytest.mark.parametrize("strategy", ["list", "run"])
def test_fairness_pass_keeps_the_configured_top_positions_in_model_order(strategy):
    items, popularity = catalogue(22)
    lists = random_lists(22, items, popularity).drop(columns="sources")
    cfg = FairnessConfig(mode="on", strategy=strategy, weight=1.0, min_long_tail_share=0.5, keep_top=2)
    policy = provider_policy(items, popularity, cfg.long_tail_head_share)
    reordered = run_reorderer(policy, cfg, model_order=lists)(lists)
    top = reordered[reordered["rank"] <= 2]
    assert (top["rank"] == top.model_rank).all() and len(top) == 2 * lists.request_id.nunique()
    assert (reordered["rank"] != reordered.model_rank).mean() > 0.3, "lambda 1 moves items below the top"


def test_provider_attribute_names_the_provider_when_there_is_no_brand():
    items = pd.DataFrame(
        {"item_id": ["a", "b", "c"], "brand": None, "attributes": [{"year": "1995"}, {"year": "1977"}, None]}
    )
    assert with_providers(items, "year").brand.tolist() == ["1995", "1977", None]
    assert with_providers(items, None) is items
    with pytest.raises(ValueError, match="no item has the attribute 'studio'"):
        with_providers(items, "studio")


ITEMS = pd.DataFrame(
    {
        "item_id": [f"i{n}" for n in range(12)],
        "title": [f"Item {n}" for n in range(12)],
        "category": [f"c{n % 3}" for n in range(12)],
        "brand": ["Big"] * 6 + ["Mid", "Mid", "Small", "Tiny", "Tiny", None],
    }
)


def history_and_labels() -> pd.DataFrame:
    """Before the run: Big's items are popular. After it: u1 buys i8 and clicks i1, u2 adds i9 to cart."""
    before = [(f"u{u}", f"i{n}", "purchase", "2026-11-10") for u in range(1, 4) for n in range(6)]
    before += [("u1", "i6", "click", "2026-11-12"), ("u2", "i8", "view", "2026-11-12")]
    after = [
        ("u1", "i8", "purchase", "2026-11-22"),
        ("u1", "i1", "click", "2026-11-23"),
        ("u1", "i8", "view", "2026-11-23"),
        ("u2", "i9", "add_to_cart", "2026-11-25"),
        ("u3", "i2", "view", "2026-11-25"),  # views are no labels
        ("u3", "i3", "purchase", "2027-01-30"),  # past the 30-day label window
    ]
    events = pd.DataFrame(before + after, columns=["user_id", "item_id", "event_type", "event_ts"])
    return events.assign(event_ts=pd.to_datetime(events.event_ts))


MODEL_ORDER = ["i8", "i0", "i1", "i2", "i3", "i9", "i4", "i5", "i6", "i7", "i10", "i11"]


def run_tables(config) -> dict[str, pd.DataFrame]:
    """Candidates (retrieval order i0..i11), ranked (MODEL_ORDER, mostly Big first) after the fair pass."""
    candidates = pd.DataFrame(
        [
            {"request_id": user, "item_id": f"i{n}", "retrieval_rank": n + 1}
            for user in ("u1", "u2", "u3")
            for n in range(12)
        ]
    ).assign(
        run_date=RUN_DATE,
        request_type="user",
        retrieval_score=lambda f: 1.0 / f.retrieval_rank,
        sources=lambda f: [["als"]] * len(f),
        source_ranks=lambda f: [{"als": r} for r in f.retrieval_rank],
        source_scores=lambda f: [{"als": 1.0 / r} for r in f.retrieval_rank],
    )
    position = {item: rank for rank, item in enumerate(MODEL_ORDER, start=1)}
    model = candidates.assign(rank=candidates.item_id.map(position).astype("int32"))
    model = model.assign(score=20.0 - model["rank"], model_rank=model["rank"])
    counts = history_and_labels().query("event_ts < '2026-11-21'").groupby("item_id").size()
    policy = provider_policy(ITEMS, counts, config.fairness.long_tail_head_share)
    ranked = run_reorderer(policy, config.fairness, model_order=model)(model).assign(model_version="tiny-v1")
    return {"candidates": candidates, "ranked": ranked}


def test_evaluate_writes_metrics_for_every_order_and_the_report(spark, tmp_path):
    config = load_config(
        overrides=[
            f"lakehouse.root={tmp_path / 'lakehouse'}",
            f"run.run_date={RUN_DATE}",
            "evaluate.ks=[3, 5]",
            "evaluate.embedding_diversity=false",
            "fairness.mode=sweep",
            "fairness.control=weight",
            "fairness.weight=0.5",
            "fairness.sweep_weights=[0.0, 0.5, 1.0]",
            "fairness.long_tail_head_share=0.6",
        ]
    )
    users = pd.DataFrame({"user_id": ["u1", "u2", "u3"], "gender": ["F", "M", "F"], "age": [23, 41, 67]})
    inputs = {"items": ITEMS, "interactions": history_and_labels(), "users": users, **run_tables(config)}
    for table, frame in inputs.items():
        write_table(frame_from_pandas(spark, frame, table), config, table, RUN_DATE)

    run = steps.evaluate(spark, config)
    metrics = read_table(spark, config, "metrics").toPandas()
    assert (metrics.run_date == RUN_DATE).all() and run.rows["metrics"] == len(metrics)
    assert not metrics.duplicated(["step", "metric", "slice"]).any()
    sweep = [sweep_step(w) for w in (0.0, 0.5, 1.0)]
    assert set(metrics.step) == {"candidates", "rerank", "fairness", *sweep}
    changes = metrics.metric.str.contains("_change|_lift")
    assert metrics[~changes].set_index(["step", "metric", "slice"]).value.between(0, 3).all()

    def value(step, metric, slice_="all"):
        return metrics.set_index(["step", "metric", "slice"]).value[(step, metric, slice_)]

    # Labels: u1 (i8 grade 3, i1 grade 1) and u2 (i9 grade 2); u3 has none inside the window.
    assert value("rerank", "evaluated_requests@5") == 2
    # Model order: u1's i8 (grade 3) at rank 1 and i1 (grade 1) at rank 3; ideal: 3 and 1 at ranks 1, 2.
    assert value("rerank", "ndcg@5", "gender=F") == pytest.approx(3.5 / (3 + 1 / np.log2(3)))
    assert value("rerank", "recall@5", "age_band=18-24") == pytest.approx(1.0)
    assert value("rerank", "recall@5", "gender=M") == pytest.approx(0.0)  # u2's i9 is at rank 6
    assert value("candidates", "recall@5", "all") == pytest.approx(np.mean([1 / 2, 0]))
    assert "ndcg@5_gap" in set(metrics.metric)
    # Every other order's NDCG change against the model order, inside its bootstrap interval.
    assert not metrics[changes].step.eq("rerank").any()
    for step in ("candidates", "fairness", *sweep):
        change = value(step, "ndcg@5_change")
        assert change == pytest.approx(value(step, "ndcg@5") / value("rerank", "ndcg@5") - 1)
        assert value(step, "ndcg@5_change_low") - 1e-12 <= change <= value(step, "ndcg@5_change_high") + 1e-12
    # Fairness: the fair order gives the long tail more exposure and a lower Gini than the model order.
    tail = "provider_group=long_tail"
    assert value("fairness", "exposure@3", tail) > value("rerank", "exposure@3", tail)
    assert value("fairness", "provider_gini@3") < value("rerank", "provider_gini@3")
    assert value(sweep_step(0.5), "provider_gini@3") == pytest.approx(value("fairness", "provider_gini@3"))
    assert {"coverage@5", "ild_category@5", "map@5", "mrr@5"} <= set(metrics.metric)
    assert (metrics.loc[metrics.step == "candidates", "model_version"].isna()).all()
    assert (metrics.loc[metrics.step == "fairness", "model_version"] == "tiny-v1").all()

    report = Path(tmp_path / "lakehouse" / "reports" / RUN_DATE.isoformat())
    page = (report / "index.html").read_text()
    images = re.findall(r'<img src="([^"]+)"', page)
    assert images == ["lambda_curve.png", "provider_exposure.png", "trends.png"]
    for image in images:
        assert (report / image).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # The served (fair) order's lift over the retrieval order, with its interval, in the summary.
    lift = value("fairness", "ndcg@3_lift")
    assert lift == pytest.approx(value("fairness", "ndcg@3") / value("candidates", "ndcg@3") - 1)
    low, high = value("fairness", "ndcg@3_lift_low"), value("fairness", "ndcg@3_lift_high")
    assert low - 1e-12 <= lift <= high + 1e-12
    assert not metrics.metric.str.contains("_lift").loc[metrics.step != "fairness"].any()
    line = next(line for line in run.notes if line.startswith("NDCG@3: "))
    assert re.fullmatch(
        r"NDCG@3: retrieval \d\.\d{4} -> served \d\.\d{4} \([+-]\d+\.\d% \[[+-]\d+\.\d%, [+-]\d+\.\d%\], "
        r"model tiny-v1\)",
        line,
    ), line
    assert "provider Gini@3" in run.summary()


def ranking_model_order(spark):
    """(model-order ranked frame, items with Big and Tail brands, events frame) of test_ranking's lists."""
    from test_ranking import CANDIDATES, EVENTS, tiny_config
    from test_ranking import ITEMS as RANKING_ITEMS
    from test_ranking import RUN_DATE as RANKING_DATE

    items = RANKING_ITEMS.assign(brand=["Big", "Big", "Big", "Big", "Big", "Big", "Tail", "Tail"])
    events = frame_from_pandas(spark, EVENTS, "interactions")
    model_order = rerank_candidates(
        spark,
        frame_from_pandas(spark, CANDIDATES, "candidates"),
        frame_from_pandas(spark, items, "items"),
        events,
        tiny_config(),
        RANKING_DATE,
    ).ranked
    return model_order, items, events, RANKING_DATE


@pytest.mark.parametrize("strategy", ["list", "run"])
def test_the_rerank_steps_fairness_pass_in_spark_equals_the_pure_function(spark, tmp_path, strategy):
    from test_ranking import EVENTS

    model_order, items, events, run_date = ranking_model_order(spark)
    config = load_config(
        overrides=[
            f"lakehouse.root={tmp_path}",
            f"run.run_date={run_date}",
            "fairness.control=weight",
            "fairness.weight=1.0",
            "fairness.min_long_tail_share=0.5",
            f"fairness.strategy={strategy}",
        ]
    )
    catalogue = frame_from_pandas(spark, items, "items")
    fair_frame, calibration = steps.fairness_pass(model_order, catalogue, events, config)
    fair = fair_frame.toPandas()
    assert calibration is None and (fair.fairness_strength == 1.0).all()

    model = model_order.toPandas()
    assert (model["rank"] == model.model_rank).all(), "rerank_candidates returns the model order"
    counts = EVENTS[EVENTS.event_ts < "2026-11-21"].groupby("item_id").size()  # up to the run date
    policy = provider_policy(items, counts, config.fairness.long_tail_head_share)
    category = items.set_index("item_id")["category"]
    expected = run_reorderer(policy, config.fairness, category, model_order=model)(model)
    key = ["request_id", "item_id"]
    merged = fair.merge(expected, on=key, suffixes=("", "_pure"))
    assert len(merged) == len(model) == len(fair)
    assert (merged["rank"] == merged.rank_pure).all() and (merged.model_rank == merged.model_rank_pure).all()
    assert (merged["rank"] != merged.model_rank).any(), "lambda 1 with a Tail floor must move items"


def test_an_unreachable_fairness_target_leaves_the_lists_in_model_order_and_says_why(spark, tmp_path):
    model_order, items, events, run_date = ranking_model_order(spark)
    config = load_config(
        overrides=[
            f"lakehouse.root={tmp_path}",
            f"run.run_date={run_date}",
            "fairness.target.provider_gini_cut=null",
            "fairness.target.min_long_tail_exposure=0.99",  # the lists hold two Tail items at most
        ]
    )
    fair_frame, calibration = steps.fairness_pass(
        model_order, frame_from_pandas(spark, items, "items"), events, config
    )
    fair, model = fair_frame.toPandas(), model_order.toPandas()
    assert calibration is not None and not calibration.met and calibration.strength is None
    assert "NOT reachable" in calibration.note(
        "list"
    ) and "long_tail_exposure@10 short by" in calibration.note("list")
    assert fair.fairness_strength.isna().all()
    pd.testing.assert_frame_equal(
        fair.sort_values(["request_id", "item_id"]).reset_index(drop=True),
        model.assign(fairness_strength=None).sort_values(["request_id", "item_id"]).reset_index(drop=True),
        check_dtype=False,
    )


def test_user_and_query_requests_are_measured_apart_and_the_summary_has_a_query_line(spark):
    """A run with both request types: NDCG and its lift per type (slices request_type=...), the user
    line about shoppers only, and the query line in the form the demo prints."""
    from llmrank_spark.evaluation import measure_run
    from llmrank_spark.evaluation.report import summary_lines
    from llmrank_spark.metrics import ndcg_at_k

    config = load_config(
        overrides=["evaluate.ks=[3]", "evaluate.embedding_diversity=false", "fairness.mode=off"]
    )
    # One user and one query share the id "x"; the keys tell them apart. Retrieval order i0, i1, ...
    keys = {"user\x1fx": "user", "user\x1fy": "user", "query\x1fx": "query"}
    retrieval = pd.DataFrame(
        [{"request_id": key, "item_id": f"i{n}", "retrieval_rank": n + 1} for key in keys for n in range(5)]
    )
    # The model puts i4 first for everyone.
    model_rank = retrieval.assign(r=retrieval.retrieval_rank % 5 + 1).r  # i4 -> 1, i0 -> 2, ...
    ranked = retrieval.assign(rank=model_rank.astype("int32"), score=-model_rank, model_version="v1")
    labels = pd.DataFrame(
        {
            "request_id": ["user\x1fx", "user\x1fx", "user\x1fy", "user\x1fy", "query\x1fx"],
            "item_id": ["i4", "i2", "i4", "i2", "i0"],
            "relevance": 1.0,
        }
    )
    metrics = measure_run(
        spark.createDataFrame(ranked.assign(request_type=ranked.request_id.map(keys))),
        spark.createDataFrame(retrieval),
        ITEMS,
        pd.Series(1, index=ITEMS.item_id),
        config.evaluate,
        config.fairness,
        labels=spark.createDataFrame(labels),
    ).assign(run_date=RUN_DATE)
    value = metrics.set_index(["step", "metric", "slice"]).value
    for kind in ("user", "query"):
        requests = [key for key, k in keys.items() if k == kind]
        for step, lists in (
            ("candidates", retrieval.rename(columns={"retrieval_rank": "rank"})),
            ("rerank", ranked),
        ):
            expected = ndcg_at_k(lists[lists.request_id.isin(requests)], labels, 3).mean()
            assert value[(step, "ndcg@3", f"request_type={kind}")] == pytest.approx(expected)
    # The model helps the users (i4 up from rank 5 to 1, i2 down from 3 to 4) and hurts the query (i0
    # down from rank 1 to 2).
    assert value[("rerank", "ndcg@3_lift", "request_type=user")] > 0
    assert value[("rerank", "ndcg@3_lift", "request_type=query")] < 0
    lines = summary_lines(metrics, config, 3)
    user_line = f"NDCG@3: retrieval {value[('candidates', 'ndcg@3', 'request_type=user')]:.4f} -> served "
    assert lines[0].startswith(user_line)
    assert re.fullmatch(r"query NDCG@3: retrieval 1\.0000 -> served 0\.\d{4}", lines[1]), lines[1]


def test_the_report_reads_its_run_and_only_the_overall_rows_of_the_trend_window(spark):
    from llmrank_spark.evaluation import report_history

    dates = [RUN_DATE - dt.timedelta(days=d) for d in (0, 1, 30, 31, 200)] + [RUN_DATE + dt.timedelta(days=1)]
    metrics = spark.createDataFrame(
        pd.DataFrame(
            [
                {"run_date": d, "step": "rerank", "metric": "ndcg@10", "slice": s, "value": 0.5}
                for d in dates
                for s in ("all", "gender=F")
            ]
        )
    )
    history = report_history(metrics, RUN_DATE, trend_days=30)
    kept = set(zip(history.run_date, history.slice, strict=True))
    run, earlier = dates[0], dates[1:3]  # one day and 30 days back are in the window; 31 and 200 are not
    assert kept == {(run, "all"), (run, "gender=F"), *((d, "all") for d in earlier)}
