"""The demo page (GET /ui) in a real headless Chromium, against a real server.

Debian's `chromium` (installed by `make setup`), driven by Playwright for Python through
`executable_path`: Playwright's own browser download is not used. A missing chromium fails.

The server runs with an API key, so every test types it into the page. Smoke-trained models
cannot read digits, so `reader_home` is a store of its own: the smoke store's models, except
`cnn`, trained by the quick profile's recipe cut from 30 epochs to 5 (about 45 s on this
shared 2-core machine, held-out accuracy 0.978; stored only if it reaches 0.95). The digits drawn on
the canvas are judged by that cnn. The other answers shown (smoke models) are compared with
what the API answers for the same request.
"""

import fnmatch
import io
import os
import re
import shutil
import subprocess
import sys
import time

import pytest
import requests
import yaml
from PIL import Image
from playwright.sync_api import expect, sync_playwright

from load_tests.server import ROOT, running

KEY = "ui-test-key"
MAX_BODY = 2 * 2**20  # the server's body limit here: a smaller upload than the default's shows the 413
AUTH = {"Authorization": f"Bearer {KEY}"}
WAIT_MS = 30_000
SCREENSHOT = os.environ.get("UI_SCREENSHOT") or os.path.join(os.environ["REPORTS_DIR"], "ui.png")

TRAIN_READER = """
import dataclasses
import export.train_classifiers as recipe
from export import pipeline
from export.recipe import TrainOptions
from modelspec import SPECS, Floor
recipe.EPOCHS["quick"] = 5
spec = dataclasses.replace(SPECS["cnn"], floor=Floor("accuracy", minimum=0.95))
result = pipeline.run("cnn", TrainOptions(profile="quick", progress=False), spec_override=spec)
print("stored", result.tag, "accuracy", result.metrics["accuracy"])
"""


@pytest.fixture(scope="module")
def reader_home(smoke_store, tmp_path_factory):
    """A BENTOML_HOME with the smoke models and a cnn that reads digits."""
    home = tmp_path_factory.mktemp("ui-home")
    store = os.path.join(os.environ["BENTOML_HOME"], "models")
    (home / "models").mkdir()
    for name in os.listdir(store):
        if name != "cnn":
            os.symlink(os.path.join(store, name), home / "models" / name)
    # One torch thread: on a busy 2-core machine an epoch took 4 s with one, 12 s with two.
    env = {**os.environ, "BENTOML_HOME": str(home), "TRAIN_THREADS": "1"}
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", TRAIN_READER], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout + done.stderr
    print(f"\n{done.stdout.strip()} in {time.perf_counter() - started:.0f} s")
    return str(home)


@pytest.fixture(scope="module")
def ui_server(reader_home, tmp_path_factory):
    env = {"BENTOML_HOME": reader_home, "MODELSERVE_API_KEYS": KEY, "MODELSERVE_MAX_BODY_BYTES": str(MAX_BODY)}
    with running(env, log_dir=str(tmp_path_factory.mktemp("ui-logs"))) as url:
        yield url


@pytest.fixture(scope="module")
def browser():
    executable = shutil.which("chromium")
    assert executable, "chromium not found: `make setup` installs it (apt-get install -y chromium)"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable)
        yield browser
        browser.close()


class Visit:
    """One page in a fresh browser context, with every URL it requested and every script error."""

    def __init__(self, browser, url: str, has_touch: bool = False):
        self.url = url
        self.context = browser.new_context(viewport={"width": 1280, "height": 900}, has_touch=has_touch)
        self.page = self.context.new_page()
        self.requests: list = []
        self.errors: list[str] = []
        self.page.on("request", lambda request: self.requests.append(request))
        self.page.on("pageerror", lambda error: self.errors.append(str(error)))

    def outside(self) -> list[str]:
        """Requested URLs that are not this server's (object URLs the page made are its own)."""
        own = (self.url + "/", f"blob:{self.url}/", "data:")
        return [r.url for r in self.requests if not r.url.startswith(own)]

    def open(self, key: str | None = KEY) -> float:
        """Load /ui and type the key; the seconds from the navigation to the page's load event."""
        self.page.goto(f"{self.url}/ui")
        load = self.page.evaluate("performance.getEntriesByType('navigation')[0].loadEventEnd") / 1000
        if key is not None:
            self.page.fill("#api-key", key)
            self.page.press("#api-key", "Enter")
            expect(self.page.locator("body")).to_have_attribute("data-ready", "true", timeout=WAIT_MS)
        return load


@pytest.fixture
def visit(browser, ui_server):
    visit = Visit(browser, ui_server)
    yield visit
    visit.context.close()
    assert visit.outside() == [], f"the page requested URLs outside the server: {visit.outside()}"
    assert visit.errors == [], f"script errors: {visit.errors}"


