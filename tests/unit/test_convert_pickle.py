"""The pickle policy: nothing is unpickled without trust_pickle, and the error says why and how."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest

from ligeiro.convert.convert import convert_model
from ligeiro.convert.loading import load_saved_model
from ligeiro.errors import ConversionError, UntrustedModelError

pytest.importorskip("skl2onnx", reason="the convert extra is not installed")

from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression


class _Trap:
    """A pickle that creates ``path`` when it is loaded: proof that loading ran code."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (open, (str(self.path), "w"))


@pytest.mark.parametrize("suffix", [".pkl", ".joblib", ".pickle"])
def test_untrusted_pickle_is_never_loaded(tmp_path: Path, suffix: str) -> None:
    marker = tmp_path / "unpickled.txt"
    model_file = tmp_path / f"model{suffix}"
    model_file.write_bytes(pickle.dumps(_Trap(marker)))
    with pytest.raises(UntrustedModelError, match=r"runs whatever code") as info:
        load_saved_model(model_file)
    assert not marker.exists()
    message = str(info.value)
    assert str(model_file) in message
    assert "trust_pickle=True (--trust-pickle)" in message
    assert "serve the ONNX model" in message
    assert info.value.exit_code == 2
    assert isinstance(info.value, ConversionError)
    # The control: unpickling this file does create the marker.
    pickle.loads(model_file.read_bytes()).close()
    assert marker.exists()


def test_convert_model_refuses_untrusted_pickle_and_writes_nothing(tmp_path: Path) -> None:
    marker = tmp_path / "unpickled.txt"
    model_file = tmp_path / "model.pkl"
    model_file.write_bytes(pickle.dumps(_Trap(marker)))
    folder = tmp_path / "repo" / "m"
    with pytest.raises(UntrustedModelError, match="not unpickling an untrusted file"):
        convert_model(model_file, np.zeros((2, 4)), folder)
    assert not marker.exists()
    assert not folder.exists()


def test_trusted_pickle_converts(tmp_path: Path) -> None:
    joblib = pytest.importorskip("joblib")
    x, y = load_iris(return_X_y=True)
    model_file = tmp_path / "model.joblib"
    joblib.dump(LogisticRegression(max_iter=500).fit(x, y), model_file)
    result = convert_model(model_file, x, tmp_path / "repo" / "iris", trust_pickle=True)
    assert result.fidelity.passed
    assert result.model_path.is_file()


def test_skops_with_untrusted_types_is_refused(tmp_path: Path) -> None:
    sio = pytest.importorskip("skops.io")
    model_file = tmp_path / "model.skops"
    # A type skops does not trust by default (a function reference from this module).
    sio.dump({"model": LogisticRegression(), "hook": _untrusted_function}, model_file)
    with pytest.raises(
        UntrustedModelError, match=r"outside skops' trusted set: .*_untrusted_function"
    ):
        load_saved_model(model_file)
    loaded = load_saved_model(model_file, trust_pickle=True)
    assert loaded["hook"] is _untrusted_function


def _untrusted_function() -> None:
    """Referenced from a skops file: skops will not load it without trust."""


def test_unknown_extension_says_what_is_supported(tmp_path: Path) -> None:
    model_file = tmp_path / "model.bin"
    model_file.write_bytes(b"\0")
    with pytest.raises(ConversionError, match=r"unknown model file \.bin; expected \.skops"):
        load_saved_model(model_file)
