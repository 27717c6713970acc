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
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]),
    }
    done = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "federated" / "run.py"), "--rounds", "4",
         "--clients", "3", "--repository", str(tmp_path), "--poison-round", "4",
         "--json", str(out)],
        capture_output=True, env=env, timeout=300,
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
