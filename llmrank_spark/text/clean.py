"""Cleaning free text from tables: control characters, whitespace, missing values."""

from __future__ import annotations

import re
from typing import Any

import pandas as pd

MISSING_VALUE = "unknown"

_SPACES = re.compile(r"\s+")
# C0 and C1 control characters (tabs and newlines included): never meaningful inside a model's text.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def clean_text(value: Any) -> str:
    """Text as the model may read it: control characters become spaces, runs of space collapse; "" if none.

    Invalid UTF-8 never gets this far: reads repair it to U+FFFD (`tables.valid_utf8`).
    """
    if value is None or (isinstance(value, float) and pd.isna(value)):
        return ""
    return _SPACES.sub(" ", _CONTROL.sub(" ", str(value))).strip()
