"""Typed configuration: YAML files from ``conf/`` plus ``--set key=value`` overrides.

Everything is validated before Spark starts, so a typo in a nightly job's config fails in
milliseconds with the offending key named, not an hour later on an executor.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import types
import typing
from pathlib import Path
from typing import Any, Literal, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

REPO_CONF_DIR = Path(__file__).resolve().parent.parent / "conf"


class ConfigError(ValueError):
    """A config file or override is wrong; the message names the key and what to do."""


REDACTED = "***redacted***"
# A config key whose value is a credential, matched anywhere in the key, case-insensitively: it catches
# spark.hadoop.fs.s3a.secret.key, fs.azure.account.key.<account>, ...access.token, a *password*.
SECRET_KEY = re.compile(r"secret|passw(or)?d|pwd|token|key|credential|private", re.IGNORECASE)
# Hadoop's filesystem settings (spark.hadoop.*) also carry OAuth client settings, SAS and signatures.
HADOOP_SECRET_KEY = re.compile(r"auth|sas|signature", re.IGNORECASE)
# The password of a user:password@host URI in any value.
URI_PASSWORD = re.compile(r"(://[^/@\s:]*):[^/@\s]+@")
# A Spark Connect URL carries its credential as a parameter: sc://host:443/;token=...;user_id=...
CONNECT_URL_TOKEN = re.compile(r"(;\s*token=)[^;]*", re.IGNORECASE)


def is_secret_key(key: str) -> bool:
    hadoop = key.lower().startswith("spark.hadoop.") and HADOOP_SECRET_KEY.search(key)
    return bool(SECRET_KEY.search(key) or hadoop)


def redact(value: Any, key: str = "") -> Any:
    """`value` (a config tree, as from model_dump, or one value under `key`) with every credential replaced
    by REDACTED. The one place secrets are taken out of anything that is stored, printed or logged."""
    if key and value is not None and is_secret_key(key):
        return REDACTED
    if isinstance(value, dict):
        return {name: redact(item, str(name)) for name, item in value.items()}
    if isinstance(value, list | tuple):
        return [redact(item) for item in value]
    if isinstance(value, str):
        return CONNECT_URL_TOKEN.sub(rf"\1{REDACTED}", URI_PASSWORD.sub(rf"\1:{REDACTED}@", value))
    return value


class _Section(BaseModel):
    # extra="forbid" turns a misspelt key into an error instead of a silently ignored setting.
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class SparkConfig(_Section):
    master: str = Field(
        "local[*]",
        description="Spark master URL of a session this job starts itself. Under spark-submit its --master "
        "wins, and an already active session (Databricks, notebooks) is reused as it is.",
    )
    remote: str | None = Field(
        None,
        description="Spark Connect URL: sc://host:port for a Spark Connect server (Databricks serverless and "
        'standard access mode reach Spark this way), or "local[N]" to start a local Spark Connect server '
        "with Delta for this job. Unset: the SPARK_REMOTE environment variable if set, else a classic "
        "session on spark.master.",
    )
    app_name: str = Field("llmrank-spark", description="Spark application name (spark.app.name).")
    delta_jars: Literal["maven", "provided"] = Field(
        "maven",
        description='Where the Delta Lake jars come from. "maven": resolved from Maven Central through '
        'spark.jars.packages (cached by Ivy). "provided": the platform ships Delta already (Databricks), '
        "so no jars are set.",
    )
    checkpoint_dir: str | None = Field(
        None,
        description="Directory of the intermediate results steps compute once (spark.checkpoint.dir), on "
        "storage every executor reads (HDFS, DBFS, S3, ABFS), so a lost executor does not fail a step. "
        "Unset: a scratch directory removed at exit when this job starts a local session; a cluster's own "
        "spark.checkpoint.dir otherwise, and without one steps keep those results on their executors only "
        "(and warn).",
    )
    conf: dict[str, str] = Field(
        default_factory=dict,
        description="Extra Spark settings, by Spark key (e.g. spark.sql.shuffle.partitions); they win over "
        "the built-in local defaults. Credentials here are redacted from the run log.",
    )


# A catalog table name of one to three identifiers (Unity Catalog: catalog.schema.table).
CATALOG_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*){0,2}$")
# Characters that could break out of a quoted path or identifier in a SQL string.
UNSAFE_PATH_CHARS = set("`'\";\n\r\x00")


def is_catalog_name(location: str) -> bool:
    """A table location is a catalog name when it has no path separator or URI scheme."""
    return "/" not in location and ":" not in location


def check_location(location: str, key: str) -> str:
    if is_catalog_name(location):
        if not CATALOG_NAME.match(location):
            raise ValueError(f"{key}: {location!r} is neither a path nor a catalog.schema.table name")
    elif UNSAFE_PATH_CHARS & set(location):
        raise ValueError(f"{key}: path {location!r} holds a quote, backtick, semicolon or control character")
    return location


# A location with a URI scheme (s3a://, abfss://, file:/, dbfs:/): an absolute location like /path.
URI_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")


def is_absolute_location(location: str) -> bool:
    return location.startswith("/") or bool(URI_SCHEME.match(location))


class LakehouseConfig(_Section):
    root: str = Field(
        "lakehouse",
        description="Directory (path or URI) under which every table lives as <root>/<table name>, unless "
        "catalog_schema or a tables entry says otherwise.",
    )
    catalog_schema: str | None = Field(
        None,
        description="When set, the catalog and schema holding the tables as managed tables instead of paths "
        'under root (Unity Catalog: "main.ranking").',
    )
    tables: dict[str, str] = Field(
        default_factory=dict,
        description="Per-table exceptions, by table name (docs/tables.md): a catalog name "
        "(catalog.schema.table), a path under root (gold/ranked is <root>/gold/ranked; `..` is refused), "
        "or an absolute path or URI when the table is listed in external_tables.",
    )
    layout: Literal["partitioned", "liquid"] = Field(
        "partitioned",
        description='How the dated output tables are laid out when this job creates them. "partitioned": '
        'Hive-style partitions by run_date. "liquid": Delta liquid clustering by run_date and request_id '
        "(CLUSTER BY), which Databricks recommends for new tables; a date is still replaced in one commit. "
        "A table that exists keeps its layout.",
    )
    # Anything not listed stays under `root`, so a stray `../..` or a mistyped absolute path can never
    # write outside the lakehouse.
    external_tables: list[str] = Field(
        default_factory=list,
        description="Tables whose tables entry may be an absolute path or URI outside root, e.g. [ranked] "
        "with tables: {ranked: s3a://gold/ranked}.",
    )

    @field_validator("root")
    @classmethod
    def _safe_root(cls, root: str) -> str:
        if not root.strip() or root.strip("/") == "":
            raise ValueError(
                f"root {root!r} would put every table at the filesystem root; name the lakehouse "
                "directory, e.g. lakehouse or /data/lakehouse"
            )
        if UNSAFE_PATH_CHARS & set(root):
            raise ValueError(f"path {root!r} holds a quote, backtick, semicolon or control character")
        return root

    @field_validator("catalog_schema")
    @classmethod
    def _catalog_schema(cls, value: str | None) -> str | None:
        if value is not None and (not CATALOG_NAME.match(value) or value.count(".") != 1):
            raise ValueError(f"{value!r} must be catalog.schema, e.g. main.ranking")
        return value

    @field_validator("tables")
    @classmethod
    def _table_locations(cls, tables: dict[str, str]) -> dict[str, str]:
        _check_table_names(tables)
        for table, location in tables.items():
            check_location(location, f"lakehouse.tables.{table}")
            if not is_catalog_name(location) and not is_absolute_location(location):
                parts = location.split("/")
                if ".." in parts or not {part for part in parts if part not in ("", ".")}:
                    raise ValueError(
                        f"lakehouse.tables.{table}: {location!r} does not name a directory inside "
                        "lakehouse.root; give a path under the root without '..' (e.g. gold/ranked)"
                    )
        return tables

    @field_validator("external_tables")
    @classmethod
    def _external_names(cls, external: list[str]) -> list[str]:
        _check_table_names(external)
        return external

    @model_validator(mode="after")
    def _absolute_only_when_external(self) -> LakehouseConfig:
        for table, location in self.tables.items():
            if is_absolute_location(location) and table not in self.external_tables:
                raise ValueError(
                    f"lakehouse.tables.{table}: {location!r} is outside lakehouse.root; give a path under "
                    f"the root, or allow this absolute location by adding {table} to "
                    "lakehouse.external_tables"
                )
        return self

    def table_location(self, table: str) -> str:
        """Where a table lives (a path, or a catalog name): a `tables` entry, else the default."""
        location = self.tables.get(table)
        if location is not None and (is_catalog_name(location) or is_absolute_location(location)):
            return location
        if location is None and self.catalog_schema:
            return f"{self.catalog_schema}.{table}"
        under_root = "/".join(p for p in (location or table).split("/") if p not in ("", "."))
        # A relative root is a local directory under the working directory, made absolute: Delta's SQL
        # (`DESCRIBE HISTORY delta.`path``) takes only absolute paths, and reads and writes must agree.
        root = self.root if is_absolute_location(self.root) else os.path.abspath(self.root)
        return f"{root.rstrip('/')}/{under_root}"


def _check_table_names(names) -> None:
    """Names must be tables of the contracts (tables.py): a misspelt one would be silently unused."""
    from llmrank_spark.lakehouse import CONTRACTS

    unknown = sorted(set(names) - set(CONTRACTS))
    if unknown:
        raise ValueError(
            f"unknown table(s) {unknown}; check the spelling: the tables are {', '.join(CONTRACTS)}"
        )


ISO_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")


class RunConfig(_Section):
    run_date: dt.date = Field(
        default_factory=lambda: dt.datetime.now(dt.UTC).date(),
        description="The partition every output of this run is written to, as YYYY-MM-DD; re-running a "
        "date replaces it. Defaults to today (UTC) and is usually set by the scheduler.",
    )

    @field_validator("run_date", mode="before")
    @classmethod
    def _iso_date(cls, value: Any) -> Any:
        # Only a date or YYYY-MM-DD text: pydantic alone reads a number as a Unix timestamp.
        text_date = isinstance(value, str) and ISO_DATE.match(value.strip())
        if not text_date and (isinstance(value, dt.datetime) or not isinstance(value, dt.date)):
            raise ValueError("not a date; write it as YYYY-MM-DD, e.g. 2026-11-20")
        return value


class SampleConfig(_Section):
    seed: int = Field(7, description="Random seed of the sample: the same seed gives the same tables.")
    n_items: int = Field(2400, ge=100, description="Catalogue items in the sample.")
    n_users: int = Field(1200, ge=50, description="Shoppers (users) in the sample.")
    n_events: int = Field(
        60000, ge=1000, description="Events in the behaviour log, made of whole sessions of the users."
    )
    n_queries: int = Field(300, ge=10, description="Search queries, each with graded relevance labels.")
    shopper_phrasing: float = Field(
        0.5,
        ge=0,
        le=1,
        description="Chance that each term of a query is typed in a shopper's own words (a synonym, "
        'e.g. "rainproof" for waterproof) rather than the catalogue\'s: the vocabulary gap of real search.',
    )
    days: int = Field(60, ge=7, description="Days of history the behaviour log spans.")


# The first-stage retrievers, by the source name each writes into `candidates.sources`: those of user
# requests, and those of search queries.
RETRIEVERS = ("covisit", "als", "semantic", "category_popularity", "popularity")
QUERY_RETRIEVERS = ("lexical", "query_semantic")


class CandidatesConfig(_Section):
    n_per_request: int = Field(
        100, ge=1, description="Candidate items in each request's list, a user's or a query's (the N)."
    )
    rank_queries: bool = Field(
        True,
        description="Also build a list for every row of the `queries` table, when the lakehouse has one "
        "(request_type 'query'; retrievers lexical and query_semantic).",
    )
    query_encoder: Literal["registered", "packaged"] = Field(
        "registered",
        description='Encoder of the query semantic retriever. "registered": the fine-tuned query encoder of '
        "the newest registered version that ships one (train.query_encoder_epochs; it ships only if it "
        "retrieved better than the packaged MiniLM for held-out queries, docs/queries.md), else the "
        'packaged MiniLM. "packaged": always the packaged MiniLM.',
    )
    max_query_chars: int = Field(
        500,
        ge=1,
        description="Longest query text, in characters after cleaning, that is ranked; a longer one is "
        "rejected (reason query_too_long) rather than cut, since a cut query may ask for something else.",
    )
    quotas: dict[str, int] = Field(
        default_factory=lambda: {
            "covisit": 10,
            "als": 10,
            "semantic": 5,
            "category_popularity": 5,
            "popularity": 5,
            "lexical": 10,
            "query_semantic": 5,
        },
        description="Per retriever: its top items that are sure of a place in the list. The rest of the "
        "places go by fused score, which also orders the whole list; a retriever left out gets quota 0.",
    )
    # Defaults tuned on validation splits of MovieLens 100K and the sample (docs/results.md); the query
    # retrievers on the sample's queries, where BM25 alone is near perfect (semantic at 0.25 keeps it so).
    source_weights: dict[str, float] = Field(
        default_factory=lambda: {
            "covisit": 1.0,
            "als": 1.0,
            "semantic": 0.25,
            "category_popularity": 0.25,
            "popularity": 0.25,
            "lexical": 1.0,
            "query_semantic": 0.25,
        },
        description="Per retriever: its weight in the reciprocal-rank fusion, where an item scores the sum "
        "over retrievers of weight / (fusion_k + its rank there). A retriever left out weighs 1.",
    )
    query_encoder_quotas: dict[str, int] = Field(
        default_factory=lambda: {"lexical": 5, "query_semantic": 10},
        description="The query retrievers' quotas when a fine-tuned query encoder serves the query "
        "semantic retriever (query_encoder); they replace those of `quotas`. The encoder then retrieves "
        "better than BM25, so it leads the blend (docs/results.md, Search queries).",
    )
    query_encoder_weights: dict[str, float] = Field(
        default_factory=lambda: {"lexical": 0.25, "query_semantic": 1.0},
        description="The query retrievers' fusion weights when a fine-tuned query encoder serves the query "
        "semantic retriever; they replace those of `source_weights`.",
    )
    fusion_k: int = Field(
        30,
        ge=1,
        description="The k of reciprocal-rank fusion: larger values flatten the difference between top and "
        "lower ranks of each retriever.",
    )
    exclude_purchased: bool = Field(
        True,
        description="Leave out items the user already has an event of a type in exclude_event_types on.",
    )
    exclude_event_types: list[str] = Field(
        default_factory=lambda: ["purchase", "rating"],
        description='What counts as "already purchased" when exclude_purchased is on: a purchase in shop '
        "data, a rating in ratings data (a rated film has been watched). Views, clicks and carts never "
        "exclude an item.",
    )
    recent_items: int = Field(
        10, ge=1, description="A user's newest items that seed co-visitation and make the semantic profile."
    )
    covisit_window_hours: float = Field(
        24.0, gt=0, description="Two events of a user further apart in time than this never co-visit."
    )
    covisit_max_steps: int = Field(
        10,
        ge=1,
        description="Events further apart than this many steps in a user's timeline never co-visit, "
        "however close in time. It bounds the co-visitation self-join at events x 2 x covisit_max_steps "
        "rows.",
    )
    # Co-visits age more slowly than popularity: which items go together changes less than what is in vogue.
    covisit_half_life_days: float = Field(
        180.0, gt=0, description="Half-life in days of a co-visit's weight, by the age of the events."
    )
    covisit_neighbours: int = Field(
        100, ge=1, description="Most strongly co-visited neighbours kept per item."
    )
    popularity_half_life_days: float = Field(
        14.0, gt=0, description="Half-life in days of an event's weight in item popularity."
    )
    top_categories: int = Field(
        3,
        ge=1,
        description="Categories of a user's history that category popularity draws from, by the user's "
        "affinity.",
    )
    als_rank: int = Field(32, ge=1, description="Number of latent factors of the implicit ALS model.")
    als_max_iter: int = Field(15, ge=1, description="ALS iterations (MLlib maxIter).")
    als_reg_param: float = Field(0.05, ge=0, description="ALS regularisation (MLlib regParam).")
    als_alpha: float = Field(1.0, ge=0, description="ALS implicit-feedback confidence scale (MLlib alpha).")
    als_blocks: int = Field(
        4,
        ge=1,
        description="ALS user and item blocks (MLlib numUserBlocks and numItemBlocks). Every iteration runs "
        "a task per block, so more blocks than the cluster's cores only add scheduling (MLlib's default of "
        "10 made a 3,000-event fit 3 times slower than 2 blocks on 2 cores); raise it toward the cluster's "
        "cores for large event tables. Fixed, not read from the session, so a run's lists do not depend on "
        "where it runs.",
    )
    history_half_life_days: float = Field(
        30.0,
        gt=0,
        description="Half-life of a user's own history, counted back from their latest event: recent items "
        "weigh more in the semantic profile, the co-visitation seeds, the category affinity and the ALS "
        "confidence.",
    )
    semantic_item_template: str = Field(
        "{title}. Category: {category}. {attributes}",
        description="Item text the semantic retriever embeds: a template of item fields ({title}, "
        "{category}, {brand}, ...) and {attributes}.",
    )
    semantic_item_attributes: int = Field(
        6, ge=0, description="Attributes at most that {attributes} shows in the semantic item text."
    )
    lexical_item_template: str = Field(
        "{title} {brand} {category} {attributes}",
        description="Item text the lexical (BM25) query retriever indexes: a template of item fields and "
        "{attributes}. Every word a shopper might type to find the item belongs in it.",
    )
    lexical_item_attributes: int = Field(
        50, ge=0, description="Attributes at most that {attributes} shows in the lexical item text."
    )
    broadcast_max_items: int = Field(
        500_000,
        ge=1,
        description="Largest catalogue whose item vectors (384 float32 = 1.5 KiB per item for the semantic "
        "retriever) are collected to the driver and shipped to every executor for the top-k search.",
    )
    seed: int = Field(42, description="Random seed of the ALS model.")
    event_weights: dict[str, float] = Field(
        default_factory=lambda: {
            "view": 1.0,
            "click": 2.0,
            "add_to_cart": 4.0,
            "purchase": 8.0,
            "rating": 3.0,
        },
        description="Per event type: its weight in co-visitation, popularity, the user profile and ALS. "
        "Events of a type left out are ignored and listed in the rejects table.",
    )

    def with_query_encoder(self) -> CandidatesConfig:
        """These settings as the query blend uses them when a fine-tuned query encoder serves."""
        return self.model_copy(
            update={
                "quotas": {**self.quotas, **self.query_encoder_quotas},
                "source_weights": {**self.source_weights, **self.query_encoder_weights},
            }
        )

    @field_validator("quotas", "source_weights", "query_encoder_quotas", "query_encoder_weights")
    @classmethod
    def _known_sources(cls, per_source: dict[str, float]) -> dict[str, float]:
        known = (*RETRIEVERS, *QUERY_RETRIEVERS)
        unknown = sorted(set(per_source) - set(known))
        if unknown:
            raise ValueError(f"unknown retriever(s) {unknown}; the retrievers are {', '.join(known)}")
        negative = sorted(name for name, value in per_source.items() if value < 0)
        if negative:
            raise ValueError(f"values of {negative} are negative; use 0 to give a retriever none")
        return per_source


# The settings that turn rows into the text a model reads. A model is trained with them, records them in
# its manifest (reranker.json) and is served with them: the one list of them, for all three.
TEXT_SETTINGS = (
    "max_length",
    "context_items",
    "context_template",
    "profile_categories",
    "user_template",
    "item_template",
    "item_attributes",
)


def text_settings(source: Any) -> dict[str, Any]:
    """The text settings of a rerank config or a model manifest, by name."""
    return {name: getattr(source, name) for name in TEXT_SETTINGS}


class RerankConfig(_Section):
    mode: Literal["champion", "cross_encoder", "retrieval", "zero_shot_bi_encoder"] = Field(
        "champion",
        description='The model that orders the lists. "champion": the registered version with the MLflow '
        "alias `champion` (one that beat the retrieval order and the previous champion on a later time "
        "slice), or mlflow.pinned_version; with neither, the retrieval "
        'order. "cross_encoder": the artifact at model_path (or the newest registered version), validated '
        'or not. "retrieval": the candidates\' own order. "zero_shot_bi_encoder": cosine of MiniLM '
        "sentence embeddings, an unfine-tuned baseline (docs/results.md).",
    )
    model_path: str | None = Field(
        None,
        description="Directory of the fine-tuned reranker artifact served with mode cross_encoder; unset: "
        "the newest registered version.",
    )
    top_k: int = Field(50, ge=1, description="Items kept in each ranked list.")
    bert_depth: int | None = Field(
        None,
        ge=0,
        description="A cascade for versions with a LambdaMART fusion: each user's list is ordered by the "
        "version's features-only LambdaMART (its prerank) and BERT scores only its first bert_depth "
        "candidates, which the fusion then orders; unset: rerank.top_k. 0: no BERT, the prerank's order; "
        "candidates.n_per_request or more: BERT scores every candidate. At least top_k unless 0.",
    )
    max_length: int = Field(
        128,
        ge=16,
        le=512,
        description="Token budget of a (context, item) pair; a fine-tuned artifact brings its own.",
    )
    micro_batch_size: int = Field(64, ge=1, description="Pairs the model scores in one forward pass.")
    min_micro_batch_size: int = Field(
        1,
        ge=1,
        description="On GPU out-of-memory the scorer halves its micro-batch and retries, down to this "
        "floor, then fails.",
    )
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto",
        description='Where the model runs. "auto": the GPU Spark assigned to the task, else the CPU; '
        '"cpu" and "cuda" force one.',
    )
    precision: Literal["auto", "fp32", "fp16", "bf16"] = Field(
        "auto",
        description='Autocast precision of scoring; "auto": bf16 (else fp16) on GPU, fp32 on CPU.',
    )
    quantize_int8: bool = Field(
        False,
        description="Score with dynamic int8 quantisation of the linear layers; applies on CPU only.",
    )
    context_items: int = Field(
        5,
        ge=0,
        description="A user's newest engaged items stated in their context, newest first.",
    )
    context_template: str = Field(
        "{title} ({category}, {brand})",
        description="How each history item reads in a user's context: a template of item fields and "
        "{attributes}; a fine-tuned artifact brings its own.",
    )
    profile_categories: int = Field(
        0,
        ge=0,
        description="Categories of a user's history whose most chosen attribute values open the context "
        "(llmrank_spark/text/contexts.py, `preference_profiles`); 0 states no profile.",
    )
    user_template: str = Field(
        "",
        description='Fields of the users table stated before a user\'s history, e.g. "{segment} shopper"; '
        '"" states none.',
    )
    item_template: str = Field(
        "{title}. Brand: {brand}. Category: {category}. {attributes}",
        description="The item text the model reads: a template of item fields ({title}, {brand}, "
        "{category}, ...) and {attributes}; a fine-tuned artifact brings its own.",
    )
    item_attributes: int = Field(
        6, ge=0, description="Attributes at most that {attributes} shows in an item text, first by name."
    )

    @model_validator(mode="after")
    def _depth_covers_the_list(self) -> RerankConfig:
        if self.bert_depth and self.bert_depth < self.top_k:
            raise ValueError(
                f"rerank.bert_depth={self.bert_depth} is below rerank.top_k={self.top_k}: the served lists "
                f"would hold candidates BERT never scored; set it to 0 (features only) or at least top_k"
            )
        return self

    @property
    def scored_depth(self) -> int:
        """How many of a user's candidates, in prerank order, BERT scores (bert_depth, unset: top_k)."""
        return self.top_k if self.bert_depth is None else self.bert_depth


