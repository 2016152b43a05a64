import json
from pathlib import Path

import pytest
import yaml

from llmrank_spark.config import REDACTED, Config, ConfigError, load_config, redact
from llmrank_spark.pipeline import StepRun, main

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
    config = load_config(
        overrides=[
            "lakehouse.root=/data/lake",
            "lakehouse.tables={ranked: /gold/ranked, items: silver/items, users: prod.crm.users}",
            "lakehouse.external_tables=[ranked]",
        ]
    )
    assert config.table_path("interactions") == "/data/lake/interactions"
    assert config.table_path("items") == "/data/lake/silver/items"
    assert config.table_path("ranked") == "/gold/ranked"
    assert config.table_path("users") == "prod.crm.users"


@pytest.mark.parametrize("location", ["../../somewhere", "gold/../../somewhere", "gold/..", "./"])
def test_relative_table_paths_must_stay_inside_the_lakehouse_root(location):
    with pytest.raises(
        ConfigError, match=r"lakehouse.tables.ranked: .* inside lakehouse.root.*without '\.\.'"
    ):
        load_config(overrides=[f"lakehouse.tables.ranked={location}"])


@pytest.mark.parametrize("location", ["/tmp/ranked", "s3a://bucket/ranked", "file:/tmp/ranked"])
def test_absolute_table_locations_need_the_table_listed_as_external(location):
    with pytest.raises(
        ConfigError, match=r"lakehouse.tables.ranked: .* outside lakehouse.root.*external_tables"
    ):
        load_config(overrides=[f"lakehouse.tables.ranked={location}"])
    allowed = load_config(
        overrides=[f"lakehouse.tables.ranked={location}", "lakehouse.external_tables=[ranked]"]
    )
    assert allowed.table_path("ranked") == location
    # Being external for one table allows nothing for another.
    with pytest.raises(ConfigError, match=r"lakehouse.tables.rejects: .* outside lakehouse.root"):
        load_config(overrides=[f"lakehouse.tables.rejects={location}", "lakehouse.external_tables=[ranked]"])


@pytest.mark.parametrize("root", ["", "  ", "/", "//"])
def test_an_empty_or_filesystem_root_lakehouse_is_refused(root):
    with pytest.raises(ConfigError, match=r"config key 'lakehouse.root': .*filesystem root"):
        load_config(overrides=[f"lakehouse.root={root}"])


@pytest.mark.parametrize("key", ["lakehouse.tables.rankd=gold/ranked", "lakehouse.external_tables=[rankd]"])
def test_misspelt_table_names_are_refused_naming_the_tables(key):
    with pytest.raises(ConfigError, match=r"unknown table\(s\) \['rankd'\].*candidates, ranked, rejects"):
        load_config(overrides=[key])


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
    assert (config.mlflow.registry_uri, config.mlflow.model_name) == (
        "databricks-uc",
        "main.llmrank.llmrank_reranker",
    )


@pytest.mark.parametrize("name", ["llmrank_reranker", "ranker-2", "main.ranking.llmrank_reranker"])
def test_registered_model_names_and_unity_catalog_three_part_names_are_accepted(name):
    assert load_config(overrides=[f"mlflow.model_name={name}"]).mlflow.model_name == name


@pytest.mark.parametrize(
    "overrides",
    [
        ["mlflow.model_name=ranking.llmrank_reranker"],  # two parts: neither a name nor a UC name
        ["mlflow.model_name=a.b.c.d"],
        ["mlflow.model_name=main.ranking.llmrank-reranker"],  # UC names take no dash
        ["mlflow.model_name=main.ranking.`x`"],
        ["mlflow.registry_uri=databricks-uc", "mlflow.model_name=llmrank_reranker"],
    ],
)
def test_model_names_unity_catalog_cannot_hold_are_refused_naming_the_key(overrides):
    with pytest.raises(ConfigError, match=r"mlflow\.(model_name|registry_uri)|catalog\.schema\.model"):
        load_config(overrides=overrides)


