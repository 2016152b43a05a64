"""Texts the model reads: item texts, request contexts, the token budget."""

from llmrank_spark.text.budget import budget_split, shared_context_split
from llmrank_spark.text.clean import MISSING_VALUE, clean_text
from llmrank_spark.text.contexts import (
    HISTORY_PREFIX,
    NEW_SHOPPER_CONTEXT,
    PROFILE_PREFIX,
    contexts_with_user_texts,
    history_context,
    preferred_values,
    user_context_frame,
    user_contexts,
    user_history,
    user_text_frame,
)
from llmrank_spark.text.items import (
    ITEM_FIELDS,
    format_attributes,
    item_text_frame,
    item_texts,
    render_item_texts,
    shown_attributes,
)

__all__ = [
    "HISTORY_PREFIX",
    "ITEM_FIELDS",
    "MISSING_VALUE",
    "NEW_SHOPPER_CONTEXT",
    "PROFILE_PREFIX",
    "budget_split",
    "clean_text",
    "contexts_with_user_texts",
    "format_attributes",
    "history_context",
    "item_text_frame",
    "item_texts",
    "preferred_values",
    "render_item_texts",
    "shared_context_split",
    "shown_attributes",
    "user_context_frame",
    "user_contexts",
    "user_history",
    "user_text_frame",
]
