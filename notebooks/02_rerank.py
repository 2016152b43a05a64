# Databricks notebook source
# MAGIC %md
# MAGIC # llmrank-spark: Nightly step 2, re-rank
# MAGIC Scores every candidate with the broadcast BERT model in a pandas UDF, keeps each request's top-K and
# MAGIC writes the `ranked` Delta partition for the run date.
# MAGIC
# MAGIC Widgets: `config` (YAML file; empty = built-in defaults), `run_date` (empty = today, UTC),
# MAGIC `overrides` (`key=value` pairs separated by `;`).

# COMMAND ----------

from llmrank_spark.lakehouse import get_spark
from llmrank_spark.pipeline import notebook_config, steps

config = notebook_config(globals().get("dbutils"))
spark = get_spark(config)

# COMMAND ----------

steps.rerank(spark, config)
