"""The configuration reference, generated from the `Field(description=...)` of every key in config.py.

Two files are rendered from the config models, so a key's meaning is written once, next to its type and
default: docs/config.md (a table of every key per section) and conf/local.yaml (every key with its value,
each preceded by its description as comments). `python -m llmrank_spark.config_docs` rewrites both
(`make docs` runs it); `--check` rewrites nothing and exits 1 naming any file that differs from its
rendering. The renderers are pure functions; tests compare the files with them.
"""

from __future__ import annotations

import argparse
import json
import sys
import textwrap
import types
import typing
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel
from pydantic.fields import FieldInfo

from llmrank_spark.config import REPO_CONF_DIR, Config

REPO_ROOT = REPO_CONF_DIR.parent
CONFIG_REFERENCE = REPO_ROOT / "docs" / "config.md"
LOCAL_YAML = REPO_CONF_DIR / "local.yaml"
REGENERATE = "make docs"
# Sections set per run, not in a file: conf/local.yaml states them only in comments.
PER_RUN_SECTIONS = ("run",)
# Defaults that depend on when they are read, stated in words instead of a value.
DYNAMIC_DEFAULTS = {("run", "run_date"): "today (UTC)"}
# Comment lines in conf/local.yaml stay within this many characters.
COMMENT_WIDTH = 100

LOCAL_YAML_HEADER = f"""\
# The embedded default configuration: local[*] Spark, Delta tables under ./lakehouse, the seeded
# sample. Every value here equals the built-in default (a test checks it), so this file is the
# reference of every key. Generated from the descriptions in llmrank_spark/config.py by `{REGENERATE}`
# (python -m llmrank_spark.config_docs): edit those, not this file. Override one key with
# `--set section.key=value`; run.run_date defaults to today (UTC) and is usually set by the
# scheduler: `--set run.run_date=2026-11-20`. docs/config.md lists every key with its type and
# default.
"""

# Bounds a field may carry (pydantic keeps them as annotated_types metadata), as a reader writes them.
CONSTRAINTS = (("gt", ">"), ("ge", ">="), ("lt", "<"), ("le", "<="))


def sections(model: type[BaseModel] = Config) -> list[tuple[str, FieldInfo, type[BaseModel]]]:
    """(name, field of the root model, section model) for every section of the config, in file order."""
    found = []
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            raise TypeError(f"config field {name!r} is not a section; the config root holds only sections")
        found.append((name, field, annotation))
    return found


def type_name(annotation: Any) -> str:
    """A field's type as a reader writes it: `int`, `str | None`, `dict[str, float]`, `"on" | "off"`."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is Literal:
        return " | ".join(json.dumps(arg) for arg in args)
    if origin in (typing.Union, types.UnionType):
        return " | ".join(type_name(arg) for arg in args)
    if origin in (list, dict):
        return f"{origin.__name__}[{', '.join(type_name(arg) for arg in args)}]"
    if annotation is type(None):
        return "None"
    if isinstance(annotation, type):
        return annotation.__name__
    return str(annotation)


def constraint_text(field: FieldInfo) -> str:
    """The field's bounds, e.g. ">= 16, <= 512"; "" when it has none."""
    bounds = []
    for attribute, symbol in CONSTRAINTS:
        for item in field.metadata:
            value = getattr(item, attribute, None)
            if value is not None:
                bounds.append(f"{symbol} {value}")
    return ", ".join(bounds)


def default_text(section: str, key: str, value: Any) -> str:
    """A default as it would be written in a config file (JSON, which YAML reads), or in words."""
    if (section, key) in DYNAMIC_DEFAULTS:
        return DYNAMIC_DEFAULTS[(section, key)]
    return json.dumps(value)


def _cell(text: str) -> str:
    """Text safe inside a Markdown table cell (in a code span or not)."""
    return text.replace("|", "\\|")


def _prose(text: str) -> str:
    """Prose safe inside a Markdown table cell: `<root>` is text, not an HTML tag."""
    return _cell(text).replace("<", "\\<")


