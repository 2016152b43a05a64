"""The in-process pair scorer: length-sorted micro-batches, one tokenisation per distinct text."""

from __future__ import annotations

import contextlib
import functools
import itertools
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache
from typing import Literal, TypeVar

import numpy as np
import pandas as pd
import torch
from pyspark import TaskContext

from llmrank_spark.config import RerankConfig
from llmrank_spark.rerank.artifact import ModelSpec, load_model
from llmrank_spark.rerank.layout import PADDING, padded_rows
from llmrank_spark.rerank.shared_context import (
    Architecture,
    SharedContextEncoded,
    alone_item_states,
    alone_layers,
    shared_context_logits,
)
from llmrank_spark.text import budget_split

Precision = Literal["auto", "fp32", "fp16", "bf16"]
T = TypeVar("T")
R = TypeVar("R")


@dataclass(frozen=True)
class ScoringSettings:
    """How to run a model, independent of which model: part of the per-worker cache key."""

    device: Literal["auto", "cpu", "cuda"] = "auto"
    precision: Precision = "auto"
    micro_batch_size: int = 64
    max_length: int = 128
    quantize_int8: bool = False
    min_micro_batch_size: int = 1

    @classmethod
    def from_config(cls, cfg: RerankConfig) -> ScoringSettings:
        return cls(
            cfg.device,
            cfg.precision,
            cfg.micro_batch_size,
            cfg.max_length,
            cfg.quantize_int8,
            cfg.min_micro_batch_size,
        )


class ScoringOutOfMemory(RuntimeError):
    """The GPU ran out of memory even at the smallest micro-batch allowed; the message names the settings."""


def autocast_dtype(precision: Precision, device: torch.device) -> torch.dtype | None:
    """The autocast dtype, or None for plain fp32. "auto": bf16 (else fp16) on GPU, fp32 on CPU."""
    if precision == "auto":
        if device.type != "cuda":
            return None
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}[precision]


def prefetched(source: Iterable[T], build: Callable[[T], R], background: bool) -> Iterator[R]:
    """`build` over `source`; with `background`, item i+1 is built on a thread while item i is consumed."""
    if not background:
        yield from map(build, source)
        return
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="llmrank-prefetch") as pool:
        pending = None
        for item in source:
            ready, pending = pending, pool.submit(build, item)
            if ready is not None:
                yield ready.result()
        if pending is not None:
            yield pending.result()


@dataclass(frozen=True)
class _Encoded:
    """A batch as token ids: every row is one or two segments cut from one array of distinct texts' ids."""

    flat: np.ndarray  # the token ids of the batch's distinct texts, concatenated, no special tokens
    starts: np.ndarray  # (rows, segments): where each segment starts in `flat`
    kept: np.ndarray  # (rows, segments): how many of its tokens each segment keeps

    @property
    def lengths(self) -> np.ndarray:
        """Tokens per row with [CLS] and one [SEP] per segment."""
        return 1 + (self.kept + 1).sum(axis=1)


def encoder_logits(
    model,
    inputs: dict[str, torch.Tensor],
    architecture: Architecture,
    item_states: torch.Tensor | None = None,
) -> torch.Tensor:
    """A cross-encoder's logits for `PairScorer.model_inputs` of its architecture: one per row.
    `item_states`: late_context's lower layers already run once per distinct item (`alone_item_states`)."""
    if architecture == "pair":
        return model(**inputs).logits[:, 0]
    return shared_context_logits(model, inputs, alone_layers(model, architecture), item_states)


