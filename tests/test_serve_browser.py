"""The page in a real browser: Debian's Chromium driven by Playwright against the app served by uvicorn
on a free loopback port. Screenshots go to $DINOV3KIT_SCREENSHOTS (default: a temporary folder)."""

from __future__ import annotations

import os
import shutil
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="the web extra is not installed")
playwright = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (the test extra)")
import uvicorn
from playwright.sync_api import expect

from dinov3kit.serve import cli as serve_cli
from dinov3kit.serve.app import create_app
from dinov3kit.serve.guards import LOOPBACK_NAMES
from dinov3kit.tools.dedup import find_duplicates
from dinov3kit.tools.store import read_index
from test_serve import Collection, shared_collection

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
START_TIMEOUT = 60


@pytest.fixture(scope="module")
def collection(tmp_path_factory) -> Collection:
    return shared_collection(tmp_path_factory)


@pytest.fixture(scope="module")
def server(collection, tmp_path_factory):
    """The app on uvicorn on a free loopback port, as `dinov3kit serve` runs it (in a thread here, so that
    the test session's model is reused); yields the page's URL."""
    app = create_app(collection.index, collection.embedder, thumbnail_dir=tmp_path_factory.mktemp("thumbs"),
                     allowed_hosts=LOOPBACK_NAMES)
    sock = serve_cli.listen("127.0.0.1", 0)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + START_TIMEOUT
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.05)
    yield serve_cli.page_url(sock)
    server.should_exit = True
    thread.join(timeout=30)
    sock.close()


