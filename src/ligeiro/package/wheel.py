"""``ligeiro package``: a model folder as a standard wheel (model-as-a-dependency).

The wheel (built by hatchling, PEP 427 file, PEP 621 metadata) holds one version of the
model, its config and parity report, and a module named for the distribution
(``iris-model`` → ``iris_model``) exposing ``predict``, ``predict_proba``, ``infer``,
``metadata``, ``__version__``, ``MODEL_VERSION`` and ``MODEL_SHA256``. The module runs
on a copy of ligeiro's loading code (``RUNTIME_MODULES``, vendored as
``iris_model._ligeiro``): the same runtime and checks as the server, without the server,
so the wheel depends only on numpy, onnxruntime and msgspec.
"""

from __future__ import annotations

import importlib.util
import json
import keyword
import logging
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .. import __version__ as ligeiro_version
from ..errors import ConfigError, ModelLoadError
from ..repository.layout import ModelFolder, locate
from ._template import MAIN, MODULE

__all__ = ["RUNTIME_MODULES", "RUNTIME_REQUIREMENTS", "Packaged", "build_wheel", "check_name"]

logger = logging.getLogger(__name__)

# What ``ligeiro.load`` imports, relative to the ligeiro package ("" is its __init__);
# a test holds ``load`` to this list, so the vendored copy is always complete.
RUNTIME_MODULES = (
    "",
    "_features",
    "datatypes",
    "errors",
    "model",
    "protocol",
    "protocol.codec",
    "protocol.datatypes",
    "protocol.messages",
    "protocol.predict",
    "protocol.raw",
    "protocol.typed_json",
    "protocol.types",
    "repository",
    "repository.checks",
    "repository.config",
    "repository.layout",
    "repository.registry",
    "repository.routing",
    "repository.version",
    "runtime",
    "runtime.base",
    "runtime.onnx",
    "runtime.pipeline",
    "runtime.providers",
    "runtime.python",
    "scheduling",
    "scheduling.policy",
    "warmup",
)
# The packaged module's dependencies: ligeiro's own pins of what those modules import
# (a test checks them against pyproject.toml).
RUNTIME_REQUIREMENTS = ("numpy>=2.0,<3", "onnxruntime>=1.20,<2", "msgspec>=0.19,<1")
# PEP 508 names; a version is checked by packaging (PEP 440).
_NAME = re.compile(r"^([A-Z0-9]|[A-Z0-9][A-Z0-9._-]*[A-Z0-9])$", re.IGNORECASE)
_VENDOR_INIT = '"""ligeiro {version}\'s model loading, vendored by ``ligeiro package``."""\n'


@dataclass(frozen=True, slots=True)
class Packaged:
    """A built wheel, and what it holds."""

    path: Path
    name: str
    version: str
    import_name: str
    model_name: str
    model_version: str
    sha256: str


def check_name(name: str, version: str) -> tuple[str, str]:
    """The normalized distribution name and the import name, after checking both.

    Raises:
        ConfigError: ``name`` is not a valid distribution name (PEP 508) or its import
            name is not a Python identifier, or ``version`` is not a PEP 440 version.
    """
    from packaging.version import InvalidVersion, Version

    if not _NAME.match(name):
        raise ConfigError(
            f"--name {name!r}: not a valid distribution name (letters, digits, '-', '_', "
            "'.'; starting and ending with a letter or digit)"
        )
    import_name = re.sub(r"[-_.]+", "_", name).lower()
    if not import_name.isidentifier() or keyword.iskeyword(import_name):
        raise ConfigError(f"--name {name!r}: its module name {import_name!r} is not importable")
    try:
        Version(version)
    except InvalidVersion:
        raise ConfigError(
            f"--version {version!r}: not a valid version (PEP 440, e.g. 1.0.0)"
        ) from None
    return re.sub(r"[-_.]+", "-", name).lower(), import_name


def _vendor(target: Path) -> None:
    """Copy ``RUNTIME_MODULES`` of the running ligeiro under ``target``."""
    source = Path(__file__).resolve().parent.parent
    for module in RUNTIME_MODULES:
        parts = module.split(".") if module else []
        package = source.joinpath(*parts)
        if package.is_dir():
            destination = target.joinpath(*parts) / "__init__.py"
            origin = package / "__init__.py"
        else:
            destination = target.joinpath(*parts[:-1]) / f"{parts[-1]}.py"
            origin = source.joinpath(*parts[:-1]) / f"{parts[-1]}.py"
        destination.parent.mkdir(parents=True, exist_ok=True)
        if not module:  # not ligeiro's own __init__: that one exports the engine too
            destination.write_text(_VENDOR_INIT.format(version=ligeiro_version))
        else:
            shutil.copyfile(origin, destination)


def _copy_model(folder: ModelFolder, version: str, target: Path) -> None:
    """The model folder's files and the one version folder (all of a flat folder),
    without caches."""
    ignore = shutil.ignore_patterns("__pycache__", ".*")
    if folder.flat:
        shutil.copytree(folder.path, target, ignore=ignore)
        return
    target.mkdir(parents=True)
    for path in folder.path.iterdir():
        if path.is_file() and not path.name.startswith("."):
            shutil.copyfile(path, target / path.name)
    shutil.copytree(folder.path / version, target / version, ignore=ignore)


