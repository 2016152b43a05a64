"""This checkout's `.venv`: a thin environment layered on the cached dependency environment.

The dependencies (Spark, torch, ...) are installed once per dependency list under ~/.cache/llmrank-spark and
shared by every clone, so the project itself is never installed there: if it were, whichever clone installed
it last would be the code every clone imports. `.venv` holds only a `.pth` putting this checkout on sys.path,
a `.pth` adding the cached environment's site-packages behind it, and the console scripts of pyproject.toml.
So `.venv/bin/python`, `.venv/bin/llmrank` and the Spark workers started with PYSPARK_PYTHON=.venv/bin/python
import this checkout's code. Building it copies and downloads nothing.

    CACHED_ENV/bin/python tools/checkout_venv.py            # (re)make ./.venv on the running environment
    python3 tools/checkout_venv.py --requirements           # what the cached environment installs
"""

from __future__ import annotations

import shutil
import sys
import sysconfig
import tomllib
import venv
from pathlib import Path

CHECKOUT = Path(__file__).resolve().parents[1]


def requirements() -> list[str]:
    """Everything the project needs to run, test and build, and not the project: dependencies, the extras
    and the build backend."""
    pyproject = tomllib.loads((CHECKOUT / "pyproject.toml").read_text())
    project = pyproject["project"]
    extras = [req for reqs in project.get("optional-dependencies", {}).values() for req in reqs]
    return [*project["dependencies"], *extras, *pyproject["build-system"]["requires"]]


def make_checkout_venv(target: Path) -> None:
    """Replace `target` by a venv of the running interpreter that imports CHECKOUT, then the running
    environment's packages."""
    if not target.is_symlink() and Path(sys.prefix).resolve() == target.resolve():
        sys.exit(f"run this with the cached environment's python, not with {target}'s own")
    if target.is_symlink() or target.is_file():
        target.unlink()  # the old layout: a link to the shared environment, which must not be emptied
    elif target.exists():
        shutil.rmtree(target)
    venv.EnvBuilder(symlinks=True, with_pip=False).create(target)
    site_packages = Path(sysconfig.get_path("purelib", vars={"base": str(target), "platbase": str(target)}))
    shared = sysconfig.get_path("purelib")
    # .pth files are read in name order: the checkout first, so it wins over any copy of the project that
    # an older setup installed into the shared environment.
    (site_packages / "llmrank_1_checkout.pth").write_text(f"{CHECKOUT}\n")
    # addsitedir (not a bare path) also runs the shared environment's own .pth files.
    (site_packages / "llmrank_2_dependencies.pth").write_text(f"import site; site.addsitedir({shared!r})\n")
    scripts = tomllib.loads((CHECKOUT / "pyproject.toml").read_text())["project"].get("scripts", {})
    for name, entry in scripts.items():
        module, function = entry.split(":")
        script = target / "bin" / name
        script.write_text(
            f"#!{target / 'bin' / 'python'}\nimport sys\n\nfrom {module} import {function}\n\n"
            f"sys.exit({function}())\n"
        )
        script.chmod(0o755)


if __name__ == "__main__":
    if sys.argv[1:] == ["--requirements"]:
        print("\n".join(requirements()))
    else:
        make_checkout_venv(CHECKOUT / ".venv")
        print(f"{CHECKOUT / '.venv'}: this checkout on {sys.prefix}")
