"""Inputs and settings a step can check up front fail it in preflight: a one-paragraph message, exit 1,
no traceback on stderr, the trace in the log file it names, and every output table as it was.

The lakehouse holds items without the optional `brand` column, so the default fairness pass has no
provider to be fair to: rerank skips it with a warning unless fairness.require_providers insists.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pandas as pd
import pytest
from delta.tables import DeltaTable
from test_ranking import CANDIDATES, EVENTS, ITEMS
from tiny_reranker import tiny_artifact

from llmrank_spark.config import load_config
from llmrank_spark.lakehouse import frame_from_pandas, load, write_table
from llmrank_spark.pipeline import main

RUN_DATE = dt.date(2026, 11, 20)


@pytest.fixture(scope="module")
def lakehouse(spark, tmp_path_factory) -> list[str]:
    """The --set overrides of a lakehouse with brand-less items, events, a queries table and candidates."""
    root = tmp_path_factory.mktemp("preflight")
    overrides = [
        f"lakehouse.root={root / 'lakehouse'}",
        f"run.run_date={RUN_DATE}",
        "rerank.mode=cross_encoder",
        f"rerank.model_path={tiny_artifact()}",
        "rerank.top_k=3",
    ]
    config = load_config(overrides=overrides)
    items = frame_from_pandas(spark, ITEMS, "items").drop("brand")
    items.write.format("delta").save(config.table_path("items"))  # no brand column at all
    write_table(frame_from_pandas(spark, EVENTS, "interactions"), config, "interactions")
    write_table(frame_from_pandas(spark, CANDIDATES, "candidates"), config, "candidates", RUN_DATE)
    return overrides


def llmrank(command: str, overrides: list[str], *extra: str) -> int:
    return main([command, *[arg for o in [*overrides, *extra] for arg in ("--set", o)]])


def _version(spark, path: str) -> int | None:
    return DeltaTable.forPath(spark, path).history(1).first().version if Path(path).exists() else None


def _table(spark, rows: pd.DataFrame, table: str, path: Path) -> str:
    frame_from_pandas(spark, rows, table).write.format("delta").save(str(path))
    return str(path)


def _fails_cleanly(capsys, code: int, *words: str) -> str:
    """The stderr message of a failed command: exit 1, one paragraph with `words`, the trace in its log."""
    err = capsys.readouterr().err.strip()
    assert code == 1, err
    message = err.splitlines()[-1]
    assert "Traceback" not in err and all(word in message for word in words), err
    log = Path(message.rsplit("(full trace: ", 1)[1].rstrip(")"))
    assert "Traceback" in log.read_text()
    return message


def test_rerank_without_providers_skips_the_fairness_pass_with_a_warning(spark, lakehouse, capsys):
    assert llmrank("rerank", lakehouse) == 0
    printed = capsys.readouterr().out
    assert "WARNING: fairness pass skipped: no item of table 'items' has a provider" in printed

    config = load_config(overrides=lakehouse)
    run = load(spark, config.table_path("runs")).where("step = 'rerank'").first()
    assert run.status == "succeeded" and "column 'brand' is absent or null" in run.warnings[0]
    ranked = load(spark, config.table_path("ranked")).toPandas()
    assert set(ranked.request_id) == set(CANDIDATES.request_id), "every request is ranked"
    assert (ranked["rank"] == ranked.model_rank).all(), "the lists are in model order"


@pytest.mark.parametrize(
    ("extra", "words"),
    [
        (["fairness.require_providers=true"], ["fairness pass", "column 'brand'", "require_providers"]),
        (["rerank.model_path=/nonexistent/model"], ["reranker artifact /nonexistent/model", "llmrank train"]),
        (["run.run_date=2026-12-24"], ["table 'candidates' has no rows for run_date 2026-12-24"]),
    ],
    ids=["fairness-required", "missing-model", "no-candidates-for-date"],
)
def test_rerank_preflight_fails_before_scoring(spark, lakehouse, capsys, monkeypatch, tmp_path, extra, words):
    monkeypatch.setenv("LLMRANK_LOG_DIR", str(tmp_path / "logs"))
    ranked = load_config(overrides=lakehouse).table_path("ranked")
    before = _version(spark, ranked)
    _fails_cleanly(capsys, llmrank("rerank", lakehouse, *extra), *words)
    assert _version(spark, ranked) == before


def test_empty_interactions_leave_no_popularity_to_be_fair_by(spark, lakehouse, capsys, tmp_path):
    empty = _table(spark, EVENTS.iloc[:0], "interactions", tmp_path / "empty")
    extra = [f"lakehouse.tables.interactions={empty}", "fairness.require_providers=true"]
    items = _table(spark, ITEMS, "items", tmp_path / "branded")  # providers, but no events to weigh them
    outside = "lakehouse.external_tables=[interactions, items]"  # tables kept outside the lakehouse root
    code = llmrank("rerank", lakehouse, *extra, f"lakehouse.tables.items={items}", outside)
    _fails_cleanly(capsys, code, "table 'interactions' has no event up to run.run_date 2026-11-20")


def test_a_run_dated_before_every_event_fails_in_preflight(spark, lakehouse, capsys):
    code = llmrank("candidates", lakehouse, "run.run_date=2020-01-01")
    _fails_cleanly(capsys, code, "run.run_date 2020-01-01 is before every event of table 'interactions'")


@pytest.mark.parametrize(
    ("table", "rows", "command", "words"),
    [
        ("items", pd.concat([ITEMS, ITEMS.iloc[:1]]), "rerank", "table 'items': key (item_id) is not unique"),
        ("users", pd.DataFrame({"user_id": ["u1", "u1"]}), "candidates", "user_id='u1' is on 2 rows"),
    ],
)
def test_a_duplicated_input_key_fails_in_preflight(
    spark, lakehouse, capsys, tmp_path, table, rows, command, words
):
    path = _table(spark, rows, table, tmp_path / table)
    outside = f"lakehouse.external_tables=[{table}]"
    _fails_cleanly(capsys, llmrank(command, lakehouse, f"lakehouse.tables.{table}={path}", outside), words)


def test_an_unwritable_lakehouse_fails_before_scoring_and_keeps_the_real_cause(
    spark, lakehouse, capsys, tmp_path
):
    # A file where the output directories should be: no process, root included, can create them.
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    extra = [
        f"lakehouse.tables.ranked={blocker}/ranked",
        f"lakehouse.tables.runs={blocker}/runs",
        "lakehouse.external_tables=[ranked, runs]",
    ]
    message = _fails_cleanly(
        capsys,
        llmrank("rerank", lakehouse, *extra),
        f"table 'ranked': output location {blocker}/ranked is not writable",
        "could not be logged to table 'runs'",
    )
    assert message.index("table 'ranked'") < message.index("table 'runs'"), "the real cause comes first"
    assert blocker.is_file() and blocker.read_text() == "", "nothing was written there"
