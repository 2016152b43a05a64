"""Table contracts: every table's columns, types, keys and meanings, checked on read and write."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import cast

import pandas as pd
import pyarrow as pa
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.pandas.types import to_arrow_schema
from pyspark.sql.types import StructType


class ContractError(ValueError):
    """A table does not match its contract; the message names the table and the column."""


@dataclass(frozen=True)
class Column:
    name: str
    type: str  # Spark SQL simple type string, e.g. "string", "map<string,string>"
    meaning: str
    required: bool = True
    key: bool = False  # part of the table's key: never null


@dataclass(frozen=True)
class TableContract:
    name: str
    role: str  # "input" or "output"
    purpose: str
    columns: tuple[Column, ...]
    partition_by: tuple[str, ...] = ()
    written_by: str = ""
    append_only: bool = False
    extra_doc: str = ""

    @property
    def keys(self) -> list[str]:
        return [c.name for c in self.columns if c.key]

    def ddl(self) -> str:
        return ", ".join(f"{c.name} {c.type}" for c in self.columns)


# The full key of a request: a user and a query may share an id, so request_id alone never identifies one.
REQUEST_KEY = ("request_type", "request_id")
# The strength the run's fairness pass used (calibrated to the target, or the configured weight).
FAIRNESS_STRENGTH = "fairness_strength"


def in_hashed_share(share: float, *columns: str):
    """True for the rows whose hash of `columns` falls in the first `share` of the hash range: a sample of
    whole requests (every row of a request alike), the same one on every rerun."""
    return F.abs(F.xxhash64(*columns) % 1_000_000) < F.lit(int(share * 1_000_000))


RUN_DATE = Column("run_date", "date", "The nightly run that wrote the row; the partition column.", key=True)
# The attribute-order tables' model version: only the occlusion method's importances come from a model.
EXPLAINED_MODEL_VERSION = Column(
    "model_version",
    "string",
    "occlusion: the reranker version whose scores the importance is made of; behaviour: the attribute "
    "model's version on rows it gave (source 'model'), else null.",
    False,
)

CONTRACTS: dict[str, TableContract] = {
    t.name: t
    for t in [
        TableContract(
            "items",
            "input",
            "The catalogue: one row per item, the source of item text and provider (brand).",
            (
                Column("item_id", "string", "Item identifier (SKU).", key=True),
                Column("title", "string", "Display title; the core of the item text the reranker reads."),
                Column("category", "string", "Leaf category; used for per-category popularity and blocking."),
                Column(
                    "brand", "string", "Provider (brand or seller); the unit of exposure fairness.", False
                ),
                Column("description", "string", "Free text description.", False),
                Column("price", "double", "Current price.", False),
                Column("attributes", "map<string,string>", "Structured attributes (name -> value).", False),
            ),
        ),
        TableContract(
            "interactions",
            "input",
            "The behaviour log: one row per event.",
            (
                Column("user_id", "string", "Who acted.", key=True),
                Column("item_id", "string", "On which item.", key=True),
                Column("event_type", "string", "view, click, add_to_cart, purchase or rating.", key=True),
                Column("event_ts", "timestamp", "When (UTC).", key=True),
                Column("value", "double", "Rating or quantity where the event has one.", False),
                Column("query_id", "string", "Search query that led to the event, if any.", False),
            ),
        ),
        TableContract(
            "users",
            "input",
            "Optional user attributes, used for per-group quality and fairness reporting.",
            (
                Column("user_id", "string", "User identifier.", key=True),
                Column("gender", "string", "As recorded by the source, if any.", False),
                Column("age", "int", "Age in years, if known.", False),
                Column("occupation", "string", "Occupation, if known.", False),
                Column("segment", "string", "Marketing segment, if known.", False),
            ),
        ),
        TableContract(
            "queries",
            "input",
            "Optional search queries to rank for (requests of type 'query').",
            (
                Column("query_id", "string", "Query identifier.", key=True),
                Column("query_text", "string", "What the shopper typed."),
                Column("query_class", "string", "Coarse intent class (e.g. the category searched).", False),
            ),
        ),
        TableContract(
            "query_labels",
            "input",
            "Optional graded relevance judgements for queries (0 = irrelevant .. 3 = exact).",
            (
                Column("query_id", "string", "Query identifier.", key=True),
                Column("item_id", "string", "Judged item.", key=True),
                Column("relevance", "int", "Graded relevance, 0..3."),
            ),
        ),
        TableContract(
            "sample_truth",
            "input",
            "Ground truth of the embedded sample generator: how much each attribute drives each segment.",
            (
                Column("segment", "string", "User segment.", key=True),
                Column("attribute", "string", "Attribute name.", key=True),
                Column("weight", "double", "Strength of the attribute in the segment's choices."),
                Column("rank", "int", "1 = the attribute that matters most to the segment."),
            ),
            written_by="`llmrank generate-sample`",
        ),
        TableContract(
            "candidates",
            "output",
            "First-stage candidate lists: N items per request from the blended retrievers.",
            (
                RUN_DATE,
                Column("request_id", "string", "User id (request_type user) or query id.", key=True),
                Column("request_type", "string", "'user' or 'query'.", key=True),
                Column("item_id", "string", "Candidate item.", key=True),
                Column("retrieval_rank", "int", "1-based position in the blended candidate list."),
                Column("retrieval_score", "double", "Blended (fused) retrieval score; higher is better."),
                Column("sources", "array<string>", "Every retriever that proposed the item."),
                Column("source_ranks", "map<string,int>", "Rank of the item within each source's list."),
                Column("source_scores", "map<string,double>", "Each source's own score for the item."),
            ),
            partition_by=("run_date",),
            written_by="`llmrank candidates`",
        ),
        TableContract(
            "ranked",
            "output",
            "Re-ranked lists: the top-K candidates per request in model order.",
            (
                RUN_DATE,
                Column("request_id", "string", "Request (user or query).", key=True),
                Column("request_type", "string", "'user' or 'query'.", key=True),
                Column("item_id", "string", "Ranked item.", key=True),
                Column("rank", "int", "1-based final position."),
                Column("score", "double", "Reranker score (higher is better)."),
                Column("model_version", "string", "Reranker version that produced the score."),
                Column("retrieval_rank", "int", "Position before re-ranking, for comparison."),
                Column("retrieval_score", "double", "Blended retrieval score."),
                Column("sources", "array<string>", "Retrievers that proposed the item."),
                Column(
                    "model_rank",
                    "int",
                    "Position in model order, before the fairness/diversity pass (= rank when it is off).",
                    False,
                ),
                Column(
                    FAIRNESS_STRENGTH,
                    "double",
                    "Strength of the run's fairness pass in [0, 1] (calibrated to fairness.target, or "
                    "fairness.weight); null: the lists are in model order.",
                    False,
                ),
            ),
            partition_by=("run_date",),
            written_by="`llmrank rerank`",
        ),
        TableContract(
            "rejects",
            "output",
            "Input rows and requests a step could not process, with the reason: nothing is dropped silently.",
            (
                RUN_DATE,
                Column("step", "string", "Step that rejected the row: candidates or rerank.", key=True),
                Column("input_table", "string", "Table the rejected row or request comes from.", key=True),
                Column("request_type", "string", "'user' or 'query'.", False, key=True),
                Column("request_id", "string", "Request (user or query id) the row belongs to.", key=True),
                Column("item_id", "string", "Item of a rejected pair; null: the whole request.", False),
                Column("reason", "string", "Why, one of the reasons in docs/reliability.md.", key=True),
                Column("detail", "string", "The offending value, or the rule applied.", False),
            ),
            partition_by=("run_date", "step"),
            written_by="`llmrank candidates`, `llmrank rerank`",
            extra_doc=(
                "The key with `item_id` identifies a row. Each step replaces only its own `(run_date, step)` "
                "partition, so re-running one step never clears another's rejects. Every request of "
                "`candidates` for a date is in `ranked` or in `rejects` (step rerank) for that date."
            ),
        ),
        TableContract(
            "attribute_order",
            "output",
            "Per request and ranked item: which of the item's attributes matter most for this request.",
            (
                RUN_DATE,
                Column("request_id", "string", "Request.", key=True),
                Column("request_type", "string", "'user' or 'query'.", key=True),
                Column(
                    "item_id",
                    "string",
                    "Ranked item (one of the request's top `attributes.top_k_items`).",
                    key=True,
                ),
                Column(
                    "attribute",
                    "string",
                    "Attribute name (an attributes-map key, or an item field: brand).",
                    key=True,
                ),
                Column("value", "string", "The item's value of the attribute."),
                Column(
                    "importance",
                    "double",
                    "How much the attribute matters (docs/attributes.md). behaviour: the estimated weight of "
                    "matching the preferred value in the request's choices (log-odds; 0: no evidence it "
                    "matters). occlusion: reranker score of the item minus its score with the attribute "
                    "removed from the item text; negative: the attribute counts against the item.",
                ),
                Column("rank", "int", "1 = most important attribute for this request and item."),
                EXPLAINED_MODEL_VERSION,
                Column(
                    "source",
                    "string",
                    "Where the importance comes from: 'behaviour' (the request's own choices in the item's "
                    "category, shrunk toward its segment), 'model' (none: the attribute model, from the "
                    "request's text), 'segment' (no model: its user segment's or query class's), "
                    "'category' (none there either), 'none' (nobody chose in the category: 0) or "
                    "'occlusion'.",
                    False,
                ),
                Column(
                    "preferred_value",
                    "string",
                    "behaviour: the value of the attribute the request (or its segment) prefers in the "
                    "item's category; null where unknown.",
                    False,
                ),
                Column(
                    "matches_preference",
                    "boolean",
                    "Whether the item's value is the preferred value; null where no preference is known.",
                    False,
                ),
            ),
            partition_by=("run_date",),
            written_by="`llmrank attributes`",
        ),
        TableContract(
            "attribute_order_by_segment",
            "output",
            "Per item category and shopper segment (or query class): attributes by mean importance.",
            (
                RUN_DATE,
                Column(
                    "segment_type", "string", "'user_segment' (users.segment) or 'query_class'.", key=True
                ),
                Column(
                    "segment", "string", "The segment or query class; 'unknown' where not recorded.", key=True
                ),
                Column("category", "string", "Category of the ranked items.", key=True),
                Column("attribute", "string", "Attribute name.", key=True),
                Column(
                    "mean_importance",
                    "double",
                    "The group's importance of the attribute. behaviour: estimated from the choices of all "
                    "the group's requests in the category (docs/attributes.md); occlusion: the mean "
                    "`attribute_order.importance` over the group's rows.",
                ),
                Column(
                    "support",
                    "bigint",
                    "behaviour: requests of the group that chose in the category; occlusion: (request, "
                    "ranked item) rows the mean is over.",
                ),
                Column("rank", "int", "1 = most important attribute for this segment and category."),
                EXPLAINED_MODEL_VERSION,
                Column("source", "string", "'behaviour' or 'occlusion': the method behind the row.", False),
                Column(
                    "preferred_value",
                    "string",
                    "behaviour: the value of the attribute the group's choices most favour over the "
                    "category's market share.",
                    False,
                ),
            ),
            partition_by=("run_date",),
            written_by="`llmrank attributes`",
        ),
        TableContract(
            "item_embeddings",
            "output",
            "Item text vectors, kept across runs: an item is encoded again only when its text or the encoder "
            "changes.",
            (
                Column("item_id", "string", "The item (items.item_id).", key=True),
                Column(
                    "encoder",
                    "string",
                    "The text encoder and its version: all-MiniLM-L6-v2@0.1.0 (the package's), or "
                    "query-encoder@<artifact version> (a fine-tuned query encoder, docs/queries.md).",
                    key=True,
                ),
                Column(
                    "text_hash",
                    "string",
                    "SHA-256 of the item text the vector encodes (`candidates.semantic_item_template`).",
                ),
                Column("embedding", "array<float>", "The unit-length text vector."),
                Column("encoded_on", "date", "run_date of the run that encoded this text."),
            ),
            written_by="`llmrank candidates` (Delta MERGE: only new and changed items are written)",
            extra_doc="One row per (item, encoder). Every step that needs item vectors (candidates, rerank "
            "with a fusion, train, evaluate) reads it and encodes only the items whose text it does not "
            "hold; only the candidates step writes it.",
        ),
        TableContract(
            "metrics",
            "output",
            "Quality, fairness and diversity measurements per run and step.",
            (
                RUN_DATE,
                Column(
                    "step",
                    "string",
                    "Order measured: candidates (retrieval order), rerank (model order), fairness (the "
                    "final order with the configured lambda) or fairness[lambda=0.30] (a sweep point).",
                    key=True,
                ),
                Column("model_version", "string", "Model version measured, if any.", False),
                Column("metric", "string", "Metric name, e.g. ndcg@10.", key=True),
                Column("slice", "string", "Population measured: 'all' or e.g. 'gender=F'.", key=True),
                Column("value", "double", "The measurement."),
            ),
            partition_by=("run_date",),
            written_by="`llmrank evaluate`",
        ),
        TableContract(
            "runs",
            "output",
            "One row per step run: what it read and wrote, so any output row traces to its inputs.",
            (
                Column("run_id", "string", "Unique id of this step run.", key=True),
                RUN_DATE,
                Column("step", "string", "Pipeline step.", key=True),
                Column("status", "string", "'succeeded' or 'failed'."),
                Column("started_at", "timestamp", "When the step started (UTC)."),
                Column("seconds", "double", "Wall-clock duration."),
                Column("inputs", "map<string,bigint>", "Delta version read of each input table."),
                Column("outputs", "map<string,bigint>", "Delta version written of each output table."),
                Column("rows", "map<string,bigint>", "Rows written per output table (this run's partition)."),
                Column("config", "string", "The step's full configuration as JSON."),
                Column("error", "string", "The failure message, if the step failed.", False),
                Column(
                    "warnings",
                    "array<string>",
                    "What the step skipped or degraded, e.g. a fairness pass without providers.",
                    False,
                ),
            ),
            partition_by=("run_date",),
            written_by="every step",
            append_only=True,
        ),
    ]
}


def contract(table: str) -> TableContract:
    try:
        return CONTRACTS[table]
    except KeyError:
        raise ContractError(f"unknown table '{table}'; known tables: {', '.join(CONTRACTS)}") from None


def check_schema(df: DataFrame, table: str, where: str) -> None:
    """Fail, naming table and column, if a required column is missing or any contract column has a wrong type.

    Columns the contract does not name are allowed (and ignored by readers).
    """
    spec = contract(table)
    present = {f.name: f.dataType.simpleString() for f in df.schema.fields}
    for column in spec.columns:
        if column.name not in present:
            if column.required:
                raise ContractError(
                    f"table '{table}' ({where}): missing required column '{column.name}' ({column.type}); "
                    f"add it to the table or fix the job that writes it (see docs/tables.md)"
                )
            continue
        if present[column.name] != column.type:
            raise ContractError(
                f"table '{table}' ({where}): column '{column.name}' has type {present[column.name]}, "
                f"contract says {column.type}; cast it before writing (see docs/tables.md)"
            )


def check_keys_not_null(df: DataFrame, table: str, where: str) -> None:
    keys = [k for k in contract(table).keys if k in df.columns]
    if not keys:
        return
    counts = df.agg(*[F.sum(F.col(k).isNull().cast("long")).alias(k) for k in keys]).collect()[0]
    for key in keys:
        if counts[key]:
            raise ContractError(
                f"table '{table}' ({where}): key column '{key}' is null in {counts[key]} rows; "
                f"fix or drop those rows upstream"
            )


def conform(df: DataFrame, table: str) -> DataFrame:
    """Select the contract's columns in contract order, adding absent optional ones as typed nulls."""
    spec = contract(table)
    return df.select(
        *[
            F.col(c.name) if c.name in df.columns else F.lit(None).cast(c.type).alias(c.name)
            for c in spec.columns
        ]
    )


