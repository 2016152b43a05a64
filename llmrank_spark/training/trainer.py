"""The fine-tuning loop: batches of lists, the loss, validation NDCG and early stopping."""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from typing import Literal, cast

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist

from llmrank_spark.config import TrainConfig
from llmrank_spark.metrics import ndcg_at_k
from llmrank_spark.rerank import (
    PairScorer,
    ScoringSettings,
    fused_scores,
    retrieval_features,
)
from llmrank_spark.training.lists import LABEL, LIST, list_labels, rank_by_score
from llmrank_spark.training.losses import ranking_loss
from llmrank_spark.training.network import FusionRanker, freeze_lower_layers, optimizer_for

VALIDATION_K = 10


# ---- training loop -----------------------------------------------------------------------------------


@dataclass
class FitResult:
    best_ndcg: float
    steps: int
    evaluations: list[tuple[int, float]] = field(default_factory=list)
    seconds: float = 0.0


def feature_matrix(lists: pd.DataFrame, features: list[str]) -> np.ndarray:
    return retrieval_features(lists, features)


def score_lists(model: FusionRanker, scorer: PairScorer, lists: pd.DataFrame) -> np.ndarray:
    """Scores of every row of `lists` as served: the engine's logit, then the fusion head in numpy."""
    model.eval()
    logits = scorer.score(lists["context_text"].tolist(), lists["item_text"].tolist())
    return fused_scores(logits, feature_matrix(lists, model.features), model.head_spec())


def per_list_ndcg(lists: pd.DataFrame, scores: np.ndarray, k: int = VALIDATION_K) -> pd.Series:
    """NDCG@k of each list ordered by `scores`, by list id."""
    return ndcg_at_k(rank_by_score(lists, scores), list_labels(lists), k)


def list_ndcg(lists: pd.DataFrame, scores: np.ndarray, k: int = VALIDATION_K) -> float:
    return float(per_list_ndcg(lists, scores, k).mean())


def training_scorer(model: FusionRanker, tokenizer, cfg: TrainConfig, device: torch.device) -> PairScorer:
    """The engine that encodes training batches and scores validation lists, in fp32 on `device`."""
    settings = ScoringSettings(
        # Training runs on cpu or cuda (`fit`'s device), so its type is one of the settings' devices.
        device=cast(Literal["cpu", "cuda"], device.type),
        precision="fp32",
        micro_batch_size=64,
        max_length=cfg.max_length,
    )
    return PairScorer(model.encoder, tokenizer, "cross_encoder", device, settings, model.architecture)


