"""The scoring pandas UDF: the model shipped to executors as files, loaded once per Python worker."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pandas as pd
import torch
from pyspark import TaskContext
from pyspark.sql import SparkSession
from pyspark.sql.functions import pandas_udf

from llmrank_spark.config import FaultsConfig
from llmrank_spark.lakehouse.shipping import directory_digest, ship_directory, unpack_shipped_directory
from llmrank_spark.rerank.artifact import ModelSpec, zero_shot_spec
from llmrank_spark.rerank.scorer import ScoringSettings, cached_scorer, task_device


class InjectedFault(RuntimeError):
    """Raised only by test-only fault injection (config section `faults`)."""


@dataclass(frozen=True)
class ShippedModel:
    """A model on its way to the executors: its spec and, when not installed there, its shipped files."""

    spec: ModelSpec
    archive: str | None  # the shipped directory's name (`lakehouse.shipping`); None: the packaged base

    def local_spec(self) -> ModelSpec:
        """The spec with a path valid on this executor, unpacking the shipped files once per version."""
        if self.archive is None:
            return zero_shot_spec()  # resolved here: the package's path on the driver may differ
        return replace(self.spec, path=str(unpack_shipped_directory(self.archive)))


def ship_model(spark: SparkSession, spec: ModelSpec) -> ShippedModel:
    """Ship a model directory's files once per job; the zero-shot base is installed on executors."""
    if spec.kind == "bi_encoder":
        return ShippedModel(spec, None)
    root = Path(spec.path)
    archive = ship_directory(spark, root, f"model-{spec.version}", directory_digest(root))
    return ShippedModel(spec, archive)


def inject_faults(faults: FaultsConfig, batches_scored: int) -> None:
    """Test-only faults (config section `faults`), checked by a scoring task after each batch it scores."""
    if faults.kill_worker_once_marker is not None:
        try:
            os.close(os.open(faults.kill_worker_once_marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            pass  # another task was the one killed
        else:
            os._exit(17)  # a crash, as the OOM killer or a segfault would end the worker: no cleanup
    limit = faults.fail_scoring_after_batches
    if limit is not None and batches_scored > limit:
        raise InjectedFault(
            f"faults.fail_scoring_after_batches={limit}: injected failure after {limit} scored batches"
        )


def scoring_udf(shipped: ShippedModel, settings: ScoringSettings, faults: FaultsConfig | None = None):
    """pandas UDF (context_text, item_text) -> score, scoring each Arrow batch with the cached scorer."""

    @pandas_udf("double")  # type: ignore[call-overload]  # pyspark's stubs lack the type-hinted form
    def score(batches: Iterator[tuple[pd.Series, pd.Series]]) -> Iterator[pd.Series]:
        context = TaskContext.get()
        if context is not None and context.cpus():
            torch.set_num_threads(context.cpus())
        device = task_device(settings.device)
        scorer = cached_scorer(shipped.local_spec(), device, settings)
        pairs = ((contexts.tolist(), items.tolist()) for contexts, items in batches)
        for batches_scored, scores in enumerate(scorer.score_batches(pairs), start=1):
            if faults is not None:
                inject_faults(faults, batches_scored)
            yield pd.Series(scores, dtype="float64")

    return score