def _pyproject(name: str, version: str, import_name: str, summary: str) -> str:
    requirements = json.dumps(list(RUNTIME_REQUIREMENTS))
    return (
        '[build-system]\nrequires = ["hatchling"]\nbuild-backend = "hatchling.build"\n\n'
        f"[project]\nname = {json.dumps(name)}\nversion = {json.dumps(version)}\n"
        f'description = {json.dumps(summary)}\nrequires-python = ">=3.11"\n'
        f"dependencies = {requirements}\n\n"
        f"[project.scripts]\n{name} = {json.dumps(import_name + '.__main__:main')}\n\n"
        f"[tool.hatch.build.targets.wheel]\npackages = [{json.dumps(import_name)}]\n"
    )


def wheel_filename(name: str, version: str) -> str:
    """The file name hatchling gives a pure-Python wheel (PEP 427, normalized)."""
    from packaging.utils import canonicalize_version

    stem = re.sub(r"[-_.]+", "_", name).lower()
    return f"{stem}-{canonicalize_version(version, strip_trailing_zero=False)}-py3-none-any.whl"


def build_wheel(
    model_dir: Path,
    out: Path,
    *,
    name: str | None = None,
    version: str | None = None,
    model_version: str | None = None,
    force: bool = False,
) -> Packaged:
    """Build the wheel of ``model_dir`` (one version of it) into ``out``.

    Args:
        model_dir: a model folder (REPO/NAME) or version folder (REPO/NAME/VERSION).
        out: the folder the wheel is written to (made if missing).
        name: the distribution name (default ``<model>-model``).
        version: the wheel's version (default ``<model version>.0.0``).
        model_version: the version to package (default: the one ``ligeiro.load`` picks).
        force: replace a wheel of the same name and version in ``out``.

    Raises:
        ModelLoadError, ModelNotFoundError: the model does not load (nothing is built).
        ConfigError: a bad name or version, a wheel already there without ``force``,
            a model that is not an ONNX one, or hatchling missing.
    """
    from ..model import load
    from ..repository.config import load_config

    folder = locate(model_dir)[0]
    platform = load_config(folder.path).platform
    if platform != "onnxruntime":
        why = {"pipeline": "a pipeline runs other models of its repository"}.get(
            platform, "a Python model's own dependencies are unknown to it"
        )
        raise ConfigError(
            f"{folder.path}: platform {platform!r}; ligeiro package packages ONNX models ({why})"
        )
    with load(model_dir, model_version) as loaded:
        meta = loaded.metadata
        sha256 = loaded.sha256
    model_name, number = meta["name"], meta["version"]
    name = name or f"{model_name}-model"
    version = version or f"{number}.0.0"
    dist_name, import_name = check_name(name, version)
    target = out / wheel_filename(dist_name, version)
    if target.exists() and not force:
        raise ConfigError(f"{target}: already exists; pass --force to replace it")
    if importlib.util.find_spec("hatchling") is None:  # the build runs in a child: fail here
        raise ConfigError("ligeiro package needs hatchling: pip install 'ligeiro[package]'")
    summary = f"The {model_name} model (version {number}), packaged by ligeiro {ligeiro_version}"
    example = json.dumps(dict.fromkeys(meta["features"], 0.0)) if meta["features"] else "[0.0]"
    with tempfile.TemporaryDirectory(prefix="ligeiro-package-") as stage_name:
        stage = Path(stage_name)
        package = stage / import_name
        _vendor(package / "_ligeiro")
        _copy_model(folder, number, package / "models" / model_name)
        (package / "__init__.py").write_text(
            MODULE.format(
                summary=summary,
                ligeiro_version=ligeiro_version,
                import_name=import_name,
                example=example,
                version=version,
                model_name=model_name,
                model_version=number,
                sha256=sha256,
                metadata=json.dumps(meta),
            )
        )
        (package / "__main__.py").write_text(MAIN.format(command=dist_name, model_name=model_name))
        (stage / "pyproject.toml").write_text(_pyproject(dist_name, version, import_name, summary))
        built = stage / "dist"
        # hatchling's PEP 517 hook, in a child: it works in the current directory.
        code = "import sys, hatchling.build as b; print(b.build_wheel(sys.argv[1]))"
        run = subprocess.run(
            [sys.executable, "-c", code, str(built)],
            cwd=stage, capture_output=True, text=True, check=False,
        )  # fmt: skip
        if run.returncode != 0:
            raise ModelLoadError(f"hatchling failed to build the wheel: {run.stderr.strip()}")
        wheel = built / run.stdout.strip().splitlines()[-1]
        out.mkdir(parents=True, exist_ok=True)
        shutil.move(wheel, target)
    logger.debug(
        "wrote %s (%s %s, model %s version %s)", target, dist_name, version, model_name, number
    )
    return Packaged(target, dist_name, version, import_name, model_name, number, sha256)