class FaultsConfig(_Section):
    """Test-only fault injection (docs/reliability.md): tests set these to prove the job fails or recovers
    cleanly. Every key must stay unset in production."""

    fail_scoring_after_batches: int | None = Field(
        None,
        ge=0,
        description="The scoring UDF raises InjectedFault in every task that has already scored this many "
        "Arrow batches.",
    )
    kill_worker_once_marker: str | None = Field(
        None,
        description="The first scoring task that creates this file (it must not exist yet) kills its "
        "Python worker.",
    )


class EvaluateConfig(_Section):
    ks: list[int] = Field(
        default_factory=lambda: [10, 50],
        description="List depths every metric is measured at (each at most rerank.top_k to be meaningful).",
    )
    popularity_head_share: float = Field(
        0.2,
        gt=0,
        lt=1,
        description='Items holding the first this share of interactions are the popularity "head".',
    )
    popularity_tail_share: float = Field(
        0.2,
        gt=0,
        lt=1,
        description='Items holding the last this share of interactions are the popularity "tail".',
    )
    user_group_attributes: list[str] = Field(
        default_factory=lambda: ["gender", "age_band"],
        description="Columns of the users table whose groups get their own quality figures and gap; "
        '"age_band" cuts `age` at age_band_edges.',
    )
    age_band_edges: list[int] = Field(
        default_factory=lambda: [18, 25, 35, 45, 50, 56],
        description="Ascending ages where the age bands start: the defaults give <18, 18-24, ..., 56+.",
    )
    label_days: int = Field(
        30,
        ge=1,
        description="Labels of user requests are the user's events in this many days after run_date.",
    )
    label_grades: dict[str, int] = Field(
        default_factory=lambda: {"click": 1, "add_to_cart": 2, "purchase": 3, "rating": 1},
        description="Per event type: the relevance grade of a label event (the best grade per item counts). "
        "Types left out (views by default) are not labels.",
    )
    embedding_diversity: bool = Field(
        True,
        description="Measure intra-list diversity by MiniLM text embedding of the ranked items (loads the "
        "packaged encoder).",
    )
    trend_days: int = Field(
        90,
        ge=1,
        description="Days back from run_date the report's trend chart covers; only those runs' overall "
        "('all') rows of `metrics` are read for it, so the report's input stays small however long the "
        "table's history.",
    )


