"""The train step's work: build lists, fine-tune BERT, fit the fusion, save the artifact."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from pyspark.sql import DataFrame, SparkSession

from llmrank_spark.config import Config, text_settings
from llmrank_spark.rerank import (
    BASE_MODEL_NAME,
    QUERY_ENCODER_DIR,
    ArtifactManifest,
    RequestType,
    base_model_dir,
    load_tokenizer,
    save_artifact,
)
from llmrank_spark.training.champion import query_verdict
from llmrank_spark.training.distributed import fit_with_distributor
from llmrank_spark.training.extract import training_lists, training_text
from llmrank_spark.training.fusion_training import train_fusion
from llmrank_spark.training.lists import ITEM, LIST
from llmrank_spark.training.network import initial_model
from llmrank_spark.training.query_encoder import train_query_encoder
from llmrank_spark.training.query_fusion import fit_query_fusion
from llmrank_spark.training.trainer import FitResult, fit, training_scorer


def train_reranker(
    spark: SparkSession,
    items: DataFrame,
    interactions: DataFrame,
    users: DataFrame | None,
    config: Config,
    data_snapshot: str,
    warm_from: str | None,
    artifact_root: Path,
    queries: DataFrame | None = None,
    query_labels: DataFrame | None = None,
    item_vectors: DataFrame | None = None,
) -> tuple[ArtifactManifest, Path, FitResult]:
    """Fine-tune a reranker version on the interactions (and the graded `query_labels` of `queries`, when
    given) and save its artifact under `artifact_root`; return its manifest, its directory and how the
    fit went. The version ranks queries only if it beats their retrieval order on held-out queries.
    `item_vectors` (item_id, embedding) are the catalogue's stored text vectors; None encodes them."""
    cfg = config.train
    torch.manual_seed(cfg.seed)
    torch.set_num_threads(cfg.threads)
    built = training_lists(
        spark, items, interactions, users, config, data_snapshot, queries, query_labels, item_vectors
    )

    model, started_from = initial_model(warm_from, cfg.fusion_features, cfg.architecture)
    tokenizer = load_tokenizer(warm_from or base_model_dir())
    if cfg.distributor_processes:
        result = fit_with_distributor(spark, model, tokenizer, built["train"], built["validation"], cfg)
    else:
        scorer = training_scorer(model, tokenizer, cfg, torch.device("cpu"))
        result = fit(model, scorer, built["train"], built["validation"], cfg)

    fusion = None
    if cfg.fusion == "lambdamart":
        fusion = train_fusion(model, tokenizer, built["fusion"], cfg)
        leaning = sorted(fusion.fusion.importance().items(), key=lambda item: -item[1])[:3]
        shares = ", ".join(f"{name} {share:.0%}" for name, share in leaning)
        print(
            f"[train] fusion: {fusion.fusion.spec.trees} trees; most gain from {shares}; prerank (features "
            f"alone): {fusion.prerank.spec.trees} trees",
            flush=True,
        )
    query_metrics: dict[str, float] = {}
    query_encoder = None
    if cfg.query_encoder_epochs and len(built.get("query_encoder_pairs", ())):
        texts = built["semantic_item_texts"].set_index(ITEM)["item_text"]
        query_encoder = train_query_encoder(
            built["query_encoder_pairs"], built["query_encoder_heldout"], texts, cfg
        )
        query_metrics |= query_encoder.metrics()
        print(f"[train] {query_encoder.describe()}", flush=True)
    ships_encoder = query_encoder is not None and query_encoder.verdict.promoted
    request_types: list[RequestType] = ["user"]
    query_fusion = None  # the query fusion the version ships: only one that passed its verdict
    if cfg.query_fusion_trees and "judged_queries" in built:
        shipped = query_encoder if ships_encoder else None
        fitted = fit_query_fusion(spark, items, interactions, config, built, shipped, item_vectors)
        if fitted is not None:
            query_metrics |= fitted.metrics()
            print(f"[train] {fitted.describe()}", flush=True)
            if fitted.verdict.promoted:
                query_fusion = fitted
                request_types.append("query")
    # BERT may rank queries only where nothing better does, and only on the lists it was measured on:
    # the verdict's lists were retrieved with the packaged MiniLM, so a version shipping a query encoder
    # (whose better lists BERT ranked below their retrieval order on the demo: docs/results.md) is
    # not measured at all.
    if "heldout_queries" in built and query_fusion is None and not ships_encoder:
        scorer = training_scorer(model, tokenizer, cfg, torch.device("cpu"))
        verdict = query_verdict(model, scorer, built["heldout_queries"])
        query_metrics |= {f"query_{name}": value for name, value in verdict.metrics().items()}
        if verdict.promoted:
            request_types.append("query")
        served = "ranks queries" if verdict.promoted else "leaves queries in their retrieval order"
        print(
            f"[train] {verdict.requests} held-out queries, BERT: NDCG@10 retrieval "
            f"{verdict.retrieval_ndcg:.4f} -> version {verdict.version_ndcg:.4f} ({verdict.change:+.1%} "
            f"[{verdict.change_low:+.1%}, {verdict.change_high:+.1%}]): {served}, {verdict.reason}",
            flush=True,
        )
    version = f"{config.run.run_date:%Y%m%d}-{cfg.loss}-{uuid.uuid4().hex[:8]}"
    manifest = ArtifactManifest(
        version=version,
        base_model=BASE_MODEL_NAME if warm_from is None else f"{BASE_MODEL_NAME} via {started_from}",
        **text_settings(training_text(config)),
        loss=cfg.loss,
        architecture=cfg.architecture,
        data_snapshot=data_snapshot,
        metrics={
            "val_ndcg@10": result.best_ndcg,
            "train_lists": float(built["train"][LIST].nunique()),
            "val_lists": float(built["validation"][LIST].nunique()),
            "best_step": float(result.steps),
            "train_seconds": result.seconds,
            **query_metrics,
        },
        request_types=request_types,
        fusion_head=model.head_spec(),
        fusion=None if fusion is None else fusion.fusion.spec,
        prerank=None if fusion is None else fusion.prerank.spec,
        query_encoder=ships_encoder,
        query_fusion=None if query_fusion is None else query_fusion.fusion.model.spec,
    )
    extras: list = [fusion] if fusion else []
    if query_fusion is not None:
        extras.append(query_fusion.fusion)
    if ships_encoder and query_encoder is not None:
        extras.append(QueryEncoderFiles(query_encoder.encoder))
    path = save_artifact(model.encoder, tokenizer, artifact_root / version, manifest, extras)
    return manifest, path, result


@dataclass(frozen=True)
class QueryEncoderFiles:
    """A fine-tuned query encoder as one of `save_artifact`'s extras: its sentence-transformers directory
    (safetensors weights, tokenizer, pooling) under the artifact's QUERY_ENCODER_DIR."""

    encoder: Any  # sentence_transformers.SentenceTransformer (untyped)

    def save(self, directory: Path) -> None:
        self.encoder.save(str(directory / QUERY_ENCODER_DIR))
