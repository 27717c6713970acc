"""Discover models on disk in Triton's layout: ``<root>/<model>/<version>/model.onnx``.

One model folder can also be served on its own, under a name given to it (KServe mounts
a single model at ``/mnt/models``): ``<folder>/model.onnx`` (version 1) or
``<folder>/<version>/model.onnx``, with its ``config.toml`` at the top either way.
"""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..errors import ModelLoadError, ModelNotFoundError

if TYPE_CHECKING:
    from pathlib import Path

__all__ = ["MODEL_FILE", "ModelFolder", "discover", "fingerprint", "locate"]

logger = logging.getLogger(__name__)

MODEL_FILE = "model.onnx"


@dataclass(frozen=True, slots=True)
class ModelFolder:
    """A model's folder and its numbered version folders, lowest first."""

    name: str
    path: Path
    versions: tuple[int, ...]
    # A model folder with its model.onnx at the top: one version, 1, in the folder itself.
    flat: bool = False

    def version_path(self, version: int) -> Path:
        """The folder that holds ``version``'s files."""
        return self.path if self.flat else self.path / str(version)

    def model_file(self, version: int) -> Path:
        return self.version_path(version) / MODEL_FILE


def discover(root: Path, model_name: str | None = None) -> list[ModelFolder]:
    """List the model folders under ``root``, sorted by name; or ``root`` itself as the
    one model ``model_name`` when that is given.

    Hidden entries and plain files are skipped; a folder's non-numeric subfolders are
    skipped with a warning (Triton does the same).

    Raises:
        ModelLoadError: ``root`` is not a directory, or not the layout asked for (a
            model folder served as a repository, or the reverse).
    """
    if model_name is not None:
        return [_single(root, model_name)]
    if not root.is_dir():
        raise ModelLoadError(f"{root}: model repository not found (expected a directory)")
    if (root / MODEL_FILE).is_file() or any(
        (root / str(v) / MODEL_FILE).is_file() for v in _versions(root, warn=False)
    ):
        raise ModelLoadError(
            f"{root}: this is one model's folder, not a repository "
            f"(expected <model>/<version>/{MODEL_FILE}); to serve it as one model, "
            "give it a name (--model-name NAME)"
        )
    return [
        ModelFolder(path.name, path, _versions(path))
        for path in sorted(root.iterdir())
        if not path.name.startswith(".") and path.is_dir()
    ]


def _versions(path: Path, *, warn: bool = True) -> tuple[int, ...]:
    versions = []
    for child in path.iterdir():
        if not child.is_dir() or child.name.startswith("."):
            continue
        if child.name.isdigit() and int(child.name) > 0:
            versions.append(int(child.name))
        elif warn:
            logger.warning("%s: not a version folder (expected a positive integer)", child)
    return tuple(sorted(versions))


def _single(root: Path, name: str) -> ModelFolder:
    expected = f"expected {root}/{MODEL_FILE} or version folders {root}/1/{MODEL_FILE}, ..."
    if not name or "/" in name or name.startswith("."):
        raise ModelLoadError(f"model name {name!r}: expected a non-empty name without '/'")
    if not root.is_dir():
        raise ModelLoadError(f"{root}: model folder not found ({expected})")
    versions = _versions(root, warn=False)
    if (root / MODEL_FILE).is_file():
        if versions:
            raise ModelLoadError(
                f"{root}: both {MODEL_FILE} and version folders {list(versions)}; "
                f"{expected}, not both"
            )
        return ModelFolder(name, root, (1,), flat=True)
    if not versions:
        nested = [p.name for p in sorted(root.iterdir()) if p.is_dir() and _versions(p, warn=False)]
        shown = ", ".join(nested[:3]) + (", ..." if len(nested) > 3 else "")
        hint = f"; it looks like a repository ({shown}): serve it without --model-name"
        raise ModelLoadError(
            f"{root}: no {MODEL_FILE} and no version folders ({expected}){hint if nested else ''}"
        )
    return ModelFolder(name, root, versions)


def locate(path: Path) -> tuple[ModelFolder, int | None]:
    """The model folder ``path`` names (REPO/NAME, or a flat folder with its
    ``model.onnx`` at the top, as ``serve DIR --model-name`` takes), or its version
    (REPO/NAME/VERSION).

    Returns the folder and the version named, or ``None`` for "the highest".

    Raises:
        ModelNotFoundError: ``path`` is neither a model folder nor a version folder.
        ModelLoadError: a flat folder that also has version folders.
    """
    if path.name.isdigit() and int(path.name) > 0 and (path / MODEL_FILE).is_file():
        return ModelFolder(path.parent.name, path.parent, _versions(path.parent)), int(path.name)
    if (path / MODEL_FILE).is_file():
        return _single(path, path.resolve().name), None
    if path.is_dir() and any(c.name.isdigit() and c.is_dir() for c in path.iterdir()):
        return ModelFolder(path.name, path, _versions(path)), None
    raise ModelNotFoundError(
        f"{path}: not a model folder (expected {path}/{MODEL_FILE}, "
        f"{path}/<version>/{MODEL_FILE}, or a version folder holding {MODEL_FILE})"
    )


def fingerprint(root: Path) -> frozenset[tuple[str, int, int]]:
    """Every file under ``root`` as (path, size, modification time in ns): equal
    fingerprints, unchanged files. Hidden entries and ``__pycache__`` (written by
    loading a Python model) are left out, as loading leaves them out."""
    found = set()
    for folder, folders, files in os.walk(root):
        folders[:] = [f for f in folders if not f.startswith(".") and f != "__pycache__"]
        for name in files:
            if not name.startswith("."):
                path = os.path.join(folder, name)
                with contextlib.suppress(OSError):  # gone meanwhile: it is left out
                    stat = os.stat(path)
                    found.add((os.path.relpath(path, root), stat.st_size, stat.st_mtime_ns))
    return frozenset(found)