def frame_from_pandas(spark: SparkSession, frame: pd.DataFrame, table: str) -> DataFrame:
    """A Spark DataFrame with exactly the table's contract schema, built from a pandas frame through Arrow.

    Absent optional columns and NaN become nulls; dict values become map entries.
    """
    spec = contract(table)
    missing = [c.name for c in spec.columns if c.required and c.name not in frame.columns]
    if missing:
        raise ContractError(f"table '{table}': pandas frame lacks required columns {missing}")
    # A column list's DDL parses to a struct; fromDDL is typed as any DataType.
    schema = to_arrow_schema(cast(StructType, StructType.fromDDL(spec.ddl())), timezone="UTC")
    arrays = []
    for field in schema:
        if field.name not in frame.columns:
            arrays.append(pa.nulls(len(frame), field.type))
            continue
        values = frame[field.name].astype(object).where(frame[field.name].notna(), None).tolist()
        if pa.types.is_map(field.type):
            values = [None if v is None else list(v.items()) for v in values]
        arrays.append(pa.array(values, type=field.type))
    return spark.createDataFrame(pa.Table.from_arrays(arrays, schema=schema))


STEP_NAME = re.compile(r"^[a-z][a-z0-9_-]*$")


def partition_mismatch(table: str, column: str, value: object) -> str:
    """The error a write raises when a row's partition column is not the partition it replaces."""
    return f"table '{table}': rows with {column} other than {value} in a write for that {column}"


def only_partition(df: DataFrame, table: str, column: str, value: object) -> DataFrame:
    """`df` failing as it is written if a row's `column` is not `value` (null included): the partition a
    replaceWhere write replaces. Checked inside the write's own pass, not by an action before it (which
    would compute the whole frame, model scores included, a second time); where the column is a literal,
    the optimiser folds the check away. A failed write commits nothing; `write_table` raises it as a
    ContractError."""
    if column == "step" and (not isinstance(value, str) or not STEP_NAME.match(value)):
        raise ValueError(f"table '{table}' is partitioned by step: pass the step's name (got {value!r})")
    matches = F.col(column) == F.lit(value)
    failure = F.raise_error(F.lit(partition_mismatch(table, column, value)))
    return df.withColumn(column, F.when(matches, F.col(column)).otherwise(failure))
