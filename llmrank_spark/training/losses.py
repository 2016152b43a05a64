"""The ranking losses by name: pointwise, pairwise and listwise; adding a loss is one function and one
line in `LOSSES` here, plus its name in config.TRAIN_LOSSES."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

import torch


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


def _pairs(labels: torch.Tensor) -> tuple[torch.Tensor, ...]:
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


LossFunction = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _cross_encoder_loss(name: str) -> LossFunction:
    """sentence-transformers' cross-encoder list loss `name`, run on our fused scores (`_GivenScores`)."""
    from sentence_transformers.cross_encoder import losses

    placeholder: Any = _GivenScores(torch.zeros(1))  # duck-types the CrossEncoder the losses take
    return _list_loss(getattr(losses, name)(placeholder))


# The `train.loss` names that are sentence-transformers' cross-encoder losses, and their classes.
CROSS_ENCODER_LOSSES = {"ranknet": "RankNetLoss", "listnet": "ListNetLoss", "lambdaloss": "LambdaLoss"}

# The losses `train.loss` names (config.TRAIN_LOSSES lists the same names, checked by a test). Adding a
# loss: its function above and one line here. Built on demand: the wrapped ones import their library.
LOSSES: dict[str, Callable[[], LossFunction]] = {
    "bce": lambda: balanced_bce,
    "hinge": lambda: hinge_loss,
    **{name: partial(_cross_encoder_loss, cls) for name, cls in CROSS_ENCODER_LOSSES.items()},
}


def ranking_loss(name: str) -> LossFunction:
    """The training loss `name` as a function of (scores, labels) of shape (lists, list size)."""
    if name not in LOSSES:
        raise ValueError(f"unknown train.loss {name!r}; use one of {', '.join(LOSSES)}")
    return LOSSES[name]()
