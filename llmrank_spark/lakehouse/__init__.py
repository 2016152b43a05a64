"""The lakehouse: the Spark session, table contracts, Delta reads and writes, reject rows."""

from llmrank_spark.lakehouse.contracts import (
    CONTRACTS,
    FAIRNESS_STRENGTH,
    REQUEST_KEY,
    ContractError,
    check_schema,
    conform,
    contract,
    frame_from_pandas,
    in_hashed_share,
)
from llmrank_spark.lakehouse.delta import latest_version, load, read_table, table_exists, write_table
from llmrank_spark.lakehouse.rejects import (
    CHECKED_COLUMNS,
    CHECKED_SCHEMA,
    ITEM_NOT_IN_CATALOGUE,
    NO_CANDIDATES,
    NON_FINITE_SCORE,
    PAIR_COLUMNS,
    REASONS,
    UNKNOWN_EVENT_TYPE,
    as_rejects,
    check_pairs,
)
from llmrank_spark.lakehouse.session import get_spark, is_connect

__all__ = [
    "CHECKED_COLUMNS",
    "CHECKED_SCHEMA",
    "CONTRACTS",
    "FAIRNESS_STRENGTH",
    "ITEM_NOT_IN_CATALOGUE",
    "NON_FINITE_SCORE",
    "NO_CANDIDATES",
    "PAIR_COLUMNS",
    "REASONS",
    "REQUEST_KEY",
    "UNKNOWN_EVENT_TYPE",
    "ContractError",
    "as_rejects",
    "check_pairs",
    "check_schema",
    "conform",
    "contract",
    "frame_from_pandas",
    "get_spark",
    "in_hashed_share",
    "is_connect",
    "latest_version",
    "load",
    "read_table",
    "table_exists",
    "write_table",
]