def api(url: str, path: str, **kwargs) -> requests.Response:
    answer = requests.post(f"{url}{path}", headers=AUTH, timeout=30, **kwargs)
    answer.raise_for_status()
    return answer


def draw(page, strokes) -> None:
    """Mouse strokes on the canvas; points as fractions of its width and height."""
    box = page.locator("#pad").bounding_box()
    at = lambda x, y: (box["x"] + x * box["width"], box["y"] + y * box["height"])  # noqa: E731
    for stroke in strokes:
        page.mouse.move(*at(*stroke[0]))
        page.mouse.down()
        for point in stroke[1:]:
            page.mouse.move(*at(*point), steps=12)
        page.mouse.up()


def draw_by_touch(page, strokes) -> None:
    """The same strokes with a finger: touch events through the DevTools protocol."""
    box = page.locator("#pad").bounding_box()
    cdp = page.context.new_cdp_session(page)
    for stroke in strokes:
        points = [(box["x"] + x * box["width"], box["y"] + y * box["height"]) for x, y in stroke]
        cdp.send("Input.dispatchTouchEvent", {"type": "touchStart", "touchPoints": [{"x": points[0][0], "y": points[0][1]}]})
        for (x0, y0), (x1, y1) in zip(points, points[1:]):
            for step in range(1, 13):
                x, y = x0 + (x1 - x0) * step / 12, y0 + (y1 - y0) * step / 12
                cdp.send("Input.dispatchTouchEvent", {"type": "touchMove", "touchPoints": [{"x": x, "y": y}]})
        cdp.send("Input.dispatchTouchEvent", {"type": "touchEnd", "touchPoints": []})


def shown_label(page, model: str) -> str:
    expect(page.locator("#pad")).to_have_attribute("data-state", "classified", timeout=WAIT_MS)
    return page.locator(f'.classifier[data-model="{model}"] .label').inner_text()


DIGITS = {
    "1": [[(0.5, 0.15), (0.5, 0.85)]],
    "7": [[(0.25, 0.18), (0.75, 0.18), (0.42, 0.85)]],
    "0": [[(0.5, 0.15), (0.75, 0.3), (0.75, 0.7), (0.5, 0.85), (0.25, 0.7), (0.25, 0.3), (0.5, 0.15)]],
}


def test_drawn_digits_are_read_by_every_image_classifier(visit):
    visit.open()
    page = visit.page
    models = requests.get(f"{visit.url}/models", headers=AUTH, timeout=30).json()["models"]
    classifiers = {m["name"]: m for m in models if m["task"] == "image-classification"}
    assert "cnn" in classifiers and len(classifiers) >= 3
    expect(page.locator(".classifier")).to_have_count(len(classifiers))
    for digit, strokes in DIGITS.items():
        page.click("#clear")
        draw(page, strokes)
        assert shown_label(page, "cnn") == digit
        for name, model in classifiers.items():
            card = page.locator(f'.classifier[data-model="{name}"]')
            assert card.locator(".label").inner_text() in model["labels"]
            expect(card.locator(".bar")).to_have_count(min(3, len(model["labels"])))  # top 3, or every class
            assert card.locator(".served").inner_text().startswith(f"version {model['version']} · ")
            assert card.locator(".served").inner_text().endswith(" ms")


def test_a_digit_drawn_by_touch_is_read(browser, ui_server):
    visit = Visit(browser, ui_server, has_touch=True)
    try:
        visit.open()
        draw_by_touch(visit.page, DIGITS["1"])
        assert shown_label(visit.page, "cnn") == "1"
    finally:
        visit.context.close()
    assert visit.outside() == [] and visit.errors == []


def test_a_review_gets_the_sentiment_the_api_gives(visit, ui_server):
    visit.open()
    page = visit.page
    reviews = ["物流很快，包装完好，很满意", "质量太差，客服也不理人"]
    page.fill("#review-text", "\n".join(reviews))
    page.click("#review-go")
    expect(page.locator("#review-results li")).to_have_count(2)
    expect(page.locator("#review-results li").nth(0)).to_contain_text(reviews[0])
    expected = api(ui_server, "/sentiment", json={"texts": reviews}).json()
    for i, result in enumerate(expected["results"]):
        item = page.locator("#review-results li").nth(i)
        assert item.locator(".verdict").inner_text() == result["label"]
        assert f"{result['probability'] * 100:.1f}%" in item.inner_text()
    assert f"version {expected['version']}" in page.locator("#review-info").inner_text()


def natural_width(page, selector: str) -> int:
    page.wait_for_function(f"document.querySelector('{selector}').complete && document.querySelector('{selector}').naturalWidth > 0")
    return page.evaluate(f"document.querySelector('{selector}').naturalWidth")


