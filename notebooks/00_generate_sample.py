# Databricks notebook source
# MAGIC %md
# MAGIC # llmrank-spark: Sample lakehouse
# MAGIC Writes the seeded sample e-commerce lakehouse (items, interactions, users, queries, query labels,
# MAGIC ground truth) as Delta tables. Skip it when the input tables come from your own pipelines.
# MAGIC
# MAGIC Widgets: `config` (YAML file; empty = built-in defaults), `run_date` (empty = today, UTC),
# MAGIC `overrides` (`key=value` pairs separated by `;`).

# COMMAND ----------

from llmrank_spark.lakehouse import get_spark
from llmrank_spark.pipeline import notebook_config, steps

config = notebook_config(globals().get("dbutils"))
spark = get_spark(config)

# COMMAND ----------

steps.generate_sample(spark, config)