def fit(
    model: FusionRanker,
    scorer: PairScorer,
    train: pd.DataFrame,
    validation: pd.DataFrame,
    cfg: TrainConfig,
    distributed: bool = False,
) -> FitResult:
    """Train on `train` lists (rows grouped by list_id, list_size each) with `cfg.loss`; every
    `eval_every_steps` steps and after the last step measure validation NDCG@10, keep the best weights,
    stop after `patience` evaluations without improvement, or at the first evaluation after
    `max_seconds`. The model ends holding the best weights. The
    head reads each feature scaled to its range in `train` (`FusionRanker.scale_features`), so no
    feature's units set its pace.

    `distributed`: this process is one rank of an initialised torch.distributed group, and every rank
    calls `fit` with the same lists and config. Each step takes the next world_size x batch_lists lists
    of the one seeded order and each rank trains on its share, through DistributedDataParallel, which
    averages the gradients: a step sees what one process sees with world_size times the batch. Rank 0
    validates and broadcasts the NDCG, so every rank keeps the same weights and stops at the same step.
    """
    started = time.perf_counter()
    rank, world_size = (dist.get_rank(), dist.get_world_size()) if distributed else (0, 1)
    loss_fn = ranking_loss(cfg.loss)
    freeze_lower_layers(model.encoder, cfg.trainable_layers)
    optimizer = optimizer_for(model, cfg)
    list_ids = train[LIST].drop_duplicates().to_numpy()
    features = torch.from_numpy(feature_matrix(train, model.features))
    model.scale_features(features.numpy())
    features = features.to(scorer.device)
    row_of = pd.Series(np.arange(len(train)), index=train[LIST].to_numpy()).groupby(level=0).agg(list)
    rng = np.random.default_rng(cfg.seed)
    forward = data_parallel(model, scorer.device) if distributed else model
    step_lists = cfg.batch_lists * world_size

    def validation_ndcg() -> tuple[float, bool]:
        """(NDCG, whether `max_seconds` is spent), measured on rank 0 and sent to every rank, so all
        make the same stopping decision."""
        ndcg = list_ndcg(validation, score_lists(model, scorer, validation)) if rank == 0 else 0.0
        spent = cfg.max_seconds is not None and time.perf_counter() - started >= cfg.max_seconds
        if distributed:
            value = torch.tensor([ndcg, float(spent)], dtype=torch.float64, device=scorer.device)
            dist.broadcast(value, src=0)
            ndcg, spent = float(value[0]), bool(value[1])
        return ndcg, spent

    best = FitResult(validation_ndcg()[0], 0)
    best.evaluations.append((0, best.best_ndcg))
    if rank == 0:
        print(f"[train] step 0: validation ndcg@10 {best.best_ndcg:.4f}", flush=True)
    best_state, waited, step = copy.deepcopy(model.state_dict()), 0, 0

    def evaluate(loss: float) -> bool:
        """Record this step's validation NDCG, keep the weights if best; True when patience has run out or
        the time budget is spent."""
        nonlocal best_state, waited
        ndcg, spent = validation_ndcg()
        best.evaluations.append((step, ndcg))
        if rank == 0:
            print(f"[train] step {step}: loss {loss:.4f}, validation ndcg@10 {ndcg:.4f}", flush=True)
        if ndcg > best.best_ndcg:
            best.best_ndcg, best.steps, best_state, waited = ndcg, step, copy.deepcopy(model.state_dict()), 0
        else:
            waited += 1
        if spent and rank == 0:
            print(f"[train] step {step}: the time budget of {cfg.max_seconds:g} s is spent", flush=True)
        return spent or waited >= cfg.patience

    stopped = False
    for _epoch in range(cfg.epochs):
        # Padded to a multiple of world_size by repeating its first lists, so every rank has lists at
        # every step (a rank that skipped a step would leave the others waiting for its gradients).
        order = rng.permutation(list_ids)
        order = np.resize(order, len(order) + (-len(order) % world_size))
        for start in range(0, len(order), step_lists):
            chosen = np.array_split(order[start : start + step_lists], world_size)[rank]
            rows = np.concatenate([row_of[list_id] for list_id in chosen])
            batch = train.iloc[rows]
            encoded = scorer.encode_pairs(batch["context_text"].tolist(), batch["item_text"].tolist())
            model.train()
            inputs = scorer.model_inputs(encoded, np.arange(len(rows)))
            scores = forward({name: t.to(scorer.device) for name, t in inputs.items()}, features[rows])
            labels = torch.tensor(batch[LABEL].to_numpy(dtype=np.float32), device=scorer.device)
            loss = loss_fn(scores.reshape(len(chosen), -1), labels.reshape(len(chosen), -1))
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            step += 1
            if step % cfg.eval_every_steps == 0 and evaluate(loss.item()):
                stopped = True
                break
        if stopped:
            break
    # The steps after the last evaluation are measured too, so the end of training is never discarded.
    if not stopped and step % cfg.eval_every_steps:
        evaluate(loss.item())
    model.load_state_dict(best_state)
    model.eval()
    best.seconds = time.perf_counter() - started
    return best


def data_parallel(model: FusionRanker, device: torch.device) -> torch.nn.Module:
    """`model` wrapped so its backward averages gradients over the ranks (after the lower layers are
    frozen: DistributedDataParallel syncs only the parameters that train)."""
    device_ids = [device] if device.type == "cuda" else None
    return torch.nn.parallel.DistributedDataParallel(model, device_ids=device_ids)
