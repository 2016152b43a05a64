import datetime as dt
from pathlib import Path

import pandas as pd
import pytest
from pyspark.sql import functions as F

from llmrank_spark.lakehouse import (
    ContractError,
    frame_from_pandas,
    read_table,
    write_table,
)
from llmrank_spark.lakehouse.tables_doc import render_tables_doc

DOCS = Path(__file__).resolve().parents[1] / "docs" / "tables.md"


def _items(spark):
    frame = pd.DataFrame(
        {
            "item_id": ["I1", "I2"],
            "title": ["Blue boots", "Red jacket"],
            "category": ["boots", "jackets"],
            "brand": ["Acme", None],
            "attributes": [{"colour": "blue"}, None],
        }
    )
    return frame_from_pandas(spark, frame, "items")


def _candidates(spark, run_date: dt.date, n: int = 3):
    return spark.createDataFrame(
        [
            (
                run_date,
                "U1",
                "user",
                f"I{i}",
                i,
                1.0 / i,
                ["popularity"],
                {"popularity": i},
                {"popularity": 1.0},
            )
            for i in range(1, n + 1)
        ],
        "run_date date, request_id string, request_type string, item_id string, retrieval_rank int, "
        "retrieval_score double, sources array<string>, source_ranks map<string,int>, "
        "source_scores map<string,double>",
    )


def test_docs_tables_md_is_generated_from_the_contracts():
    assert DOCS.read_text() == render_tables_doc(), "run `make docs` to regenerate docs/tables.md"


def test_round_trip_keeps_contract_columns_and_nulls(spark, config):
    write_table(_items(spark), config, "items")
    back = read_table(spark, config, "items").orderBy("item_id").collect()
    assert [r.item_id for r in back] == ["I1", "I2"]
    assert back[0].attributes == {"colour": "blue"}
    assert back[1].brand is None and back[1].price is None


def test_missing_required_column_names_table_and_column(spark, config):
    write_table(_items(spark), config, "items")
    broken = spark.read.format("delta").load(config.table_path("items")).drop("title")
    broken.write.format("delta").mode("overwrite").option("overwriteSchema", "true").save(
        config.table_path("items")
    )
    with pytest.raises(ContractError, match=r"table 'items'.*missing required column 'title'"):
        read_table(spark, config, "items")


def test_wrong_type_names_table_and_column(spark, config):
    frame = _items(spark).withColumn("price", F.lit("cheap"))
    with pytest.raises(ContractError, match=r"table 'items'.*column 'price' has type string.*double"):
        write_table(frame, config, "items")
    assert not Path(config.table_path("items")).exists(), "nothing may be written on a contract violation"


def test_null_key_is_rejected_on_read(spark, config):
    frame = _items(spark).withColumn(
        "item_id", F.when(F.col("item_id") == "I2", None).otherwise(F.col("item_id"))
    )
    write_table(frame, config, "items")
    with pytest.raises(ContractError, match=r"table 'items'.*key column 'item_id' is null in 1 rows"):
        read_table(spark, config, "items")


def test_extra_input_columns_are_ignored(spark, config):
    write_table(_items(spark), config, "items")
    path = config.table_path("items")
    extra = spark.read.format("delta").load(path).withColumn("warehouse", F.lit("north"))
    extra.write.format("delta").mode("overwrite").option("overwriteSchema", "true").save(path)
    assert "warehouse" not in read_table(spark, config, "items").columns


def test_missing_table_says_how_to_create_inputs(spark, config):
    with pytest.raises(ContractError, match=r"table 'interactions' not found.*generate-sample"):
        read_table(spark, config, "interactions")


@pytest.mark.parametrize(
    ("layout", "partitions", "clustering"),
    [("partitioned", ["run_date"], []), ("liquid", [], ["run_date", "request_id"])],
)
def test_rerunning_a_date_replaces_it_and_keeps_others_in_either_layout(
    spark, config, layout, partitions, clustering
):
    config.lakehouse.layout = layout
    day1, day2 = dt.date(2026, 11, 19), dt.date(2026, 11, 20)
    write_table(_candidates(spark, day1), config, "candidates", day1)
    write_table(_candidates(spark, day2), config, "candidates", day2)
    write_table(_candidates(spark, day2), config, "candidates", day2)
    table = spark.read.format("delta").load(config.table_path("candidates"))
    counts = {r.run_date: r["count"] for r in table.groupBy("run_date").count().collect()}
    assert counts == {day1: 3, day2: 3}
    name = f"delta.`{config.table_path('candidates')}`"
    writes = spark.sql(f"DESCRIBE HISTORY {name}").where("operation = 'WRITE'").collect()
    assert len(writes) == 3, "one commit per write: a date is replaced atomically"
    detail = spark.sql(f"DESCRIBE DETAIL {name}").first()
    assert (detail.partitionColumns, detail.clusteringColumns) == (partitions, clustering)