def render_config_reference() -> str:
    """docs/config.md: one section per config section, a table of its keys' type, default and description."""
    defaults = Config().model_dump(mode="json")
    out = [
        "# Configuration reference",
        "",
        f"Generated from the `Field(description=...)` of every key in `llmrank_spark/config.py` by "
        f"`{REGENERATE}`",
        "(`python -m llmrank_spark.config_docs`); a test fails when this file differs from that rendering,",
        "so edit the descriptions, not this file.",
        "",
        "A job reads one YAML file (`--config`; without it, the built-in defaults that `conf/local.yaml`",
        "spells out) and any number of `--set section.key=value` overrides, e.g.",
        "`--set candidates.n_per_request=50` or `--set 'evaluate.ks=[10, 50]'`. A key under a mapping is",
        "one entry: `--set spark.conf.spark.sql.shuffle.partitions=64`. Unknown keys and values out of range",
        "fail before Spark starts, naming the key. Defaults are written as JSON, which YAML reads as well.",
        "",
    ]
    for section, field, model in sections():
        out += [f"## `{section}`", "", _prose(field.description or ""), ""]
        out += ["| Key | Type | Default | Description |", "| --- | --- | --- | --- |"]
        for key, info in model.model_fields.items():
            bounds = constraint_text(info)
            kind = f"`{_cell(type_name(info.annotation))}`" + (f", {bounds}" if bounds else "")
            value = default_text(section, key, defaults[section][key])
            shown = value if (section, key) in DYNAMIC_DEFAULTS else f"`{_cell(value)}`"
            out.append(f"| `{key}` | {kind} | {shown} | {_prose(info.description or '')} |")
        out.append("")
    return "\n".join(out)


def _comment(text: str, indent: str = "", hang: str = "") -> list[str]:
    """`text` as YAML comment lines at `indent`, wrapped within COMMENT_WIDTH; lines after the first are
    indented by `hang` more."""
    prefix = f"{indent}# "
    lines = textwrap.wrap(
        text,
        width=COMMENT_WIDTH - len(prefix),
        subsequent_indent=hang,
        break_long_words=False,
        break_on_hyphens=False,
    )
    return [prefix + line for line in lines]


def render_commented_yaml(config: Config | None = None) -> str:
    """conf/local.yaml: every key of `config` (None: the built-in defaults) with its value, after its
    description as comments. Per-run sections (run.*) are stated in comments only, so loading the file gives
    a config equal to `config` but for them."""
    config = Config() if config is None else config
    values = config.model_dump(mode="json")
    out = [LOCAL_YAML_HEADER.rstrip("\n")]
    for section, field, model in sections():
        out.append("")
        out += _comment(field.description or "")
        if section in PER_RUN_SECTIONS:
            out.append(f"# {section}: set per run with --set {section}.<key>=<value>, not in this file.")
            for key, info in model.model_fields.items():
                out += _comment(f"  {key}: {info.description or ''}", hang="    ")
            continue
        out.append(f"{section}:")
        for key, info in model.model_fields.items():
            out += _comment(info.description or "", "  ")
            dumped = yaml.safe_dump({key: values[section][key]}, sort_keys=False)
            out += ["  " + line for line in dumped.splitlines()]
    return "\n".join(out) + "\n"


def rendered_files() -> dict[Path, str]:
    """Every generated file and what it must hold."""
    return {CONFIG_REFERENCE: render_config_reference(), LOCAL_YAML: render_commented_yaml()}


def stale_files(rendered: dict[Path, str]) -> list[Path]:
    """The files of `rendered` whose text differs from their rendering (a missing file differs)."""
    return [
        path
        for path, text in rendered.items()
        if not path.is_file() or path.read_text(encoding="utf-8") != text
    ]


def main(argv: list[str] | None = None) -> int:
    """Write docs/config.md and conf/local.yaml, or with --check report (exit 1) any that is stale."""
    parser = argparse.ArgumentParser(prog="python -m llmrank_spark.config_docs", description=main.__doc__)
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 if a file is stale")
    args = parser.parse_args(argv)
    rendered = rendered_files()
    stale = stale_files(rendered)
    if args.check:
        for path in stale:
            print(
                f"{path.relative_to(REPO_ROOT)} differs from its rendering; run `{REGENERATE}`",
                file=sys.stderr,
            )
        return 1 if stale else 0
    for path in stale:
        path.write_text(rendered[path], encoding="utf-8")
        print(f"wrote {path.relative_to(REPO_ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