@pytest.mark.parametrize("name", ["demo.yaml", "databricks.yaml", "gpu-cluster.yaml", "gpu-train.yaml"])
def test_every_shipped_config_file_validates(name):
    config = load_config(CONF_DIR / name)
    # No credentials in the file: the run log keeps its every value.
    assert json.loads(config.redacted_json()) == config.model_dump(mode="json")
    # Each file changes only what it names; everything else stays the built-in default.
    changed = yaml.safe_load((CONF_DIR / name).read_text())
    defaults = Config().model_dump(exclude={"run"})
    for section, values in config.model_dump(exclude={"run"}).items():
        for key, value in values.items():
            if key not in changed.get(section, {}):
                assert value == defaults[section][key], f"{name}: {section}.{key} changed unasked"


def test_override_values_are_read_as_the_field_s_type():
    config = load_config(
        overrides=[
            "fairness.mode=off",
            "rerank.user_template=123",
            "rerank.context_template='{title} ({brand})'",
            "rerank.item_template='{title}' and '{brand}'",
            "rerank.model_path=null",
            "faults.fail_scoring_after_batches=3",
            "candidates.quotas.covisit=4",
            "spark.conf.spark.sql.shuffle.partitions=4",
            "evaluate.ks=[5, 10]",
        ]
    )
    # Text where text is expected: YAML would have made these False and 123.
    assert config.fairness.mode == "off"
    assert config.rerank.user_template == "123"
    # One pair of YAML quotes around a text is taken off, as such overrides have always been written.
    assert config.rerank.context_template == "{title} ({brand})"
    assert config.rerank.item_template == "'{title}' and '{brand}'"
    assert config.rerank.model_path is None
    assert config.faults.fail_scoring_after_batches == 3
    # A key under a mapping is one entry, dots and all.
    assert config.candidates.quotas["covisit"] == 4
    assert config.spark.conf == {"spark.sql.shuffle.partitions": "4"}
    assert config.evaluate.ks == [5, 10]


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("rerank.top_k=yes", r"config key 'rerank.top_k': .*valid integer.*'yes'"),
        ("run.run_date=20261120", r"config key 'run.run_date': not a date; write it as YYYY-MM-DD"),
        ("run.run_date=2026-02-30", r"config key 'run.run_date': .*day value is outside expected range"),
        ("evaluate.ks=[10, 50", r"--set evaluate.ks: .* in its value; write a YAML or JSON list"),
        ("rerank.top_k.deep=1", r"--set rerank.top_k.deep: 'top_k' is a value, not a section"),
    ],
)
def test_override_values_the_field_cannot_take_are_config_errors(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(overrides=[override])


def test_yaml_files_keep_words_as_text_and_check_dates(tmp_path):
    path = tmp_path / "words.yaml"
    path.write_text("fairness:\n  mode: off\nrerank:\n  quantize_int8: true\nrun:\n  run_date: 2026-11-20\n")
    config = load_config(path)
    assert config.fairness.mode == "off"
    assert config.rerank.quantize_int8 is True
    assert config.run.run_date.isoformat() == "2026-11-20"
    path.write_text("run:\n  run_date: 2026-13-01\n")
    with pytest.raises(ConfigError, match=r"config key 'run.run_date': .*month value.*words.yaml"):
        load_config(path)


def test_broken_and_unreadable_config_files_are_named(tmp_path, monkeypatch):
    broken = tmp_path / "broken.yaml"
    broken.write_text("rerank:\n  top_k: [10\n  mode: cross_encoder\n")
    with pytest.raises(
        ConfigError, match=r"config file .*broken.yaml is not valid YAML: .* line \d+, column \d+"
    ):
        load_config(broken)
    with pytest.raises(ConfigError, match=r"config file .* is not a file"):
        load_config(tmp_path)
    latin = tmp_path / "latin.yaml"
    latin.write_bytes("sample:\n  seed: 7 # caf\xe9\n".encode("latin-1"))
    with pytest.raises(ConfigError, match=r"latin.yaml is not UTF-8 text"):
        load_config(latin)

    def denied(self, *args, **kwargs):
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "read_text", denied)
    with pytest.raises(
        ConfigError, match=r"broken.yaml cannot be read \(Permission denied\); make it readable"
    ):
        load_config(broken)


