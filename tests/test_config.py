from pathlib import Path

import pytest
import yaml

from llmrank_spark.cli import main
from llmrank_spark.config import Config, ConfigError, load_config

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"


def test_local_yaml_spells_out_the_builtin_defaults():
    from_file = load_config(CONF_DIR / "local.yaml").model_dump(exclude={"run"})
    assert from_file == Config().model_dump(exclude={"run"})
    # Every key is spelled out, not just left to its default: `make docs` rewrites the file.
    spelled = yaml.safe_load((CONF_DIR / "local.yaml").read_text())
    assert spelled == Config().model_dump(mode="json", exclude={"run"})


def test_override_keeps_yaml_types():
    config = load_config(overrides=["candidates.n_per_request=25", "rerank.quantize_int8=true"])
    assert config.candidates.n_per_request == 25
    assert config.rerank.quantize_int8 is True


def test_run_date_override_is_a_date():
    config = load_config(overrides=["run.run_date=2026-11-20"])
    assert config.run.run_date.isoformat() == "2026-11-20"


def test_unknown_key_is_named():
    with pytest.raises(ConfigError, match=r"unknown config key 'candidates.n_per_requests'"):
        load_config(overrides=["candidates.n_per_requests=10"])


def test_unknown_section_in_file_is_named(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({"rerankk": {"top_k": 5}}))
    with pytest.raises(ConfigError, match=r"unknown config key 'rerankk'.*bad.yaml"):
        load_config(path)


def test_wrong_type_is_named():
    with pytest.raises(ConfigError, match=r"config key 'rerank.top_k'.*'many'"):
        load_config(overrides=["rerank.top_k=many"])


def test_out_of_range_value_is_named():
    with pytest.raises(ConfigError, match=r"config key 'candidates.n_per_request'"):
        load_config(overrides=["candidates.n_per_request=0"])


def test_malformed_override_says_what_to_write():
    with pytest.raises(ConfigError, match="key=value"):
        load_config(overrides=["candidates.n_per_request"])


def test_missing_config_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match=r"nope\.yaml does not exist"):
        load_config(tmp_path / "nope.yaml")


def test_table_path_defaults_under_root_and_honours_explicit_paths():
    config = load_config(overrides=["lakehouse.root=/data/lake", "lakehouse.tables={ranked: /gold/ranked}"])
    assert config.table_path("items") == "/data/lake/items"
    assert config.table_path("ranked") == "/gold/ranked"


def test_cli_rejects_bad_config_before_spark_starts(capsys):
    from pyspark.sql import SparkSession

    active_before = SparkSession.getActiveSession()
    assert main(["candidates", "--set", "candidates.bogus=1"]) == 2
    assert "unknown config key 'candidates.bogus'" in capsys.readouterr().err
    # No session was created by the failed command.
    assert SparkSession.getActiveSession() is active_before


@pytest.mark.parametrize(
    "override",
    [
        "lakehouse.tables={ranked: 'gold.ranked; DROP TABLE x'}",
        "lakehouse.tables={ranked: '/data/ranked`'}",
        "lakehouse.catalog_schema=main",
        "lakehouse.root=/data/lake'--",
    ],
)
def test_table_locations_that_could_inject_sql_are_rejected(override):
    with pytest.raises(ConfigError, match="lakehouse"):
        load_config(overrides=[override])


def test_databricks_config_uses_unity_catalog_names_and_cluster_delta():
    config = load_config(CONF_DIR / "databricks.yaml")
    assert config.spark.delta_jars == "provided"
    assert config.table_path("ranked") == "main.llmrank.ranked"


@pytest.mark.parametrize("name", ["demo.yaml", "databricks.yaml", "gpu-cluster.yaml", "gpu-train.yaml"])
def test_every_shipped_config_file_validates(name):
    config = load_config(CONF_DIR / name)
    # Each file changes only what it names; everything else stays the built-in default.
    changed = yaml.safe_load((CONF_DIR / name).read_text())
    defaults = Config().model_dump(exclude={"run"})
    for section, values in config.model_dump(exclude={"run"}).items():
        for key, value in values.items():
            if key not in changed.get(section, {}):
                assert value == defaults[section][key], f"{name}: {section}.{key} changed unasked"
