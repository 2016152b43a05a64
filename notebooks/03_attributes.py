# Databricks notebook source
# MAGIC %md
# MAGIC # llmrank-spark: Nightly step 3, attribute order
# MAGIC For each request's top-ranked items, orders the item's attributes by how much they matter to the
# MAGIC shopper or query, estimated from what they chose against what the category offered (shrunk toward
# MAGIC their segment when they chose little; a new query's by the attribute model, from its text), and
# MAGIC writes the `attribute_order` and `attribute_order_by_segment` Delta partitions for the run date.
# MAGIC `attributes.method=occlusion` explains the reranker's scores instead. Method and cost:
# MAGIC docs/attributes.md.
# MAGIC
# MAGIC Widgets: `config` (YAML file; empty = built-in defaults), `run_date` (empty = today, UTC),
# MAGIC `overrides` (`key=value` pairs separated by `;`).

# COMMAND ----------

from pyspark.sql import functions as F

from llmrank_spark.lakehouse import get_spark, read_table
from llmrank_spark.pipeline import notebook_config, steps

config = notebook_config(globals().get("dbutils"))
spark = get_spark(config)

# COMMAND ----------

steps.attributes(spark, config)

# COMMAND ----------

# MAGIC %md ## The strongest attribute per category and shopper segment

# COMMAND ----------

show = globals().get("display") or (lambda frame: frame.show(50, truncate=60))
by_segment = read_table(spark, config, "attribute_order_by_segment")
show(
    by_segment.where((F.col("run_date") == F.lit(config.run.run_date)) & (F.col("rank") == 1)).orderBy(
        "segment_type", "segment", "category"
    )
)
