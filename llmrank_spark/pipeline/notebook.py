"""Notebook parameters that are Databricks widgets on Databricks and plain defaults everywhere else.

The notebooks in `notebooks/` run unchanged on a Databricks cluster (widgets, the cluster's session)
and locally as scripts (defaults, overridable by LLMRANK_<NAME> environment variables), so the
same cells are tested here and scheduled there.
"""

from __future__ import annotations

import os
from typing import Any

from llmrank_spark.config import Config, load_config

# Widget name -> default. `overrides` holds `;`-separated `key=value` config overrides.
WIDGETS = {"config": "", "run_date": "", "overrides": "", "request_id": ""}


def widget_values(dbutils: Any) -> dict[str, str]:
    """Declare the text widgets (on Databricks) and return the values in effect."""
    values = {}
    for name, default in WIDGETS.items():
        if dbutils is not None:
            dbutils.widgets.text(name, default)
            values[name] = dbutils.widgets.get(name)
        else:
            values[name] = os.environ.get(f"LLMRANK_{name.upper()}", default)
    return values


def notebook_config(dbutils: Any) -> Config:
    """The run's Config from the widgets: a config file, a run date and overrides."""
    values = widget_values(dbutils)
    overrides = [o.strip() for o in values["overrides"].split(";") if o.strip()]
    if values["run_date"]:
        overrides.append(f"run.run_date={values['run_date']}")
    return load_config(values["config"] or None, overrides)