def test_generated_grids_appear_as_the_api_draws_them(visit, ui_server):
    visit.open()
    page = visit.page
    page.fill("#seed", "7")
    page.fill("#count", "4")
    page.click("#generate")
    for model, path in (("gan", "/gan/generate"), ("vae", "/vae/sample")):
        expected = Image.open(io.BytesIO(api(ui_server, path, json={"n": 4, "seed": 7}).content))
        selector = f'#grids figure[data-model="{model}"] img'
        expect(page.locator(selector)).to_have_attribute("src", re.compile(r"^blob:"))
        page.wait_for_function(f"document.querySelector('{selector}').naturalWidth === {expected.width}")
        assert natural_width(page, selector) == expected.width
        expect(page.locator(f'#grids figure[data-model="{model}"] .served')).to_contain_text(" ms")
    page.fill("#steps", "5")
    page.click("#interpolate")
    strip = Image.open(io.BytesIO(api(ui_server, "/vae/interpolate", json={"seed_a": 1, "seed_b": 2, "steps": 5}).content))
    page.wait_for_function(f"document.querySelector('#strip').naturalWidth === {strip.width}")
    assert natural_width(page, "#strip") == strip.width > 0


def test_client_mistakes_show_the_servers_message(visit, ui_server):
    visit.open()
    page = visit.page
    page.fill("#count", "100")
    page.click("#generate")
    refused = requests.post(f"{ui_server}/gan/generate", headers=AUTH, json={"n": 100}, timeout=30)
    assert refused.status_code == 400
    message = page.locator('#grids figure[data-model="gan"] .error')
    expect(message).to_be_visible()
    expect(message).to_contain_text(f"400 {refused.json()['error']}: {refused.json()['detail']}")

    page.set_input_files("#upload", files=[{"name": "digit.png", "mimeType": "image/png", "buffer": b"not an image"}])
    card_error = page.locator('.classifier[data-model="cnn"] .error')
    expect(card_error).to_be_visible()
    expect(card_error).to_contain_text("400 not_an_image")

    too_big = b"\x89PNG" + bytes(MAX_BODY)
    page.set_input_files("#upload", files=[{"name": "big.png", "mimeType": "image/png", "buffer": too_big}])
    expect(card_error).to_contain_text(f"413 body_too_large: body: more than the limit of {MAX_BODY} bytes")


def test_the_api_key_field(visit, ui_server):
    count = len(requests.get(f"{ui_server}/models", headers=AUTH, timeout=30).json()["models"])
    visit.open(key=None)
    page = visit.page
    status = page.locator("#status")
    expect(status).to_contain_text("401 unauthorized")
    expect(status).to_contain_text("Type a valid API key")
    expect(page.locator("#models-error")).to_be_visible()
    expect(page.locator("#models-table tbody tr")).to_have_count(0)

    page.fill("#api-key", "a-wrong-key")
    page.press("#api-key", "Enter")
    expect(page.locator("body")).to_have_attribute("data-ready", "true")
    expect(status).to_contain_text("401 unauthorized")

    page.fill("#api-key", KEY)
    page.press("#api-key", "Enter")
    expect(page.locator("body")).to_have_attribute("data-ready", "true")
    expect(status).to_have_text(f"{count} models loaded")
    expect(page.locator("#models-error")).to_be_hidden()
    calls = [r for r in visit.requests if r.url == f"{visit.url}/models"]
    assert [r.headers.get("authorization") for r in calls] == [None, "Bearer a-wrong-key", f"Bearer {KEY}"]


def test_the_whole_page_stays_on_the_server_and_loads_fast(visit, ui_server, record_property):
    load = visit.open()
    page = visit.page
    record_property("ui_load_seconds", load)
    print(f"\n/ui loaded (navigation to load event) in {load * 1000:.0f} ms")
    assert load < 1.0
    models = requests.get(f"{ui_server}/models", headers=AUTH, timeout=30).json()["models"]
    rows = page.locator("#models-table tbody tr")
    expect(rows).to_have_count(len(models))
    for model in models:
        expect(page.locator(f'#models-table tr[data-model="{model["name"]}"]')).to_contain_text(model["version"])
    draw(page, DIGITS["7"])
    assert shown_label(page, "cnn") == "7"
    natural_width(page, '#grids figure[data-model="gan"] img')
    natural_width(page, "#strip")
    page.screenshot(path=SCREENSHOT, full_page=True)
    requested = {r.url for r in visit.requests}
    assert {f"{ui_server}/ui", f"{ui_server}/ui/app.js", f"{ui_server}/ui/style.css", f"{ui_server}/models"} <= requested
    assert f"{ui_server}/classify/image" in requested
    assert visit.outside() == []


