"""What every retriever returns: (request_id, item_id, source, source_score, source_rank)."""

from __future__ import annotations

from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F

from llmrank_spark.retrieval.inputs import RetrievalInputs

RETRIEVED_SCHEMA = "request_id string, item_id string, source_score double, source_rank int"


# ---- Spark helpers ------------------------------------------------------------------------------------


def tag_source(ranked: DataFrame, source: str) -> DataFrame:
    return ranked.select(
        "request_id",
        "item_id",
        F.lit(source).alias("source"),
        F.col("source_score").cast("double"),
        F.col("source_rank").cast("int"),
    )


def top_per_request(scored: DataFrame, inputs: RetrievalInputs, source: str, depth: int) -> DataFrame:
    """The `depth` best (request_id, item_id, source_score) rows per request that the user may be shown."""
    best_first = Window.partitionBy("request_id").orderBy(F.col("source_score").desc(), F.col("item_id"))
    ranked = (
        scored.join(inputs.exclusions, ["request_id", "item_id"], "left_anti")
        .withColumn("source_rank", F.row_number().over(best_first))
        .where(F.col("source_rank") <= depth)
    )
    return tag_source(ranked, source)


def empty_retrieval(inputs: RetrievalInputs, source: str) -> DataFrame:
    return tag_source(inputs.spark.createDataFrame([], RETRIEVED_SCHEMA), source)
