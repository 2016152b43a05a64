# Databricks notebook source
# MAGIC %md
# MAGIC # llmrank-spark: Nightly step 4, evaluate
# MAGIC Measures the run's lists in retrieval, model and fair order (quality where labels exist, provider
# MAGIC exposure and its Gini, coverage, diversity, per-group quality), writes the `metrics` Delta partition
# MAGIC for the run date and the HTML run report under `<lakehouse root>/reports/<run_date>/`.
# MAGIC
# MAGIC Widgets: `config` (YAML file; empty = built-in defaults), `run_date` (empty = today, UTC),
# MAGIC `overrides` (`key=value` pairs separated by `;`).

# COMMAND ----------

from llmrank_spark.lakehouse import get_spark
from llmrank_spark.pipeline import notebook_config, steps

config = notebook_config(globals().get("dbutils"))
spark = get_spark(config)

# COMMAND ----------

steps.evaluate(spark, config)
