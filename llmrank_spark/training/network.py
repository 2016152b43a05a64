"""The trainable reranker: the MiniLM cross-encoder with an optional linear fusion head."""

from __future__ import annotations

import numpy as np
import torch

from llmrank_spark.config import TrainConfig
from llmrank_spark.rerank import (
    BASE_MODEL_NAME,
    Architecture,
    FusionHead,
    encoder_logits,
    load_artifact,
    untrained_cross_encoder,
)

# ---- model -------------------------------------------------------------------------------------------


class FusionRanker(torch.nn.Module):
    """The BERT cross-encoder's logit, fused with retrieval features by a linear head.

    With no features the score is the logit itself. The head starts as the identity on the logit (and
    zero on features) unless warm-started, so training begins from the plain cross-encoder's ranking.
    The head reads each feature divided by `feature_scale` (`scale_features`); `head_spec` folds the
    scale back into the weights, so what is served is the same `fused_scores` formula on raw features.
    """

    feature_scale: torch.Tensor  # a buffer (register_buffer), so a Tensor and not Module.__getattr__'s union

    def __init__(
        self,
        encoder,
        features: list[str],
        head: FusionHead | None = None,
        architecture: Architecture = "pair",
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.architecture: Architecture = architecture
        self.features = list(features)
        self.head = torch.nn.Linear(1 + len(features), 1) if features else None
        self.register_buffer("feature_scale", torch.ones(len(features)))
        if self.head is not None:
            with torch.no_grad():
                warm = head if head is not None and head.features == self.features else None
                weights = (
                    [warm.logit_weight, *warm.feature_weights] if warm else [1.0] + [0.0] * len(features)
                )
                self.head.weight.copy_(torch.tensor([weights]))
                self.head.bias.fill_(warm.bias if warm else 0.0)

    def forward(self, inputs: dict[str, torch.Tensor], features: torch.Tensor) -> torch.Tensor:
        logits = encoder_logits(self.encoder, inputs, self.architecture)
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


def initial_model(
    warm_from: str | None, features: list[str], architecture: Architecture = "pair"
) -> tuple[FusionRanker, str]:
    """(model, what it starts from): the artifact at `warm_from` (weights and head), else MiniLM with a
    fresh 1-logit head. The weights are the same BertForSequenceClassification for either architecture,
    so a version can be warm-started from one of the other architecture."""
    if warm_from is None:
        return FusionRanker(untrained_cross_encoder(), features, architecture=architecture), BASE_MODEL_NAME
    artifact = load_artifact(warm_from)
    warm = FusionRanker(artifact.model, features, artifact.manifest.fusion_head, architecture)
    return warm, artifact.manifest.version


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
