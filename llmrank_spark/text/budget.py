"""The token budget of a (context, item) pair: how it is split between the two, context first."""

from __future__ import annotations

from typing import TypeVar

import numpy as np

# Item text keeps all its tokens unless that would leave the context less than this share of the budget.
CONTEXT_MIN_SHARE = 0.25

IntOrArray = TypeVar("IntOrArray", int, np.ndarray)


def budget_split(
    context_tokens: IntOrArray, item_tokens: IntOrArray, budget: int
) -> tuple[IntOrArray, IntOrArray]:
    """Tokens kept of (context, item) so both fit in `budget`: the context is cut first.

    The item keeps all its tokens up to a cap that still leaves the context `CONTEXT_MIN_SHARE` of the
    budget (or all of it, when the context is shorter than that). Works on ints and on numpy arrays.
    """
    context_floor = np.minimum(context_tokens, int(budget * CONTEXT_MIN_SHARE))
    item_kept = np.minimum(item_tokens, budget - context_floor)
    return np.minimum(context_tokens, budget - item_kept), item_kept
