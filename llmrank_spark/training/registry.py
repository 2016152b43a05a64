"""The model registry: MLflow runs, registered versions and the `champion` alias.

`train` logs each version as an MLflow run (its parameters, the validation NDCG of every evaluated step,
the gate's figures and the artifact) and registers it under `mlflow.model_name`; a version the gate
promotes gets the alias `champion`. MLflow is the one record of versions: `rerank`, the gate and warm
starts all resolve through it. Locally the tracking and registry store is SQLite under the lakehouse (the
file store of MLflow 3 refuses to open); on Databricks it is the workspace's, with Unity Catalog names.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from llmrank_spark.config import URI_SCHEME, Config, ConfigError
from llmrank_spark.rerank import MANIFEST_FILE, ArtifactError, ArtifactManifest, query_encoder_dir
from llmrank_spark.retrieval.semantic import Encoder

# Set before mlflow's first import, which starts its usage telemetry: a run sends nothing beyond the
# configured stores (and an offline cluster would only retry). MLFLOW_DISABLE_TELEMETRY=false turns it on.
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import (
    RESOURCE_ALREADY_EXISTS,
    RESOURCE_DOES_NOT_EXIST,
    ErrorCode,
)

CHAMPION_ALIAS = "champion"
ARTIFACT_PATH = "reranker"  # the artifact's directory inside its MLflow run
STATUS_TAG = "gate_status"  # champion, rejected, or registered (no gate ran)
VERSION_TAG = "artifact_version"  # the manifest's version: what `ranked.model_version` names
QUERY_ENCODER_TAG = "query_encoder"  # "true" on a version whose artifact ships a query encoder
# "false" on a version whose BERT did not beat its own features-only prerank at the gate: it is served
# as that prerank (rerank.bert_depth 0) unless the config sets a depth (champion.py).
SERVES_BERT_TAG = "serves_bert"
# What MLflow accepts in a metric, parameter or tag name (`ndcg@10` is not).
MLFLOW_NAME_UNSAFE = re.compile(r"[^\w./ :-]")


def mlflow_name(name: str) -> str:
    """`name` as MLflow accepts it: ndcg@10 becomes ndcg_at_10."""
    return MLFLOW_NAME_UNSAFE.sub("_", name.replace("@", "_at_"))


def local_store(config: Config) -> Path:
    """The directory of the default local store: <lakehouse.root>/mlflow."""
    root = config.lakehouse.root
    if URI_SCHEME.match(root):
        raise ConfigError(
            f"lakehouse.root {root!r} is not a local directory, so it cannot hold the default MLflow "
            "store; set mlflow.tracking_uri (and mlflow.registry_uri), e.g. databricks and databricks-uc"
        )
    return Path(root).resolve() / "mlflow"


def tracking_uri(config: Config) -> str:
    return config.mlflow.tracking_uri or f"sqlite:///{local_store(config) / 'mlflow.db'}"


def registry_uri(config: Config) -> str:
    return config.mlflow.registry_uri or tracking_uri(config)


def registry_client(config: Config) -> MlflowClient:
    """A client of the configured tracking and registry stores (the local one created on first use)."""
    if config.mlflow.tracking_uri is None:
        local_store(config).mkdir(parents=True, exist_ok=True)
    return MlflowClient(tracking_uri=tracking_uri(config), registry_uri=registry_uri(config))


def _error_is(error: MlflowException, code: int) -> bool:
    return error.error_code == ErrorCode.Name(code)


def experiment_id(client: MlflowClient, config: Config) -> str:
    """The id of `mlflow.experiment`, created on first use (locally with its artifacts in the store)."""
    name = config.mlflow.experiment
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    location = None if config.mlflow.tracking_uri else str(local_store(config) / "artifacts")
    return client.create_experiment(name, artifact_location=location)


@dataclass(frozen=True)
class TrainingRun:
    """One MLflow run of the train step: what it logs, and the version it registers."""

    client: MlflowClient
    config: Config
    run_id: str

    def log_training(
        self, params: dict[str, object], evaluations: list[tuple[int, float]], manifest: ArtifactManifest
    ) -> None:
        """The run's parameters, the validation NDCG@10 of every evaluated step and the manifest's figures."""
        from mlflow.entities import Metric, Param

        self.client.log_batch(
            self.run_id,
            params=[Param(mlflow_name(key), str(value)) for key, value in params.items()],
            metrics=[Metric("val_ndcg_at_10", ndcg, 0, step) for step, ndcg in evaluations]
            + [Metric(mlflow_name(key), value, 0, 0) for key, value in manifest.metrics.items()],
        )

    def log_metrics(self, figures: dict[str, float]) -> None:
        from mlflow.entities import Metric

        metrics = [Metric(mlflow_name(key), value, 0, 0) for key, value in figures.items()]
        self.client.log_batch(self.run_id, metrics=metrics)

    def log_artifact(self, artifact: Path) -> None:
        """The artifact directory, as the run's `reranker` directory, with an MLmodel file stating its
        signature (Unity Catalog registers only models that state one)."""
        write_mlmodel(artifact, self.run_id)
        self.client.log_artifacts(self.run_id, str(artifact), ARTIFACT_PATH)

    def register(self, manifest: ArtifactManifest, status: str, tags: dict[str, str]) -> ModelVersion:
        """Register the run's artifact as a new version of `mlflow.model_name`, tagged with its status."""
        name = self.config.mlflow.model_name
        try:
            self.client.create_registered_model(name)
        except MlflowException as error:
            if not _error_is(error, RESOURCE_ALREADY_EXISTS):
                raise
        run = self.client.get_run(self.run_id)
        tags = {STATUS_TAG: status, VERSION_TAG: manifest.version, **tags}
        if manifest.query_encoder:
            tags[QUERY_ENCODER_TAG] = "true"
        return self.client.create_model_version(
            name,
            source=f"{run.info.artifact_uri}/{ARTIFACT_PATH}",
            run_id=self.run_id,
            tags={mlflow_name(key): value for key, value in tags.items()},
        )

    def promote(self, version: ModelVersion) -> None:
        """Make `version` the champion: the alias moves to it from the previous one."""
        self.client.set_registered_model_alias(version.name, CHAMPION_ALIAS, version.version)


