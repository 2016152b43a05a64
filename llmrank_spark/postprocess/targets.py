"""Exposure targets: what a run must reach, whether lists reach it, and the least strength that does.

An owner states the exposure they require (`fairness.target`); each run finds its own strength on its
own lists, since exposure needs no labels. The strength is the one knob of each strategy (the need
weight, the largest boost, FA*IR's proportion, DetConstSort's share), always in [0, 1] with 0 for the
model order, so one search serves every strategy.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pandas as pd

from llmrank_spark.config import FairnessConfig, FairnessTargetConfig
from llmrank_spark.metrics import exposure_shares, gini
from llmrank_spark.postprocess.fa_ir import prefix_guarantee_held
from llmrank_spark.postprocess.fairness import ProviderPolicy
from llmrank_spark.postprocess.reorder import run_reorderer

# Reached values are compared with this slack: a Gini computed from the same shares in another order
# may differ in the last bits.
_SLACK = 1e-9
# The search: a coarse scan of strengths in steps of 1/_GRID, then _ROUNDS bisection rounds inside the
# first step that meets the target, so the strength is found to 1 / (_GRID * 2^_ROUNDS) = 2^-10.
_GRID = 8
_ROUNDS = 7

PREFIX_GUARANTEE = "prefix_guarantee"


def provider_gini_goal(k: int) -> str:
    return f"provider_gini@{k}"


def long_tail_goal(k: int) -> str:
    return f"long_tail_exposure@{k}"


@dataclass(frozen=True)
class TargetCheck:
    """One goal of the target: what it requires, what the lists reach, and whether that meets it.

    at_most: the goal is a ceiling (a Gini) rather than a floor (a share). The prefix guarantee is a
    floor of 1.0: the share of lists whose every prefix holds it.
    """

    goal: str
    required: float
    reached: float
    at_most: bool

    @property
    def met(self) -> bool:
        if self.at_most:
            return self.reached <= self.required + _SLACK
        return self.reached >= self.required - _SLACK

    @property
    def shortfall(self) -> float:
        """How far the reached value is from the required one; 0 when met."""
        gap = self.reached - self.required if self.at_most else self.required - self.reached
        return max(gap, 0.0)

    def describe(self) -> str:
        sign = "<=" if self.at_most else ">="
        return f"{self.goal} {self.reached:.4f} (required {sign} {self.required:.4f})"


def check_targets(
    lists: pd.DataFrame,
    model_order: pd.DataFrame,
    policy: ProviderPolicy,
    target: FairnessTargetConfig,
    k: int,
) -> list[TargetCheck]:
    """Each goal `target` sets, checked on `lists` (request_id, item_id, rank); `model_order` is the same
    requests' lists before the pass, for the relative Gini cut. Exposure is position-discounted over the
    top k, over every provider of the catalogue (as the evaluate step measures it)."""
    providers = policy.need.index
    shares = exposure_shares(lists, policy.item_provider, k, groups=providers)
    before = None
    if target.provider_gini_cut is not None:
        before = exposure_shares(model_order, policy.item_provider, k, groups=providers)
    held = None
    if target.prefix_share is not None:
        held = prefix_guarantee_held(lists, policy, target.prefix_share, target.prefix_alpha)
    return targets_reached(shares, before, held, policy, target, k)


def targets_reached(
    shares: pd.Series,
    model_shares: pd.Series | None,
    prefix_held: float | None,
    policy: ProviderPolicy,
    target: FairnessTargetConfig,
    k: int,
) -> list[TargetCheck]:
    """Each goal `target` sets, from what the lists reached: their exposure shares@k per provider, the
    model order's (for the relative Gini cut) and the share of lists holding the prefix guarantee. Both
    the calibration (lists on the driver) and the evaluate step (shares summed in Spark) check this way."""
    checks = []
    if target.provider_gini_cut is not None or target.max_provider_gini is not None:
        reached = gini(shares)
        ceilings = []
        if target.provider_gini_cut is not None:
            if model_shares is None:
                raise ValueError(
                    "fairness target: a provider_gini_cut needs the model order's exposure shares"
                )
            ceilings.append((1 - target.provider_gini_cut) * gini(model_shares))
        if target.max_provider_gini is not None:
            ceilings.append(target.max_provider_gini)
        checks.append(TargetCheck(provider_gini_goal(k), min(ceilings), reached, at_most=True))
    if target.min_long_tail_exposure is not None:
        reached = float(shares[shares.index.isin(list(policy.long_tail))].sum())
        checks.append(TargetCheck(long_tail_goal(k), target.min_long_tail_exposure, reached, at_most=False))
    if target.prefix_share is not None:
        if prefix_held is None:
            raise ValueError("fairness target: a prefix_share needs the share of lists holding it")
        checks.append(TargetCheck(PREFIX_GUARANTEE, 1.0, prefix_held, at_most=False))
    return checks


@dataclass(frozen=True)
class Calibration:
    """The strength a run uses and the target's checks at it (on the calibration lists).

    strength None: the target is out of reach and the lists stay in model order; `checks` are then
    those at full strength, to say by how much it falls short.
    """

    strength: float | None
    checks: tuple[TargetCheck, ...]
    requests: int

    @property
    def met(self) -> bool:
        return all(check.met for check in self.checks)

    def note(self, strategy: str) -> str:
        reached = "; ".join(check.describe() for check in self.checks)
        where = f"strategy {strategy}, on {self.requests} requests' lists"
        if self.met:
            return f"fairness target met at strength {self.strength:.3f} ({where}): {reached}"
        short = ", ".join(f"{c.goal} short by {c.shortfall:.4f}" for c in self.checks if not c.met)
        kept = "lists kept in model order" if self.strength is None else "lists at full strength"
        return (
            f"fairness target NOT reachable ({where}): at full strength {reached}; "
            f"{short}; {kept}. Too few long-tail candidates in the lists: lower the target, or widen "
            "candidates (more retrievers, popularity-debiased retrieval)"
        )


def calibrate(
    model_order: pd.DataFrame,
    reorder_at: Callable[[float], Callable[[pd.DataFrame], pd.DataFrame]],
    check: Callable[[pd.DataFrame], list[TargetCheck]],
    *,
    keep_model_order_when_unreachable: bool = True,
) -> Calibration:
    """The least strength in [0, 1] whose order meets every check: a scan, then bisection.

    `reorder_at(s)` is the run's pass at strength s; `check(lists)` the target's checks. Exposure does not
    always fall as the strength rises (the reference strategies overshoot and come back), so the search
    first scans strengths 1/8, 2/8, ..., 1 for the first that meets the target, then bisects between it
    and the step below, always keeping a strength known to meet the target as its upper end: what it
    returns meets the target on these lists even where the curve is not monotone. No scanned strength
    meeting it means it is out of reach; the checks returned are then those at full strength.
    """
    requests = int(model_order["request_id"].nunique())

    def checks_at(strength: float) -> tuple[TargetCheck, ...]:
        return tuple(check(reorder_at(strength)(model_order)))

    at_high = checks_at(0.0)
    if all(c.met for c in at_high):
        return Calibration(0.0, at_high, requests)
    for step in range(1, _GRID + 1):
        at_high = checks_at(step / _GRID)
        if all(c.met for c in at_high):
            break
    else:
        return Calibration(None if keep_model_order_when_unreachable else 1.0, at_high, requests)
    low, high = (step - 1) / _GRID, step / _GRID
    for _ in range(_ROUNDS):
        middle = (low + high) / 2
        at_middle = checks_at(middle)
        if all(c.met for c in at_middle):
            high, at_high = middle, at_middle
        else:
            low = middle
    return Calibration(high, at_high, requests)


def calibrate_run(
    model_order: pd.DataFrame,
    policy: ProviderPolicy,
    cfg: FairnessConfig,
    item_category: pd.Series | None = None,
) -> Calibration:
    """The run's strength for `cfg.target`, found on `model_order` (whole lists of the run, in model
    order): `calibrate` over the run's own pass (`run_reorderer`) at each strength."""

    def reorder_at(strength: float) -> Callable[[pd.DataFrame], pd.DataFrame]:
        return run_reorderer(policy, cfg, item_category, strength, model_order)

    def check(lists: pd.DataFrame) -> list[TargetCheck]:
        return check_targets(lists, model_order, policy, cfg.target, cfg.exposure_k)

    unreachable_in_model_order = cfg.target.when_unreachable == "model_order"
    return calibrate(
        model_order, reorder_at, check, keep_model_order_when_unreachable=unreachable_in_model_order
    )
