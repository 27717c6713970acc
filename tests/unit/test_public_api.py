from __future__ import annotations

import numpy as np
import pytest

import ligeiro


def test_all_is_sorted_and_complete() -> None:
    assert ligeiro.__all__ == sorted(ligeiro.__all__)
    for name in ligeiro.__all__:
        getattr(ligeiro, name)  # lazy names resolve too
    classes = {
        name
        for name in dir(ligeiro)
        if not name.startswith("_") and isinstance(getattr(ligeiro, name), type)
    }
    assert classes <= set(ligeiro.__all__)


def test_client_does_not_import_the_runtime() -> None:
    import subprocess
    import sys

    code = "import sys, ligeiro.client; print('onnxruntime' in sys.modules, 'numpy' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


def test_in_process_engine(examples: object) -> None:
    with ligeiro.Engine.from_repository(str(examples)) as engine:
        x = np.array([[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]], dtype=np.float32)
        result = engine.infer("iris", {"float_input": x})
        assert result["output_label"].tolist() == [0, 2]
        assert result.model.version == "1"
        with pytest.raises(
            ligeiro.InvalidInputError, match=r"expected shape \[-1, 4\], got \[2, 2\]"
        ):
            engine.infer("iris", {"float_input": x[:, :2]})
        with pytest.raises(ligeiro.ModelNotFoundError, match="unknown model 'x'"):
            engine.infer("x", {})


def test_errors_form_one_tree() -> None:
    for name in ligeiro.__all__:
        obj = getattr(ligeiro, name)
        if isinstance(obj, type) and issubclass(obj, Exception):
            assert issubclass(obj, ligeiro.LigeiroError)
