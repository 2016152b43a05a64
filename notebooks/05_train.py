# Databricks notebook source
# MAGIC %md
# MAGIC # llmrank-spark: Train the reranker
# MAGIC Turns the interactions Delta table into ranking lists, fine-tunes the BERT cross-encoder with the
# MAGIC configured loss (warm-started from the newest registered version), gates it, logs it as an MLflow
# MAGIC run and registers it under `mlflow.model_name` (with the `champion` alias only if it passed the
# MAGIC gate). Run it nightly or weekly; see docs/training.md.
# MAGIC
# MAGIC Widgets: `config` (YAML file; empty = built-in defaults), `run_date` (empty = today, UTC),
# MAGIC `overrides` (`key=value` pairs separated by `;`, e.g. `train.loss=lambdaloss`).

# COMMAND ----------

from llmrank_spark.lakehouse import get_spark
from llmrank_spark.pipeline import notebook_config, steps

config = notebook_config(globals().get("dbutils"))
spark = get_spark(config)

# COMMAND ----------

steps.train(spark, config)
