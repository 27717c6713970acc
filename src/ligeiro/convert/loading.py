"""Load a saved model for conversion, without running code the user did not trust.

Pickle (``.joblib``, ``.pkl``, ``.pickle``) runs whatever code the file names while it
loads, so it is opened only with ``trust_pickle=True``. skops files name their types
first: those outside skops' trusted set are listed and refused unless trusted. XGBoost
(``.json``, ``.ubj``), LightGBM (``.txt``) and CatBoost (``.cbm``) native files hold data
only. The server
itself never loads any of these: it serves the ONNX that conversion writes.
"""

from __future__ import annotations

import importlib
import json
import logging
from pathlib import Path
from typing import Any

from ..errors import ConversionError, UntrustedModelError

__all__ = ["PICKLE_SUFFIXES", "load_saved_model"]

logger = logging.getLogger(__name__)

PICKLE_SUFFIXES = (".joblib", ".pkl", ".pickle")
_EXTRA = "pip install 'ligeiro[convert]'"


def _require(module: str, what: str, install: str = _EXTRA) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ConversionError(f"{what} needs {module}: {install}") from None


def load_saved_model(path: str | Path, *, trust_pickle: bool = False) -> Any:
    """Load a model file, or import a PyTorch module, by its extension or form.

    Args:
        path: ``model.joblib`` / ``.pkl`` / ``.pickle`` (pickle, trusted only),
            ``model.skops``, an XGBoost ``.json`` / ``.ubj`` (the objective picks
            ``XGBClassifier`` or ``XGBRegressor``), a LightGBM ``.txt`` (a
            ``lightgbm.Booster``), a CatBoost ``.cbm`` (the loss function picks
            ``CatBoostClassifier`` or ``CatBoostRegressor``), or ``"package.module:attribute"``: a
            ``torch.nn.Module`` or a zero-argument callable returning one.
        trust_pickle: allow unpickling (and skops types outside its trusted set).

    Returns:
        The model object: an estimator, a ``lightgbm.Booster``, a CatBoost model or a
        torch module.

    Raises:
        UntrustedModelError: the file needs unpickling (or untrusted skops types) and
            ``trust_pickle`` is false. Nothing was unpickled.
        ConversionError: the file is missing or of an unknown kind, cannot be read,
            or its extra is not installed.

    Example::

        model = load_saved_model("model.skops")
        model = load_saved_model("mypkg.nets:build_net")
    """
    text = str(path)
    candidate = Path(text)
    if not candidate.exists() and ":" in text and "/" not in text.split(":", 1)[0]:
        return _import_module_attribute(text)
    if not candidate.is_file():
        raise ConversionError(f"{candidate}: no such model file")
    suffix = candidate.suffix.lower()
    if suffix in PICKLE_SUFFIXES:
        return _load_pickle(candidate, trust_pickle=trust_pickle)
    if suffix == ".skops":
        return _load_skops(candidate, trust_pickle=trust_pickle)
    if suffix in (".json", ".ubj"):
        return _load_xgboost(candidate)
    if suffix == ".txt":
        lightgbm = _require("lightgbm", f"{candidate} (a LightGBM model)")
        try:
            return lightgbm.Booster(model_file=str(candidate))
        except lightgbm.basic.LightGBMError as exc:
            raise ConversionError(f"{candidate}: not a LightGBM model file: {exc}") from None
    if suffix == ".cbm":
        return _load_catboost(candidate)
    raise ConversionError(
        f"{candidate}: unknown model file {suffix or '(no extension)'}; expected "
        ".skops, .joblib/.pkl/.pickle (with trust_pickle), XGBoost .json/.ubj, LightGBM "
        ".txt, CatBoost .cbm, or a 'package.module:attribute' import path for a PyTorch module"
    )


