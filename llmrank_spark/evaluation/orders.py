"""The orders a run is measured in, as one Spark frame of lists: retrieval, model, fair, and each sweep point.

- ``candidates``: the retrieval order (the blended candidate list, cut at the deepest k measured);
- ``rerank``: the model order (`ranked.model_rank`), before any fairness or diversity pass;
- ``fairness``: the final order written to `ranked` (only when `fairness.mode` is on or sweep);
- ``fairness[gini_cut=0.20]``: with mode sweep and control target, the model order re-ordered at the
  strength calibrated for each cut of ``fairness.sweep_gini_cuts`` (on a hashed sample of at most
  `fairness.target.calibration_requests` whole lists, as the rerank step calibrates); a cut out of reach
  is left out;
- ``fairness[lambda=0.30]``: with mode sweep and control weight, the model order re-ordered at each
  sweep weight.

Every sweep point re-orders each list in its own pandas call (`postprocess.run_reorderer`), in Spark.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from llmrank_spark.config import FairnessConfig, FairnessTargetConfig
from llmrank_spark.lakehouse import FAIRNESS_STRENGTH, REQUEST_KEY, in_hashed_share
from llmrank_spark.metrics import ITEM, RANK, REQUEST
from llmrank_spark.postprocess import MODEL_RANK, ProviderPolicy, calibrate_run, run_reorderer

RETRIEVAL, MODEL, FAIR = "candidates", "rerank", "fairness"
LIST_COLUMNS = ["step", REQUEST, ITEM, RANK]


def sweep_step(lambda_: float) -> str:
    return f"{FAIR}[lambda={lambda_:.2f}]"


def target_sweep_step(gini_cut: float) -> str:
    return f"{FAIR}[gini_cut={gini_cut:.2f}]"


@dataclass(frozen=True)
class RunOrders:
    """`lists` (step, request_id, item_id, rank) of every order; `strengths`: the fairness strength each
    fair order used (the `fairness` step's from `ranked.fairness_strength`, each sweep cut's calibrated
    one); `cuts`: step -> the Gini cut of each target sweep point measured."""

    lists: DataFrame
    steps: list[str]
    strengths: dict[str, float]
    cuts: dict[str, float]


def sampled_lists(lists: DataFrame, requests: int) -> pd.DataFrame:
    """The whole lists of at most `requests` requests of `lists` (keyed by request_type and request_id):
    a share of the hash range picked in Spark, then `hashed_requests` on the driver."""
    total = lists.select(*REQUEST_KEY).distinct().count()
    share = min(1.0, requests / max(total, 1))
    return hashed_requests(lists.where(in_hashed_share(share, *REQUEST_KEY)).toPandas(), requests)


def hashed_requests(lists: pd.DataFrame, requests: int) -> pd.DataFrame:
    """The whole lists of `requests` requests of `lists`, picked by a hash of their ids (not by their
    order, which may follow the ids' age); all of them when there are no more."""
    ids = pd.Series(lists[REQUEST].unique())
    if len(ids) <= requests:
        return lists
    kept = ids.iloc[np.argsort(pd.util.hash_pandas_object(ids, index=False).to_numpy())[:requests]]
    return lists[lists[REQUEST].isin(kept)]


def run_orders(
    ranked: DataFrame,
    retrieval: DataFrame,
    policy: ProviderPolicy | None,
    category: pd.Series,
    fairness: FairnessConfig,
) -> RunOrders:
    """Every order of the run (see the module doc). `ranked` and `retrieval` (request_id, item_id,
    retrieval_rank, cut at the deepest k) have one request column (`one_request_column`)."""
    model_rank = F.coalesce(F.col(MODEL_RANK), F.col(RANK)) if MODEL_RANK in ranked.columns else F.col(RANK)
    model = ranked.withColumn(RANK, model_rank.cast("int"))
    orders = {
        RETRIEVAL: retrieval.withColumn(RANK, F.col("retrieval_rank").cast("int")),
        MODEL: model,
    }
    strengths: dict[str, float] = {}
    cuts: dict[str, float] = {}
    if fairness.mode != "off":
        orders[FAIR] = ranked
        if FAIRNESS_STRENGTH in ranked.columns:
            used = (
                ranked.where(F.col(FAIRNESS_STRENGTH).isNotNull())
                .select(FAIRNESS_STRENGTH)
                .limit(1)
                .collect()
            )
            strengths |= {FAIR: float(used[0][0])} if used else {}
    if fairness.mode == "sweep" and policy is not None:
        sweep = _model_order(model)
        if fairness.control == "weight":
            fit = sampled_lists(sweep, fairness.fit_requests) if fairness.strategy == "run" else None
            for lambda_ in fairness.sweep_weights:
                orders[sweep_step(lambda_)] = _reordered(sweep, policy, fairness, category, lambda_, fit)
        else:
            sample = sampled_lists(sweep, fairness.target.calibration_requests)
            for cut in fairness.sweep_gini_cuts:
                cfg = fairness.model_copy(update={"target": FairnessTargetConfig(provider_gini_cut=cut)})
                strength = calibrate_run(sample, policy, cfg, category).strength
                if strength is not None:
                    step = target_sweep_step(cut)
                    orders[step] = _reordered(sweep, policy, cfg, category, strength, sample)
                    strengths[step], cuts[step] = strength, cut
    lists = None
    for step, frame in orders.items():
        one = frame.select(F.lit(step).alias("step"), REQUEST, ITEM, RANK)
        lists = one if lists is None else lists.unionByName(one)
    assert lists is not None
    return RunOrders(lists, list(orders), strengths, cuts)


def _model_order(model: DataFrame) -> DataFrame:
    """The model order as the fairness pass takes it (request key, item, rank, score)."""
    return model.select(*REQUEST_KEY, ITEM, RANK, F.col("score").cast("double"))


def _reordered(
    model: DataFrame,
    policy: ProviderPolicy,
    cfg: FairnessConfig,
    category: pd.Series,
    strength: float,
    fit: pd.DataFrame | None,
) -> DataFrame:
    """The model order re-ordered by the run's pass at `strength`, one pandas call per list."""
    reorder = run_reorderer(policy, cfg, category, strength, model_order=fit)
    columns = model.columns
    return model.groupBy(REQUEST).applyInPandas(lambda one: reorder(one)[columns], model.schema)
