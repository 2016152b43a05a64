"""Attribute order: which product attributes matter most for a request."""

from llmrank_spark.explain.attributes import (
    ITEM_KEYS,
    attribute_orders,
    item_attributes,
    occluded_item,
    occlusion_variants,
    order_attributes,
    orders_by_segment,
    rank_attributes,
    served_score_scale,
)

__all__ = [
    "ITEM_KEYS",
    "attribute_orders",
    "item_attributes",
    "occluded_item",
    "occlusion_variants",
    "order_attributes",
    "orders_by_segment",
    "rank_attributes",
    "served_score_scale",
]