def _load_pickle(path: Path, *, trust_pickle: bool) -> Any:
    if not trust_pickle:
        raise UntrustedModelError(
            f"{path}: not unpickling an untrusted file. Loading a pickle runs whatever code "
            "it names, so a model file from anyone you do not trust can run anything on "
            "this machine. If you trust this file, convert it once with trust_pickle=True "
            "(--trust-pickle) and serve the ONNX model that writes: the server never loads "
            "pickle. To share models safely, save them with skops (skops.io.dump)."
        )
    joblib = _require("joblib", f"{path} (a pickle)")
    logger.warning("%s: unpickling a trusted file (this runs the code it names)", path)
    try:
        return joblib.load(path)
    except Exception as exc:  # unpickling raises whatever the pickled code raises
        raise ConversionError(f"{path}: cannot unpickle: {exc}") from exc


def _load_skops(path: Path, *, trust_pickle: bool) -> Any:
    sio = _require("skops.io", f"{path} (a skops file)")
    try:
        untrusted = list(sio.get_untrusted_types(file=path))
    except Exception as exc:  # a corrupt zip or schema raises many kinds
        raise ConversionError(f"{path}: not a readable skops file: {exc}") from exc
    if untrusted and not trust_pickle:
        raise UntrustedModelError(
            f"{path}: the skops file holds types outside skops' trusted set: "
            f"{', '.join(untrusted)}. Loading them can run their code; if you trust this "
            "file, convert it with trust_pickle=True (--trust-pickle)"
        )
    try:
        return sio.load(path, trusted=untrusted)
    except Exception as exc:
        raise ConversionError(f"{path}: cannot load the skops file: {exc}") from exc


def _load_xgboost(path: Path) -> Any:
    xgboost = _require("xgboost", f"{path} (an XGBoost model)")
    booster = xgboost.Booster()
    try:
        booster.load_model(str(path))
    except xgboost.core.XGBoostError as exc:
        raise ConversionError(f"{path}: not an XGBoost model file: {exc}") from None
    objective = json.loads(booster.save_config())["learner"]["objective"]["name"]
    if objective.startswith(("binary:", "multi:")):
        model = xgboost.XGBClassifier()
    elif objective.startswith(("reg:", "count:")):
        model = xgboost.XGBRegressor()
    else:
        raise ConversionError(
            f"{path}: XGBoost objective {objective!r} is not supported; expected a "
            "classifier (binary:*, multi:*) or a regressor (reg:*, count:*)"
        )
    model.load_model(str(path))
    logger.info("%s: XGBoost %s (%s)", path, type(model).__name__, objective)
    return model


def _load_catboost(path: Path) -> Any:
    catboost = _require("catboost", f"{path} (a CatBoost model)")
    from ._catboost import CLASSIFIER_LOSSES

    model = catboost.CatBoost()
    try:
        model.load_model(str(path), format="cbm")
    except catboost.CatBoostError as exc:
        raise ConversionError(f"{path}: not a CatBoost model file: {exc}") from None
    loss = str(model.get_all_params().get("loss_function", "")).split(":")[0]
    kind = catboost.CatBoostClassifier if loss in CLASSIFIER_LOSSES else catboost.CatBoostRegressor
    typed = kind()
    typed.load_model(str(path), format="cbm")
    logger.info("%s: CatBoost %s (%s)", path, kind.__name__, loss or "no loss function")
    return typed


def _import_module_attribute(target: str) -> Any:
    module_name, _, attribute = target.partition(":")
    try:
        obj: Any = importlib.import_module(module_name)
        for part in attribute.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as exc:
        raise ConversionError(f"{target}: cannot import: {exc}") from None
    torch = _require("torch", f"{target} (a PyTorch module)", "pip install torch==2.13.0")
    if not isinstance(obj, torch.nn.Module) and callable(obj):  # a factory, or the class
        obj = obj()
    if not isinstance(obj, torch.nn.Module):
        raise ConversionError(
            f"{target}: expected a torch.nn.Module or a zero-argument callable returning "
            f"one, got {type(obj).__name__}"
        )
    return obj
