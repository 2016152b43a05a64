"""Fairness targets: calibrated strengths meet the stated goal; FA*IR and DetConstSort as strategies."""

import numpy as np
import pandas as pd
import pytest
import reranking
from fairsearchcore import Fair
from test_fairness import catalogue, random_lists

from llmrank_spark.config import EvaluateConfig, FairnessConfig, FairnessTargetConfig, load_config
from llmrank_spark.evaluation import measure_run, write_report
from llmrank_spark.postprocess import (
    calibrate_run,
    check_targets,
    det_const_sort_rerank,
    meet_prefix_table,
    prefix_guarantee_held,
    prefix_table,
    provider_policy,
    run_reorderer,
)
from llmrank_spark.postprocess.fa_ir import fail_probability, unadjusted_table

STRATEGIES = ["list", "run", "fa_ir", "det_const_sort"]


# The tables, failure probabilities of the adjusted tables, published with fairsearchcore's tests.
@pytest.mark.parametrize(
    ("k", "p", "alpha", "table", "fail"),
    [
        (10, 0.2, 0.15, [0, 0, 0, 0, 0, 0, 0, 0, 1, 1], 0.13421772800000065),
        (20, 0.25, 0.1, [0] * 8 + [1] * 7 + [2] * 5, 0.10515247355215251),
        (30, 0.3, 0.05, [0] * 10 + [1] * 6 + [2] * 5 + [3] * 4 + [4] * 5, 0.04877730797178359),
    ],
)
def test_prefix_tables_and_failure_probabilities_are_fa_irs_published_ones(k, p, alpha, table, fail):
    assert list(prefix_table(k, p, alpha)) == table
    assert fail_probability(np.array(table), p) == pytest.approx(fail, abs=1e-9)
    # The unadjusted table is the package's own (that path of it runs under numpy 2).
    assert list(unadjusted_table(k, p, alpha)) == Fair(k, p, alpha).create_unadjusted_mtable()


@pytest.fixture(scope="module")
def case():
    items, popularity = catalogue(31)
    lists = random_lists(31, items, popularity, n_requests=30).drop(columns="sources")
    return items, popularity, lists, provider_policy(items, popularity, FairnessConfig().long_tail_head_share)


def fairness(strategy: str, **target) -> FairnessConfig:
    return FairnessConfig(
        strategy=strategy, target=FairnessTargetConfig(**{"provider_gini_cut": None, **target})
    )


def model_gini(lists, policy, k=10) -> float:
    cfg = FairnessTargetConfig(provider_gini_cut=None, max_provider_gini=1.0)
    return check_targets(lists, lists, policy, cfg, k)[0].reached


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_a_run_meets_a_gini_target_with_the_least_strength_that_does(case, strategy):
    _, _, lists, policy = case
    goal = 0.85 * model_gini(lists, policy)
    cfg = fairness(strategy, max_provider_gini=goal)
    calibration = calibrate_run(lists, policy, cfg)
    assert calibration.met and 0 < calibration.strength <= 1, calibration.note(strategy)
    fair = run_reorderer(policy, cfg, strength=calibration.strength, model_order=lists)(lists)
    (check,) = check_targets(fair, lists, policy, cfg.target, cfg.exposure_k)
    assert check.goal == "provider_gini@10" and check.required == pytest.approx(goal)
    assert check.met and check.reached == pytest.approx(calibration.checks[0].reached)
    # Least: a strength one bisection step lower misses it (the search keeps a meeting upper end).
    weaker = run_reorderer(policy, cfg, strength=calibration.strength - 2**-10, model_order=lists)(lists)
    assert not check_targets(weaker, lists, policy, cfg.target, cfg.exposure_k)[0].met


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_a_run_meets_a_long_tail_share_target(case, strategy):
    _, _, lists, policy = case
    cfg = fairness(strategy, min_long_tail_exposure=0.3)
    before = check_targets(lists, lists, policy, cfg.target, 10)[0]
    assert not before.met, "the model order gives the long tail less than 30%"
    calibration = calibrate_run(lists, policy, cfg)
    fair = run_reorderer(policy, cfg, strength=calibration.strength, model_order=lists)(lists)
    (check,) = check_targets(fair, lists, policy, cfg.target, 10)
    assert calibration.met and check.met and check.reached >= 0.3


