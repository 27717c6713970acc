"""``ligeiro package``: the iris wheel in an application's venv, and the one-file pyz.

The venv has never seen ligeiro: numpy, onnxruntime and msgspec (the wheel's
dependencies, nothing else) come from this environment through a ``.pth`` file, and the
wheel installs with pip, offline, from the folder it was written to.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import threading
import zipfile
from collections.abc import Iterator
from email.parser import HeaderParser
from pathlib import Path

import pytest

from tests.conftest import ROOT, Server, start_server
from tests.unit.test_load import FEATURES, SETOSA, iris_test_split

# pip with no configuration and no index: only what --find-links names.
_OFFLINE = {
    **{k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "PYTHON"))},
    "PIP_CONFIG_FILE": os.devnull,
    "PIP_DISABLE_PIP_VERSION_CHECK": "1",
}


def ligeiro(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ligeiro", *args],
        capture_output=True, text=True, timeout=120, check=check, cwd=ROOT,
    )  # fmt: skip


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory, examples: Path) -> Path:
    """iris as iris-model 1.0.0 and 1.1.0."""
    out = tmp_path_factory.mktemp("dist")
    for version in ("1.0.0", "1.1.0"):
        built = ligeiro("package", str(examples / "iris"), "--out", str(out), "--version", version)
        assert f"iris_model-{version}-py3-none-any.whl (iris-model {version}" in built.stdout
    return out


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An application's venv: the wheel's dependencies only (linked from here), no pip."""
    from ligeiro.package.pyz import distributions
    from ligeiro.package.wheel import RUNTIME_REQUIREMENTS

    root = tmp_path_factory.mktemp("app")
    venv, deps = root / "venv", root / "deps"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    deps.mkdir()
    for found in distributions(list(RUNTIME_REQUIREMENTS)):
        base = Path(str(found.locate_file("")))
        for top in {Path(str(f)).parts[0] for f in found.files or ()} - {".."}:
            if (base / top).exists() and not (deps / top).exists():
                (deps / top).symlink_to(base / top)
    (site,) = venv.glob("lib/python*/site-packages")
    (site / "deps.pth").write_text(f"{deps}\n")
    return venv


def pip(venv: Path, *args: str) -> str:
    run = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), *args],
        capture_output=True, text=True, timeout=120, env=_OFFLINE, check=False,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr
    return run.stdout


def in_app(venv: Path, code: str, data: object = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(venv / "bin" / "python"), "-c", code], input=json.dumps(data),
        capture_output=True, text=True, timeout=60, env=_OFFLINE, cwd=venv, check=False,
    )  # fmt: skip


def test_the_wheel_holds_the_model_and_depends_on_the_runtime_alone(
    dist: Path, examples: Path
) -> None:
    with zipfile.ZipFile(dist / "iris_model-1.0.0-py3-none-any.whl") as wheel:
        names = set(wheel.namelist())
        meta = HeaderParser().parsestr(wheel.read("iris_model-1.0.0.dist-info/METADATA").decode())
        model = wheel.read("iris_model/models/iris/1/model.onnx")
    assert meta["Name"] == "iris-model"
    assert meta["Version"] == "1.0.0"
    assert sorted(meta.get_all("Requires-Dist")) == [
        "msgspec<1,>=0.19",
        "numpy<3,>=2.0",
        "onnxruntime<2,>=1.20",
    ]
    assert {
        "iris_model/__init__.py",
        "iris_model/__main__.py",
        "iris_model/models/iris/config.toml",
        "iris_model/models/iris/parity.json",
    } <= names
    assert model == (examples / "iris" / "1" / "model.onnx").read_bytes()


def test_runtime_requirements_are_ligeiros_pins() -> None:
    from ligeiro.package.wheel import RUNTIME_REQUIREMENTS

    pyproject = (ROOT / "pyproject.toml").read_text()
    for requirement in RUNTIME_REQUIREMENTS:
        assert f'"{requirement}",' in pyproject, requirement