@pytest.fixture(scope="module")
def browser():
    if not os.path.exists(CHROMIUM):
        message = f"no Chromium at {CHROMIUM}: `make install` installs Debian's chromium (apt-get install chromium)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    with playwright.sync_playwright() as driver:
        chromium = driver.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def shots(tmp_path_factory) -> Path:
    folder = Path(os.environ.get("DINOV3KIT_SCREENSHOTS") or tmp_path_factory.mktemp("screenshots"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture
def page(browser, server):
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    page = context.new_page()
    problems: list[str] = []
    page.on("pageerror", lambda error: problems.append(f"page error: {error}"))
    page.on("console", lambda message: problems.append(message.text) if message.type == "error" else None)
    page.goto(server)
    expect(page.locator("body")).to_have_attribute("data-ready", "1")
    yield page
    context.close()
    unexpected = [p for p in problems if "status of 4" not in p]  # 4xx answers the test asked for
    assert not unexpected, unexpected


def search_result(page) -> list[dict]:
    return page.locator("#hits .card").evaluate_all(
        "cards => cards.map(c => ({row: +c.dataset.row, text: c.querySelector('.meta').textContent}))"
    )


def test_upload_a_query_see_the_hits_and_search_by_a_clicked_hit(page, collection, shots):
    page.set_input_files("#search-file", str(collection.folder / "coffee.jpg"))
    expect(page.locator("#search-status")).to_contain_text("results")
    hits = search_result(page)
    assert len(hits) == len(read_index(collection.index).paths)
    assert "#1  1.0000" in hits[0]["text"] and "coffee.jpg" in hits[0]["text"]
    expect(page.locator("#query-text")).to_have_text("uploaded: coffee.jpg")
    assert page.locator("#hits .card img").first.evaluate("img => img.decode().then(() => img.naturalWidth)") > 0
    page.screenshot(path=str(shots / "search_upload.png"))

    second = hits[1]["row"]
    page.locator("#hits .card img").nth(1).click()
    expect(page.locator("#query-text")).to_contain_text(f"row {second}:")
    expect(page.locator("#hits .card").first).to_have_attribute("data-row", str(second))
    assert "#1  1.0000" in search_result(page)[0]["text"]
    page.screenshot(path=str(shots / "search_by_click.png"))


def test_drop_a_query_image_and_see_errors_of_bad_uploads(page, collection):
    page.evaluate(
        """async () => {
            const bytes = await (await fetch('/api/thumbnails/0?size=256')).blob();
            const data = new DataTransfer();
            data.items.add(new File([bytes], 'dropped.jpg', {type: 'image/jpeg'}));
            document.getElementById('search-drop').dispatchEvent(new DragEvent('drop', {dataTransfer: data, bubbles: true, cancelable: true}));
        }"""
    )
    expect(page.locator("#query-text")).to_have_text("uploaded: dropped.jpg")
    expect(page.locator("#hits .card").first).to_have_attribute("data-row", "0")
    page.set_input_files("#search-file", files=[{"name": "notes.txt", "mimeType": "text/plain", "buffer": b"not an image"}])
    expect(page.locator("#error")).to_be_visible()
    expect(page.locator("#error-text")).to_contain_text("not a usable image")
    page.fill("#search-k", "3")
    page.set_input_files("#search-file", str(collection.folder / "cat.jpg"))  # the server went on
    expect(page.locator("#search-status")).to_contain_text("3 results")
    expect(page.locator("#error")).to_be_hidden()


def test_duplicates_slider_regroups(page, collection, shots):
    index = read_index(collection.index)
    page.click("#tabs button[data-tab=duplicates]")
    strict = len(find_duplicates(index, 0.95))
    expect(page.locator("#dup-summary")).to_contain_text(f"{strict} groups")
    loose = find_duplicates(index, 0.8)
    assert len(loose) != strict or sum(map(len, (g.members for g in loose))) != sum(
        map(len, (g.members for g in find_duplicates(index, 0.95)))
    ), "the fixture should group differently at 0.8 and 0.95"
    page.locator("#dup-threshold").fill("0.8")
    expect(page.locator("#dup-value")).to_have_text("0.800")
    duplicates = sum(len(g.members) - 1 for g in loose)
    expect(page.locator("#dup-summary")).to_contain_text(f"{len(loose)} groups, {duplicates} images duplicating another at similarity ≥ 0.8")
    expect(page.locator("#groups .group")).to_have_count(len(loose))
    expect(page.locator("#groups .group h3").first).to_have_text(f"{max(len(g.members) for g in loose)} images")
    page.screenshot(path=str(shots / "duplicates.png"))


def test_dense_view_click_a_patch_and_the_heat_maps_change(page, collection, shots):
    page.set_input_files("#search-file", str(collection.folder / "cat.jpg"))
    expect(page.locator("#search-status")).to_contain_text("results")
    page.locator("#hits .card").first.get_by_role("button", name="dense").click()
    expect(page.locator("#dense-caption")).to_contain_text("patches")
    page.set_input_files("#ref-file", str(collection.folder / "coffee.jpg"))
    expect(page.locator("#ref-caption")).to_have_text("reference: coffee.jpg")
    page.locator("#dense-opacity").fill("0.5")
    assert page.locator("#dense-pca").evaluate("img => getComputedStyle(img).opacity") == "0.5"

    def click(x: float, y: float) -> tuple[str, list[float]]:
        with page.expect_response(lambda r: "similarity.png" in r.url and "target=" not in r.url) as same, \
                page.expect_response(lambda r: "similarity.png" in r.url and "target=" in r.url) as other:
            box = page.locator("#dense-stack").bounding_box()
            page.mouse.click(box["x"] + x * box["width"], box["y"] + y * box["height"])
        assert same.value.status == other.value.status == 200
        expect(page.locator("#heat-caption")).to_contain_text("similarity of patch")
        expect(page.locator("#dense-status")).to_contain_text("Click another patch")
        return same.value.headers["x-patch"], [pixel_digest(page, "#dense-heat"), pixel_digest(page, "#dense-ref")]

    first_patch, first_pixels = click(0.3, 0.4)
    page.screenshot(path=str(shots / "dense.png"), full_page=True)
    second_patch, second_pixels = click(0.8, 0.85)
    assert first_patch != second_patch
    assert first_pixels[0] != second_pixels[0] and first_pixels[1] != second_pixels[1], "both heat maps should change"


def pixel_digest(page, selector: str) -> float:
    """A checksum of the pixels an <img> shows (0 when it shows nothing)."""
    return page.locator(selector).evaluate(
        """async img => {
            await img.decode();
            const canvas = document.createElement('canvas');
            canvas.width = img.naturalWidth; canvas.height = img.naturalHeight;
            const context = canvas.getContext('2d');
            context.drawImage(img, 0, 0);
            const data = context.getImageData(0, 0, canvas.width, canvas.height).data;
            let sum = 0;
            for (let i = 0; i < data.length; i += 4) sum += (data[i] * 3 + data[i + 1] * 5 + data[i + 2] * 7) * ((i >> 2) % 977 + 1);
            return sum;
        }"""
    )


def test_map_shows_every_image_hover_shows_a_thumbnail_and_click_opens_it(page, collection, shots):
    page.click("#tabs button[data-tab=map]")
    rows = len(read_index(collection.index).paths)
    expect(page.locator("#map-status")).to_contain_text(f"{rows} images")
    drawn = page.evaluate(
        """() => {
            const canvas = document.getElementById('map'), box = canvas.getBoundingClientRect();
            const points = [];
            for (let i = 0; i < MapView.points.n; i++) {
                const [sx, sy] = MapView.toScreen(MapView.points.x[i], MapView.points.y[i]);
                const pixel = canvas.getContext('2d').getImageData(Math.round(sx), Math.round(sy), 1, 1).data;
                points.push({x: box.left + sx * box.width / canvas.width, y: box.top + sy * box.height / canvas.height,
                             lit: pixel[0] + pixel[1] + pixel[2] > 200});
            }
            return points;
        }"""
    )
    assert len(drawn) == rows and all(point["lit"] for point in drawn)
    target = drawn[-1]
    page.mouse.move(target["x"], target["y"])
    expect(page.locator("#map-tip")).to_be_visible()
    expect(page.locator("#map-tip-text")).to_contain_text("row")
    page.screenshot(path=str(shots / "map.png"))
    page.mouse.click(target["x"], target["y"])
    expect(page.locator("#modal")).to_be_visible()
    expect(page.locator("#modal-path")).to_contain_text(str(collection.folder))
    page.click("#modal-search")
    expect(page.locator("#tab-search")).to_be_visible()
    expect(page.locator("#query-text")).to_contain_text("row")
