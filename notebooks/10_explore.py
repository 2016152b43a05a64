# Databricks notebook source
# MAGIC %md
# MAGIC # llmrank-spark: explore one request
# MAGIC Shows a request's history, its candidates (with the retrievers that proposed each), its
# MAGIC re-ranked list, the attribute order of its items, the run's metrics and its run log.
# MAGIC Widgets: `config`, `run_date`, `overrides`, `request_id` (empty = the first ranked request).

# COMMAND ----------

from pyspark.sql import functions as F

from llmrank_spark.lakehouse import get_spark, read_table
from llmrank_spark.pipeline import notebook_config, widget_values

config = notebook_config(globals().get("dbutils"))
spark = get_spark(config)
show = globals().get("display") or (lambda frame: frame.show(20, truncate=60))
run_date = F.lit(config.run.run_date)
ranked = read_table(spark, config, "ranked").where(F.col("run_date") == run_date)
request_id = (
    widget_values(globals().get("dbutils"))["request_id"] or ranked.orderBy("request_id").first().request_id
)
print(f"request {request_id}, run_date {config.run.run_date}")

# COMMAND ----------

# MAGIC %md ## History (newest first)

# COMMAND ----------

items = read_table(spark, config, "items")
history = (
    read_table(spark, config, "interactions")
    .where(F.col("user_id") == request_id)
    .join(items, "item_id")
    .orderBy(F.col("event_ts").desc())
)
show(history.select("event_ts", "event_type", "item_id", "title", "category", "brand").limit(10))

# COMMAND ----------

# MAGIC %md ## Candidates, with their retrievers

# COMMAND ----------

candidates = read_table(spark, config, "candidates").where(
    (F.col("run_date") == run_date) & (F.col("request_id") == request_id)
)
show(
    candidates.join(items, "item_id")
    .select("retrieval_rank", "item_id", "title", "sources", "retrieval_score")
    .orderBy("retrieval_rank")
)

# COMMAND ----------

# MAGIC %md ## Re-ranked list

# COMMAND ----------

show(
    ranked.where(F.col("request_id") == request_id)
    .join(items, "item_id")
    .select("rank", "retrieval_rank", "item_id", "title", "brand", "score", "model_version")
    .orderBy("rank")
)

# COMMAND ----------

# MAGIC %md ## Attribute order: which attributes matter for this request, per ranked item

# COMMAND ----------

attribute_order = read_table(spark, config, "attribute_order").where(
    (F.col("run_date") == run_date) & (F.col("request_id") == request_id)
)
show(attribute_order.select("item_id", "rank", "attribute", "value", "importance").orderBy("item_id", "rank"))

# COMMAND ----------

# MAGIC %md ## Metrics of the run: retrieval order, model order and final (fair) order

# COMMAND ----------

metrics = read_table(spark, config, "metrics").where(
    (F.col("run_date") == run_date) & (F.col("slice") == "all")
)
show(metrics.groupBy("metric").pivot("step").agg(F.first("value")).orderBy("metric"))

# COMMAND ----------

# MAGIC %md ## Run log: what each step read and wrote

# COMMAND ----------

runs = read_table(spark, config, "runs").where(F.col("run_date") == run_date)
show(
    runs.select("step", "status", "started_at", "seconds", "inputs", "outputs", "rows").orderBy("started_at")
)