def test_installed_wheel_predicts_as_the_server_and_upgrades(
    dist: Path, app: Path, examples: Path
) -> None:
    pip(app, "install", "--no-index", "--find-links", str(dist), "iris-model==1.0.0")
    assert "ModuleNotFoundError: No module named 'ligeiro'" in in_app(app, "import ligeiro").stderr
    assert re.search(r"^Version: 1\.0\.0$", pip(app, "show", "iris-model"), re.MULTILINE)

    rows = [dict(zip(FEATURES, map(float, row), strict=True)) for row in iris_test_split()]
    code = (
        "import json, sys, iris_model as m\n"
        "rows = json.load(sys.stdin)\n"
        "print(json.dumps([m.__version__, m.MODEL_VERSION, m.MODEL_SHA256,"
        " m.predict(rows).tolist(), m.metadata['labels']]))"
    )
    run = in_app(app, code, rows)
    assert run.returncode == 0, run.stderr
    version, model_version, sha256, labels, names = json.loads(run.stdout)
    assert (version, model_version) == ("1.0.0", "1")
    assert (
        sha256 == hashlib.sha256((examples / "iris" / "1" / "model.onnx").read_bytes()).hexdigest()
    )
    server = start_server(examples / "iris", "--model-name", "iris", "--no-grpc")
    try:
        answer = server.post("/v1/models/iris:predict", {"instances": rows})
    finally:
        server.stop()
    assert answer.status == 200
    assert labels == [p["label"] for p in answer.json()["predictions"]]
    assert len(set(labels)) == 3 == len(names)
    command = subprocess.run(
        [str(app / "bin" / "iris-model"), "predict", "--data", json.dumps(SETOSA)],
        capture_output=True, text=True, timeout=60, env=_OFFLINE, check=False,
    )  # fmt: skip
    assert json.loads(command.stdout)["label"] == "iris-setosa", command.stderr

    # A new model version is a new wheel: the application's pin picks it up.
    pip(app, "install", "-U", "--no-index", "--find-links", str(dist), "iris-model>=1,<2")
    assert re.search(r"^Version: 1\.1\.0$", pip(app, "show", "iris-model"), re.MULTILINE)
    run = in_app(app, "import iris_model; print(iris_model.__version__)")
    assert run.stdout.strip() == "1.1.0"


@pytest.fixture(scope="module")
def pyz(tmp_path_factory: pytest.TempPathFactory, examples: Path) -> Path:
    out = tmp_path_factory.mktemp("pyz")
    built = ligeiro("package", str(examples / "iris"), "--out", str(out), "--format", "pyz")
    assert "iris.pyz" in built.stdout
    return out / "iris.pyz"


def bare(pyz: Path, *args: str) -> list[str]:
    """``pyz ARGS`` with the system Python, isolated, in an empty environment."""
    shiv_root = pyz.parent / "shiv"
    return ["env", "-i", f"SHIV_ROOT={shiv_root}", "/usr/bin/python3", "-I", str(pyz), *args]


