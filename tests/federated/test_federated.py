"""Federated rounds on Flower against a live ligeiro under load (examples/federated/run.py).

Flower's simulation runs 3 devices for 4 rounds on loopback while ligeiro serves with
``--model-control poll`` and a load generator sends requests; round 4 has a device
send garbage parameters. Runs in the ``ligeiro[federated]`` venv (Flower pins versions
that differ from constraints.txt; ``make test`` builds it).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip(
    "flwr", reason="needs ligeiro[federated] (make test runs it in .venv-federated)"
)

from ligeiro.federated import Classifier, Publisher, RoundRecord
from tests.conftest import start_server

ROOT = Path(__file__).resolve().parents[2]


def test_rounds_are_served_gated_and_never_fail(tmp_path: Path) -> None:
    out = tmp_path / "rounds.json"
    done = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "federated" / "run.py"), "--rounds", "4",
         "--clients", "3", "--repository", str(tmp_path), "--poison-round", "4",
         "--json", str(out)],
        capture_output=True, env=_env(), timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    rounds = json.loads(out.read_text())["rounds"]
    assert [r["version"] for r in rounds] == [2, 3, 4, 5]
    assert [r["promoted"] for r in rounds] == [True, True, True, False]
    assert [r["clients"] for r in rounds] == [3, 3, 3, 3]
    assert rounds[2]["accuracy"] >= rounds[0]["accuracy"]
    assert all(r["requests"] > 0 for r in rounds)
    assert sum(r["failed"] for r in rounds) == 0
    # The poisoned round: the served version stays, the candidate is disabled with why.
    assert rounds[3]["serving"] == 4
    assert "loss" in rounds[3]["reason"]
    folder = tmp_path / "iris-federated"
    about = json.loads((folder / "5" / "federated.json").read_text())
    assert (about["round"], about["clients"]) == (4, 3)
    assert about["fidelity"]["passed"]
    assert "stable = 4" in (folder / "config.toml").read_text()
    assert "disabled_versions" in (folder / "config.toml").read_text()
    assert b"version 5 rejected" in done.stderr


def test_rejected_version_shows_its_reason_in_the_index(tmp_path: Path) -> None:
    """The publisher alone against a live server: canary, promote, reject, index."""
    import numpy as np

    model = Classifier(features=4, classes=3, seed=1)
    sample = np.random.default_rng(0).normal(size=(8, 4)).astype(np.float32)
    (tmp_path / "m" / "1").mkdir(parents=True)
    (tmp_path / "m" / "1" / "model.onnx").write_bytes(model.to_onnx(model.initial(), sample=sample))
    srv = start_server(tmp_path, "--model-control", "poll")
    try:
        publisher = Publisher(tmp_path, "m", server=f"http://{srv.host}:{srv.port}", timeout_s=30)
        record = RoundRecord(1, 2, 10)
        params = model.initial()
        version = publisher.publish(model.to_onnx(params, sample=sample), record, {})
        assert version == 2
        assert publisher.index() == {"1": ("READY", ""), "2": ("READY", "")}
        publisher.promote(record)
        assert publisher.index() == {"2": ("READY", "")}
        second = RoundRecord(2, 2, 10)
        publisher.publish(model.to_onnx(params, sample=sample), second, {})
        publisher.reject(second, "worse than served")
        assert publisher.index() == {
            "2": ("READY", ""),
            "3": ("UNAVAILABLE", "disabled: worse than served"),
        }
        assert publisher.serving == 2
    finally:
        srv.stop()



def test_a_round_under_explicit_control_loads_through_the_repository_api(
    tmp_path: Path,
) -> None:
    """Two rounds against ``serve --model-control explicit``: the server never reads the
    files by itself there, so each version is served only because the strategy's
    publisher asked the repository API with the admin token."""
    out = tmp_path / "rounds.json"
    done = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "federated" / "run.py"), "--rounds", "2",
         "--clients", "3", "--repository", str(tmp_path), "--model-control", "explicit",
         "--json", str(out)],
        capture_output=True, env=_env(), timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    rounds = json.loads(out.read_text())["rounds"]
    assert [(r["version"], r["promoted"], r["serving"]) for r in rounds] == [
        (2, True, 2),
        (3, True, 3),
    ]
    assert all(r["requests"] > 0 for r in rounds)
    assert sum(r["failed"] for r in rounds) == 0
    assert "stable = 3" in (tmp_path / "iris-federated" / "config.toml").read_text()


ADMIN_TOKEN = "federated-test-token"


def test_publisher_under_explicit_control_needs_the_token(tmp_path: Path) -> None:
    """Under explicit control the publisher needs the admin token (the index needs it
    too); with it each step is loaded through the API: canary, promote, reject."""
    import numpy as np

    from ligeiro.errors import LigeiroError

    model = Classifier(features=4, classes=3, seed=1)
    sample = np.random.default_rng(0).normal(size=(8, 4)).astype(np.float32)
    onnx_bytes = model.to_onnx(model.initial(), sample=sample)
    (tmp_path / "m" / "1").mkdir(parents=True)
    (tmp_path / "m" / "1" / "model.onnx").write_bytes(onnx_bytes)
    srv = start_server(tmp_path, "--model-control", "explicit", "--admin-token", ADMIN_TOKEN)
    url = f"http://{srv.host}:{srv.port}"
    try:
        for token in (None, "not-the-token"):
            stranger = Publisher(tmp_path, "m", server=url, admin_token=token, timeout_s=5)
            with pytest.raises(LigeiroError, match="answered 401"):
                stranger.publish(onnx_bytes, RoundRecord(1, 2, 10), {})
        publisher = Publisher(tmp_path, "m", server=url, admin_token=ADMIN_TOKEN, timeout_s=30)
        # Versions 2 and 3 are on disk, but files alone change nothing here.
        assert publisher.index() == {"1": ("READY", "")}
        record = RoundRecord(1, 2, 10)
        assert publisher.publish(onnx_bytes, record, {}) == 4
        assert publisher.index() == {"1": ("READY", ""), "4": ("READY", "")}
        publisher.promote(record)
        assert publisher.index() == {"4": ("READY", "")}
        second = RoundRecord(2, 2, 10)
        publisher.publish(onnx_bytes, second, {})
        publisher.reject(second, "worse than served")
        assert publisher.index() == {
            "4": ("READY", ""),
            "5": ("UNAVAILABLE", "disabled: worse than served"),
        }
    finally:
        srv.stop()


def _env() -> dict[str, str]:
    return {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]),
    }
