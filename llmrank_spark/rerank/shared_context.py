"""Shared-context scoring: a request's context is encoded once for a whole chunk of its candidates.

The architecture reads `[CLS] context [SEP] item_1 [SEP] item_2 [SEP] ...` under an attention mask where
the context attends only to itself and each item attends to the context and to itself, never to
another item; each item's position ids restart right after the context, so an item is read as it would
be alone after the context. An item's score is the mean of its own tokens' last hidden states (its
text and its [SEP]: MiniLM was trained to mean-pool) through BERT's pooler and the 1-logit classifier.

Under that mask the context's hidden states do not depend on the items, so this runs the mask without
materialising it: per layer, the context tokens attend among themselves, and the items (a batch of
short rows) attend to their context's keys and values gathered beside their own. Each item costs its
own tokens plus attention over context + itself; a 100-candidate list encodes its context once instead
of 100 times, and no compute is spent on masked-out item-to-item attention. The attention is torch's
scaled_dot_product_attention with a key-padding mask, so GPUs keep their fused kernels. transformers has
no encoder with a shared prefix, so the layer loop is written here over BERT's own modules (weights,
layer norms, dropouts): an artifact is the same safetensors BertForSequenceClassification either way,
and tests check the result equals HF BERT run on the literal concatenated sequence and mask.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch.nn.functional import scaled_dot_product_attention

from llmrank_spark.rerank.layout import PADDING, padded_rows
from llmrank_spark.text import shared_context_split

Architecture = Literal["pair", "shared_context"]
ARCHITECTURES: tuple[Architecture, ...] = ("pair", "shared_context")


@dataclass(frozen=True)
class SharedContextEncoded:
    """A batch of (context, item) rows as token ids, each context's kept ids stored once.

    `flat` holds the distinct texts' ids; per row, where its context and its item start in it and how
    many tokens of each are kept (`text.shared_context_split`), and `context` numbers the row's context.
    """

    flat: np.ndarray
    context: np.ndarray  # (rows,) code of the row's context text
    context_start: np.ndarray  # (rows,)
    context_kept: np.ndarray  # (rows,) the same for every row of one context
    item_start: np.ndarray  # (rows,)
    item_kept: np.ndarray  # (rows,)

    @property
    def lengths(self) -> np.ndarray:
        """Tokens each row adds to a forward pass: its item and [SEP] (its context is shared)."""
        return self.item_kept + 1

    @classmethod
    def from_token_ids(
        cls,
        flat: np.ndarray,
        offsets: np.ndarray,
        counts: np.ndarray,
        context_codes: np.ndarray,
        item_codes: np.ndarray,
        max_length: int,
    ) -> SharedContextEncoded:
        """Rows from `_distinct_token_ids`' output: codes index `offsets` and `counts`."""
        budget = max_length - 3  # as a pair: [CLS] context [SEP] item [SEP]
        context_kept, item_kept = shared_context_split(counts[context_codes], counts[item_codes], budget)
        return cls(
            flat,
            context_codes,
            offsets[context_codes],
            context_kept,
            offsets[item_codes],
            item_kept,
        )

    def model_inputs(
        self, rows: np.ndarray, special: tuple[int, int, int], width_multiple: int = 1
    ) -> dict[str, torch.Tensor]:
        """Tensors of `shared_context_logits` for `rows`, their distinct contexts laid out once."""
        cls_id, sep_id, pad_id = special
        source = np.concatenate([self.flat, [cls_id, sep_id]])
        cls_at, sep_at = len(self.flat), len(self.flat) + 1
        contexts, first_row, item_context = np.unique(
            self.context[rows], return_index=True, return_inverse=True
        )
        heads = rows[first_row]
        ones = np.ones(len(contexts), dtype=np.int64)
        context_ids, context_piece = padded_rows(
            source,
            np.stack([cls_at * ones, self.context_start[heads], sep_at * ones], axis=1),
            np.stack([ones, self.context_kept[heads], ones], axis=1),
            pad_id,
            width_multiple,
        )
        ones = np.ones(len(rows), dtype=np.int64)
        item_ids, item_piece = padded_rows(
            source,
            np.stack([self.item_start[rows], sep_at * ones], axis=1),
            np.stack([self.item_kept[rows], ones], axis=1),
            pad_id,
            width_multiple,
        )
        item_mask = item_piece != PADDING
        # Each item's positions continue after its context's [CLS] context [SEP]; padding reads position 0.
        after_context = (self.context_kept[heads] + 2)[item_context]
        positions = np.where(item_mask, after_context[:, None] + np.arange(item_ids.shape[1]), 0)
        arrays = {
            "context_ids": context_ids,
            "context_mask": context_piece != PADDING,
            "item_ids": item_ids,
            "item_mask": item_mask,
            "item_context": item_context.astype(np.int64).reshape(-1),
            "item_positions": positions,
        }
        return {name: torch.from_numpy(np.ascontiguousarray(a)) for name, a in arrays.items()}