class PairScorer:
    """Scores (context, item) pairs with one model on one device; build once, call `score` many times.

    A cross-encoder of the "shared_context" architecture (`shared_context.py`) scores the same pairs,
    each context encoded once per micro-batch for all of its items there; under "late_context" each
    distinct item of a batch is also read alone through the first layers once, for all rows holding it.
    """

    # Distinct texts whose token ids a scorer remembers: candidate lists repeat the same items all night.
    TOKEN_CACHE_SIZE = 500_000

    def __init__(
        self,
        model,
        tokenizer,
        kind: str,
        device: torch.device,
        settings: ScoringSettings,
        architecture: Architecture = "pair",
    ) -> None:
        if settings.quantize_int8 and device.type == "cpu":
            model = torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)
        elif settings.quantize_int8:
            warnings.warn(
                "rerank.quantize_int8 applies on CPU only; running unquantised on GPU", stacklevel=2
            )
        self.model = model.to(device).eval()
        self.tokenizer = tokenizer
        self.kind = kind
        self.architecture = architecture
        self.device = device
        self.settings = settings
        self.dtype = autocast_dtype(settings.precision, device)
        self.special = (tokenizer.cls_token_id, tokenizer.sep_token_id, tokenizer.pad_token_id)
        self._token_ids: dict[str, list[int]] = {}
        # Halved on GPU out-of-memory and kept for the scorer's life: later batches would run out too.
        self.micro_batch_size = settings.micro_batch_size

    @classmethod
    def from_spec(cls, spec: ModelSpec, device: torch.device, settings: ScoringSettings) -> PairScorer:
        model, tokenizer = load_model(spec)
        return cls(model, tokenizer, spec.kind, device, settings, spec.architecture)

    # ---- public ----------------------------------------------------------------------------------

    def score(self, contexts: Sequence[str], items: Sequence[str]) -> np.ndarray:
        """One float32 score per (context, item) pair, in input order; higher means more relevant."""
        return next(self.score_batches([(contexts, items)]))

    def score_batches(self, batches: Iterable[tuple[Sequence[str], Sequence[str]]]) -> Iterator[np.ndarray]:
        """`score` over a stream of batches (the pandas UDF's Arrow batches)."""
        for contexts, items in batches:
            if len(contexts) != len(items):
                raise ValueError(f"{len(contexts)} contexts but {len(items)} items: pairs must line up")
            if len(contexts) == 0:
                yield np.empty(0, np.float32)
            elif self.kind == "cross_encoder":
                yield self._run(self.encode_pairs(contexts, items), self._logit)
            else:
                yield self._cosine(contexts, items)

    def encode_pairs(self, contexts: Sequence[str], items: Sequence[str]) -> _Encoded | SharedContextEncoded:
        """Pairs as token ids within `max_length`: the context is cut first, the item only past its cap
        (`text.budget`; for a shared context, `shared_context_split`)."""
        codes, flat, offsets, counts = self._distinct_token_ids([*contexts, *items])
        context, item = codes[: len(contexts)], codes[len(contexts) :]
        if self.architecture != "pair":
            return SharedContextEncoded.from_token_ids(
                flat,
                offsets,
                counts,
                context,
                item,
                self.settings.max_length,
                self.architecture == "late_context",
            )
        budget = self.settings.max_length - 3  # [CLS] context [SEP] item [SEP]
        kept_context, kept_item = budget_split(counts[context], counts[item], budget)
        starts = np.stack([offsets[context], offsets[item]], axis=1)
        return _Encoded(flat, starts, np.stack([kept_context, kept_item], axis=1))

    def model_inputs(
        self, encoded: _Encoded | SharedContextEncoded, rows: np.ndarray
    ) -> dict[str, torch.Tensor]:
        """Model inputs for the given rows, padded only to their longest row (on GPU: to a multiple of 8:
        tensor-core friendly, and 16 batch shapes instead of 128 for the attention kernels to plan for)."""
        width_multiple = 8 if self.device.type == "cuda" else 1
        if isinstance(encoded, SharedContextEncoded):
            return encoded.model_inputs(rows, self.special, width_multiple)
        return self._pair_inputs(encoded, rows, width_multiple)

    def _pair_inputs(
        self, encoded: _Encoded, rows: np.ndarray, width_multiple: int
    ) -> dict[str, torch.Tensor]:
        """BERT's pair layout, [CLS] a [SEP] b [SEP] with segment ids 0 then 1 (a test checks it equals the
        tokenizer's own encoding of each pair), from the ids of texts tokenised once."""
        cls_id, sep_id, pad_id = self.special
        starts, kept = encoded.starts[rows], encoded.kept[rows]
        n_rows, n_segments = kept.shape
        source = np.concatenate([encoded.flat, [cls_id, sep_id]])
        ones = np.ones(n_rows, dtype=np.int64)
        start_pieces, length_pieces, piece_types = [len(encoded.flat) * ones], [ones], [0]
        for segment in range(n_segments):
            start_pieces += [starts[:, segment], (len(encoded.flat) + 1) * ones]
            length_pieces += [kept[:, segment], ones]
            piece_types += [segment, segment]
        ids, piece = padded_rows(
            source, np.stack(start_pieces, axis=1), np.stack(length_pieces, axis=1), pad_id, width_multiple
        )
        mask = piece != PADDING
        token_types = np.where(mask, np.asarray(piece_types)[np.maximum(piece, 0)], 0)
        return {
            "input_ids": torch.from_numpy(ids),
            "token_type_ids": torch.from_numpy(token_types),
            "attention_mask": torch.from_numpy(mask.astype(np.int64)),
        }

    # ---- engine ----------------------------------------------------------------------------------

    def _distinct_token_ids(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(code of each text, concatenated ids of the distinct texts, their offsets, their token counts).

        Each distinct text is tokenised once (one call into the Rust tokenizer for those not cached yet):
        a batch repeats one context for a whole candidate list, and items recur across lists.
        """
        codes, distinct = pd.factorize(pd.Series(texts, dtype=object))
        missing = [text for text in distinct if text not in self._token_ids]
        if missing:
            if len(self._token_ids) + len(missing) > self.TOKEN_CACHE_SIZE:
                self._token_ids.clear()
            # truncation only bounds pathological texts; the budget is applied per pair afterwards.
            encoded = self.tokenizer(
                missing, add_special_tokens=False, truncation=True, max_length=self.settings.max_length
            )
            self._token_ids.update(zip(missing, encoded["input_ids"], strict=True))
        token_ids = [self._token_ids[text] for text in distinct]
        counts = np.fromiter(map(len, token_ids), dtype=np.int64, count=len(token_ids))
        offsets = np.concatenate([[0], np.cumsum(counts)[:-1]])
        flat = np.fromiter(itertools.chain.from_iterable(token_ids), dtype=np.int64, count=int(counts.sum()))
        return codes, flat, offsets, counts

    def _cosine(self, contexts: Sequence[str], items: Sequence[str]) -> np.ndarray:
        codes, flat, offsets, counts = self._distinct_token_ids([*contexts, *items])
        kept = np.minimum(counts, self.settings.max_length - 2)[:, None]  # [CLS] text [SEP]
        embeddings = self._run(_Encoded(flat, offsets[:, None], kept), self._mean_pooled)
        left, right = embeddings[codes[: len(contexts)]], embeddings[codes[len(contexts) :]]
        return np.einsum("ij,ij->i", left, right).astype(np.float32)

    def _run(
        self,
        encoded: _Encoded | SharedContextEncoded,
        head: Callable[..., torch.Tensor],
    ) -> np.ndarray:
        """Forward every row, longest first in micro-batches, and return outputs in input order.

        Shared-context rows go context by context (longest item first within one), so a context is
        encoded once per micro-batch for all of its items there. Under late_context the distinct items'
        states read alone are computed first and handed to `head` as `item_states`.
        """
        if isinstance(encoded, SharedContextEncoded):
            order = np.lexsort((-encoded.lengths, encoded.context))
        else:
            order = np.argsort(-encoded.lengths, kind="stable")
        with torch.inference_mode(), self._autocast():
            if isinstance(encoded, SharedContextEncoded) and encoded.items_alone_first:
                head = functools.partial(head, item_states=self._alone_item_states(encoded))
            outputs = self._forward(
                order, encoded.lengths, lambda rows: self.model_inputs(encoded, rows), head
            )
        # One device-to-host copy per batch: no sync per micro-batch, so the GPU never waits on Python.
        in_sorted_order = torch.cat(outputs).cpu().numpy()
        result = np.empty_like(in_sorted_order)
        result[order] = in_sorted_order
        return result

    def _alone_item_states(self, encoded: SharedContextEncoded) -> torch.Tensor:
        """The first layers' states of every distinct item of the batch, read alone, concatenated unpadded
        in code order (`SharedContextEncoded.distinct_items`): each item once, however many rows hold it."""
        first_row, _, _ = encoded.distinct_items
        width_multiple = 8 if self.device.type == "cuda" else 1
        layers = alone_layers(self.model, self.architecture)
        return torch.cat(
            self._forward(
                np.arange(len(first_row)),
                encoded.item_kept[first_row] + 1,
                lambda codes: encoded.alone_item_inputs(codes, self.special, width_multiple),
                lambda inputs: alone_item_states(self.model, inputs, layers),
            )
        )

    def _forward(
        self,
        order: np.ndarray,
        lengths: np.ndarray,
        build: Callable[[np.ndarray], dict[str, torch.Tensor]],
        head: Callable[..., torch.Tensor],
    ) -> list[torch.Tensor]:
        """`head` over `build` of the rows in `order`, in micro-batches; outputs in that order.

        On CUDA out-of-memory the micro-batch is halved and the rows not yet run are retried, down to
        `min_micro_batch_size`; below that the scorer fails naming the settings to change.
        """
        on_gpu = self.device.type == "cuda"

        def host_inputs(rows: np.ndarray) -> tuple[int, dict[str, torch.Tensor]]:
            """Inputs in pinned memory on GPU, so the copy to the device overlaps the previous forward."""
            tensors = build(rows)
            return len(rows), {name: t.pin_memory() for name, t in tensors.items()} if on_gpu else tensors

        outputs: list[torch.Tensor] = []
        done = 0
        while done < len(order):
            size = self.micro_batch_size
            chunks = [order[start : start + size] for start in range(done, len(order), size)]
            try:
                for n_rows, host in prefetched(chunks, host_inputs, on_gpu):
                    batch = {name: t.to(self.device, non_blocking=on_gpu) for name, t in host.items()}
                    outputs.append(head(batch))
                    done += n_rows
            except torch.OutOfMemoryError as error:
                self._halve_micro_batch(error, int(lengths[order[done]]))
        return outputs

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def _halve_micro_batch(self, error: torch.OutOfMemoryError, longest_tokens: int) -> None:
        floor = min(self.settings.min_micro_batch_size, self.settings.micro_batch_size)
        if self.micro_batch_size // 2 < floor:
            raise ScoringOutOfMemory(
                f"out of GPU memory on {self.device} scoring a micro-batch of {self.micro_batch_size} pairs "
                f"of up to {longest_tokens} tokens, already halved down to rerank.min_micro_batch_size="
                f"{floor}; lower rerank.max_length, use rerank.precision=fp16 or bf16, or run on a GPU "
                f"with more free memory"
            ) from error
        self.micro_batch_size //= 2
        warnings.warn(
            f"out of GPU memory at micro-batch {self.micro_batch_size * 2}: retrying at "
            f"{self.micro_batch_size}",
            stacklevel=3,
        )
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def _logit(self, batch: dict[str, torch.Tensor], item_states: torch.Tensor | None = None) -> torch.Tensor:
        return encoder_logits(self.model, batch, self.architecture, item_states).float()

    def _mean_pooled(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Token embeddings averaged over the attention mask, L2-normalised: sentence-transformers' recipe."""
        hidden = self.model(**batch).last_hidden_state.float()
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        return torch.nn.functional.normalize(pooled, dim=-1)


# ---- executor side ---------------------------------------------------------------------------------


def task_device(requested: str) -> torch.device:
    """The GPU Spark assigned to this task, else the CPU; rerank.device=cpu/cuda forces one."""
    if requested == "cpu":
        return torch.device("cpu")
    context = TaskContext.get()
    gpus = context.resources().get("gpu") if context is not None else None
    if gpus is not None and gpus.addresses:
        return torch.device("cuda", int(gpus.addresses[0]))
    if requested == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError(
                "rerank.device=cuda but this executor sees no CUDA device; run on GPU executors "
                "(conf/gpu-cluster.yaml) or set rerank.device=auto"
            )
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


@lru_cache(maxsize=2)  # a new model version replaces the old one instead of piling up in GPU memory
def cached_scorer(spec: ModelSpec, device: torch.device, settings: ScoringSettings) -> PairScorer:
    """One scorer per Python worker, model version (spec) and device: loaded once, reused across tasks."""
    return PairScorer.from_spec(spec, device, settings)