def test_the_page_is_open_and_the_bento_ships_it(ui_server):
    for path in ("/ui", "/ui/app.js", "/ui/style.css"):
        answer = requests.get(f"{ui_server}{path}", timeout=30)  # no key: the page holds no secret
        assert answer.status_code == 200, path
    assert requests.get(f"{ui_server}/ui/nothing.js", timeout=30).status_code == 404
    assert requests.get(f"{ui_server}/models", timeout=30).status_code == 401
    docs = requests.get(f"{ui_server}/docs.json", timeout=30).json()
    assert "[Demo page](ui)" in docs["info"]["description"]
    with open(os.path.join(ROOT, "bentofile.yaml")) as f:
        include = yaml.safe_load(f)["include"]
    for name in os.listdir(os.path.join(ROOT, "service", "ui")):
        assert any(fnmatch.fnmatch(f"service/ui/{name}", pattern) for pattern in include), name


def coming_listing(url: str) -> dict:
    """The server's real /models in the registry's coming shape: `versions` a list of the
    loaded versions (this server lists package versions there), package versions in `software`."""
    listing = requests.get(f"{url}/models", headers=AUTH, timeout=30).json()
    for entry in listing["models"]:
        if not isinstance(entry["versions"], list):
            entry["software"] = entry["versions"]
            entry["versions"] = [{"version": entry["version"], "role": "default", "traffic_share": 1.0, "metrics": entry["metrics"]}]
    return listing


def test_a_version_can_be_pinned_where_several_are_loaded(visit, ui_server):
    """This server loads one version per model. The page is given its /models with cnn's real
    version as the default and a second one as a canary: pinning the real one sends it in
    X-Model-Version, for cnn only."""
    listing = coming_listing(ui_server)
    cnn = next(entry for entry in listing["models"] if entry["name"] == "cnn")
    cnn["versions"][0]["traffic_share"] = 0.9
    cnn["versions"].append({"version": "a-canary", "role": "canary", "traffic_share": 0.1, "metrics": {"accuracy": 0.5}})
    visit.page.route(f"{ui_server}/models", lambda route: route.fulfill(json=listing))
    visit.open()
    page = visit.page
    row = page.locator('#models-table tr[data-model="cnn"]')
    expect(row).to_contain_text(f"{cnn['version']} (default, 90%)")
    expect(row).to_contain_text("a-canary (canary, 10%)")
    expect(row.locator("select option")).to_have_count(3)
    expect(page.locator('#models-table tr[data-model="resnet"] select')).to_have_count(0)

    draw(page, DIGITS["1"])
    assert shown_label(page, "cnn") == "1"
    row.locator("select").select_option(cnn["version"])
    page.click("#clear")
    sent_before = len(visit.requests)
    draw(page, DIGITS["1"])
    assert shown_label(page, "cnn") == "1"
    for request in visit.requests[:sent_before]:
        assert "x-model-version" not in request.headers, request.url
    classify = [r for r in visit.requests[sent_before:] if r.url == f"{ui_server}/classify/image"]
    assert classify
    for request in classify:
        for_cnn = b'name="model"\r\n\r\ncnn\r\n' in request.post_data_buffer
        assert request.headers.get("x-model-version") == (cnn["version"] if for_cnn else None)
    expect(page.locator('.classifier[data-model="cnn"] .served')).to_contain_text(f"version {cnn['version']} · ")


def test_a_digit_is_asked_of_a_generator_that_takes_one(visit, ui_server):
    """No generator here takes a class. The page is given /models with a `class_index` input
    added to the gan's graph: the digit choice appears, the gan's request (only the gan's)
    carries the chosen digit as `label`, and the page shows what the server makes of it (a
    server without conditional generators ignores the field, or refuses it with a 400)."""
    listing = coming_listing(ui_server)
    gan = next(entry for entry in listing["models"] if entry["task"] == "image-generation")
    gan["graphs"][0]["inputs"].append({"name": "label", "dtype": "int64", "shape": [-1], "kind": "class_index"})
    visit.page.route(f"{ui_server}/models", lambda route: route.fulfill(json=listing))
    visit.open()
    page = visit.page
    expect(page.locator("#digit-choice")).to_be_visible()
    page.select_option("#digit", "3")
    figure = page.locator(f'#grids figure[data-model="{gan["name"]}"]')
    first = figure.locator("img").get_attribute("src")
    with page.expect_request(f"{ui_server}/gan/generate") as to_gan, page.expect_request(f"{ui_server}/vae/sample") as to_vae:
        page.click("#generate")
    assert to_gan.value.post_data_json["label"] == 3
    assert "label" not in to_vae.value.post_data_json
    answer = requests.post(f"{ui_server}/gan/generate", headers=AUTH, json=to_gan.value.post_data_json, timeout=30)
    if answer.ok:
        expect(figure.locator("img")).not_to_have_attribute("src", first)
        expect(figure.locator(".error")).to_be_hidden()
    else:
        expect(figure.locator(".error")).to_contain_text(f"{answer.status_code} {answer.json()['error']}: {answer.json()['detail']}")