def _padded(tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Unpadded (tokens, width) rows back into (rows, row width, width), zeros on padding."""
    padded = tokens.new_zeros(*mask.shape, tokens.shape[-1])
    padded[mask] = tokens
    return padded


def _heads(tokens: torch.Tensor, mask: torch.Tensor, attention) -> list[torch.Tensor]:
    """Queries, keys and values of unpadded `tokens`, as (rows, heads, row width, head size)."""
    shape = (*mask.shape, attention.num_attention_heads, attention.attention_head_size)
    return [
        _padded(projection(tokens), mask).view(shape).transpose(1, 2)
        for projection in (attention.query, attention.key, attention.value)
    ]


def _unpadded(attended: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(rows, heads, row width, head size) back to unpadded (tokens, width)."""
    rows, _, width, _ = attended.shape
    return attended.transpose(1, 2).reshape(rows, width, -1)[mask]


def _shared_context_layer(
    layer, context: torch.Tensor, items: torch.Tensor, inputs: dict[str, torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor]:
    """One BERT layer under the shared-context mask: the context attends to itself; each item attends to
    its context and itself.

    Hidden states stay unpadded (one row per real token) through the linear layers, which are nearly
    all of the cost: only attention sees padded rows, so a micro-batch of items of mixed lengths pays
    for no padding there.
    """
    attention = layer.attention.self
    dropout = attention.dropout.p if layer.training else 0.0
    context_mask, item_mask, owner = inputs["context_mask"], inputs["item_mask"], inputs["item_context"]
    query, key, value = _heads(context, context_mask, attention)
    context_attended = scaled_dot_product_attention(
        query, key, value, attn_mask=context_mask[:, None, None, :], dropout_p=dropout
    )
    item_query, item_key, item_value = _heads(items, item_mask, attention)
    keys = torch.cat([key[owner], item_key], dim=2)
    values = torch.cat([value[owner], item_value], dim=2)
    visible = torch.cat([context_mask[owner], item_mask], dim=1)[:, None, None, :]
    item_attended = scaled_dot_product_attention(
        item_query, keys, values, attn_mask=visible, dropout_p=dropout
    )

    def feed_forward(attended: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
        hidden = layer.attention.output(attended, hidden)
        return layer.output(layer.intermediate(hidden), hidden)

    return (
        feed_forward(_unpadded(context_attended, context_mask), context),
        feed_forward(_unpadded(item_attended, item_mask), items),
    )


def shared_context_logits(model, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """One logit per item of `inputs` (`SharedContextEncoded.model_inputs`), from a
    BertForSequenceClassification with one label; differentiable, so training runs it too."""
    bert = model.base_model
    context_mask, item_mask = inputs["context_mask"], inputs["item_mask"]
    context_ids = inputs["context_ids"][context_mask]
    item_ids = inputs["item_ids"][item_mask]
    context_positions = torch.arange(context_mask.shape[1], device=context_mask.device).expand_as(
        context_mask
    )
    context = bert.embeddings(
        input_ids=context_ids[None],
        token_type_ids=torch.zeros_like(context_ids)[None],
        position_ids=context_positions[context_mask][None],
    )[0]
    items = bert.embeddings(
        input_ids=item_ids[None],
        token_type_ids=torch.ones_like(item_ids)[None],
        position_ids=inputs["item_positions"][item_mask][None],
    )[0]
    for layer in bert.encoder.layer:
        context, items = _shared_context_layer(layer, context, items, inputs)
    weights = item_mask.unsqueeze(-1).to(items.dtype)
    pooled = _padded(items, item_mask).sum(1) / weights.sum(1).clamp(min=1.0)
    pooled = bert.pooler.activation(bert.pooler.dense(pooled))
    return model.classifier(model.dropout(pooled))[:, 0]