FairnessStrategy = Literal["list", "run", "fa_ir", "det_const_sort"]


class FairnessTargetConfig(_Section):
    """The exposure a run must reach, in the owner's terms; every run calibrates its strength to meet it.

    Set any of the goals (unset ones are not checked); the run meets all that are set. Exposure needs no
    labels, so each run checks its own lists (docs/how-to/tune-fairness.md).
    """

    provider_gini_cut: float | None = Field(
        0.1,
        gt=0,
        lt=1,
        description="Cut the provider-exposure Gini@exposure_k by at least this share of the model order's "
        "(0.1: at most 90% of it).",
    )
    max_provider_gini: float | None = Field(
        None, ge=0, le=1, description="The provider-exposure Gini@exposure_k is at most this."
    )
    min_long_tail_exposure: float | None = Field(
        None,
        ge=0,
        le=1,
        description="Long-tail providers get at least this share of the position-discounted top-exposure_k "
        "exposure.",
    )
    prefix_share: float | None = Field(
        None,
        gt=0,
        lt=1,
        description="FA*IR's prefix guarantee: every prefix of every list holds at least the long-tail items "
        "a fair coin of this proportion would give at significance prefix_alpha (Zehlike et al. 2017), "
        "while long-tail candidates remain.",
    )
    prefix_alpha: float = Field(
        0.1, ge=0.01, le=0.15, description="Significance of the prefix guarantee (FA*IR's alpha)."
    )
    calibration_requests: int = Field(
        2000,
        ge=1,
        description="Requests whose lists the strength is calibrated on (a hashed sample of the run's; they "
        "reach the driver). The evaluate step checks the target on every list.",
    )
    when_unreachable: Literal["model_order", "strongest"] = Field(
        "model_order",
        description="When even the full strength misses the target (too few long-tail candidates), the "
        'run says by how much and writes its lists: "model_order" as the model ranked them, "strongest" '
        "at the full strength.",
    )

    @model_validator(mode="after")
    def _one_goal_at_least(self) -> FairnessTargetConfig:
        goals = (
            self.provider_gini_cut,
            self.max_provider_gini,
            self.min_long_tail_exposure,
            self.prefix_share,
        )
        if all(goal is None for goal in goals):
            raise ValueError(
                "fairness.target sets no goal: set provider_gini_cut, max_provider_gini, "
                "min_long_tail_exposure or prefix_share, or use fairness.control=weight"
            )
        return self


