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

"late_context" also keeps each item from the context in the first half of the layers (the item reads
only itself there, from position 1 as if alone), as PreTTR does for query and document: below the join
an item's states depend on its text alone, so the scorer computes them once per distinct item of a
batch, however many candidate lists hold it, and only the upper layers run per (context, item).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Literal

import numpy as np
import torch
from torch.nn.functional import scaled_dot_product_attention

from llmrank_spark.rerank.layout import PADDING, padded_rows
from llmrank_spark.text import shared_context_split

Architecture = Literal["pair", "shared_context", "late_context"]
ARCHITECTURES: tuple[Architecture, ...] = ("pair", "shared_context", "late_context")


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
    # "late_context": items are read alone first, from position 1 as if after their own [CLS], so their
    # first layers' states are the same in every row that holds them.
    items_alone_first: bool = False

    @cached_property
    def distinct_items(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(a row of each distinct kept item, each row's item code, where each code's states start in the
        concatenated unpadded states of the distinct items read alone)."""
        _, first_row, code = np.unique(
            np.stack([self.item_start, self.item_kept], axis=1),
            axis=0,
            return_index=True,
            return_inverse=True,
        )
        tokens = self.item_kept[first_row] + 1
        return first_row, code.reshape(-1), np.cumsum(tokens) - tokens

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
        items_alone_first: bool = False,
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
            items_alone_first,
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
        # Each item's positions continue after its context's [CLS] context [SEP], or from 1 when read alone.
        after_context = 1 if self.items_alone_first else (self.context_kept[heads] + 2)[item_context]
        arrays = {
            "context_ids": context_ids,
            "context_mask": context_piece != PADDING,
            **self._item_arrays(rows, source, sep_at, pad_id, width_multiple, after_context),
            "item_context": item_context.astype(np.int64).reshape(-1),
        }
        if self.items_alone_first:
            # Where each real item token's states lie in `alone_item_states`' output, in `item_mask` order.
            _, code, state_start = self.distinct_items
            tokens = self.item_kept[rows] + 1
            row_start = np.repeat(state_start[code[rows]] - (np.cumsum(tokens) - tokens), tokens)
            arrays["item_state_at"] = row_start + np.arange(int(tokens.sum()))
        return _tensors(arrays)

    def alone_item_inputs(
        self, codes: np.ndarray, special: tuple[int, int, int], width_multiple: int = 1
    ) -> dict[str, torch.Tensor]:
        """Tensors of `alone_item_states` for the distinct items `codes` (of `distinct_items`)."""
        _, sep_id, pad_id = special
        source = np.concatenate([self.flat, [sep_id]])
        rows = self.distinct_items[0][codes]
        return _tensors(self._item_arrays(rows, source, len(self.flat), pad_id, width_multiple, 1))

    def _item_arrays(
        self,
        rows: np.ndarray,
        source: np.ndarray,
        sep_at: int,
        pad_id: int,
        width_multiple: int,
        first_position: int | np.ndarray,
    ) -> dict[str, np.ndarray]:
        """Each row's item and [SEP], padded; positions from `first_position` on (padding reads 0)."""
        ones = np.ones(len(rows), dtype=np.int64)
        item_ids, item_piece = padded_rows(
            source,
            np.stack([self.item_start[rows], sep_at * ones], axis=1),
            np.stack([self.item_kept[rows], ones], axis=1),
            pad_id,
            width_multiple,
        )
        item_mask = item_piece != PADDING
        first = np.broadcast_to(np.asarray(first_position), (len(rows),))
        positions = np.where(item_mask, first[:, None] + np.arange(item_ids.shape[1]), 0)
        return {"item_ids": item_ids, "item_mask": item_mask, "item_positions": positions}


def _tensors(arrays: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
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


def _layer(
    layer,
    hidden: torch.Tensor,
    mask: torch.Tensor,
    prefix: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One BERT layer over unpadded rows `hidden` laid out by `mask`: each row attends to itself and, with
    `prefix` (keys, values and mask gathered per row), to those first. Returns the layer's output and the
    rows' own keys and values, which the context lends its items.

    Hidden states stay unpadded (one row per real token) through the linear layers, which are nearly
    all of the cost: only attention sees padded rows, so a micro-batch of items of mixed lengths pays
    for no padding there.
    """
    attention = layer.attention.self
    query, key, value = _heads(hidden, mask, attention)
    keys, values, visible = key, value, mask
    if prefix is not None:
        prefix_key, prefix_value, prefix_mask = prefix
        keys = torch.cat([prefix_key, key], dim=2)
        values = torch.cat([prefix_value, value], dim=2)
        visible = torch.cat([prefix_mask, mask], dim=1)
    attended = scaled_dot_product_attention(
        query,
        keys,
        values,
        attn_mask=visible[:, None, None, :],
        dropout_p=attention.dropout.p if layer.training else 0.0,
    )
    hidden = layer.attention.output(_unpadded(attended, mask), hidden)
    return layer.output(layer.intermediate(hidden), hidden), key, value


def _embedded(
    bert, ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor, segment: int
) -> torch.Tensor:
    """BERT's input embeddings of the real tokens of `ids`, unpadded, all of segment id `segment`."""
    real = ids[mask]
    return bert.embeddings(
        input_ids=real[None],
        token_type_ids=torch.full_like(real, segment)[None],
        position_ids=positions[mask][None],
    )[0]


def alone_layers(model, architecture: Architecture) -> int:
    """Encoder layers in which an item reads only itself: the first half under "late_context", else none.

    Half is where PreTTR (MacAvaney et al., SIGIR 2020) found BERT rankers lose little when the query and
    document are read apart below the join; below it an item's states depend on its text alone.
    """
    return len(model.base_model.encoder.layer) // 2 if architecture == "late_context" else 0


def alone_item_states(model, inputs: dict[str, torch.Tensor], layers: int) -> torch.Tensor:
    """Items' unpadded hidden states after their first `layers` encoder layers, each item attending to
    itself only (`SharedContextEncoded.alone_item_inputs`): computed once per distinct item of a batch."""
    bert, mask = model.base_model, inputs["item_mask"]
    items = _embedded(bert, inputs["item_ids"], mask, inputs["item_positions"], 1)
    for layer in bert.encoder.layer[:layers]:
        items, _, _ = _layer(layer, items, mask)
    return items


def shared_context_logits(
    model, inputs: dict[str, torch.Tensor], alone: int = 0, item_states: torch.Tensor | None = None
) -> torch.Tensor:
    """One logit per item of `inputs` (`SharedContextEncoded.model_inputs`), from a
    BertForSequenceClassification with one label; differentiable, so training runs it too.

    The first `alone` layers read each item alone (`alone_layers`); `item_states`, their output for
    the batch's distinct items (`alone_item_states`), spares recomputing them for every row.
    """
    bert = model.base_model
    context_mask, item_mask, owner = inputs["context_mask"], inputs["item_mask"], inputs["item_context"]
    context_positions = torch.arange(context_mask.shape[1], device=context_mask.device).expand_as(
        context_mask
    )
    context = _embedded(bert, inputs["context_ids"], context_mask, context_positions, 0)
    if item_states is None:
        items = _embedded(bert, inputs["item_ids"], item_mask, inputs["item_positions"], 1)
    else:
        items = item_states[inputs["item_state_at"]]
    for index, layer in enumerate(bert.encoder.layer):
        context, key, value = _layer(layer, context, context_mask)
        if index >= alone:
            items, _, _ = _layer(layer, items, item_mask, (key[owner], value[owner], context_mask[owner]))
        elif item_states is None:
            items, _, _ = _layer(layer, items, item_mask)
    weights = item_mask.unsqueeze(-1).to(items.dtype)
    pooled = _padded(items, item_mask).sum(1) / weights.sum(1).clamp(min=1.0)
    pooled = bert.pooler.activation(bert.pooler.dense(pooled))
    return model.classifier(model.dropout(pooled))[:, 0]
