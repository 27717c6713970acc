"""``ligeiro package --format pyz``: the model and everything it runs on, in one file.

A shiv zipapp (PEP 441): the model's wheel, ligeiro (for ``serve``) and their
dependencies as installed in this environment (numpy, onnxruntime, msgspec, and the
server's httptools, uvloop, grpcio, ...), copied from this environment's site-packages,
so building needs no network. It runs with any Python of the same version and platform
as this one and nothing installed: ``./iris.pyz predict --data '{...}'``,
``./iris.pyz serve --port 8000``. On its first run shiv unpacks it under ``~/.shiv``
(``SHIV_ROOT``); later runs start from there (docs/benchmarks.md, "Cold start", says
why shiv and not pex).
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import importlib.util
import logging
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from ..errors import ConfigError
from .wheel import RUNTIME_REQUIREMENTS, Packaged, build_wheel

__all__ = ["build_pyz", "distributions"]

logger = logging.getLogger(__name__)

# What ligeiro's server needs besides the model's runtime: its own requirements.
_LIGEIRO = "ligeiro"


def distributions(requirements: list[str]) -> list[importlib.metadata.Distribution]:
    """The installed distributions ``requirements`` need, with theirs (markers applied)."""
    from packaging.requirements import Requirement

    found: dict[str, importlib.metadata.Distribution] = {}
    pending = [Requirement(r) for r in requirements]
    while pending:
        requirement = pending.pop()
        key = requirement.name.lower().replace("_", "-")
        if key in found:
            continue
        try:
            dist = importlib.metadata.distribution(requirement.name)
        except importlib.metadata.PackageNotFoundError:
            raise ConfigError(
                f"{requirement.name} is not installed here, and the pyz carries what is "
                "installed: install it (pip install 'ligeiro[package]') and build again"
            ) from None
        found[key] = dist
        for text in dist.requires or ():
            needed = Requirement(text)
            if needed.marker is None or needed.marker.evaluate({"extra": ""}):
                pending.append(needed)
    return [found[k] for k in sorted(found)]


def _copy_distribution(dist: importlib.metadata.Distribution, site: Path) -> None:
    """The files ``dist`` installed into its site-packages (not scripts, not caches)."""
    base = Path(str(dist.locate_file(""))).resolve()
    for file in dist.files or ():
        source = Path(str(dist.locate_file(file))).resolve()
        if "__pycache__" in file.parts or not source.is_relative_to(base) or not source.is_file():
            continue
        target = site / source.relative_to(base)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, target)


def _ligeiro_requirements() -> list[str]:
    """ligeiro's core requirements (no extras), as installed."""
    return [r for r in importlib.metadata.requires(_LIGEIRO) or () if "extra ==" not in r]


def build_pyz(
    model_dir: Path,
    output: Path,
    *,
    name: str | None = None,
    version: str | None = None,
    model_version: str | None = None,
    force: bool = False,
) -> tuple[Packaged, Path]:
    """Build ``output`` (``iris.pyz``): the model's wheel, ligeiro and their dependencies.

    Returns what ``build_wheel`` returns, its ``path`` the pyz's, and the pyz's path.

    Raises:
        ConfigError: ``output`` exists without ``force``, shiv or a dependency is not
            installed, or as ``build_wheel``.
        ModelLoadError, ModelNotFoundError: the model does not load.
    """
    if output.exists() and not force:
        raise ConfigError(f"{output}: already exists; pass --force to replace it")
    if importlib.util.find_spec("shiv") is None:  # it runs as a child below: fail here, clearly
        raise ConfigError("--format pyz needs shiv: pip install 'ligeiro[package]'")
    with tempfile.TemporaryDirectory(prefix="ligeiro-pyz-") as stage_name:
        stage = Path(stage_name)
        packaged = build_wheel(
            model_dir, stage / "wheel", name=name, version=version, model_version=model_version
        )
        site = stage / "site"
        with zipfile.ZipFile(packaged.path) as wheel:  # a pure wheel installs by unzipping
            wheel.extractall(site)
        dists = distributions([*RUNTIME_REQUIREMENTS, *_ligeiro_requirements()])
        for dist in dists:
            _copy_distribution(dist, site)
        # ligeiro itself from the code running now (an editable install has no files).
        shutil.copytree(
            Path(__file__).resolve().parent.parent,
            site / _LIGEIRO,
            ignore=shutil.ignore_patterns("__pycache__"),
        )
        logger.info("bundling %s", ", ".join(f"{d.metadata['Name']} {d.version}" for d in dists))
        built = stage / output.name
        run = subprocess.run(
            [
                sys.executable, "-m", "shiv", "--site-packages", str(site),
                "-e", f"{packaged.import_name}.__main__:main", "-o", str(built),
                "-p", "/usr/bin/env python3", "--compressed", "--reproducible",
            ],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        if run.returncode != 0:
            raise ConfigError(f"shiv failed: {(run.stderr or run.stdout).strip()}")
        output.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(built, output)
    # The wheel was staged and is gone: what was built is the pyz.
    return dataclasses.replace(packaged, path=output), output