class FairnessConfig(_Section):
    mode: Literal["off", "on", "sweep"] = Field(
        "on",
        description='"off": ranked holds the model order. "on": each ranked list is re-ordered for '
        'provider-exposure fairness (and diversity, if on). "sweep": as on, and evaluate also measures '
        "every cut in sweep_gini_cuts (control target) or weight in sweep_weights (control weight).",
    )
    control: Literal["target", "weight"] = Field(
        "target",
        description='"target": each run calibrates the strategy\'s strength on its own lists so that they '
        'meet `target`, and records the strength in ranked.fairness_strength. "weight": the fixed strength '
        "`weight`.",
    )
    strategy: FairnessStrategy = Field(
        "list",
        description='"list": each list weighs relevance against its providers\' need on its own. "run": '
        "provider boosts fitted on the whole run even out its exposure (llmrank_spark/postprocess/"
        'fairness.py). "fa_ir": FA*IR with the long tail protected, strength = its proportion p. '
        "\"det_const_sort\": LinkedIn's DetConstSort, strength = the long tail's desired share.",
    )
    target: FairnessTargetConfig = Field(
        default_factory=FairnessTargetConfig,
        description="Control target: the exposure goal each run meets.",
    )
    fa_ir_alpha: float = Field(
        0.1, ge=0.01, le=0.15, description="Strategy fa_ir: the significance of its prefix test (alpha)."
    )
    # With control weight and strategy list: the largest swept weight that kept NDCG@10 within 2% on
    # MovieLens and the sample, on the runs it was picked on (docs/results.md, "Fairness sweep").
    weight: float = Field(
        0.2,
        ge=0,
        le=1,
        description="Control weight: the strength (lambda); 0 keeps the model order. list: the weight of "
        "provider need against relevance. run: the largest provider boost, as a share of a list's score "
        "range. fa_ir: the protected proportion p. det_const_sort: the long tail's desired share.",
    )
    exposure_k: int = Field(
        10,
        ge=1,
        description="The list depth whose position-discounted exposure the targets are measured at and the "
        "run strategy's boosts even out across providers.",
    )
    fit_requests: int = Field(
        20000,
        ge=1,
        description="Strategy run: requests whose lists the boosts are fitted on (a hashed sample of the "
        "run's; they reach the driver).",
    )
    sweep_weights: list[float] = Field(
        default_factory=lambda: [0.0, 0.1, 0.2, 0.25, 0.3, 0.4, 0.5, 0.7, 1.0],
        description="Mode sweep with control weight: the strengths evaluate measures, each as its own order.",
    )
    sweep_gini_cuts: list[float] = Field(
        default_factory=lambda: [0.05, 0.1, 0.2, 0.3],
        description="Mode sweep with control target: the provider-Gini cuts evaluate calibrates and "
        "measures, each as its own order (the report's cost-of-target curve).",
    )
    min_long_tail_share: float = Field(
        0.0,
        ge=0,
        le=1,
        description="Guarantee: every prefix of p positions holds at least floor(min_long_tail_share * p) "
        "long-tail items.",
    )
    keep_top: int = Field(
        0,
        ge=0,
        description="Positions at the top of each list kept in model order; the fairness pass re-orders "
        "the rest.",
    )
    long_tail_head_share: float = Field(
        0.5,
        gt=0,
        lt=1,
        description="Long-tail providers are those outside the most popular providers that together hold "
        "this share of interactions.",
    )
    provider_attribute: str | None = Field(
        None,
        description="The provider of an item: its brand, or when set the value of this key in its "
        "attributes (MovieLens has no studio: `year` makes release-year cohorts the providers).",
    )
    diversity: bool = Field(False, description="Re-order by MMR over categories before the fairness pass.")
    mmr_trade_off: float = Field(
        0.7,
        ge=0,
        le=1,
        description="Weight of relevance against category diversity in MMR; 1 = relevance only.",
    )
    require_providers: bool = Field(
        False,
        description="With mode on or sweep but no provider to be fair to, or no event up to the run date to "
        "measure providers by: false skips the pass with a warning (the lists stay in model order); true "
        "fails the step in preflight.",
    )