@pytest.mark.parametrize(
    "args",
    [
        ["candidates", "--set", "run.run_date=2026-02-30"],
        ["candidates", "--set", "fairness.mode=maybe"],
        ["candidates", "--config", "{broken}"],
    ],
)
def test_cli_reports_config_problems_in_one_line(tmp_path, capsys, args):
    broken = tmp_path / "broken.yaml"
    broken.write_text("spark: {master: local[1]\n")
    assert main([arg.format(broken=broken) for arg in args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("llmrank: ") and err.count("\n") == 1
    assert "Traceback" not in err


SECRETS = {
    "spark.hadoop.fs.s3a.secret.key": "s3-SECRET-value",
    "spark.hadoop.fs.s3a.access.key": "AKIA-ACCESS-value",
    "spark.hadoop.fs.azure.account.key.acct.dfs.core.windows.net": "azure-KEY-value",
    "spark.hadoop.fs.azure.account.oauth2.client.secret": "oauth-SECRET-value",
    "spark.hadoop.fs.azure.sas.container.acct.blob.core.windows.net": "sas-TOKEN-value",
    "spark.databricks.access.token": "dapi-TOKEN-value",
    "spark.jdbc.Password": "jdbc-PASSWORD-value",
    "spark.hadoop.fs.gs.auth.service.account.json.keyfile": "/keys/gcs.json",
}


def test_redaction_replaces_every_credential_and_keeps_the_rest():
    overrides = [f"spark.conf.{key}={value}" for key, value in SECRETS.items()]
    overrides += [
        "spark.conf.spark.sql.shuffle.partitions=4",
        "spark.conf.spark.hadoop.fs.s3a.endpoint=https://user:pa55word@minio.local:9000",
        "spark.remote=sc://adb-1.azuredatabricks.net:443/;token=dapi123;x-databricks-cluster-id=0101",
    ]
    logged = json.loads(load_config(overrides=overrides).redacted_json())
    conf = logged["spark"]["conf"]
    assert {key: conf[key] for key in SECRETS} == dict.fromkeys(SECRETS, REDACTED)
    assert conf["spark.sql.shuffle.partitions"] == "4"
    assert conf["spark.hadoop.fs.s3a.endpoint"] == f"https://user:{REDACTED}@minio.local:9000"
    remote = f"sc://adb-1.azuredatabricks.net:443/;token={REDACTED};x-databricks-cluster-id=0101"
    assert logged["spark"]["remote"] == remote
    assert logged["rerank"] == Config().rerank.model_dump(mode="json")
    assert redact({"nested": {"api_token": "t", "tokens": None, "seed": 7}}) == {
        "nested": {"api_token": REDACTED, "tokens": None, "seed": 7}
    }


def test_a_credential_in_a_bad_value_is_not_echoed_in_the_error():
    with pytest.raises(ConfigError) as error:
        load_config(overrides=["spark.conf={spark.hadoop.fs.s3a.secret.key: 98765}"])
    assert "98765" not in str(error.value)
    assert "config key 'spark.conf.spark.hadoop.fs.s3a.secret.key'" in str(error.value)


def test_credentials_passed_as_spark_conf_never_reach_the_runs_table(spark, tmp_path):
    config = load_config(
        overrides=[
            f"lakehouse.root={tmp_path / 'lakehouse'}",
            "run.run_date=2026-11-20",
            *[f"spark.conf.{key}={value}" for key, value in SECRETS.items()],
        ]
    )
    with pytest.raises(RuntimeError), StepRun(spark, config, "candidates"):
        raise RuntimeError("the step failed")
    with StepRun(spark, config, "candidates"):
        pass
    rows = spark.read.format("delta").load(config.table_path("runs")).toPandas()
    assert sorted(rows["status"]) == ["failed", "succeeded"]
    stored = rows.astype(str).to_string()
    assert not [value for value in SECRETS.values() if value in stored]
    for logged in rows["config"]:
        assert json.loads(logged)["spark"]["conf"] == dict.fromkeys(SECRETS, REDACTED)


def test_the_text_settings_are_one_list_for_config_manifest_and_serving():
    from llmrank_spark.config import TEXT_SETTINGS, RerankConfig, text_settings
    from llmrank_spark.rerank import ArtifactManifest

    assert set(TEXT_SETTINGS) <= set(RerankConfig.model_fields)
    assert set(TEXT_SETTINGS) <= set(ArtifactManifest.model_fields)
    cfg = RerankConfig(max_length=96, item_attributes=2)
    assert text_settings(cfg)["max_length"] == 96 and text_settings(cfg)["item_attributes"] == 2