def test_write_rejects_rows_of_another_date(spark, config):
    with pytest.raises(ContractError, match="table 'candidates': rows with run_date other than 2026-11-20"):
        write_table(_candidates(spark, dt.date(2026, 11, 19)), config, "candidates", dt.date(2026, 11, 20))
    day = dt.date(2026, 11, 20)
    write_table(_candidates(spark, day), config, "candidates", day)
    # Checked as the rows are written: a wrong row fails the write and nothing of it is committed.
    mixed = _candidates(spark, day).unionByName(_candidates(spark, dt.date(2026, 11, 21)))
    with pytest.raises(ContractError, match="run_date other than 2026-11-20"):
        write_table(mixed, config, "candidates", day)
    name = f"delta.`{config.table_path('candidates')}`"
    assert spark.sql(f"DESCRIBE HISTORY {name}").count() == 1
    assert spark.read.format("delta").load(config.table_path("candidates")).count() == 3


def test_outputs_have_the_change_data_feed_enabled(spark, config):
    day = dt.date(2026, 11, 20)
    write_table(_candidates(spark, day), config, "candidates", day)
    properties = spark.sql(f"SHOW TBLPROPERTIES delta.`{config.table_path('candidates')}`").collect()
    assert {r.key: r.value for r in properties}.get("delta.enableChangeDataFeed") == "true"


def test_pinned_read_sees_the_version_it_asked_for(spark, config):
    from llmrank_spark.lakehouse import latest_version

    write_table(_items(spark), config, "items")
    write_table(_items(spark).where("item_id = 'I1'"), config, "items")
    assert latest_version(spark, config, "items") == 1
    assert read_table(spark, config, "items", version=0).count() == 2
    assert read_table(spark, config, "items").count() == 1


def test_a_relative_root_is_the_working_directory_s_and_delta_sql_finds_its_tables(
    spark, tmp_path, monkeypatch
):
    """The default root, `lakehouse`, as `make demo` runs it: Delta's SQL takes only absolute paths."""
    from llmrank_spark.config import load_config
    from llmrank_spark.lakehouse import latest_version

    monkeypatch.chdir(tmp_path)
    config = load_config(overrides=["lakehouse.root=lakehouse"])
    assert config.table_path("items") == f"{tmp_path}/lakehouse/items"
    write_table(_items(spark), config, "items")
    assert latest_version(spark, config, "items") == 0
    assert (tmp_path / "lakehouse" / "items" / "_delta_log").is_dir()


def test_catalog_names_are_used_for_managed_tables(spark, tmp_path):
    from llmrank_spark.config import load_config

    spark.sql("CREATE DATABASE IF NOT EXISTS llmrank_test")
    config = load_config(overrides=["lakehouse.catalog_schema=spark_catalog.llmrank_test"])
    assert config.table_path("items") == "spark_catalog.llmrank_test.items"
    try:
        write_table(_items(spark), config, "items")
        assert read_table(spark, config, "items").count() == 2
    finally:
        spark.sql("DROP TABLE IF EXISTS spark_catalog.llmrank_test.items")


def test_liquid_layout_replaces_a_date_of_a_managed_table(spark):
    from llmrank_spark.config import load_config

    spark.sql("CREATE DATABASE IF NOT EXISTS llmrank_test")
    config = load_config(
        overrides=["lakehouse.catalog_schema=spark_catalog.llmrank_test", "lakehouse.layout=liquid"]
    )
    name = config.table_path("candidates")
    day = dt.date(2026, 11, 20)
    try:
        write_table(_candidates(spark, day), config, "candidates", day)
        write_table(_candidates(spark, day), config, "candidates", day)
        assert spark.table(name).count() == 3
        assert spark.sql(f"DESCRIBE DETAIL {name}").first().clusteringColumns == ["run_date", "request_id"]
    finally:
        spark.sql(f"DROP TABLE IF EXISTS {name}")