def test_the_pyz_predicts_with_a_bare_python(pyz: Path) -> None:
    run = subprocess.run(
        bare(pyz, "predict", "--data", json.dumps(SETOSA)),
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout)["label"] == "iris-setosa"
    csv = ",".join(FEATURES) + "\n5.1,3.5,1.4,0.2\n6.7,3.0,5.2,2.3\n"
    run = subprocess.run(
        bare(pyz, "predict"), input=csv, capture_output=True, text=True, timeout=60, check=False
    )
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert lines[0].startswith("label,probability_iris-setosa,")
    assert [line.split(",")[0] for line in lines[1:]] == ["iris-setosa", "iris-virginica"]
    run = subprocess.run(
        bare(pyz, "predict"), input=csv.replace("5.2", "big"),
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert run.returncode == 2
    assert run.stderr.strip() == (
        "error: CSV row 2 column 'petal_length': expected a number, got 'big'"
    )


@pytest.fixture
def pyz_server(pyz: Path) -> Iterator[Server]:
    command = bare(pyz, "serve", "--port", "0", "--no-grpc", "--workers", "1")
    process = subprocess.Popen(command, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL)
    assert process.stderr is not None
    log: list[bytes] = []
    ready = threading.Event()

    def pump() -> None:
        assert process.stderr is not None
        for line in process.stderr:
            log.append(line)
            if b"serving " in line:
                ready.set()
        ready.set()

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    ready.wait(60)
    found = re.search(rb"on http://127\.0\.0\.1:(\d+)", b"".join(log))
    if found is None:
        process.kill()
        process.wait()
        pytest.fail("the pyz did not serve:\n" + b"".join(log).decode(errors="replace"))
    server = Server(process, "127.0.0.1", int(found.group(1)), log, reader)
    yield server
    server.stop()


def test_the_pyz_serves_the_v2_api(pyz_server: Server) -> None:
    answer = pyz_server.post("/v1/models/iris:predict", SETOSA)
    assert answer.status == 200
    assert answer.json()["label"] == "iris-setosa"
    meta = pyz_server.get("/v2/models/iris")
    assert meta.status == 200
    assert meta.json()["inputs"][0]["name"] == "float_input"


def test_refusals(tmp_path: Path, examples: Path, dist: Path) -> None:
    run = ligeiro("package", str(tmp_path), "--out", str(tmp_path / "d"), check=False)
    assert run.returncode == 2
    assert f"error: {tmp_path}: not a model folder" in run.stderr
    broken = tmp_path / "broken" / "1"
    broken.mkdir(parents=True)
    (broken / "model.onnx").write_bytes(b"not onnx")
    run = ligeiro("package", str(broken.parent), "--out", str(tmp_path / "d"), check=False)
    assert run.returncode == 2
    assert "broken/1/model.onnx: not a loadable ONNX model" in run.stderr
    for other, platform, why in [
        ("text-tokenizer", "python", "a Python model's own dependencies are unknown to it"),
        ("sentiment", "pipeline", "a pipeline runs other models of its repository"),
    ]:
        run = ligeiro("package", str(examples / other), "--out", str(tmp_path / "d"), check=False)
        assert run.returncode == 2
        assert run.stderr.strip() == (
            f"error: {examples / other}: platform {platform!r}; "
            f"ligeiro package packages ONNX models ({why})"
        )
    assert not (tmp_path / "d").exists()
    for bad in ("-iris", "iris model", "iris/x"):
        run = ligeiro("package", str(examples / "iris"), "--name", bad, check=False)
        assert run.returncode == 2
        assert f"error: --name {bad!r}: not a valid distribution name" in run.stderr
    run = ligeiro("package", str(examples / "iris"), "--version", "one", check=False)
    assert run.returncode == 2
    assert "error: --version 'one': not a valid version (PEP 440" in run.stderr
    wheel = dist / "iris_model-1.0.0-py3-none-any.whl"
    before = wheel.stat().st_mtime_ns
    run = ligeiro(
        "package", str(examples / "iris"), "--out", str(dist), "--version", "1.0.0", check=False
    )
    assert run.returncode == 2
    assert run.stderr.strip() == f"error: {wheel}: already exists; pass --force to replace it"
    assert wheel.stat().st_mtime_ns == before
    run = ligeiro(
        "package", str(examples / "iris"), "--out", str(dist), "--version", "1.0.0", "--force"
    )
    assert wheel.stat().st_mtime_ns != before
    assert not list(ROOT.glob("dist/iris_model-*"))  # nothing written where it was not asked


def test_the_pyz_is_not_replaced_without_force(pyz: Path, examples: Path) -> None:
    before = pyz.stat().st_mtime_ns
    run = ligeiro(
        "package", str(examples / "iris"), "--out", str(pyz.parent), "--format", "pyz", check=False
    )
    assert run.returncode == 2
    assert run.stderr.strip() == f"error: {pyz}: already exists; pass --force to replace it"
    assert pyz.stat().st_mtime_ns == before


def test_a_flat_folder_packages(tmp_path: Path, examples: Path) -> None:
    flat = tmp_path / "flowers"
    flat.mkdir()
    for name in ("config.toml", "warmup.json", "parity.json", "1/model.onnx"):
        (flat / Path(name).name).write_bytes((examples / "iris" / name).read_bytes())
    run = ligeiro("package", str(flat), "--out", str(tmp_path / "dist"))
    assert (
        "flowers_model-1.0.0-py3-none-any.whl (flowers-model 1.0.0: import flowers_model)"
        in run.stdout
    )
    with zipfile.ZipFile(tmp_path / "dist" / "flowers_model-1.0.0-py3-none-any.whl") as wheel:
        assert "flowers_model/models/flowers/model.onnx" in wheel.namelist()
        wheel.extractall(tmp_path / "site")  # a pure wheel installs by unzipping
    code = f"import flowers_model as m; print(m.predict([{SETOSA!r}]).tolist(), m.MODEL_VERSION)"
    run = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False,
        env={**_OFFLINE, "PYTHONPATH": str(tmp_path / "site")},
    )  # fmt: skip
    assert run.stdout.strip() == "['iris-setosa'] 1", run.stderr
