"""Fine-tuning the cross-encoder reranker from behaviour: ranking lists, losses, fusion head, registry.

The pure core works on pandas frames and tensors (unit tests call it without Spark):

- `history_before` / `target_contexts`: a list's context is the user's history strictly before the
  event it predicts, built by the serving text functions, so a model trains on the text it is served.
- `sample_lists`: the positive (graded by event type or rating) plus hard negatives from the user's
  candidate list, items of the target's category and random catalogue items.
- `ranking_loss`: the five losses, taken from sentence-transformers and torch (docs/training.md says why).
- `FusionRanker` and `fit`: BERT logit fused with retrieval features by a linear head, trained end to
  end with early stopping on validation NDCG@10.

`train_reranker` is the thin Spark layer the `train` step calls: the time split and the candidate
retrievers (hard negatives and features) run in Spark; lists are built on the driver, and `fit` runs
there or, with `train.distributor_processes`, data-parallel under Spark's TorchDistributor
(`fit_with_distributor`).
"""

from __future__ import annotations

import copy
import datetime as dt
import hashlib
import io
import os
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist
from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from llmrank_spark.config import Config, RerankConfig, TrainConfig
from llmrank_spark.features import FEATURES, ranking_features
from llmrank_spark.fusion import BERT_SCORE, FusionModel, FusionSettings, fit_fusion
from llmrank_spark.metrics import ndcg_at_k
from llmrank_spark.model import (
    BASE_MODEL_NAME,
    ArtifactManifest,
    FusionHead,
    base_model_dir,
    load_artifact,
    load_tokenizer,
    save_artifact,
    untrained_cross_encoder,
)
from llmrank_spark.ranking import ITEM_EVENTS, fused_scores, item_event_counts, retrieval_features
from llmrank_spark.scoring import PairScorer, ScoringSettings
from llmrank_spark.text import (
    ITEM_FIELDS,
    contexts_with_user_texts,
    item_text_frame,
    user_context_frame,
    user_text_frame,
)

LIST, ITEM, LABEL = "list_id", "item_id", "label"
VALIDATION_K = 10

# ---- lists (pure pandas) -----------------------------------------------------------------------------


