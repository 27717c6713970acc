"""The dashboard and Swagger UI in a real browser: Playwright driving Debian's
chromium-headless-shell (unpacked by `make test`, scripts/fetch_chromium.sh; the browser
Playwright downloads is not reachable) on a live server.

Every page must load with no console error, no uncaught exception and no request to
another origin. Screenshots land in the test's tmp folder (the test artefacts).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from typing import TYPE_CHECKING, Any

import pytest

from tests.conftest import EXAMPLES, ROOT, debian_tool, start_server

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from tests.conftest import Server

CHROMIUM = ROOT / ".venv" / "chromium"
LAUNCHER = CHROMIUM / "headless-shell"
EXECUTABLE = CHROMIUM / "usr" / "lib" / "chromium" / "chromium-headless-shell"
TIMEOUT_MS = 30_000
# Served beside the examples; it cannot load (the reason must show on the dashboard).
BROKEN = "broken"


def library_path() -> str:
    """The LD_LIBRARY_PATH the launcher script sets, with ``$here`` made absolute."""
    match = re.search(r'LD_LIBRARY_PATH="(.*?)\$\{LD_LIBRARY_PATH', LAUNCHER.read_text())
    if match is None:
        pytest.fail(f"{LAUNCHER} sets no LD_LIBRARY_PATH: rerun scripts/fetch_chromium.sh")
    return match.group(1).replace("$here", str(CHROMIUM))


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    debian_tool(LAUNCHER, "chromium-headless-shell")
    from playwright.sync_api import sync_playwright

    env = dict(os.environ)
    env["LD_LIBRARY_PATH"] = ":".join(p for p in (library_path(), env.get("LD_LIBRARY_PATH")) if p)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(EXECUTABLE), args=["--no-sandbox", "--disable-gpu"], env=env,
            timeout=TIMEOUT_MS,
        )  # fmt: skip
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def site_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A repository of iris, sentiment and minilm (and their steps) and one broken model."""
    root = tmp_path_factory.mktemp("site") / "models"
    root.mkdir()
    for name in ("sentiment", "minilm", "text-tokenizer", "minilm-encoder", "sentiment-head"):
        (root / name).symlink_to(EXAMPLES / name)
    if (EXAMPLES / "iris" / "warmup.json").is_file():
        (root / "iris").symlink_to(EXAMPLES / "iris")
    else:  # built before examples/build_iris.py wrote the warm-up file: build it again
        script = ROOT / "examples" / "build_iris.py"
        subprocess.run([sys.executable, str(script), "--out", str(root)], check=True)
    (root / BROKEN / "1").mkdir(parents=True)
    (root / BROKEN / "1" / "model.onnx").write_bytes(b"this is not an ONNX model")
    return root


@pytest.fixture(scope="module")
def site(site_root: Path) -> Iterator[Server]:
    server = start_server(site_root, "--threads", "1")
    yield server
    server.stop()


class Watch:
    """What a page did wrong: console errors, uncaught exceptions, requests elsewhere."""

    def __init__(self, page: Any, origin: str) -> None:
        self.problems: list[str] = []
        page.on("console", self._console)
        page.on("pageerror", lambda error: self.problems.append(f"page error: {error}"))
        page.on("request", lambda request: self._request(request, origin))
        page.on("requestfailed", lambda r: self.problems.append(f"request failed: {r.url}"))

    def _console(self, message: Any) -> None:
        if message.type in ("error", "warning"):
            self.problems.append(f"console {message.type}: {message.text}")

    def _request(self, request: Any, origin: str) -> None:
        url = request.url
        if not (url.startswith((origin + "/", "data:", "blob:")) or url == origin):
            self.problems.append(f"request to another origin: {url}")


