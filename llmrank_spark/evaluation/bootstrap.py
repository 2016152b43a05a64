"""The relative change of a per-request metric between two orders, with its bootstrap interval, in Spark.

`metrics.relative_change` resamples per-request values held on the driver; a nightly run's requests do
not fit there. This is the Poisson bootstrap (Hanley & MacGibbon, 2006; Chamandy et al., 2012): in each
of `RESAMPLES` replicates every request gets a Poisson(1) weight drawn from a hash of its id and the
replicate, so every executor draws the same weights with no shared generator and no request needs to
meet another. Spark sums the weighted differences per replicate; per (comparison, slice) only the
replicate sums reach the driver. The point change is exact (the same as `relative_change`); the
interval is the percentile interval over the replicates, as `relative_change` gives over its resamples.
Written by hand: neither Spark nor scipy has a bootstrap over distributed rows.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

RESAMPLES = 1000
CONFIDENCE = 0.95
BASELINE, OTHER = "baseline", "other"
# Replicate weights are drawn for this many requests at a time (n x RESAMPLES int64 in memory).
_CHUNK = 2048
# Poisson(1) cumulative probabilities P(X <= j), j = 0..19: a uniform draw u gives the j it falls below.
_POISSON_CDF = np.cumsum([np.exp(-1.0) / float(np.prod(np.arange(1, j + 1))) for j in range(20)])
_MASK = np.uint64(0xFFFFFFFFFFFFFFFF)


def poisson_weights(request_hashes: np.ndarray, resamples: int = RESAMPLES) -> np.ndarray:
    """(requests x resamples) Poisson(1) weights, each a function of the request's 64-bit hash and the
    replicate alone: splitmix64 of (hash + replicate x golden gamma), a counter-based generator."""
    with np.errstate(over="ignore"):
        x = request_hashes.astype(np.uint64)[:, None] + (
            np.arange(1, resamples + 1, dtype=np.uint64)[None, :] * np.uint64(0x9E3779B97F4A7C15)
        )
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9) & _MASK
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB) & _MASK
        x = x ^ (x >> np.uint64(31))
    uniform = (x >> np.uint64(11)).astype(np.float64) * 2.0**-53
    return np.searchsorted(_POISSON_CDF, uniform, side="right").astype(np.int64)


def replicate_sums(pairs: pd.DataFrame, resamples: int = RESAMPLES) -> pd.DataFrame:
    """(replicate, weighted_difference, weight): per replicate, the sum over `pairs`' requests (columns
    `hash`, baseline, other) of weight x (other - baseline), and of the weights."""
    difference = (pairs[OTHER] - pairs[BASELINE]).to_numpy(float)
    hashes = pairs["hash"].to_numpy(np.int64)
    weighted, weights = np.zeros(resamples), np.zeros(resamples)
    for start in range(0, len(pairs), _CHUNK):
        w = poisson_weights(hashes[start : start + _CHUNK], resamples)
        weighted += difference[start : start + _CHUNK] @ w
        weights += w.sum(axis=0)
    return pd.DataFrame(
        {"replicate": np.arange(resamples), "weighted_difference": weighted, "weight": weights}
    )


def relative_changes(pairs: DataFrame, keys: Sequence[str], buckets: int) -> pd.DataFrame:
    """(keys..., change, low, high) per group of `keys`: mean(other) / mean(baseline) - 1 over the group's
    requests (rows of `pairs`: keys, request_id, baseline, other) and its 95% Poisson-bootstrap interval.
    NaN when the baseline mean is 0; change = low = high when every request moved alike."""
    exact: pd.DataFrame = (
        pairs.groupBy(*keys)
        .agg(
            F.avg(BASELINE).alias("base"),
            F.avg(F.col(OTHER) - F.col(BASELINE)).alias("mean_difference"),
            F.min(F.col(OTHER) - F.col(BASELINE)).alias("lowest"),
            F.max(F.col(OTHER) - F.col(BASELINE)).alias("highest"),
        )
        .toPandas()
    )
    if exact.empty:
        return pd.DataFrame(columns=[*keys, "change", "low", "high"])
    key_schema = ", ".join(f"{k} {pairs.schema[k].dataType.simpleString()}" for k in keys)

    def sums(group: pd.DataFrame) -> pd.DataFrame:
        return replicate_sums(group).assign(**{k: group[k].iloc[0] for k in keys})

    bucketed = pairs.withColumn("hash", F.xxhash64("request_id")).withColumn(
        "bucket", F.pmod(F.col("hash"), F.lit(buckets))
    )
    replicates: pd.DataFrame = (
        bucketed.groupBy(*keys, "bucket")
        .applyInPandas(sums, f"replicate long, weighted_difference double, weight double, {key_schema}")
        .groupBy(*keys, "replicate")
        .agg(F.sum("weighted_difference").alias("weighted_difference"), F.sum("weight").alias("weight"))
        .toPandas()
    )
    tail = (1 - CONFIDENCE) / 2 * 100
    rows = []
    for row in exact.itertuples(index=False):
        key = tuple(getattr(row, k) for k in keys)
        if row.base == 0:
            rows.append((*key, np.nan, np.nan, np.nan))
            continue
        change = row.mean_difference / row.base
        if row.highest == row.lowest:
            rows.append((*key, change, change, change))
            continue
        mine = replicates[np.logical_and.reduce([replicates[k] == v for k, v in zip(keys, key, strict=True)])]
        mine = mine[mine["weight"] > 0]
        means = mine["weighted_difference"] / mine["weight"]
        low, high = np.percentile(means, [tail, 100 - tail]) / row.base
        rows.append((*key, change, float(low), float(high)))
    return pd.DataFrame(rows, columns=[*keys, "change", "low", "high"])
