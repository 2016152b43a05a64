"""The slices each request is measured in, and each per-request value's mean per slice, in Spark.

Every request is in the slice ("all", "all"). A run with both request types puts each request in
("request_type", its type) too: users and queries are judged by different labels and never read as one
figure. With users and labels, a user request is also in each configured group it has a value for
(`evaluate.user_group_attributes`, e.g. ("age_band", "25-34")).
"""

from __future__ import annotations

import pandas as pd
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from llmrank_spark.config import EvaluateConfig
from llmrank_spark.evaluation.request_keys import request_key
from llmrank_spark.metrics import REQUEST, age_band_labels

ALL = "all"
REQUEST_TYPE = "request_type"
SLICE_COLUMNS = [REQUEST, "attribute", "group"]


def request_slices(ranked: DataFrame, users: DataFrame | None, cfg: EvaluateConfig) -> DataFrame:
    """(request_id, attribute, group) per slice of each request of `ranked` (one request column, with
    request_type); `users` (the users table, keyed by user_id) adds the user groups."""
    requests = ranked.select(REQUEST, REQUEST_TYPE).distinct()
    slices = requests.select(REQUEST, F.lit(ALL).alias("attribute"), F.lit(ALL).alias("group"))
    if requests.select(REQUEST_TYPE).distinct().limit(2).count() > 1:
        by_type = requests.select(REQUEST, F.lit(REQUEST_TYPE).alias("attribute"), F.col(REQUEST_TYPE))
        slices = slices.unionByName(by_type.withColumnRenamed(REQUEST_TYPE, "group"))
    if users is None:
        return slices
    keyed = users.withColumn(REQUEST, request_key(F.lit("user"), F.col("user_id")))
    for attribute, group in _user_groups(users, cfg).items():
        grouped = keyed.select(REQUEST, F.lit(attribute).alias("attribute"), group.alias("group"))
        slices = slices.unionByName(
            grouped.where(F.col("group").isNotNull()).join(requests.select(REQUEST), REQUEST, "left_semi")
        )
    return slices


def _user_groups(users: DataFrame, cfg: EvaluateConfig) -> dict[str, Column]:
    """attribute -> each user's group (a string), for the configured attributes the users table has values
    of; 'age_band' is cut from age at `evaluate.age_band_edges` (labels as `metrics.age_bands`)."""
    sources = {a: "age" if a == "age_band" else a for a in cfg.user_group_attributes}
    present = [c for c in set(sources.values()) if c in users.columns]
    counts = users.agg(*(F.count(c).alias(c) for c in present)).first() if present else None
    groups = {}
    for attribute, column in sources.items():
        if counts is None or column not in present or not counts[column]:
            continue
        if attribute == "age_band":
            edges, labels = cfg.age_band_edges, age_band_labels(cfg.age_band_edges)
            band = F.when(F.col("age") < edges[0], labels[0])
            for edge, label in zip(edges[1:], labels[1:-1], strict=True):
                band = band.when(F.col("age") < edge, label)
            groups[attribute] = F.when(F.col("age").isNotNull(), band.otherwise(labels[-1]))
        else:
            groups[attribute] = F.col(column).cast("string")
    return groups


def slice_means(values: DataFrame, slices: DataFrame) -> pd.DataFrame:
    """(step, metric, attribute, group, value, requests): the mean of each per-request value (step,
    request_id, metric, value) over the requests of each slice; one row per slice reaches the driver."""
    return (
        values.join(slices, REQUEST)
        .groupBy("step", "metric", "attribute", "group")
        .agg(F.avg("value").alias("value"), F.count("value").alias("requests"))
        .toPandas()
    )
