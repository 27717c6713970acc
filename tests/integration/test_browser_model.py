"""iris's ``model.onnx`` in a browser page with onnxruntime-web, no server: the same labels.

examples/browser/build.py writes the page (onnxruntime-web from the npm registry, the
version package-lock.json pins); Debian's chromium-headless-shell (unpacked by
``make test``) runs it under Playwright, from a static file server on 127.0.0.1. Its
answers on the test split are compared with ``ligeiro serve``'s.
"""

from __future__ import annotations

import importlib.util
import os
import re
import threading
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from tests.conftest import ROOT, debian_tool, start_server
from tests.unit.test_load import FEATURES, SETOSA, iris_test_split

CHROMIUM = ROOT / ".venv" / "chromium"


def _build_module() -> Any:
    spec = importlib.util.spec_from_file_location(
        "browser_build", ROOT / "examples" / "browser" / "build.py"
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory, examples: Path) -> Iterator[str]:
    build = _build_module()
    folder = build.build(examples / "iris", tmp_path_factory.mktemp("site"))
    httpd = build.server(folder)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/"
    httpd.shutdown()
    httpd.server_close()
    thread.join(10)


@pytest.fixture(scope="module")
def browser(site: str) -> Iterator[SimpleNamespace]:
    """The page, loaded, with the console errors and the requests to other origins."""
    from playwright.sync_api import sync_playwright

    debian_tool(CHROMIUM / "headless-shell", "chromium-headless-shell")
    # The library path Debian's launcher sets, read from it (scripts/fetch_chromium.sh).
    launcher = (CHROMIUM / "headless-shell").read_text()
    found = re.search(r'LD_LIBRARY_PATH="(.*?)\$\{LD_LIBRARY_PATH', launcher)
    assert found, launcher
    libraries = found.group(1).replace("$here", str(CHROMIUM))
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM / "usr" / "lib" / "chromium" / "chromium-headless-shell"),
            args=["--no-sandbox", "--disable-gpu"],
            env={**os.environ, "LD_LIBRARY_PATH": libraries},
        )
        page = browser.new_page()
        errors: list[str] = []
        elsewhere: list[str] = []
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on("request", lambda r: None if r.url.startswith(site) else elsewhere.append(r.url))
        page.goto(site)
        page.wait_for_selector("body[data-ready=true]", timeout=30_000)
        yield SimpleNamespace(page=page, errors=errors, elsewhere=elsewhere)
        browser.close()


def test_the_page_gives_the_servers_labels_on_the_test_split(
    browser: SimpleNamespace, examples: Path
) -> None:
    rows = [dict(zip(FEATURES, map(float, row), strict=True)) for row in iris_test_split()]
    answers = browser.page.evaluate("rows => window.ligeiroModel.predict(rows)", rows)
    labels = browser.page.evaluate("window.ligeiroModel.meta.labels")
    server = start_server(examples / "iris", "--model-name", "iris", "--no-grpc")
    try:
        served = server.post("/v1/models/iris:predict", {"instances": rows})
    finally:
        server.stop()
    assert served.status == 200
    predictions = served.json()["predictions"]
    assert [a["label"] for a in answers] == [p["label"] for p in predictions]
    assert len(answers) == 30
    assert len({a["label"] for a in answers}) == 3
    in_page = np.array([a["probabilities"] for a in answers])
    expected = np.array([[p["probabilities"][n] for n in labels] for p in predictions])
    np.testing.assert_allclose(in_page, expected, atol=1e-6)
    assert browser.errors == []
    assert browser.elsewhere == []  # everything came from the page's own origin


def test_the_form(browser: SimpleNamespace) -> None:
    page = browser.page
    assert page.inner_text("#model") == "iris version 1"
    for name, value in SETOSA.items():
        page.fill(f"input[name={name}]", str(value))
    page.click("button[type=submit]")
    page.wait_for_function("document.querySelector('#answer').textContent !== ''")
    assert re.fullmatch(r"iris-setosa \(\d+\.\d%\)", page.inner_text("#answer"))
    assert browser.errors == []
