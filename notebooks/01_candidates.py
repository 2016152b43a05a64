# Databricks notebook source
# MAGIC %md
# MAGIC # llmrank-spark: Nightly step 1, candidates
# MAGIC Blends co-visitation, ALS, popularity and text-embedding retrievers into N candidates per user, and
# MAGIC BM25 and text-embedding retrievers into N candidates per row of `queries` (request_type `query`),
# MAGIC and writes the `candidates` Delta partition for the run date.
# MAGIC
# MAGIC Widgets: `config` (YAML file; empty = built-in defaults), `run_date` (empty = today, UTC),
# MAGIC `overrides` (`key=value` pairs separated by `;`).

# COMMAND ----------

from llmrank_spark.lakehouse import get_spark
from llmrank_spark.pipeline import notebook_config, steps

config = notebook_config(globals().get("dbutils"))
spark = get_spark(config)

# COMMAND ----------

steps.candidates(spark, config)