TrainLoss = Literal["bce", "ranknet", "hinge", "listnet", "lambdaloss"]
TRAIN_LOSSES = get_args(TrainLoss)
# What the fusion head can weigh besides the BERT logit: each retriever's rank of the item, and the item's
# popularity as log(1 + its events in interactions up to the run date), which every item has.
FUSION_FEATURES = (*RETRIEVERS, *QUERY_RETRIEVERS, "item_events")


class TrainConfig(_Section):
    """The fine-tuning job (`llmrank train`); docs/training.md explains each knob and the CPU budget."""

    loss: TrainLoss = Field(
        "listnet",
        description="Training loss. bce: pointwise; ranknet, hinge: pairwise; listnet, lambdaloss: listwise "
        "(docs/training.md).",
    )
    lists_per_user: int = Field(
        4,
        ge=2,
        description="Each user's newest events (one per item) that become lists; the newest of them is the "
        "validation slice.",
    )
    min_history: int = Field(
        5,
        ge=1,
        description="Users with fewer earlier events than this give no lists: their context would say too "
        "little.",
    )
    list_size: int = Field(8, ge=2, description="Items per training list: the target, then negatives.")
    architecture: Literal["pair", "shared_context", "late_context"] = Field(
        "shared_context",
        description="How the cross-encoder reads a request and its candidates, recorded in the artifact and "
        'served the same way. "pair": [CLS] context [SEP] item [SEP], one pass per candidate. '
        '"shared_context": the context encoded once per chunk of candidates, each candidate attending to '
        "the context and itself only; the default, as good at equal training time and 2.4 to 2.7 times "
        'faster to score. "late_context": as shared_context, but each candidate reads only itself in the '
        "first half of the layers, so a candidate recurring across lists is encoded there once per batch: "
        "3.8 to 4.3 times faster than pair, but 0.9 NDCG@10 lower on MovieLens; train it with "
        "trainable_layers=3 (docs/training.md, docs/results.md).",
    )
    hard_negatives: int = Field(
        3,
        ge=0,
        description="Negatives of a list drawn from the user's candidate list (after these and "
        "category_negatives, the rest are random catalogue items).",
    )
    category_negatives: int = Field(
        0,
        ge=0,
        description="Negatives of a list drawn from the target item's category: they differ from it in "
        "attributes, so the model must learn which attributes the shopper chose by (docs/training.md).",
    )
    negative_popularity_power: float = Field(
        0.0,
        ge=0.0,
        description="Category and random negatives are drawn with probability proportional to (1 + the "
        "item's events before the split)^power: 0 draws uniformly; 1 makes them about as popular as what "
        "shoppers chose, so popularity no longer tells the target apart (docs/training.md).",
    )
    max_train_lists: int = Field(
        600, ge=1, description="Lists trained on at most (a seeded sample), to keep a CPU run within budget."
    )
    max_query_lists: int = Field(
        200,
        ge=0,
        description="Search queries whose graded query_labels become training lists at most (a seeded "
        "sample, beside the users' lists, in the same model); 0, or no queries or query_labels table: the "
        "version learns from behaviour only and keeps queries in their retrieval order (docs/queries.md).",
    )
    heldout_query_share: float = Field(
        0.3,
        gt=0,
        lt=1,
        description="Share of the queries (by a hash of query_id) the version never trains on: it ranks "
        "queries only if it beats their retrieval order on these beyond chance.",
    )
    query_encoder_epochs: int = Field(
        1,
        ge=0,
        description="Passes of the query encoder's fine-tuning (MiniLM as a bi-encoder on the training "
        "queries' judged items, docs/queries.md); it ships in the artifact, and the candidates step's query "
        "semantic retriever uses it, only if it retrieves better than the packaged MiniLM for the held-out "
        "queries. 0: no query encoder.",
    )
    query_fusion_trees: int = Field(
        100,
        ge=0,
        description="Trees of the query fusion: LambdaMART over a query list's retrieval signals and the "
        "query lexicon (the values its words name, learned from the training queries), fitted on the "
        "held-out queries' lists and judged out of fold (docs/queries.md); the version ranks queries with "
        "it, no BERT pass, only if it beats their retrieval order beyond chance. 0: no query fusion.",
    )
    query_fusion_leaves: int = Field(
        7, ge=2, description="Leaves per tree of the query fusion: small, it learns from a few hundred lists."
    )
    query_fusion_learning_rate: float = Field(
        0.1, gt=0, le=1, description="Shrinkage of each tree of the query fusion."
    )
    query_encoder_pairs: int = Field(
        8,
        ge=1,
        description="Best-graded items per training query that the query encoder learns from, each with a "
        "hard negative (an item of the query's category without the values it names).",
    )
    query_encoder_batch_size: int = Field(
        32,
        ge=2,
        description="Pairs per step of the query encoder's fine-tuning; the other pairs of a batch are "
        "each pair's in-batch negatives.",
    )
    max_validation_lists: int = Field(
        150,
        ge=1,
        description="Lists validated on at most (a seeded sample), to keep a CPU run within budget.",
    )
    batch_lists: int = Field(
        4,
        ge=1,
        description="Lists per optimiser step; under the distributor, per process (a step trains on "
        "processes x this).",
    )
    epochs: int = Field(1, ge=1, description="Passes over the training lists.")
    max_seconds: float | None = Field(
        None,
        gt=0,
        description="Time budget of the fine-tuning loop: it stops at the first validation after this "
        "many seconds (the best weights are kept); unset: no limit. Lets architectures be compared at "
        "equal training time.",
    )
    learning_rate: float = Field(3e-5, gt=0, description="AdamW learning rate of the encoder's layers.")
    head_learning_rate: float = Field(
        1e-2, gt=0, description="Learning rate of the linear fusion head (no weight decay)."
    )
    # Freshly initialised on the base model (weights ~0.02), at the encoder's rate the classifier barely moves
    # in a CPU run, and every gradient into the encoder passes through it (docs/training.md).
    classifier_learning_rate: float | None = Field(
        None,
        gt=0,
        description="Learning rate of the cross-encoder's 1-logit classifier; unset: learning_rate.",
    )
    trainable_layers: int = Field(
        2,
        ge=0,
        le=12,
        description="Top encoder layers fine-tuned (MiniLM has 6); the frozen rest need no backward pass, "
        "which saves CPU time.",
    )
    max_length: int = Field(
        64,
        ge=16,
        le=512,
        description="Token budget of a training pair; the artifact records it and is served with it.",
    )
    eval_every_steps: int = Field(
        25, ge=1, description="Optimiser steps between validation NDCG@10 measurements."
    )
    patience: int = Field(
        3,
        ge=1,
        description="Evaluations without a better validation NDCG@10 before training stops (the best "
        "weights are kept).",
    )
    fusion: Literal["lambdamart", "linear"] = Field(
        "lambdamart",
        description='The reranker\'s last layer. "lambdamart": LightGBM LambdaMART over the ranking features '
        "(llmrank_spark/rerank/features.py) and the BERT logit, fitted on lists BERT did not train on. "
        '"linear": the BERT logit and fusion_features through the linear head trained with BERT.',
    )
    fusion_user_share: float = Field(
        0.5,
        gt=0,
        lt=1,
        description="Share of the users with lists whose lists train the LambdaMART fusion, not BERT "
        "(chosen by hash).",
    )
    fusion_random_negatives: int = Field(
        10,
        ge=0,
        description="Each fusion list is the user's candidate list, their targets and this many random "
        "catalogue items, so the fusion also learns to rank items no retriever proposed.",
    )
    max_fusion_lists: int = Field(
        600,
        ge=10,
        description="Users whose lists train the fusion at most, two lists each (seeded sample; the last "
        "fifth of the lists early-stop the trees).",
    )
    fusion_trees: int = Field(
        300, ge=1, description="Boosting rounds (trees) of the LambdaMART fusion at most."
    )
    fusion_learning_rate: float = Field(0.05, gt=0, description="Learning rate of the LambdaMART fusion.")
    fusion_leaves: int = Field(15, ge=2, description="Leaves per tree of the LambdaMART fusion.")
    gate_days: int = Field(
        14,
        ge=0,
        description="Days at the end of the interactions held out to gate promotion: the new version "
        "becomes the champion only if it beats the retrieval order and the champion on them "
        "(docs/training.md). 0: no gate, never promoted.",
    )
    gate_max_requests: int = Field(
        400,
        ge=10,
        description="Users measured by the gate at most (a seeded hashed sample of those with label events).",
    )
    fusion_features: list[str] = Field(
        default_factory=lambda: list(FUSION_FEATURES),
        description="Retrieval features the linear head weighs with the BERT logit; [] trains and serves the "
        "logit alone.",
    )
    event_grades: dict[str, float] = Field(
        default_factory=lambda: {"view": 0.25, "click": 0.5, "add_to_cart": 0.75, "purchase": 1.0},
        description="Graded relevance of a list's positive by event type; a rating's grade is its value / "
        "rating_scale.",
    )
    rating_scale: float = Field(
        5.0, gt=0, description="The top rating: a rating's grade is its value / this."
    )
    warm_start: bool = Field(
        True,
        description="Start from the newest registered version (mlflow.model_name) when there is one "
        "(continual updates).",
    )
    model_root: str | None = Field(
        None,
        description="Where registered artifacts that the registry keeps remotely (a Databricks workspace, "
        "Unity Catalog) are downloaded to be served, one directory per version: a path the executors can "
        "read; unset: <lakehouse.root>/models.",
    )
    seed: int = Field(42, description="Random seed of sampling, initialisation and the fusion trees.")
    threads: int = Field(
        2, ge=1, description="torch CPU threads of the training loop (of each process under the distributor)."
    )
    distributor_processes: int = Field(
        0,
        ge=0,
        description="0: the training loop runs in the driver's process. N: it runs in N processes under "
        "Spark's TorchDistributor (docs/training.md), each on its share of every step's lists, the "
        "gradients averaged. They run on the driver with a local master, else in barrier tasks on the "
        "executors; one process per GPU when Spark gives each a GPU (spark.task.resource.gpu.amount 1, "
        "spark.driver.resource.gpu.amount locally).",
    )

    @field_validator("fusion_features")
    @classmethod
    def _known_features(cls, features: list[str]) -> list[str]:
        unknown = sorted(set(features) - set(FUSION_FEATURES))
        if unknown:
            raise ValueError(
                f"unknown fusion feature(s) {unknown}; the features are {', '.join(FUSION_FEATURES)}"
            )
        return features


