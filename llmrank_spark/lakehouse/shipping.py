"""Files the executors need (a model, an item matrix), shipped once per job through Spark itself.

Spark Connect has no SparkContext, so no broadcast variables: a file goes up with the session's artifact
upload (`spark.addArtifacts`), which every platform that speaks Connect accepts, and a classic session
uses `SparkContext.addFile`, its equivalent. Either way a task finds the file with `SparkFiles.get(name)`.
Names carry a content digest, so a name is never reused for other bytes and a worker's copy stays valid.
"""

from __future__ import annotations

import atexit
import hashlib
import shutil
import tempfile
import zipfile
from collections.abc import Iterable
from functools import lru_cache
from pathlib import Path
from typing import Any, cast

import numpy as np
from pyspark import SparkFiles
from pyspark.sql import SparkSession

from llmrank_spark.lakehouse.session import is_connect

# Names this process already shipped, per session: shipping is idempotent within a job.
_shipped: set[tuple[int, str]] = set()


@lru_cache(maxsize=1)
def _outbox() -> Path:
    """A directory for the files this process ships; a classic session serves them from here until exit."""
    directory = Path(tempfile.mkdtemp(prefix="llmrank-shipped-"))
    atexit.register(shutil.rmtree, directory, ignore_errors=True)
    return directory


def safe_name(text: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in text)


def ship_file(spark: SparkSession, path: Path) -> str:
    """Make `path` available to every task of this session as `SparkFiles.get(path.name)`."""
    key = (id(spark), path.name)
    if key not in _shipped:
        if is_connect(spark):
            spark.addArtifacts(str(path), file=True)
        else:  # classic only: the Spark Connect test runs the other branch
            spark.sparkContext.addFile(str(path))
        _shipped.add(key)
    return path.name


def ship_arrays(spark: SparkSession, label: str, **arrays: np.ndarray) -> str:
    """Ship numpy arrays (no object arrays: nothing is pickled) as one .npz; returns the name
    `load_shipped_arrays` opens on an executor."""
    staging = _outbox() / f"{safe_name(label)}.partial.npz"
    np.savez(staging, **cast(dict[str, Any], arrays))
    digest = hashlib.sha256(staging.read_bytes()).hexdigest()[:16]
    final = staging.with_name(f"llmrank-{safe_name(label)}-{digest}.npz")
    staging.replace(final)
    return ship_file(spark, final)


@lru_cache(maxsize=4)
def load_shipped_arrays(name: str) -> dict[str, np.ndarray]:
    """On an executor: the arrays of a shipped .npz, read once per Python worker (workers are reused)."""
    with np.load(SparkFiles.get(name), allow_pickle=False) as shipped:
        return {key: shipped[key] for key in shipped.files}


def directory_digest(root: Path) -> str:
    """A digest of a directory's relative paths and file contents: equal trees, equal digests."""
    digest = hashlib.sha256()
    for path in _files_of(root):
        digest.update(
            str(path.relative_to(root)).encode() + b"\0" + hashlib.sha256(path.read_bytes()).digest()
        )
    return digest.hexdigest()


def _files_of(root: Path) -> Iterable[Path]:
    return (path for path in sorted(root.rglob("*")) if path.is_file())


def ship_directory(spark: SparkSession, root: Path, label: str, digest: str) -> str:
    """Ship a directory as one uncompressed zip (weights do not compress, and addFile takes no directory
    outside local mode); `unpack_shipped_directory` restores it on an executor."""
    archive = _outbox() / f"llmrank-{safe_name(label)}-{digest[:16]}.zip"
    if not archive.exists():
        partial = archive.with_suffix(".partial")
        with zipfile.ZipFile(partial, "w", zipfile.ZIP_STORED) as zipped:
            for path in _files_of(root):
                zipped.write(path, path.relative_to(root))
        partial.replace(archive)
    return ship_file(spark, archive)


def unpack_shipped_directory(name: str) -> Path:
    """On an executor: the shipped directory, unpacked once per machine into the temporary directory."""
    target = Path(tempfile.gettempdir()) / Path(name).stem
    if not target.is_dir():
        staging = Path(tempfile.mkdtemp(prefix=target.name + ".", dir=target.parent))
        with zipfile.ZipFile(SparkFiles.get(name)) as zipped:
            zipped.extractall(staging)
        try:
            staging.rename(target)
        except OSError:  # another worker finished first: its copy is identical
            shutil.rmtree(staging, ignore_errors=True)
    return target
