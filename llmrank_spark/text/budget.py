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


# In shared-context scoring the context is cut once for all its items, so it cannot depend on any one
# item's length: it is cut as if its item had this share of the budget (items shorter than that leave
# their share unused rather than give it to the context).
ITEM_RESERVED_SHARE = 0.4


def shared_context_split(
    context_tokens: np.ndarray, item_tokens: np.ndarray, budget: int
) -> tuple[np.ndarray, np.ndarray]:
    """Tokens kept of (context, item) when the context is shared by many items: the same rule as
    `budget_split`, context first, with the item's length taken as `ITEM_RESERVED_SHARE` of the budget
    for the context's cut. Each item then keeps what the context leaves of the budget, so a pair never
    exceeds `budget` and an item's tokens never depend on another item."""
    reserved = int(budget * ITEM_RESERVED_SHARE)
    context_kept, _ = budget_split(context_tokens, np.full_like(context_tokens, reserved), budget)
    return context_kept, np.minimum(item_tokens, budget - context_kept)