# A registered model: one name of the workspace registry, or a Unity Catalog catalog.schema.model.
WORKSPACE_MODEL_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_-]*$")
UNITY_CATALOG_MODEL_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*){2}$")


class MlflowConfig(_Section):
    tracking_uri: str | None = Field(
        None,
        description='Where `train` logs its runs: an MLflow tracking URI ("databricks" on Databricks); '
        "unset: a SQLite store at <lakehouse.root>/mlflow/mlflow.db, its artifacts beside it.",
    )
    registry_uri: str | None = Field(
        None,
        description='Where versions are registered and resolved ("databricks-uc": Unity Catalog); '
        "unset: the tracking store.",
    )
    experiment: str = Field(
        "llmrank-reranker",
        description="The MLflow experiment of the training runs; on Databricks a workspace path, e.g. "
        "/Shared/llmrank-reranker.",
    )
    model_name: str = Field(
        "llmrank_reranker",
        description="The registered model that holds every trained version: a name, or catalog.schema.model "
        "in Unity Catalog.",
    )
    pinned_version: int | None = Field(
        None,
        ge=1,
        description="A registered version that rerank.mode=champion serves instead of the `champion` alias "
        "(a rollback or a canary); unset: the alias.",
    )

    @field_validator("model_name")
    @classmethod
    def _model_name(cls, name: str) -> str:
        if not (WORKSPACE_MODEL_NAME.match(name) or UNITY_CATALOG_MODEL_NAME.match(name)):
            raise ValueError(
                f"{name!r} is neither a model name (letters, digits, _ and -) nor a Unity Catalog "
                "catalog.schema.model name, e.g. main.ranking.llmrank_reranker"
            )
        return name

    @model_validator(mode="after")
    def _unity_catalog_names(self) -> MlflowConfig:
        if (self.registry_uri or "").startswith("databricks-uc") and "." not in self.model_name:
            raise ValueError(
                f"registry_uri {self.registry_uri!r} is Unity Catalog: give model_name as "
                f"catalog.schema.model, e.g. main.ranking.{self.model_name}"
            )
        return self


