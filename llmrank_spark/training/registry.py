"""The model registry table: where versions are stored and which one is newest."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pandas as pd
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from llmrank_spark.config import Config
from llmrank_spark.rerank import (
    ArtifactManifest,
)


def latest_registered(spark: SparkSession, config: Config) -> str | None:
    """Artifact path of the newest version in model_registry; None when the registry is empty or absent."""
    from llmrank_spark.lakehouse import read_table, table_exists

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