@contextmanager
def training_run(config: Config, run_name: str) -> Iterator[TrainingRun]:
    """An MLflow run in `mlflow.experiment`, ended FINISHED, or FAILED if the block raises."""
    client = registry_client(config)
    run = client.create_run(experiment_id(client, config), run_name=run_name)
    try:
        yield TrainingRun(client, config, run.info.run_id)
    except BaseException:
        client.set_terminated(run.info.run_id, "FAILED")
        raise
    client.set_terminated(run.info.run_id, "FINISHED")


def write_mlmodel(artifact: Path, run_id: str) -> None:
    """The MLmodel file of an artifact: a reranker scores (context_text, item_text) pairs."""
    from mlflow.models import Model, ModelSignature
    from mlflow.types import ColSpec, Schema

    signature = ModelSignature(
        inputs=Schema([ColSpec("string", "context_text"), ColSpec("string", "item_text")]),
        outputs=Schema([ColSpec("double", "score")]),
    )
    Model(artifact_path=ARTIFACT_PATH, run_id=run_id, signature=signature).save(str(artifact / "MLmodel"))


def champion_version(config: Config) -> ModelVersion | None:
    """The version with the `champion` alias; None when there is none (or no registered model yet)."""
    client, name = registry_client(config), config.mlflow.model_name
    try:
        # Asked through the model's aliases: MLflow answers an alias that is not set with a generic
        # INVALID_PARAMETER_VALUE, which cannot be told apart from a real error.
        aliases = client.get_registered_model(name).aliases
    except MlflowException as error:
        if _error_is(error, RESOURCE_DOES_NOT_EXIST):
            return None
        raise
    if CHAMPION_ALIAS not in aliases:
        return None
    return client.get_model_version(name, str(aliases[CHAMPION_ALIAS]))


def served_version(config: Config) -> ModelVersion | None:
    """What rerank.mode=champion serves: mlflow.pinned_version when set, else the champion (or None)."""
    pinned, name = config.mlflow.pinned_version, config.mlflow.model_name
    if pinned is None:
        return champion_version(config)
    try:
        return registry_client(config).get_model_version(name, str(pinned))
    except MlflowException as error:
        raise ConfigError(
            f"mlflow.pinned_version {pinned}: {name} has no such version in {registry_uri(config)} "
            f"({error.message}); unset it to serve the champion, or pin a registered version"
        ) from error


def newest_version(config: Config) -> ModelVersion | None:
    """The highest-numbered version of `mlflow.model_name`, whatever its gate status; None when none."""
    name = config.mlflow.model_name
    versions = registry_client(config).search_model_versions(f"name='{name}'")
    return max(versions, key=lambda version: int(version.version), default=None)


def registered_query_encoder(config: Config) -> Encoder | None:
    """The query encoder the query semantic retriever uses with candidates.query_encoder "registered":
    that of the newest registered version shipping one (it beat the packaged MiniLM on held-out queries
    when it was trained, whatever the shoppers' gate decided); None: the packaged MiniLM."""
    if config.candidates.query_encoder != "registered":
        return None
    if config.mlflow.tracking_uri is None:
        root = config.lakehouse.root
        if URI_SCHEME.match(root) or not local_store(config).is_dir():
            return None  # no local registry yet, so no version: opening one here would create it
    name = config.mlflow.model_name
    versions = registry_client(config).search_model_versions(f"name='{name}'")
    holding = [version for version in versions if version.tags.get(QUERY_ENCODER_TAG) == "true"]
    newest = max(holding, key=lambda version: int(version.version), default=None)
    if newest is None:
        return None
    directory = query_encoder_dir(artifact_dir(config, newest))
    if directory is None:
        raise ArtifactError(
            f"{name} version {newest.version} is tagged {QUERY_ENCODER_TAG}=true but its artifact's "
            f"{MANIFEST_FILE} states none; remove the tag, or set candidates.query_encoder to packaged"
        )
    return Encoder(f"query-encoder@{newest.tags.get(VERSION_TAG, newest.version)}", directory)


def model_root(config: Config) -> Path:
    return Path(config.train.model_root or f"{config.lakehouse.root.rstrip('/')}/models")


def artifact_dir(config: Config, version: ModelVersion) -> str:
    """A directory holding `version`'s artifact that the executors can read: the registry's own copy when
    it is a local directory, else a download under `train.model_root` (made once per version)."""
    client = registry_client(config)
    uri = urlparse(client.get_model_version_download_uri(version.name, version.version))
    if uri.scheme in ("", "file") and (Path(uri.path) / MANIFEST_FILE).is_file():
        return uri.path
    target = model_root(config) / mlflow_name(version.name) / f"v{version.version}"
    if not (target / MANIFEST_FILE).is_file():
        from mlflow.artifacts import download_artifacts

        # Downloaded beside the target and renamed, so an interrupted download is never served.
        partial = target.with_name(f"{target.name}.partial")
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        download_artifacts(
            artifact_uri=f"models:/{version.name}/{version.version}",
            dst_path=str(partial),
            tracking_uri=tracking_uri(config),
            registry_uri=registry_uri(config),
        )
        partial.rename(target)
    return str(target)