def test_a_long_tail_share_target_with_a_known_answer():
    """Every list is (Big item, Tail item): the long tail's top-2 exposure is 1/log2(3) / (1 + 1/log2(3))
    in model order and 1 / (1 + 1/log2(3)) once swapped; a 50% floor takes the swap of every list."""
    items = pd.DataFrame({"item_id": ["b", "t"], "brand": ["Big", "Tail"], "category": ["c", "c"]})
    policy = provider_policy(items, pd.Series({"b": 10, "t": 1}), head_share=0.5)
    lists = pd.DataFrame(
        {
            "request_id": [f"r{i}" for i in range(4) for _ in range(2)],
            "item_id": ["b", "t"] * 4,
            "score": [1.0, 0.0] * 4,
            "rank": np.array([1, 2] * 4, dtype="int32"),
        }
    )
    cfg = fairness("list", min_long_tail_exposure=0.5)
    cfg.exposure_k = 2
    calibration = calibrate_run(lists, policy, cfg)
    swapped = 1 / (1 + 1 / np.log2(3))
    assert calibration.met and calibration.checks[0].reached == pytest.approx(swapped)
    # Tail's need is the share of interactions held above it, 10/11, Big's is 0: at need weight w the tail
    # item goes first once w * 10/11 > (1 - w) * 1, i.e. w > 11/21; the search ends within 2^-10 above.
    assert 11 / 21 < calibration.strength <= 11 / 21 + 2**-10


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_fa_irs_prefix_guarantee_holds_on_every_prefix_when_asked(case, strategy):
    _, _, lists, policy = case
    cfg = fairness(strategy, prefix_share=0.5, prefix_alpha=0.1)
    calibration = calibrate_run(lists, policy, cfg)
    assert calibration.met and calibration.strength == 0.0, "the guarantee alone needs no strength"
    fair = run_reorderer(policy, cfg, strength=calibration.strength, model_order=lists)(lists)
    assert prefix_guarantee_held(fair, policy, 0.5, 0.1) == 1.0
    assert prefix_guarantee_held(lists, policy, 0.5, 0.1) < 1.0, "the model order does not hold it"
    flags = fair.sort_values(["request_id", "rank"]).item_id.map(policy.item_provider).isin(policy.long_tail)
    counts = flags.groupby(fair.sort_values(["request_id", "rank"]).request_id).cumsum()
    table = np.asarray(prefix_table(40, 0.5, 0.1))
    ranks = fair.sort_values(["request_id", "rank"])["rank"].to_numpy()
    available = flags.groupby(fair.sort_values(["request_id", "rank"]).request_id).transform("sum")
    assert (counts.to_numpy() >= np.minimum(table[ranks - 1], available.to_numpy())).all()


def test_an_unreachable_target_says_by_how_much_and_keeps_the_model_order(case):
    _, _, lists, policy = case
    head_only = lists[~lists.item_id.map(policy.item_provider).isin(policy.long_tail)]
    head_only = head_only.assign(rank=head_only.groupby("request_id").cumcount().add(1).astype("int32"))
    cfg = fairness("list", min_long_tail_exposure=0.2)
    calibration = calibrate_run(head_only, policy, cfg)
    assert calibration.strength is None and not calibration.met
    note = calibration.note("list")
    assert "NOT reachable" in note and "long_tail_exposure@10 short by 0.2000" in note
    assert "lists kept in model order" in note
    strongest = calibrate_run(
        head_only, policy, fairness("list", min_long_tail_exposure=0.2, when_unreachable="strongest")
    )
    assert strongest.strength == 1.0 and "lists at full strength" in strongest.note("list")


def test_det_const_sort_is_the_reference_packages_order_and_moves_lists_towards_the_share(case):
    _, _, lists, policy = case
    fair = det_const_sort_rerank(lists, policy, share=0.4)
    assert len(fair) == len(lists) and not fair.duplicated(["request_id", "item_id"]).any()
    one = lists[lists.request_id == "r00"].sort_values("rank")
    flags = one.item_id.map(policy.item_provider).isin(policy.long_tail)
    expected = reranking.rerank(
        ["long_tail" if f else "head" for f in flags],
        {"long_tail": 0.4, "head": 0.6},
        k_max=len(one),
        algorithm="det_const_sort",
    )
    got = fair[fair.request_id == "r00"].sort_values("rank").item_id.tolist()
    assert got == one.item_id.iloc[list(expected)].tolist()

    def long_tail_in_top(frame: pd.DataFrame, k: int) -> float:
        top = frame[frame["rank"] <= k]
        return top.item_id.map(policy.item_provider).isin(policy.long_tail).mean()

    # floor(0.4 * 10) = 4 long-tail items in a top 10, or one fewer (see det_const_sort_rerank).
    assert long_tail_in_top(lists, 10) < 0.3 <= long_tail_in_top(fair, 10) <= 0.4
    unchanged = det_const_sort_rerank(lists, policy, share=0.0).sort_values(["request_id", "item_id"])
    assert (
        unchanged["rank"].to_numpy() == lists.sort_values(["request_id", "item_id"])["rank"].to_numpy()
    ).all()
    unchanged = meet_prefix_table(lists, policy, 0.0, 0.1).sort_values(["request_id", "item_id"])
    assert (
        unchanged["rank"].to_numpy() == lists.sort_values(["request_id", "item_id"])["rank"].to_numpy()
    ).all()


