"""The configuration reference (docs/config.md) and conf/local.yaml are rendered from the config models.

No Spark here: the renderers read only the pydantic models.
"""

import yaml

from llmrank_spark.config import Config, load_config
from llmrank_spark.config_docs import (
    CONFIG_REFERENCE,
    LOCAL_YAML,
    main,
    render_commented_yaml,
    render_config_reference,
    sections,
    stale_files,
    type_name,
)

SECTIONS = [(name, model) for name, _, model in sections()]


def test_every_section_and_key_has_a_description():
    missing = [name for name, field in Config.model_fields.items() if not (field.description or "").strip()]
    for section, model in SECTIONS:
        missing += [
            f"{section}.{key}"
            for key, field in model.model_fields.items()
            if not (field.description or "").strip()
        ]
    assert not missing, f"add Field(description=...) to {missing} in llmrank_spark/config.py"


def test_docs_config_md_is_generated_from_the_descriptions():
    assert CONFIG_REFERENCE.read_text(encoding="utf-8") == render_config_reference(), (
        "run `make docs` to regenerate docs/config.md"
    )


def test_local_yaml_is_generated_from_the_descriptions():
    assert LOCAL_YAML.read_text(encoding="utf-8") == render_commented_yaml(), (
        "run `make docs` to regenerate conf/local.yaml"
    )


def test_generated_local_yaml_loads_into_the_builtin_defaults(tmp_path):
    path = tmp_path / "local.yaml"
    path.write_text(render_commented_yaml(), encoding="utf-8")
    expected = Config().model_dump(exclude={"run"})
    assert load_config(path).model_dump(exclude={"run"}) == expected
    assert load_config(LOCAL_YAML).model_dump(exclude={"run"}) == expected
    # Every key is spelled out, not left to its default; run.* is per run and stated in comments only.
    assert yaml.safe_load(path.read_text()) == Config().model_dump(mode="json", exclude={"run"})


def test_rendered_yaml_keeps_values_that_differ_from_the_defaults(tmp_path):
    config = load_config(
        overrides=[
            "lakehouse.root=/data/lake",
            "lakehouse.tables={ranked: s3a://gold/ranked, items: silver/items}",
            "lakehouse.external_tables=[ranked]",
            "spark.master=yarn",
            "spark.conf.spark.sql.shuffle.partitions=64",
            "fairness.mode=off",
            "rerank.user_template='{segment} shopper: yes'",
            "rerank.model_path=/models/v3",
            "train.classifier_learning_rate=0.001",
            "evaluate.ks=[5, 20]",
        ]
    )
    path = tmp_path / "local.yaml"
    path.write_text(render_commented_yaml(config), encoding="utf-8")
    assert load_config(path).model_dump(exclude={"run"}) == config.model_dump(exclude={"run"})


def test_each_key_is_preceded_by_its_description():
    lines = render_commented_yaml().splitlines()
    for section, model in SECTIONS:
        if section == "run":
            assert f"{section}:" not in lines
            continue
        start = lines.index(f"{section}:")
        for key, field in model.model_fields.items():
            at = next(i for i in range(start, len(lines)) if lines[i].startswith(f"  {key}:"))
            comments = []
            for line in reversed(lines[start + 1 : at]):
                if not line.startswith("  # "):
                    break
                comments.insert(0, line.removeprefix("  # "))
            assert " ".join(comments) == field.description, f"{section}.{key}"


def test_reference_lists_every_key_with_its_type_and_default():
    reference = render_config_reference()
    for section, model in SECTIONS:
        assert f"## `{section}`" in reference
        for key in model.model_fields:
            assert f"| `{key}` |" in reference, f"{section}.{key}"
    assert '| `mode` | `"off" \\| "on" \\| "sweep"` | `"on"` |' in reference
    assert "| `max_length` | `int`, >= 16, <= 512 | `128` |" in reference
    assert "| `run_date` | `date` | today (UTC) |" in reference


def test_type_names_read_as_written():
    assert type_name(dict[str, float]) == "dict[str, float]"
    assert type_name(str | None) == "str | None"
    assert type_name(list[int]) == "list[int]"


def test_check_names_stale_files_and_writes_nothing(tmp_path, capsys):
    stale = tmp_path / "config.md"
    stale.write_text("old")
    fresh = tmp_path / "local.yaml"
    fresh.write_text("new")
    assert stale_files({stale: "new", fresh: "new", tmp_path / "missing.md": "x"}) == [
        stale,
        tmp_path / "missing.md",
    ]
    assert main(["--check"]) == 0
    assert capsys.readouterr().err == ""
