"""What the image does, without a container engine: deploy/image/install.sh (the script
the Dockerfile's build stage runs) builds a fresh venv with only the runtime
dependencies, and the Dockerfile's ENTRYPOINT and ENV serve a model folder from it."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

from tests.conftest import IRIS_REQUEST, ROOT, start_server

# Packages an extra would add: none of them belongs in the image.
EXTRAS_ONLY = ("sklearn", "skl2onnx", "torch", "pyspark", "pyarrow", "pandas", "opentelemetry")


def dockerfile_runtime() -> tuple[dict[str, str], list[str]]:
    """The last stage's ENV and ENTRYPOINT, as the Dockerfile writes them."""
    text = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text())
    last = text.split("\nFROM ")[-1]
    env: dict[str, str] = {}
    entrypoint: list[str] = []
    for line in last.splitlines():
        word, _, rest = line.strip().partition(" ")
        if word == "ENV":
            env.update(pair.split("=", 1) for pair in rest.split())
        elif word == "ENTRYPOINT":
            entrypoint = json.loads(rest)
    return env, entrypoint


def test_image_environment_installs_and_serves(tmp_path: Path, examples: Path) -> None:
    prefix = tmp_path / "opt-ligeiro"
    subprocess.run(
        ["sh", str(ROOT / "deploy" / "image" / "install.sh"), str(prefix), str(ROOT)],
        check=True, timeout=600, capture_output=True,
    )  # fmt: skip
    site = next(prefix.glob("lib/python*/site-packages"))
    installed = {p.name.split("-")[0].lower() for p in site.glob("*.dist-info")}
    assert "ligeiro" in installed
    assert not [name for name in EXTRAS_ONLY if (site / name).exists()]
    assert "pip" not in installed
    env, entrypoint = dockerfile_runtime()
    assert entrypoint == ["ligeiro", "serve"]
    mnt = tmp_path / "mnt" / "models"  # KServe's mount, one model at the top
    mnt.mkdir(parents=True)
    shutil.copy(examples / "iris" / "1" / "model.onnx", mnt)
    for file in (examples / "iris").iterdir():  # config.toml and the warm-up file it names
        if file.is_file():
            shutil.copy(file, mnt)
    env["PATH"] = env["PATH"].replace("/opt/ligeiro", str(prefix)).replace("$PATH", "/usr/bin:/bin")
    env["LIGEIRO_REPOSITORY"] = str(mnt)
    env["LIGEIRO_HTTP__HOST"] = "127.0.0.1"  # the image binds 0.0.0.0; a test, loopback
    srv = start_server(mnt, "--model-name", "iris", ligeiro=[str(prefix / "bin" / "ligeiro")], env=env)
    try:
        assert srv.get("/v2/health/ready").status == 200
        assert srv.post("/v2/models/iris/infer", IRIS_REQUEST).json()["outputs"][0]["data"] == [0]
    finally:
        assert srv.stop() == 0