def spark_frames(spark, ranked: pd.DataFrame, retrieval: pd.DataFrame):
    """The evaluate step's inputs as Spark frames (shoppers' requests)."""
    return spark.createDataFrame(ranked.assign(request_type="user")), spark.createDataFrame(retrieval)


def test_the_metrics_rows_record_target_reached_value_and_strength(spark, case):
    items, popularity, lists, policy = case
    cfg = fairness("list", max_provider_gini=0.85 * model_gini(lists, policy), min_long_tail_exposure=0.3)
    calibration = calibrate_run(lists, policy, cfg)
    fair = run_reorderer(policy, cfg, strength=calibration.strength, model_order=lists)(lists)
    ranked = fair.assign(model_version="v1", fairness_strength=calibration.strength)
    retrieval = lists.assign(retrieval_rank=lists["rank"])[["request_id", "item_id", "retrieval_rank"]]
    evaluate = EvaluateConfig(ks=[10], embedding_diversity=False)
    rows = measure_run(*spark_frames(spark, ranked, retrieval), items, popularity, evaluate, cfg)
    value = rows[rows.step == "fairness"].set_index(["metric", "slice"]).value
    assert value[("fairness_strength", "all")] == calibration.strength
    assert {c.goal for c in calibration.checks} == {"provider_gini@10", "long_tail_exposure@10"}
    for check in calibration.checks:
        assert value[("target_required", check.goal)] == pytest.approx(check.required)
        assert value[("target_reached", check.goal)] == pytest.approx(check.reached)
        assert value[("target_met", check.goal)] == 1.0
    # The reached values are the evaluate step's own exposure metrics of the served order.
    assert value[("target_reached", "provider_gini@10")] == pytest.approx(value[("provider_gini@10", "all")])
    long_tail = value[("exposure@10", "provider_group=long_tail")]
    assert value[("target_reached", "long_tail_exposure@10")] == pytest.approx(long_tail)
    assert not rows[rows.step != "fairness"].metric.str.startswith("target_").any()


def test_a_target_sweep_measures_each_cut_at_its_own_strength_and_draws_its_cost(spark, case, tmp_path):
    items, popularity, lists, _ = case
    config = load_config(
        overrides=[
            f"lakehouse.root={tmp_path}",
            "run.run_date=2026-11-20",
            "fairness.mode=sweep",
            "fairness.sweep_gini_cuts=[0.1, 0.2, 0.99]",
            "evaluate.ks=[10]",
            "evaluate.embedding_diversity=false",
        ]
    )
    ranked = lists.assign(model_rank=lists["rank"], model_version="v1")  # served in model order here
    retrieval = lists.assign(retrieval_rank=lists["rank"])[["request_id", "item_id", "retrieval_rank"]]
    # Labels: each request's item at model rank 2 is relevant, so a pass that moves it costs NDCG.
    labels = lists[lists["rank"] == 2][["request_id", "item_id"]].assign(relevance=1.0)
    rows = measure_run(
        *spark_frames(spark, ranked, retrieval),
        items,
        popularity,
        config.evaluate,
        config.fairness,
        labels=spark.createDataFrame(labels),
    )
    value = rows.set_index(["step", "metric", "slice"]).value
    model_gini = value[("rerank", "provider_gini@10", "all")]
    # A 99% cut is out of reach: left out. Each other cut is met at its own strength, larger for more.
    assert set(rows.step) == {
        "candidates",
        "rerank",
        "fairness",
        "fairness[gini_cut=0.10]",
        "fairness[gini_cut=0.20]",
    }
    strengths = []
    for cut in (0.1, 0.2):
        step = f"fairness[gini_cut={cut:.2f}]"
        assert value[(step, "provider_gini@10", "all")] <= (1 - cut) * model_gini + 1e-9
        assert value[(step, "target_met", "provider_gini@10")] == 1.0
        assert (step, "ndcg@10_change_low", "all") in value.index
        strengths.append(value[(step, "fairness_strength", "all")])
    assert 0 < strengths[0] < strengths[1] <= 1

    history = rows.assign(run_date=config.run.run_date)
    report = write_report(history, config)
    assert (tmp_path / "reports" / "2026-11-20" / "target_cost.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "Relevance cost of the fairness target" in report.index.read_text()