class AttributesConfig(_Section):
    method: Literal["behaviour", "occlusion"] = Field(
        "behaviour",
        description="behaviour: importance to the shopper or query, from what they chose against what "
        "their category offered (docs/attributes.md); occlusion: what the reranker's score owes to each "
        "attribute, an explanation of the ranker.",
    )
    prior_events: float = Field(
        1.0,
        ge=0.0,
        description="behaviour: choices' worth of the segment's value shares added to a context's own when "
        "picking the value it prefers (0: its own choices alone).",
    )
    shrink_events: float = Field(
        5.0,
        ge=0.0,
        description="behaviour: choices' worth of the segment's rates a context's rates are shrunk toward "
        "(and a segment's toward its category's): a shopper with few choices reads mostly as their segment.",
    )
    top_k_items: int = Field(
        10,
        ge=1,
        description="Ranked items per request whose attributes are ordered; with occlusion each costs 1 + "
        "(its attributes) scored pairs.",
    )
    max_attributes: int = Field(
        8,
        ge=1,
        description="occlusion: attributes scored per item at most, in item-text order: the item_fields, "
        "then the attributes map by name.",
    )
    # Brand is what shoppers and merchandisers name first.
    item_fields: list[Literal["brand", "category", "price"]] = Field(
        default_factory=lambda: ["brand"],  # type: ignore[arg-type]  # mypy reads ["brand"] as list[str]
        description="Item columns that count as attributes besides the attributes map (with occlusion, "
        "when the item template shows them).",
    )
    model_epochs: int = Field(
        3,
        ge=0,
        description="behaviour: epochs of the attribute model, a MiniLM cross-encoder fine-tuned each run on "
        "the contexts that chose enough, which orders the attributes of contexts with no choices in a "
        "category from their text (docs/attributes.md); 0: no model, such contexts read their segment's "
        "or category's order.",
    )
    model_request_types: list[Literal["user", "query"]] = Field(
        default_factory=lambda: ["query"],  # type: ignore[arg-type]  # mypy reads ["query"] as list[str]
        description="behaviour: request types the attribute model learns from and serves. Queries: a new "
        "query's text names what it wants; shoppers: their segment's order was measured closer to their "
        "segment's truth than the model's (docs/results.md), so they are not in the default.",
    )
    model_min_choices: float = Field(
        3.0,
        gt=0.0,
        description="behaviour: choices' worth a context made in a category for its attributes there to be "
        "one of the model's training lists (a query's judged item weighs 2^grade - 1).",
    )
    model_max_lists: int = Field(
        600,
        ge=1,
        description="behaviour: (context, category) lists the attribute model trains on at most, drawn by a "
        "seeded hash; a fifth as many more are held out for its verdict. Only these reach the driver.",
    )
    model_max_length: int = Field(
        64, ge=16, le=512, description="behaviour: tokens of (context, attribute text) the model reads."
    )
    model_base_path: str | None = Field(
        None,
        description="behaviour: directory of the BERT the attribute model starts from (transformers "
        "format); unset: the packaged all-MiniLM-L6-v2.",
    )


class Config(_Section):
    spark: SparkConfig = Field(
        default_factory=SparkConfig, description="The Spark session a job starts when none is active."
    )
    lakehouse: LakehouseConfig = Field(
        default_factory=LakehouseConfig,
        description="Where the Delta tables live: a directory or a catalog schema, with per-table "
        "exceptions.",
    )
    run: RunConfig = Field(
        default_factory=RunConfig,
        description="This run: the date whose partition every step reads and writes.",
    )
    sample: SampleConfig = Field(
        default_factory=SampleConfig,
        description="The embedded sample lakehouse (`llmrank generate-sample`): its size and seed.",
    )
    candidates: CandidatesConfig = Field(
        default_factory=CandidatesConfig,
        description="First stage: the retrievers and the blender that give each user N candidate items.",
    )
    rerank: RerankConfig = Field(
        default_factory=RerankConfig,
        description="Second stage: the model that re-orders each candidate list, the text it reads and how "
        "it runs.",
    )
    faults: FaultsConfig = Field(
        default_factory=FaultsConfig,
        description="Test-only fault injection (docs/reliability.md); every key must stay unset in "
        "production.",
    )
    evaluate: EvaluateConfig = Field(
        default_factory=EvaluateConfig,
        description="The evaluate step: metric depths, labels and the user groups whose quality is compared.",
    )
    fairness: FairnessConfig = Field(
        default_factory=FairnessConfig,
        description="Provider-exposure fairness and diversity re-ordering of the ranked lists.",
    )
    train: TrainConfig = Field(
        default_factory=TrainConfig,
        description="Fine-tuning the reranker (`llmrank train`); docs/training.md explains each knob and the "
        "CPU budget.",
    )
    mlflow: MlflowConfig = Field(
        default_factory=MlflowConfig,
        description="The model registry and tracking: where `train` logs and registers versions and which "
        "version `rerank` serves (docs/training.md).",
    )
    attributes: AttributesConfig = Field(
        default_factory=AttributesConfig,
        description="The attributes step: which attributes of the top ranked items matter, by occlusion.",
    )

    def table_path(self, table: str) -> str:
        """Where a table lives (a path, or a catalog name): a `lakehouse.tables` entry, else the default."""
        return self.lakehouse.table_location(table)

    def redacted_json(self) -> str:
        """The config as JSON with every credential replaced by REDACTED: what `runs.config` stores."""
        return json.dumps(redact(self.model_dump(mode="json")))


