"""Discover models on disk in Triton's layout: ``<root>/<model>/<version>/model.onnx``."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..errors import ModelLoadError

if TYPE_CHECKING:
    from pathlib import Path

__all__ = ["MODEL_FILE", "ModelFolder", "discover"]

logger = logging.getLogger(__name__)

MODEL_FILE = "model.onnx"


@dataclass(frozen=True, slots=True)
class ModelFolder:
    """A model's folder and its numbered version folders, lowest first."""

    name: str
    path: Path
    versions: tuple[int, ...]

    def model_file(self, version: int) -> Path:
        return self.path / str(version) / MODEL_FILE


def discover(root: Path) -> list[ModelFolder]:
    """List the model folders under ``root``, sorted by name.

    Hidden entries and plain files are skipped; a folder's non-numeric subfolders are
    skipped with a warning (Triton does the same).

    Raises:
        ModelLoadError: ``root`` is not a directory.
    """
    if not root.is_dir():
        raise ModelLoadError(f"{root}: model repository not found (expected a directory)")
    folders = []
    for path in sorted(root.iterdir()):
        if path.name.startswith(".") or not path.is_dir():
            continue
        versions = []
        for child in path.iterdir():
            if not child.is_dir() or child.name.startswith("."):
                continue
            if child.name.isdigit() and int(child.name) > 0:
                versions.append(int(child.name))
            else:
                logger.warning("%s: not a version folder (expected a positive integer)", child)
        folders.append(ModelFolder(path.name, path, tuple(sorted(versions))))
    return folders