def leave_last_out(interactions: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(training events, held-out labels): each user's latest event, ties by item_id, is held out."""
    ordered = interactions.sort_values(["user_id", "event_ts", "item_id"], kind="mergesort")
    last = ~ordered.duplicated("user_id", keep="last")
    held_out = ordered.loc[last, ["user_id", "item_id"]].rename(columns={"user_id": "request_id"})
    return ordered.loc[~last], held_out.assign(relevance=1)


def event_grades(events: pd.DataFrame, cfg: TrainConfig) -> pd.Series:
    """Graded relevance in (0, 1] of each event: by event type (purchase > cart > click > view), or a
    rating's value / rating_scale."""
    is_rating = events["event_type"] == "rating"
    grades = events["event_type"].map(cfg.event_grades)
    grades = grades.where(~is_rating, events.get("value", pd.Series(np.nan, events.index)) / cfg.rating_scale)
    unknown = grades.isna()
    if unknown.any():
        row = events[unknown].iloc[0]
        raise ValueError(
            f"interactions: event_type '{row['event_type']}' of user '{row['user_id']}' has no grade "
            f"(a rating needs a value); add it to train.event_grades"
        )
    return grades.clip(lower=0.0, upper=1.0)


def target_grades(targets: pd.DataFrame, events: pd.DataFrame, cfg: TrainConfig) -> pd.Series:
    """Each target's grade: the best grade among the user's events on that item up to the target's time."""
    graded = events.assign(grade=event_grades(events, cfg))[["user_id", "item_id", "event_ts", "grade"]]
    paired = targets[[LIST, "user_id", "item_id", "event_ts"]].merge(
        graded, on=["user_id", "item_id"], suffixes=("", "_event")
    )
    best = paired[paired["event_ts_event"] <= paired["event_ts"]].groupby(LIST)["grade"].max()
    return targets[LIST].map(best).rename(LABEL)


def history_before(events: pd.DataFrame, targets: pd.DataFrame) -> pd.DataFrame:
    """Every event of a target's user strictly before the target's time, on other items than the target,
    keyed by the target's list_id.

    The leakage guard of list construction: nothing at or after t enters the context of a list at t, and
    neither does the target item itself. A target sits at its latest event, so its own earlier funnel
    steps (the view seconds before the purchase) would otherwise state the answer in the context, and
    the model would learn to find the item in the history rather than what the shopper chooses by.
    """
    joined = targets[[LIST, "user_id", "item_id", "event_ts"]].merge(
        events, on="user_id", suffixes=("_target", "")
    )
    before = joined[
        (joined["event_ts"] < joined["event_ts_target"]) & (joined["item_id"] != joined["item_id_target"])
    ]
    return before.drop(columns=["event_ts_target", "item_id_target"])


def target_contexts(
    events: pd.DataFrame,
    items: pd.DataFrame,
    targets: pd.DataFrame,
    cfg: RerankConfig,
    users: pd.DataFrame | None = None,
) -> pd.Series:
    """Context text per list_id, built as served: `user_context_frame` from `history_before`, after the
    user's `cfg.user_template` text when `users` is given (`contexts_with_user_texts`)."""
    fields = [c for c in (*ITEM_FIELDS, "attributes") if c in items.columns]
    history = history_before(events[["user_id", "item_id", "event_ts"]], targets).merge(
        items[fields], on="item_id"
    )
    contexts = user_context_frame(history.drop(columns=["user_id"]).rename(columns={LIST: "user_id"}), cfg)
    user_text = pd.Series(None, index=targets.index, dtype=object)
    if cfg.user_template and users is not None:
        user_text = targets["user_id"].map(
            user_text_frame(users, cfg.user_template).set_index("request_id")["user_text"]
        )
    frame = pd.DataFrame(
        {
            "request_id": targets[LIST],
            "user_text": user_text,
            "context_text": targets[LIST].map(contexts.set_index("request_id")["context_text"]),
        }
    )
    return contexts_with_user_texts(frame).set_axis(targets.index)["context_text"]


def sample_lists(
    targets: pd.DataFrame,
    candidates: pd.DataFrame,
    interacted: pd.DataFrame,
    categories: pd.Series,
    cfg: TrainConfig,
    rng: np.random.Generator,
    item_events: pd.Series | None = None,
) -> pd.DataFrame:
    """(list_id, item_id, label) rows, `cfg.list_size` per target: its item, then negatives.

    `categories` maps every catalogue item_id to its category (None where it has none). Negatives are
    items the user never interacted with: up to `hard_negatives` drawn from the user's candidate list
    (what the reranker will have to sort out), up to `category_negatives` from the target's category
    (the choice the shopper made there: they differ from the target in attributes, not in kind), the
    rest at random from the catalogue. With `negative_popularity_power` p > 0, the category and
    catalogue draws take an item with probability proportional to (1 + its `item_events`)^p (missing:
    0 events) rather than uniformly.
    """
    seen = interacted.groupby("user_id")["item_id"].agg(set)
    proposed = candidates.groupby("request_id")["item_id"].agg(list)
    catalogue = categories.index.to_numpy()
    by_category = {c: group.index.to_numpy() for c, group in categories.groupby(categories)}
    draw_from_catalogue = _unseen_sampler(catalogue, item_events, cfg.negative_popularity_power)
    draw_from_category = {
        c: _unseen_sampler(pool, item_events, cfg.negative_popularity_power)
        for c, pool in by_category.items()
    }
    rows = []
    for target in targets.itertuples(index=False):
        excluded = seen.get(target.user_id, set()) | {target.item_id}
        hard = [item for item in proposed.get(target.user_id, []) if item not in excluded]
        n_hard = min(cfg.hard_negatives, len(hard), cfg.list_size - 1)
        chosen = [target.item_id, *rng.choice(np.array(hard, dtype=object), n_hard, replace=False)]
        same_category = draw_from_category.get(categories.get(target.item_id))
        if same_category:
            same_category(chosen, excluded, min(len(chosen) + cfg.category_negatives, cfg.list_size), rng)
        draw_from_catalogue(chosen, excluded, cfg.list_size, rng)
        if len(chosen) < cfg.list_size:
            raise ValueError(
                f"items: too few items user '{target.user_id}' has not interacted with to fill a list of "
                f"{cfg.list_size}; lower train.list_size"
            )
        labels = [target.label] + [0.0] * (len(chosen) - 1)
        rows += [(target.list_id, item, label) for item, label in zip(chosen, labels, strict=True)]
    return pd.DataFrame(rows, columns=[LIST, ITEM, LABEL])


def _unseen_sampler(
    pool: np.ndarray, item_events: pd.Series | None, power: float
) -> Callable[[list, set, int, np.random.Generator], None]:
    """A sampler that appends items of `pool` outside `excluded` and `chosen` until `chosen` holds
    `wanted` (or the pool has no more): uniformly, or (power > 0) in proportion to (1 + the item's
    events)^power.

    Popularity-proportional negatives are the sampled-softmax correction word2vec and two-tower
    recommenders use: the positive was chosen partly for being popular, so negatives as popular as the
    shoppers' choices leave the model the preferences to learn, not the popularity. Draws are by
    rejection, as the pool can be large; when that runs dry (the shopper touched most of the pool's
    weight), the rest are drawn from what is left.
    """
    weights = None
    if power > 0 and len(pool):
        events = pd.Series(item_events, dtype=float).reindex(pool).fillna(0.0).to_numpy()
        weights = (1.0 + events) ** power
        cumulative = np.cumsum(weights)

    def draw(chosen: list, excluded: set, wanted: int, rng: np.random.Generator) -> None:
        attempts = 100 * wanted
        while len(chosen) < wanted and attempts and len(pool):
            if weights is None:
                item = pool[rng.integers(len(pool))]
            else:
                item = pool[np.searchsorted(cumulative, rng.random() * cumulative[-1], side="right")]
            attempts -= 1
            if item not in excluded and item not in chosen:
                chosen.append(item)
        if len(chosen) >= wanted:
            return
        left = np.array([item not in excluded and item not in chosen for item in pool], dtype=bool)
        if left.any():
            p = None if weights is None else weights[left] / weights[left].sum()
            size = min(wanted - len(chosen), int(left.sum()))
            chosen.extend(rng.choice(pool[left], size, replace=False, p=p))

    return draw


def rank_by_score(lists: pd.DataFrame, score: np.ndarray) -> pd.DataFrame:
    """(request_id, item_id, rank) of every list sorted by score, best first, ties by item_id."""
    scored = pd.DataFrame(
        {"request_id": lists[LIST].to_numpy(), ITEM: lists[ITEM].to_numpy(), "score": score}
    )
    scored = scored.sort_values(
        ["request_id", "score", ITEM], ascending=[True, False, True], kind="mergesort"
    )
    return scored.assign(rank=scored.groupby("request_id").cumcount() + 1)


def list_labels(lists: pd.DataFrame) -> pd.DataFrame:
    """The labels of `lists` in the (request_id, item_id, relevance) form `metrics` reads."""
    return pd.DataFrame(
        {
            "request_id": lists[LIST].to_numpy(),
            ITEM: lists[ITEM].to_numpy(),
            "relevance": lists[LABEL].to_numpy(),
        }
    )


# ---- losses ------------------------------------------------------------------------------------------


class _GivenScores:
    """Stands in for the CrossEncoder that sentence-transformers' list losses call: it returns scores we
    computed (the fused BERT logit), so their loss code runs unchanged on them."""

    num_labels = 1

    def __init__(self, scores: torch.Tensor) -> None:
        self.flat = scores.reshape(-1)
        self.device = scores.device

    def preprocess(self, pairs, **_) -> dict[str, torch.Tensor]:
        return {"row": torch.tensor([row for _, row in pairs], dtype=torch.long)}

    def __call__(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {"scores": self.flat[batch["row"].to(self.device)]}


def _list_loss(loss) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """A sentence-transformers list loss as a function of (scores, labels), both (lists, list size)."""

    def compute(scores: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        n_lists, size = scores.shape
        loss.model = _GivenScores(scores)
        rows = torch.arange(n_lists * size).reshape(n_lists, size).tolist()
        return loss((list(range(n_lists)), rows), list(labels.float()))

    return compute


def _pairs(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(list, better, worse) index triples of every pair in a list whose labels differ."""
    better = labels[:, :, None] > labels[:, None, :]
    return better.nonzero(as_tuple=True)


def hinge_loss(scores: torch.Tensor, labels: torch.Tensor, margin: float = 1.0) -> torch.Tensor:
    """Pairwise hinge: mean over ordered pairs of max(0, margin - (s_better - s_worse)), torch's
    margin_ranking_loss; sentence-transformers has no hinge for cross-encoders."""
    lists, better, worse = _pairs(labels)
    target = torch.ones(len(lists), device=scores.device)
    return torch.nn.functional.margin_ranking_loss(
        scores[lists, better], scores[lists, worse], target, margin=margin
    )


def balanced_bce(scores: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Pointwise BCE on graded labels, positives weighted by negatives per positive (the `pos_weight` of
    sentence-transformers' BCE reranker recipe). Unweighted, a list's negatives (7 to 1 by default) outvote
    its target and push every feature weight below 0 (features are >= 0), ranking retrieved items last."""
    positives = (labels > 0).sum().clamp(min=1)
    pos_weight = (labels.numel() - positives) / positives
    return torch.nn.functional.binary_cross_entropy_with_logits(
        scores.reshape(-1), labels.reshape(-1).float(), pos_weight=pos_weight.float()
    )


def ranking_loss(name: str) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The training loss `name` as a function of (scores, labels) of shape (lists, list size)."""
    from sentence_transformers.cross_encoder import losses

    placeholder = _GivenScores(torch.zeros(1))
    if name == "bce":
        return balanced_bce
    if name == "hinge":
        return hinge_loss
    if name == "ranknet":
        return _list_loss(losses.RankNetLoss(placeholder))
    if name == "listnet":
        return _list_loss(losses.ListNetLoss(placeholder))
    if name == "lambdaloss":
        return _list_loss(losses.LambdaLoss(placeholder))
    raise ValueError(f"unknown train.loss {name!r}; use one of bce, ranknet, hinge, listnet, lambdaloss")


# ---- model -------------------------------------------------------------------------------------------


class FusionRanker(torch.nn.Module):
    """The BERT cross-encoder's logit, fused with retrieval features by a linear head.

    With no features the score is the logit itself. The head starts as the identity on the logit (and
    zero on features) unless warm-started, so training begins from the plain cross-encoder's ranking.
    The head reads each feature divided by `feature_scale` (`scale_features`); `head_spec` folds the
    scale back into the weights, so what is served is the same `fused_scores` formula on raw features.
    """

    def __init__(self, encoder, features: list[str], head: FusionHead | None = None) -> None:
        super().__init__()
        self.encoder = encoder
        self.features = list(features)
        self.head = torch.nn.Linear(1 + len(features), 1) if features else None
        self.register_buffer("feature_scale", torch.ones(len(features)))
        if self.head is not None:
            with torch.no_grad():
                warm = head is not None and head.features == self.features
                weights = (
                    [head.logit_weight, *head.feature_weights] if warm else [1.0] + [0.0] * len(features)
                )
                self.head.weight.copy_(torch.tensor([weights]))
                self.head.bias.fill_(head.bias if warm else 0.0)

    def forward(self, inputs: dict[str, torch.Tensor], features: torch.Tensor) -> torch.Tensor:
        logits = self.encoder(**inputs).logits[:, 0]
        if self.head is None:
            return logits
        return self.head(torch.cat([logits[:, None], features / self.feature_scale], dim=1))[:, 0]

    def scale_features(self, features: np.ndarray) -> None:
        """Scale each feature by its largest value in `features` (the training lists), the score unchanged.

        AdamW moves every head weight by about the learning rate per step, whatever its feature's range.
        Unscaled, item_events (log of a count, up to 6 or more) moves the score several times faster than
        the rank features (at most 1): the pairwise and LambdaLoss heads then rank by popularity alone.
        """
        if self.head is None:
            return
        largest = torch.from_numpy(features.max(axis=0, initial=0.0)).float().to(self.feature_scale.device)
        scale = torch.where(largest > 0, largest, torch.ones_like(largest))
        with torch.no_grad():
            self.head.weight[0, 1:] *= scale / self.feature_scale
        self.feature_scale.copy_(scale)

    def head_spec(self) -> FusionHead | None:
        if self.head is None:
            return None
        weights = self.head.weight.detach()[0]
        return FusionHead(
            features=self.features,
            logit_weight=float(weights[0]),
            feature_weights=(weights[1:] / self.feature_scale).tolist(),
            bias=float(self.head.bias.detach()[0]),
        )


def freeze_lower_layers(encoder, trainable_layers: int) -> None:
    """Train only the top `trainable_layers` transformer layers, the pooler and the classifier: the frozen
    layers need no backward pass, which is most of the cost of a step on CPU."""
    bert = encoder.base_model
    layers = bert.encoder.layer
    frozen = [bert.embeddings, *layers[: max(len(layers) - trainable_layers, 0)]]
    for module in frozen:
        for parameter in module.parameters():
            parameter.requires_grad_(False)


def initial_model(warm_from: str | None, features: list[str]) -> tuple[FusionRanker, str]:
    """(model, what it starts from): the artifact at `warm_from` (weights and head), else MiniLM with a
    fresh 1-logit head."""
    if warm_from is None:
        return FusionRanker(untrained_cross_encoder(), features), BASE_MODEL_NAME
    artifact = load_artifact(warm_from)
    return FusionRanker(artifact.model, features, artifact.manifest.fusion_head), artifact.manifest.version


def optimizer_for(model: FusionRanker, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW over the trainable weights, at three rates: the encoder's layers (`learning_rate`), its
    1-logit classifier (`classifier_learning_rate`, default the same) and the fusion head
    (`head_learning_rate`, no weight decay)."""
    classifier = list(model.encoder.classifier.parameters())
    in_classifier = {id(p) for p in classifier}
    layers = [p for p in model.encoder.parameters() if p.requires_grad and id(p) not in in_classifier]
    head = list(model.head.parameters()) if model.head is not None else []
    return torch.optim.AdamW(
        [
            {"params": layers, "lr": cfg.learning_rate},
            {"params": classifier, "lr": cfg.classifier_learning_rate or cfg.learning_rate},
            {"params": head, "lr": cfg.head_learning_rate, "weight_decay": 0.0},
        ]
    )


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


def list_ndcg(lists: pd.DataFrame, scores: np.ndarray, k: int = VALIDATION_K) -> float:
    return float(ndcg_at_k(rank_by_score(lists, scores), list_labels(lists), k).mean())


def training_scorer(model: FusionRanker, tokenizer, cfg: TrainConfig, device: torch.device) -> PairScorer:
    """The engine that encodes training batches and scores validation lists, in fp32 on `device`."""
    settings = ScoringSettings(
        device=device.type, precision="fp32", micro_batch_size=64, max_length=cfg.max_length
    )
    return PairScorer(model.encoder, tokenizer, "cross_encoder", device, settings)


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
    stop after `patience` evaluations without improvement. The model ends holding the best weights. The
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
    forward = _data_parallel(model, scorer.device) if distributed else model
    step_lists = cfg.batch_lists * world_size

    def validation_ndcg() -> float:
        """Measured on rank 0 and sent to every rank, so all make the same early-stopping decision."""
        ndcg = list_ndcg(validation, score_lists(model, scorer, validation)) if rank == 0 else 0.0
        if distributed:
            value = torch.tensor([ndcg], dtype=torch.float64, device=scorer.device)
            dist.broadcast(value, src=0)
            ndcg = float(value.item())
        return ndcg

    best = FitResult(validation_ndcg(), 0)
    best.evaluations.append((0, best.best_ndcg))
    if rank == 0:
        print(f"[train] step 0: validation ndcg@10 {best.best_ndcg:.4f}", flush=True)
    best_state, waited, step = copy.deepcopy(model.state_dict()), 0, 0

    def evaluate(loss: float) -> bool:
        """Record this step's validation NDCG, keep the weights if best; True when patience has run out."""
        nonlocal best_state, waited
        ndcg = validation_ndcg()
        best.evaluations.append((step, ndcg))
        if rank == 0:
            print(f"[train] step {step}: loss {loss:.4f}, validation ndcg@10 {ndcg:.4f}", flush=True)
        if ndcg > best.best_ndcg:
            best.best_ndcg, best.steps, best_state, waited = ndcg, step, copy.deepcopy(model.state_dict()), 0
        else:
            waited += 1
        return waited >= cfg.patience

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


def _data_parallel(model: FusionRanker, device: torch.device) -> torch.nn.Module:
    """`model` wrapped so its backward averages gradients over the ranks (after the lower layers are
    frozen: DistributedDataParallel syncs only the parameters that train)."""
    device_ids = [device] if device.type == "cuda" else None
    return torch.nn.parallel.DistributedDataParallel(model, device_ids=device_ids)


def distributor_mode(spark: SparkSession) -> tuple[bool, bool]:
    """(local_mode, use_gpu) for TorchDistributor, read from the session's config.

    A local master trains in processes on the driver; any other master in barrier tasks on executors.
    GPUs are used when Spark gives each training process a whole one: spark.driver.resource.gpu.amount
    locally, spark.task.resource.gpu.amount (at least 1) on a cluster.
    """
    local_mode = spark.conf.get("spark.master", "").startswith("local")
    key = "spark.driver.resource.gpu.amount" if local_mode else "spark.task.resource.gpu.amount"
    gpus = float(spark.conf.get(key, "0"))
    if not local_mode and 0 < gpus < 1:
        raise ValueError(
            f"{key} is {gpus}: a TorchDistributor process needs a whole GPU. Start the train job with "
            f"{key} 1 (conf/gpu-cluster.yaml shares a GPU between rerank tasks; it is not for training), "
            f"or set train.distributor_processes=0"
        )
    return local_mode, gpus > 0


def fit_with_distributor(
    spark: SparkSession,
    model: FusionRanker,
    tokenizer,
    train: pd.DataFrame,
    validation: pd.DataFrame,
    cfg: TrainConfig,
) -> FitResult:
    """`fit` in `cfg.distributor_processes` processes under Spark's TorchDistributor; the model ends
    holding rank 0's best weights, as after `fit`. The lists and the starting model travel as the
    function's arguments: they are already in driver memory, and arguments reach the processes in local
    and cluster mode alike, with no shared filesystem. `seconds` includes launching the processes."""
    from pyspark.ml.torch.distributor import TorchDistributor

    started = time.perf_counter()
    local_mode, use_gpu = distributor_mode(spark)
    distributor = TorchDistributor(
        num_processes=cfg.distributor_processes, local_mode=local_mode, use_gpu=use_gpu
    )
    payload = distributor.run(_fit_process, model, tokenizer, train, validation, cfg, use_gpu)
    saved = torch.load(io.BytesIO(payload), weights_only=True)
    model.load_state_dict(saved["state"])
    model.eval()
    return FitResult(**{**saved["result"], "seconds": time.perf_counter() - started})


def _fit_process(
    model: FusionRanker,
    tokenizer,
    train: pd.DataFrame,
    validation: pd.DataFrame,
    cfg: TrainConfig,
    use_gpu: bool,
) -> bytes:
    """One TorchDistributor process: join the group torchrun describes in the environment, `fit`, and
    return rank 0's best weights and FitResult, torch-saved.

    Every process returns those same bytes: TorchDistributor's launcher has each local process write its
    return value to one output file, and identical bytes leave it whole whatever order they write in.
    """
    device = torch.device("cuda", int(os.environ["LOCAL_RANK"])) if use_gpu else torch.device("cpu")
    if use_gpu:
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if use_gpu else "gloo")
    try:
        torch.manual_seed(cfg.seed + dist.get_rank())  # dropout differs by rank; weights start as rank 0's
        torch.set_num_threads(cfg.threads)
        model.to(device)
        scorer = training_scorer(model, tokenizer, cfg, device)
        result = fit(model, scorer, train, validation, cfg, distributed=True)
        payload: list[bytes | None] = [None]
        if dist.get_rank() == 0:
            buffer = io.BytesIO()
            state = {name: tensor.cpu() for name, tensor in model.state_dict().items()}
            torch.save({"state": state, "result": asdict(result)}, buffer)
            payload = [buffer.getvalue()]
        dist.broadcast_object_list(payload, src=0)
        return payload[0]
    finally:
        dist.destroy_process_group()


# ---- Spark layer -------------------------------------------------------------------------------------


def split_for_training(interactions: DataFrame, cfg: TrainConfig) -> tuple[DataFrame, DataFrame]:
    """(history, targets): each user's `lists_per_user` newest items (one row per item, at its latest
    event) are targets; history is every event before the user's first target, what the retrievers see.

    Users with fewer than `min_history` history events give no targets (their events stay in history).
    """
    per_item = interactions.groupBy("user_id", "item_id").agg(F.max("event_ts").alias("event_ts"))
    newest_first = Window.partitionBy("user_id").orderBy(F.col("event_ts").desc(), F.col("item_id"))
    targets = per_item.withColumn("recency", F.row_number().over(newest_first)).where(
        F.col("recency") <= cfg.lists_per_user
    )
    cutoff = targets.groupBy("user_id").agg(F.min("event_ts").alias("cutoff"))
    before = interactions.join(cutoff, "user_id").where(F.col("event_ts") < F.col("cutoff"))
    enough = before.groupBy("user_id").count().where(F.col("count") >= cfg.min_history)
    cutoff = cutoff.join(enough, "user_id", "left_semi")
    history = (
        interactions.join(cutoff, "user_id", "left")
        .where(F.col("cutoff").isNull() | (F.col("event_ts") < F.col("cutoff")))
        .drop("cutoff")
    )
    return history, targets.join(cutoff, "user_id", "left_semi").drop("recency")


def latest_registered(spark: SparkSession, config: Config) -> str | None:
    """Artifact path of the newest version in model_registry; None when the registry is empty or absent."""
    from llmrank_spark.tables import read_table, table_exists

    if not table_exists(spark, config, "model_registry"):
        return None
    newest = read_table(spark, config, "model_registry").orderBy(F.col("created_at").desc()).first()
    return None if newest is None else newest["path"]


def model_root(config: Config) -> Path:
    return Path(config.train.model_root or f"{config.lakehouse.root.rstrip('/')}/models")


def registry_row(manifest: ArtifactManifest, path: Path) -> pd.DataFrame:
    """The model_registry row of a saved artifact."""
    return pd.DataFrame(
        [
            {
                "version": manifest.version,
                "path": str(path.resolve()),
                "base_model": manifest.base_model,
                "loss": manifest.loss,
                "data_snapshot": manifest.data_snapshot,
                "metrics": manifest.metrics,
                "created_at": manifest.created_at.astimezone(dt.UTC).replace(tzinfo=None),
            }
        ]
    )


def _assemble_lists(
    lists: pd.DataFrame,
    contexts: pd.Series,
    texts: pd.DataFrame,
    candidates: pd.DataFrame,
    user_of: pd.Series,
    item_events: pd.DataFrame,
) -> pd.DataFrame:
    """Lists with their context text, item text and the retrieval features of each (user, item)."""
    ranks = candidates[["request_id", ITEM, "source_ranks"]].rename(columns={"request_id": "user_id"})
    frame = lists.assign(user_id=lists[LIST].map(user_of), context_text=lists[LIST].map(contexts))
    # Left merges keep the lists' row order: each list's rows stay together, its positive first.
    frame = frame.merge(texts, on=ITEM, how="left").merge(ranks, on=["user_id", ITEM], how="left")
    return frame.merge(item_events, on=ITEM, how="left")


# TrainConfig fields that change how a model learns from the lists, not which lists are built.
FIT_ONLY_FIELDS = {
    "loss", "batch_lists", "epochs", "learning_rate", "head_learning_rate", "classifier_learning_rate",
    "trainable_layers", "eval_every_steps", "patience", "fusion_features", "warm_start", "model_root",
    "threads", "distributor_processes",
}  # fmt: skip
# Lists built in this process, by data snapshot and list settings: training several losses on one
# snapshot (bench/heldout_eval.py) runs the retrievers once, not once per loss.
_BUILT_LISTS: dict[str, dict[str, pd.DataFrame]] = {}


def training_lists(
    spark: SparkSession,
    items: DataFrame,
    interactions: DataFrame,
    users: DataFrame | None,
    config: Config,
    data_snapshot: str,
) -> dict[str, pd.DataFrame]:
    """{"train": lists, "validation": lists}: rows (list_id, item_id, label, context_text, item_text,
    source_ranks, item_events), `list_size` per list, from the time split and the candidate retrievers."""
    from llmrank_spark.candidates import build_candidates

    cfg = config.train
    key = "|".join(
        [
            data_snapshot,
            str(config.run.run_date),
            config.table_path("interactions"),
            config.candidates.model_dump_json(),
            config.rerank.model_dump_json(),
            cfg.model_dump_json(exclude=FIT_ONLY_FIELDS),
        ]
    )
    if key in _BUILT_LISTS:
        return _BUILT_LISTS[key]
    rng = np.random.default_rng(cfg.seed)
    text_cfg = config.rerank.model_copy(update={"max_length": cfg.max_length})

    history, targets = split_for_training(interactions, cfg)
    newest = history.agg(F.max("event_ts")).first()[0]
    if newest is None:
        raise ValueError("interactions: no events before any user's targets; nothing to train on")
    candidates = build_candidates(spark, items, history, users, config.candidates, newest.date()).candidates
    target_users = targets.select("user_id").distinct()
    targets_pd = targets.toPandas().sort_values(["user_id", "event_ts", "item_id"], ignore_index=True)
    if targets_pd.empty:
        raise ValueError(
            f"interactions: no user has {cfg.min_history} events before their {cfg.lists_per_user} newest "
            f"items; lower train.min_history or train.lists_per_user"
        )
    events = interactions.join(target_users, "user_id", "left_semi").toPandas()
    candidates_pd = (
        candidates.join(target_users.withColumnRenamed("user_id", "request_id"), "request_id", "left_semi")
        .select("request_id", ITEM, "retrieval_rank", "source_ranks")
        .toPandas()
    )
    # Spark returns rows in no fixed order; sorted, the seeded sampling draws the same lists every run.
    candidates_pd = candidates_pd.sort_values(["request_id", ITEM], ignore_index=True)
    items_pd = items.toPandas()
    # Only a user template reads the users table: without one it stays in Spark.
    users_pd = users.toPandas() if users is not None and text_cfg.user_template else None
    item_events = item_event_counts(history, newest.date()).toPandas()

    # The newest target of each user is the validation slice; the older ones are training lists.
    targets_pd[LIST] = [f"{u}@{i}" for u, i in zip(targets_pd["user_id"], targets_pd[ITEM], strict=True)]
    is_validation = ~targets_pd.duplicated("user_id", keep="last")
    targets_pd[LABEL] = target_grades(targets_pd, events, cfg).to_numpy()
    # The LambdaMART fusion learns from users whose lists BERT never sees, so it learns how far to trust
    # BERT on lists that are new to it, as every served list is.
    for_fusion = (
        fusion_users(targets_pd["user_id"], cfg.fusion_user_share)
        if cfg.fusion == "lambdamart"
        else pd.Series(False, index=targets_pd.index)
    )
    bert_targets = targets_pd[~for_fusion]
    is_validation = is_validation[~for_fusion]
    chosen = {
        "train": _subsample(bert_targets[~is_validation], cfg.max_train_lists, rng),
        "validation": _subsample(bert_targets[is_validation], cfg.max_validation_lists, rng),
    }
    texts = item_text_frame(items_pd, text_cfg)
    categories = items_pd.set_index(ITEM)["category"]
    popularity = item_events.set_index(ITEM)[ITEM_EVENTS]
    built = {}
    for name, part in chosen.items():
        lists = sample_lists(part, candidates_pd, events, categories, cfg, rng, popularity)
        contexts = target_contexts(events, items_pd, part, text_cfg, users_pd).set_axis(part[LIST])
        user_of = part.set_index(LIST)["user_id"]
        built[name] = _assemble_lists(lists, contexts, texts, candidates_pd, user_of, item_events)
    if cfg.fusion == "lambdamart":
        fusion_targets = targets_pd[for_fusion]
        chosen_users = _subsample(fusion_targets[["user_id"]].drop_duplicates(), cfg.max_fusion_lists, rng)[
            "user_id"
        ]
        fusion_targets = fusion_targets[fusion_targets["user_id"].isin(chosen_users)]
        lists = fusion_lists(fusion_targets, candidates_pd, events, categories.index.to_numpy(), cfg, rng)
        # The pairs go to Spark from the driver's copy of the candidates, not as a join with the
        # candidates' query plan: stacked under the features' plan it outgrows a task's stack.
        user_pairs = lists[["user_id", ITEM]].drop_duplicates().rename(columns={"user_id": "request_id"})
        ranked = user_pairs.merge(candidates_pd, on=["request_id", ITEM], how="left")
        ranked = ranked.astype({"retrieval_rank": object}).where(ranked.notna(), None)
        pairs = spark.createDataFrame(
            ranked, "request_id string, item_id string, retrieval_rank int, source_ranks map<string,int>"
        ).withColumn("request_type", F.lit("user"))
        features = ranking_features(spark, pairs, items, history, users, config.candidates, newest.date())
        features_pd = features.drop("request_type", "source_ranks", "retrieval_rank").toPandas()
        lists = lists.merge(
            features_pd.rename(columns={"request_id": "user_id"}), on=["user_id", ITEM], how="left"
        )
        # One context per user, as served on the day after their history: everything before their targets.
        cutoffs = fusion_targets.groupby("user_id", as_index=False)["event_ts"].min()
        cutoffs = cutoffs.assign(**{LIST: cutoffs["user_id"], ITEM: ""})
        contexts = target_contexts(events, items_pd, cutoffs, text_cfg, users_pd).set_axis(cutoffs[LIST])
        lists = lists.assign(context_text=lists["user_id"].map(contexts))
        built["fusion"] = lists.merge(texts, on=ITEM, how="left")
    _BUILT_LISTS[key] = built
    return built


def fusion_users(user_ids: pd.Series, share: float) -> pd.Series:
    """True for the users (a stable hash-chosen `share` of them) whose lists train the fusion, not BERT."""
    hashed = user_ids.map(lambda user: int(hashlib.sha256(str(user).encode()).hexdigest()[:8], 16))
    return hashed < share * 16**8


def fusion_lists(
    targets: pd.DataFrame,
    candidates: pd.DataFrame,
    interacted: pd.DataFrame,
    catalogue: np.ndarray,
    cfg: TrainConfig,
    rng: np.random.Generator,
) -> pd.DataFrame:
    """(list_id, user_id, item_id, label): two lists per user, as the reranker meets them on the day after
    the user's history, labelled by the user's targets (graded; everything else 0):

    - ``<user>``: their candidate list, as the rerank step serves it: the fusion learns to order what
      the retrievers proposed;
    - ``<user>#open``: their targets among `fusion_random_negatives` catalogue items they never touched,
      as in a list made elsewhere (an upstream team's, a held-out protocol's): the fusion learns to rank
      items no retriever proposed, and that a proposed item beats one nobody proposed.

    One list holding both would teach the opposite of the truth: targets the retrievers missed are a far
    larger share of the unproposed items in it than targets are of the proposed ones.
    """
    seen = interacted.groupby("user_id")[ITEM].agg(set)
    proposed = candidates.groupby("request_id")[ITEM].agg(list)
    draw = _unseen_sampler(catalogue, None, 0.0)
    rows = []
    for user, answers in targets.groupby("user_id", sort=True):
        grades = answers.groupby(ITEM)[LABEL].max()
        served = proposed.get(user, [])
        opened = list(grades.index)
        draw(opened, seen.get(user, set()), len(opened) + cfg.fusion_random_negatives, rng)
        for list_id, items in ((str(user), served), (f"{user}#open", opened)):
            if grades.reindex(items).fillna(0).gt(0).any():  # a list with no target teaches nothing
                rows += [(list_id, user, item, float(grades.get(item, 0.0))) for item in items]
    return pd.DataFrame(rows, columns=[LIST, "user_id", ITEM, LABEL])


def train_reranker(
    spark: SparkSession,
    items: DataFrame,
    interactions: DataFrame,
    users: DataFrame | None,
    config: Config,
    data_snapshot: str,
    warm_from: str | None,
) -> tuple[pd.DataFrame, FitResult]:
    """Fine-tune a reranker version on the interactions, save its artifact; return its registry row."""
    cfg = config.train
    torch.manual_seed(cfg.seed)
    torch.set_num_threads(cfg.threads)
    text_cfg = config.rerank.model_copy(update={"max_length": cfg.max_length})
    built = training_lists(spark, items, interactions, users, config, data_snapshot)

    model, started_from = initial_model(warm_from, cfg.fusion_features)
    tokenizer = load_tokenizer(warm_from or base_model_dir())
    if cfg.distributor_processes:
        result = fit_with_distributor(spark, model, tokenizer, built["train"], built["validation"], cfg)
    else:
        scorer = training_scorer(model, tokenizer, cfg, torch.device("cpu"))
        result = fit(model, scorer, built["train"], built["validation"], cfg)

    fusion = None
    if cfg.fusion == "lambdamart":
        fusion = train_fusion(model, tokenizer, built["fusion"], cfg)
        print(f"[train] fusion: {fusion.spec.trees} trees; gain by input {fusion.importance()}", flush=True)
    version = f"{config.run.run_date:%Y%m%d}-{cfg.loss}-{uuid.uuid4().hex[:8]}"
    manifest = ArtifactManifest(
        version=version,
        base_model=BASE_MODEL_NAME if warm_from is None else f"{BASE_MODEL_NAME} via {started_from}",
        max_length=cfg.max_length,
        context_template=text_cfg.context_template,
        context_items=text_cfg.context_items,
        profile_categories=text_cfg.profile_categories,
        user_template=text_cfg.user_template,
        item_template=text_cfg.item_template,
        item_attributes=text_cfg.item_attributes,
        loss=cfg.loss,
        data_snapshot=data_snapshot,
        metrics={
            "val_ndcg@10": result.best_ndcg,
            "train_lists": float(built["train"][LIST].nunique()),
            "val_lists": float(built["validation"][LIST].nunique()),
            "best_step": float(result.steps),
            "train_seconds": result.seconds,
        },
        fusion_head=model.head_spec(),
        fusion=None if fusion is None else fusion.spec,
    )
    path = save_artifact(
        model.encoder, tokenizer, model_root(config) / version, manifest, [fusion] if fusion else []
    )
    return registry_row(manifest, path), result


def train_fusion(model: FusionRanker, tokenizer, lists: pd.DataFrame, cfg: TrainConfig) -> FusionModel:
    """LambdaMART over the ranking features and the trained BERT logit of the fusion lists; the last fifth
    of the lists (by list_id) early-stops the trees."""
    scorer = training_scorer(model, tokenizer, cfg, torch.device("cpu"))
    model.eval()
    lists = lists.sort_values([LIST, ITEM], kind="mergesort", ignore_index=True)
    lists[BERT_SCORE] = scorer.score(lists["context_text"].tolist(), lists["item_text"].tolist())
    list_ids = lists[LIST].drop_duplicates()
    held = lists[LIST].isin(list_ids.iloc[int(len(list_ids) * 0.8) :])
    settings = FusionSettings(
        trees=cfg.fusion_trees,
        learning_rate=cfg.fusion_learning_rate,
        leaves=cfg.fusion_leaves,
        seed=cfg.seed,
    )
    return fit_fusion(lists[~held], lists[held], [*FEATURES, BERT_SCORE], settings)


def _subsample(targets: pd.DataFrame, limit: int, rng: np.random.Generator) -> pd.DataFrame:
    if len(targets) <= limit:
        return targets
    return targets.iloc[np.sort(rng.choice(len(targets), limit, replace=False))]