class _YamlLoader(yaml.SafeLoader):
    """YAML with the 1.2 core schema's booleans and no implicit dates: `mode: off` is the string "off", not
    False, and a date stays text for RunConfig to check, so a wrong one is a config error, not a traceback."""


_YAML_BOOL, _YAML_TIMESTAMP = "tag:yaml.org,2002:bool", "tag:yaml.org,2002:timestamp"
_YamlLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag not in (_YAML_BOOL, _YAML_TIMESTAMP)]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_YamlLoader.add_implicit_resolver(
    _YAML_BOOL, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)


def _yaml_problem(error: yaml.YAMLError) -> str:
    mark = getattr(error, "problem_mark", None)
    problem = getattr(error, "problem", None) or str(error).splitlines()[0]
    return f"{problem} at line {mark.line + 1}, column {mark.column + 1}" if mark else problem


def _override_target(dotted_key: str) -> tuple[list[str], Any]:
    """The path of `dotted_key` in the config tree and the type of the value there (None: no such key).

    A key under a mapping field is one entry however many dots it holds: `spark.conf.spark.hadoop.x` sets the
    entry `spark.hadoop.x` of spark.conf, `lakehouse.tables.ranked` the entry `ranked` of lakehouse.tables.
    """
    parts = dotted_key.split(".")
    model: type[BaseModel] = Config
    for index, part in enumerate(parts[:-1]):
        field = model.model_fields.get(part)
        if field is None:
            return parts, None
        if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
            model = field.annotation
        elif typing.get_origin(field.annotation) is dict:
            return [*parts[: index + 1], ".".join(parts[index + 1 :])], typing.get_args(field.annotation)[1]
        else:
            raise ConfigError(f"--set {dotted_key}: '{part}' is a value, not a section")
    field = model.model_fields.get(parts[-1])
    return parts, None if field is None else field.annotation


def _override_value(dotted_key: str, raw: str, annotation: Any) -> Any:
    """The override's text as the field's type reads it: text for a string field (`off` stays "off"; one
    pair of YAML quotes around it is taken off, as `--set "rerank.user_template='{segment} shopper'"` has
    always been written), YAML or JSON for a list, mapping or section, null/~/empty for None where None is
    allowed, and otherwise the text itself for the model to parse strictly (`yes` is no integer, `20261120`
    no date)."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        allowed = typing.get_args(annotation)
        if type(None) in allowed and raw.strip() in ("", "null", "~"):
            return None
        others = [kind for kind in allowed if kind is not type(None)]
        annotation = others[0] if len(others) == 1 else annotation
    structured = typing.get_origin(annotation) in (list, dict) or (
        isinstance(annotation, type) and issubclass(annotation, BaseModel)
    )
    if not structured:
        return _unquoted(raw)
    try:
        return yaml.load(raw, Loader=_YamlLoader)
    except yaml.YAMLError as error:
        raise ConfigError(
            f"--set {dotted_key}: {_yaml_problem(error)} in its value; write a YAML or JSON list or mapping, "
            "e.g. --set 'evaluate.ks=[10, 50]'"
        ) from None


def _unquoted(raw: str) -> str:
    """`raw` without its quotes when it is one quoted YAML string, else `raw` as it is."""
    if len(raw) < 2 or raw[0] != raw[-1] or raw[0] not in "'\"":
        return raw
    try:
        value = yaml.load(raw, Loader=_YamlLoader)
    except yaml.YAMLError:
        return raw
    return value if isinstance(value, str) else raw


def _set_path(tree: dict[str, Any], path: list[str], value: Any, dotted_key: str) -> None:
    node = tree
    for part in path[:-1]:
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"--set {dotted_key}: '{part}' is a value, not a section")
        node = child
    node[path[-1]] = value


def parse_override(text: str) -> tuple[list[str], Any]:
    """Split ``key=value`` into the key's path in the config tree and the value read as that key's type."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(
            f"--set expects key=value, got {text!r} (for example --set candidates.n_per_request=50)"
        )
    path, annotation = _override_target(key)
    return path, _override_value(key, raw, annotation)


def _describe(error: ValidationError) -> str:
    lines = []
    for item in error.errors():
        key = ".".join(str(p) for p in item["loc"])
        if item["type"] == "extra_forbidden":
            lines.append(
                f"unknown config key '{key}': remove it or check its spelling against conf/local.yaml"
            )
        else:
            got = redact(item.get("input"), str(item["loc"][-1]) if item["loc"] else "")
            message = item["msg"].removeprefix("Value error, ")
            lines.append(f"config key '{key}': {message} (got {got!r})")
    return "; ".join(lines)


def _read_config_file(path: Path) -> dict[str, Any]:
    if not path.exists():
        raise ConfigError(f"config file {path} does not exist; pass --config conf/local.yaml or another file")
    if not path.is_file():
        raise ConfigError(f"config file {path} is not a file; pass a YAML file such as conf/local.yaml")
    try:
        loaded = yaml.load(path.read_text(encoding="utf-8"), Loader=_YamlLoader) or {}
    except OSError as error:
        raise ConfigError(
            f"config file {path} cannot be read ({error.strerror}); make it readable by this user"
        ) from None
    except UnicodeDecodeError:
        raise ConfigError(f"config file {path} is not UTF-8 text; save it as UTF-8") from None
    except yaml.YAMLError as error:
        raise ConfigError(
            f"config file {path} is not valid YAML: {_yaml_problem(error)}; fix the file"
        ) from None
    if not isinstance(loaded, dict):
        raise ConfigError(f"config file {path} must hold a mapping of sections, not {type(loaded).__name__}")
    return loaded


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Read a YAML config (None: the built-in defaults, as conf/local.yaml spells out) and apply overrides."""
    path = None if path is None else Path(path)
    tree = {} if path is None else _read_config_file(path)
    for text in overrides or []:
        path_in_tree, value = parse_override(text)
        _set_path(tree, path_in_tree, value, text.partition("=")[0].strip())
    try:
        return Config.model_validate(tree)
    except ValidationError as error:
        where = f" in {path}" if path else ""
        raise ConfigError(_describe(error) + where) from None