@pytest.fixture
def page(browser: Any, site: Server, tmp_path: Path) -> Iterator[tuple[Any, Watch, str]]:
    origin = f"http://{site.host}:{site.port}"
    context = browser.new_context(viewport={"width": 1280, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    watch = Watch(page, origin)
    try:
        yield page, watch, origin
    finally:
        page.screenshot(path=str(tmp_path / "page.png"), full_page=True)
        context.close()


def test_dashboard_shows_models_and_failures_and_tries_iris_and_sentiment(
    page: tuple[Any, Watch, str], site_root: Path
) -> None:
    page_, watch, origin = page
    page_.goto(origin + "/")
    page_.wait_for_selector('#models tr[data-model="iris"] .state-ready')
    failed = page_.locator(f'#models tr[data-model="{BROKEN}"]')
    failed.locator(".state-failed").wait_for()
    reason = failed.locator(".reason").inner_text()
    assert reason.startswith(f"{BROKEN}/1/model.onnx: not a loadable ONNX model"), reason
    assert str(site_root) not in reason  # no server paths on a page

    iris = page_.locator('details[data-model="iris"]')
    iris.locator("summary").click()
    form = page_.locator("form#try-iris")
    placeholders = [form.locator(f'input[name="{n}"]').get_attribute("placeholder")
                    for n in ("sepal_length", "sepal_width", "petal_length", "petal_width")]
    # The data set's ranges, from iris' warm-up file (examples/build_iris.py).
    assert placeholders == ["4.3 – 7.9", "2 – 4.4", "1 – 6.9", "0.1 – 2.5"], placeholders
    assert "warm-up file" in form.locator(".note").inner_text()
    for name, value in zip(("sepal_length", "sepal_width", "petal_length", "petal_width"),
                           ("5.1", "3.5", "1.4", "0.2"), strict=True):  # fmt: skip
        form.locator(f'input[name="{name}"]').fill(value)
    curl = form.locator(".curl").inner_text()
    assert "/v1/models/iris:predict" in curl and '"sepal_length":5.1' in curl, curl
    form.locator('button[type="submit"]').click()
    label = page_.locator("#try-iris-answer p.label")
    label.wait_for()
    assert label.inner_text() == "iris-setosa"
    assert page_.locator("#try-iris-answer meter").count() == 3

    page_.locator('details[data-model="sentiment"] summary').click()
    sentiment = page_.locator("form#try-sentiment")
    sentiment.locator("textarea").fill("What a wonderful, delightful film.")
    sentiment.locator('button[type="submit"]').click()
    page_.locator("#try-sentiment-answer p.label").wait_for()
    assert page_.locator("#try-sentiment-answer p.label").inner_text() in ("negative", "positive")

    page_.locator('details[data-model="minilm"] summary').click()
    minilm = page_.locator("form#try-minilm")
    minilm.locator('button[type="submit"]').click()
    embedding = page_.locator("#try-minilm-answer p.embedding")
    embedding.wait_for()
    assert "384 dimensions" in embedding.inner_text()

    # A model of several tensor inputs gets a JSON box holding a V2 request.
    page_.locator('details[data-model="minilm-encoder"] summary').click()
    encoder = page_.locator("form#try-minilm-encoder")
    request = json.loads(encoder.locator("textarea").input_value())
    assert [i["name"] for i in request["inputs"]] == ["input_ids", "attention_mask", "token_type_ids"]
    encoder.locator('button[type="submit"]').click()
    answer = page_.locator("#try-minilm-encoder-answer pre")
    answer.wait_for()
    assert json.loads(answer.inner_text())["outputs"][0]["shape"] == [1, 384]
    page_.wait_for_timeout(3500)  # one more poll of /ui/status: still no error
    assert watch.problems == []


def test_swagger_ui_try_it_out_on_iris_predict_answers_200(page: tuple[Any, Watch, str]) -> None:
    page_, watch, origin = page
    page_.goto(origin + "/docs")
    operation = page_.locator("#operations-iris-predict_iris")
    operation.wait_for()
    operation.locator(".opblock-summary").first.click()
    operation.get_by_role("button", name="Try it out").click()
    operation.get_by_role("button", name="Execute").click()
    status = operation.locator(".live-responses-table .response .response-col_status").first
    status.wait_for()
    assert status.inner_text().strip() == "200"
    body = operation.locator(".live-responses-table .response-col_description pre").first
    assert '"label": "iris-setosa"' in body.inner_text()  # the example: the seed's first row
    assert page_.locator(".auth-wrapper .authorize").is_visible()  # the bearer schemes
    assert watch.problems == []


def test_the_token_box_sends_a_bearer_token_with_every_fetch(
    page: tuple[Any, Watch, str],
) -> None:
    page_, watch, origin = page
    page_.goto(origin + "/")
    page_.wait_for_selector('#models tr[data-model="iris"] .state-ready')
    page_.locator("#token").fill("s3cret-inference")
    with page_.expect_request(lambda r: r.url.endswith("/ui/status")) as polled:
        page_.locator("#token-form button").click()
    assert polled.value.headers.get("authorization") == "Bearer s3cret-inference"
    page_.locator('details[data-model="iris"] summary').click()
    form = page_.locator("form#try-iris")
    form.locator('input[name="petal_length"]').fill("5.5")
    with page_.expect_request(lambda r: r.url.endswith("/v1/models/iris:predict")) as sent:
        form.locator('button[type="submit"]').click()
    assert sent.value.headers.get("authorization") == "Bearer s3cret-inference"
    page_.locator("#try-iris-answer p.label").wait_for()
    curl = form.locator(".curl").inner_text()
    assert 'authorization: Bearer $TOKEN' in curl and "s3cret" not in curl
    # /docs reads the same token (this tab) for the document and Try it out.
    with page_.expect_request(lambda r: r.url.endswith("/openapi.json")) as document:
        page_.goto(origin + "/docs")
    assert document.value.headers.get("authorization") == "Bearer s3cret-inference"
    assert watch.problems == []


def test_the_iris_form_works_from_the_keyboard_alone(page: tuple[Any, Watch, str]) -> None:
    page_, watch, origin = page
    page_.goto(origin + "/")
    summary = page_.locator('details[data-model="iris"] summary')
    summary.wait_for()
    summary.focus()
    page_.keyboard.press("Enter")  # opens the form
    form = page_.locator("form#try-iris")
    form.get_by_label("sepal_length").focus()  # every field has its label
    for value in ("6.7", "3.0", "5.2", "2.3"):
        page_.keyboard.type(value)
        page_.keyboard.press("Tab")
    assert form.get_by_label("petal_width").input_value() == "2.3"
    form.get_by_label("petal_width").press("Enter")  # submits
    label = page_.locator("#try-iris-answer p.label")
    label.wait_for()
    assert label.inner_text() == "iris-virginica"
    assert page_.get_by_label("probability of iris-virginica").count() == 1
    assert watch.problems == []
