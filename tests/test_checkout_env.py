"""Each checkout's `.venv` runs that checkout's code, though every clone shares the cached dependency
environment (Makefile, tools/checkout_venv.py)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pyspark
import pytest

REPO = Path(__file__).resolve().parents[1]
# The files that build `.venv`, copied from this working tree into the clones so their current state is
# what is tested, committed or not.
BUILD_FILES = ("Makefile", "tools/checkout_venv.py")
# Variables that would point a child interpreter at another checkout than its own.
LEAKY_VARIABLES = ("PYTHONPATH", "PYTHONHOME", "PYSPARK_PYTHON", "PYSPARK_DRIVER_PYTHON", "VIRTUAL_ENV")


def _cached_env() -> Path:
    """The dependency environment this suite runs on, which the clones must reuse without installing."""
    site_packages = Path(pyspark.__file__).resolve().parents[1]
    env = site_packages.parents[2]
    if not (env / ".installed").is_file():
        pytest.skip(f"{env} is not an environment built by `make setup`; run the suite with `make test`")
    return env


def _run(*args: str | Path, cwd: Path | None = None) -> str:
    env = {name: value for name, value in os.environ.items() if name not in LEAKY_VARIABLES}
    done = subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True)
    assert done.returncode == 0, f"{args} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def _clone(destination: Path, marker: str | None) -> Path:
    _run("git", "clone", "--quiet", REPO, destination)
    if marker is not None:
        init = destination / "llmrank_spark" / "__init__.py"
        init.write_text(init.read_text() + f"MARKER = {marker!r}\n")
        git = ["git", "-c", "user.name=test", "-c", "user.email=test@example.com", "-C", destination]
        _run(*git, "commit", "--quiet", "-am", "marker")
    for name in BUILD_FILES:
        (destination / name).parent.mkdir(exist_ok=True)
        shutil.copy2(REPO / name, destination / name)
    return destination


def test_each_clone_imports_its_own_checkout_over_the_shared_environment(tmp_path):
    env = _cached_env()
    installed = (env / ".installed").stat().st_mtime_ns
    first, second = _clone(tmp_path / "first", None), _clone(tmp_path / "second", "second")
    assert _run("git", "-C", first, "rev-parse", "HEAD") != _run("git", "-C", second, "rev-parse", "HEAD")
    # The layout before: `.venv` a link to the shared environment. It is replaced, the environment kept.
    (first / ".venv").symlink_to(env)
    for clone in (first, second):
        _run("make", "--no-print-directory", "-C", clone, "venv", f"VENV={env}")
    # Setting up the second clone did not change what the first one imports, and neither reinstalled.
    probe = (
        "import llmrank_spark; print(llmrank_spark.__file__); print(getattr(llmrank_spark, 'MARKER', None))"
    )
    for clone, marker in ((first, "None"), (second, "second")):
        imported, seen = _run(clone / ".venv" / "bin" / "python", "-c", probe, cwd=tmp_path).split()
        assert Path(imported) == clone / "llmrank_spark" / "__init__.py"
        assert seen == marker
    assert (env / "bin" / "python").exists() and not (first / ".venv").is_symlink()
    assert (env / ".installed").stat().st_mtime_ns == installed
    # The console script runs on the clone's own interpreter, so on its code too.
    script = second / ".venv" / "bin" / "llmrank"
    assert script.read_text().startswith(f"#!{second / '.venv' / 'bin' / 'python'}\n")
    assert _run(script, "--help", cwd=tmp_path).startswith("usage: llmrank")
