"""Attribute order: which product attributes matter most for a request, from behaviour or by occlusion."""

from llmrank_spark.explain.attribute_model import (
    AttributeModel,
    attribute_model_importance,
    attribute_texts,
    list_agreement,
    listnet_rows,
)
from llmrank_spark.explain.behaviour import (
    BehaviourImportance,
    attribute_values,
    behaviour_by_segment,
    behaviour_importance,
    behaviour_orders,
    preference_statistics,
)
from llmrank_spark.explain.occlusion import (
    attribute_orders,
    item_attributes,
    occluded_item,
    occlusion_variants,
    order_attributes,
    orders_by_segment,
    served_score_scale,
)
from llmrank_spark.explain.orders import ITEM_KEYS, rank_attributes

__all__ = [
    "ITEM_KEYS",
    "AttributeModel",
    "BehaviourImportance",
    "attribute_model_importance",
    "attribute_orders",
    "attribute_texts",
    "attribute_values",
    "behaviour_by_segment",
    "behaviour_importance",
    "behaviour_orders",
    "item_attributes",
    "list_agreement",
    "listnet_rows",
    "occluded_item",
    "occlusion_variants",
    "order_attributes",
    "orders_by_segment",
    "preference_statistics",
    "rank_attributes",
    "served_score_scale",
]
