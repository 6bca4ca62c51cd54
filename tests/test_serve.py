"""`dinov3kit serve` through its API (FastAPI's TestClient): answers equal the tools' results on a tiny
random-weight model, every bad request is a 4xx JSON error, and the server goes on after each."""

from __future__ import annotations

import io
import shutil
import struct
import sys
import threading
import types
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("fastapi", reason="the web extra is not installed")
from fastapi.testclient import TestClient

from dinov3kit import cli
from dinov3kit.serve import cli as serve_cli
from dinov3kit.serve.app import create_app
from dinov3kit.serve.explorer import Explorer
from dinov3kit.serve.guards import LOOPBACK_NAMES, host_name
from dinov3kit.serve.thumbnails import ThumbnailCache
from dinov3kit.tools.dedup import find_duplicates
from dinov3kit.tools.embed import embed_images
from dinov3kit.tools.pca import pca_images, principal_axes
from dinov3kit.tools.runtime import Embedder
from dinov3kit.tools.search import search_index
from dinov3kit.tools.similarity import similarity_image
from dinov3kit.tools.store import read_index
from oracles.hf_twin import save_hf_vit

PHOTOS = Path(__file__).resolve().parents[1] / "examples" / "photos"


@dataclass
class Collection:
    """Photos (one of them twice, one slightly changed), their index and the model that made it."""

    folder: Path
    index: Path
    embedder: Embedder
    model: Path


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def png_header(width: int, height: int) -> bytes:
    """A PNG announcing width x height 1-bit pixels (the pixel data is never reached when refused)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def build_collection(root: Path) -> Collection:
    _, model = save_hf_vit(root / "model", seed=11, num_register_tokens=2)
    folder = root / "photos"
    folder.mkdir()
    for photo in sorted(PHOTOS.glob("*.jpg")):
        shutil.copy(photo, folder / photo.name)
    shutil.copy(PHOTOS / "cat.jpg", folder / "cat_copy.jpg")
    cat = np.asarray(Image.open(PHOTOS / "cat.jpg"), dtype=np.int16)
    noisy = np.clip(cat + np.random.default_rng(0).integers(-12, 13, cat.shape), 0, 255).astype(np.uint8)
    Image.fromarray(noisy).save(folder / "cat_noisy.png")
    embedder = Embedder.load(model, device="cpu", resolution=112)
    embed_images([folder], root / "index.parquet", embedder=embedder, workers=0, progress=False)
    return Collection(folder, root / "index.parquet", embedder, model)


def shared_collection(tmp_path_factory) -> Collection:
    """The collection of this test session: built by the first module that asks (here or the browser tests)."""
    root = tmp_path_factory.getbasetemp() / "serve_collection"
    if (root / "index.parquet").exists():
        return Collection(root / "photos", root / "index.parquet", Embedder.load(root / "model", device="cpu", resolution=112), root / "model")
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir()
    return build_collection(root)


@pytest.fixture(scope="module")
def collection(tmp_path_factory) -> Collection:
    return shared_collection(tmp_path_factory)


@pytest.fixture(scope="module")
def app(collection, tmp_path_factory):
    return create_app(collection.index, collection.embedder, thumbnail_dir=tmp_path_factory.mktemp("thumbs"))


@pytest.fixture(scope="module")
def client(app) -> TestClient:
    return TestClient(app, raise_server_exceptions=False)


def row_of(collection: Collection, name: str) -> int:
    return read_index(collection.index).paths.index(str(collection.folder / name))


def assert_error(response, status: int, *words: str) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert body["status"] == status and isinstance(body["error"], str)
    for word in words:
        assert word in body["error"], body["error"]
    return body


# --- search ----------------------------------------------------------------------------------
def test_search_by_row_and_by_upload_equal_the_search_tool(client, collection):
    index = read_index(collection.index)
    cat = row_of(collection, "cat.jpg")
    answer = client.get(f"/api/search?row={cat}&k=5")
    assert answer.status_code == 200 and answer.headers["server-timing"].startswith("app;dur=")
    (expected,) = search_index(index, [str(cat)], k=5)
    got = answer.json()
    assert got["query"]["row"] == cat and got["k"] == 5
    assert [(h["row"], h["path"], h["rank"]) for h in got["hits"]] == [(h.row, h.path, h.rank) for h in expected.hits]
    np.testing.assert_allclose([h["score"] for h in got["hits"]], [h.score for h in expected.hits], rtol=1e-6)
    without = client.get(f"/api/search?row={cat}&k=5&exclude_self=true").json()
    assert cat not in [h["row"] for h in without["hits"]] and len(without["hits"]) == 5

    coffee = collection.folder / "coffee.jpg"
    uploaded = client.post("/api/search", files={"file": ("q.jpg", coffee.read_bytes(), "image/jpeg")}, data={"k": "4"})
    assert uploaded.status_code == 200, uploaded.text
    (expected,) = search_index(index, [str(coffee)], k=4, embedder=collection.embedder)
    hits = uploaded.json()["hits"]
    assert [h["row"] for h in hits] == [h.row for h in expected.hits]
    np.testing.assert_allclose([h["score"] for h in hits], [h.score for h in expected.hits], rtol=1e-5, atol=1e-6)
    assert hits[0]["path"] == str(coffee) and hits[0]["score"] == pytest.approx(1.0, abs=1e-5)
    assert uploaded.json()["query"]["upload"] == "q.jpg"


def test_k_up_to_1000_and_bad_search_requests_are_4xx_json(client, collection):
    rows = len(read_index(collection.index).paths)
    assert len(client.get("/api/search?row=0&k=1000").json()["hits"]) == rows
    assert_error(client.get("/api/search?row=0&k=1001"), 422, "k")
    assert_error(client.get("/api/search?row=0&k=0"), 422, "k")
    assert_error(client.get("/api/search?row=abc"), 422, "row")
    assert_error(client.get(f"/api/search?row={rows}"), 404, f"row {rows} does not exist")
    assert_error(client.get("/api/search"), 422, "row")
    assert_error(client.post("/api/search", data={"k": "3"}), 422, "file")
    assert_error(client.post("/api/search", files={"file": ("notes.txt", b"just some text")}), 422, "not a usable image")
    assert_error(client.post("/api/search", files={"file": ("empty.jpg", b"")}), 422, "empty")
    jpeg = (collection.folder / "cat.jpg").read_bytes()
    assert_error(client.post("/api/search", files={"file": ("cut.jpg", jpeg[: len(jpeg) // 3])}), 422, "not a usable image")
    assert client.get("/api/search?row=0&k=2").status_code == 200  # still serving


def test_decompression_bombs_are_refused(client):
    answer = client.post("/api/search", files={"file": ("bomb.png", png_header(20000, 20000))})
    assert_error(answer, 422, "decompression bomb")


def test_uploads_over_the_limit_are_refused_announced_or_streamed(collection, tmp_path):
    small = TestClient(create_app(collection.index, collection.embedder, max_upload_bytes=50_000, thumbnail_dir=tmp_path))
    big = (collection.folder / "astronaut.jpg").read_bytes()
    assert len(big) > 50_000
    assert_error(small.post("/api/search", files={"file": ("big.jpg", big)}), 413, "upload limit")
    huge = b"\xff" * 400_000  # over the limit with the form envelope: refused from Content-Length
    assert_error(small.post("/api/search", files={"file": ("huge.jpg", huge)}), 413, "limit")
    boundary = "b0undary"
    body = f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"x.jpg\"\r\n\r\n".encode() + huge

    def chunks():  # no Content-Length: counted as it arrives
        for start in range(0, len(body), 65536):
            yield body[start : start + 65536]

    streamed = small.post("/api/search", content=chunks(), headers={"content-type": f"multipart/form-data; boundary={boundary}"})
    assert_error(streamed, 413, "limit")
    small_image = png(Image.open(PHOTOS / "cat.jpg").resize((64, 48)))
    assert small.post("/api/search", files={"file": ("ok.png", small_image)}).status_code == 200


# --- rows and thumbnails -----------------------------------------------------------------------
def test_thumbnails_by_row_only(client, app, collection):
    cache = app.state.explorer.thumbnails
    answer = client.get("/api/thumbnails/0?size=128")
    assert answer.status_code == 200 and answer.headers["content-type"] == "image/jpeg"
    image = Image.open(io.BytesIO(answer.content))
    assert max(image.size) == 128
    hits = cache.hits
    assert client.get("/api/thumbnails/0?size=128").content == answer.content and cache.hits == hits + 1
    assert client.get("/api/rows/0").json() == {"row": 0, "path": read_index(collection.index).paths[0]}
    assert_error(client.get("/api/thumbnails/0?size=100"), 400, "128, 256, 512")
    assert_error(client.get("/api/thumbnails/999"), 404, "row 999")
    assert_error(client.get("/api/thumbnails/-1"), 422)
    for attempt in ("/api/thumbnails/..%2F..%2Fetc%2Fpasswd", "/api/thumbnails/%2Fetc%2Fpasswd", "/static/..%2F..%2Fapp.py",
                    "/api/thumbnails/0?path=/etc/passwd&size=../../x"):
        answer = client.get(attempt)
        assert answer.status_code in (404, 422) and b"root:" not in answer.content and b"import" not in answer.content


def test_thumbnail_of_a_vanished_image_is_a_404(collection, tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    for name in ("cat.jpg", "coffee.jpg"):
        shutil.copy(PHOTOS / name, folder / name)
    embed_images([folder], tmp_path / "i.parquet", embedder=collection.embedder, workers=0, progress=False)
    client = TestClient(create_app(tmp_path / "i.parquet", collection.embedder, thumbnail_dir=tmp_path / "t"))
    (folder / "cat.jpg").unlink()
    assert_error(client.get("/api/thumbnails/0"), 404, "gone")
    assert_error(client.post("/api/dense", data={"row": "0", "resolution": "224"}), 422, "no such file")
    assert client.get("/api/thumbnails/1").status_code == 200


def test_thumbnail_cache_stays_within_its_bound_and_evicts_the_least_recently_used(tmp_path):
    images = []
    for number in range(5):
        path = tmp_path / f"{number}.png"
        Image.fromarray(np.random.default_rng(number).integers(0, 255, (300, 300, 3), dtype=np.uint8)).save(path)
        images.append(str(path))
    one = len(ThumbnailCache(tmp_path / "probe").get(images[0], 128))
    cache = ThumbnailCache(tmp_path / "cache", max_bytes=int(one * 3.5))
    for path in images[:3]:
        cache.get(path, 128)
    cache.get(images[0], 128)  # used again: the newest now
    cache.get(images[3], 128)  # evicts images[1], the least recently used
    assert cache.total_bytes <= cache.max_bytes
    files = sorted((tmp_path / "cache").rglob("*.jpg"))
    assert len(files) == 3 and sum(f.stat().st_size for f in files) == cache.total_bytes
    assert not cache.key_path(images[1], 128).exists() and cache.key_path(images[0], 128).exists()
    largest = max(f.stat().st_size for f in files)
    again = ThumbnailCache(tmp_path / "cache", max_bytes=largest)  # a later run with a smaller bound: one is left
    assert again.total_bytes <= largest and len(list((tmp_path / "cache").rglob("*.jpg"))) == 1
    Image.new("RGB", (300, 300), "red").save(images[3])  # changed on disk: a new thumbnail
    red = np.asarray(Image.open(io.BytesIO(again.get(images[3], 128))))
    assert red[..., 0].mean() > 240 and red[..., 1].mean() < 15
    with pytest.raises(ValueError, match="128, 256, 512"):
        cache.get(images[0], 64)


# --- duplicates and the map --------------------------------------------------------------------
def test_duplicate_groups_equal_the_dedup_tool_at_every_threshold(client, collection):
    index = read_index(collection.index)
    seen = set()
    for threshold in (0.8, 0.9, 0.97, 0.995, 0.9999, 1.0):
        got = client.get(f"/api/duplicates?threshold={threshold}").json()
        expected = find_duplicates(index, threshold)
        assert got["groups"] == len(expected)
        assert got["duplicates"] == sum(len(g.members) - 1 for g in expected)
        assert sorted(tuple(m["row"] for m in g["members"]) for g in got["listed"]) == sorted(
            tuple(m.row for m in g.members) for g in expected
        )
        sizes = [g["size"] for g in got["listed"]]
        assert sizes == sorted(sizes, reverse=True) and all(s == len(g["members"]) for s, g in zip(sizes, got["listed"]))
        seen.add(got["groups"])
    assert len(seen) > 1, "the thresholds tried should give different groupings"
    copies = {row_of(collection, "cat.jpg"), row_of(collection, "cat_copy.jpg")}
    assert any({m["row"] for m in g["members"]} >= copies for g in client.get("/api/duplicates?threshold=0.9999").json()["listed"])
    assert len(client.get("/api/duplicates?threshold=0.8&limit=1").json()["listed"]) <= 1
    assert_error(client.get("/api/duplicates?threshold=0.5"), 422, "threshold")


def test_map_is_the_pca_of_the_features_scaled_to_the_unit_square(client, collection):
    answer = client.get("/api/map")
    assert answer.status_code == 200
    points = answer.json()
    index = read_index(collection.index)
    assert points["method"] == "pca" and points["rows"] == len(index.paths)
    features = torch.from_numpy(index.vectors)
    mean, axes = principal_axes(features, 2)
    projected = ((features - mean) @ axes).numpy()
    projected = (projected - projected.min(0)) / (projected.max(0) - projected.min(0))
    np.testing.assert_allclose(np.stack([points["x"], points["y"]], 1), projected, atol=1e-4)
    assert_error(client.get("/api/map?method=tsne"), 400, "pca, umap")


def test_umap_map_when_umap_learn_is_installed(collection, monkeypatch, tmp_path):
    explorer = Explorer(collection.index, collection.embedder, thumbnails=ThumbnailCache(tmp_path))
    monkeypatch.setitem(sys.modules, "umap", None)  # not installed
    client = TestClient(create_app(explorer))
    assert client.get("/api/info").json()["map_methods"] == ["pca"]
    assert_error(client.get("/api/map?method=umap"), 503, "umap-learn")
    calls = []

    class FakeUMAP:  # stands in for umap-learn: checks what it is given, returns a known layout
        def __init__(self, **options):
            calls.append(options)

        def fit_transform(self, vectors):
            assert vectors.shape == explorer.index.vectors.shape
            return np.stack([np.arange(len(vectors)), -np.arange(len(vectors))], 1).astype(np.float32)

    monkeypatch.setitem(sys.modules, "umap", types.SimpleNamespace(UMAP=FakeUMAP))
    assert client.get("/api/info").json()["map_methods"] == ["pca", "umap"]
    points = client.get("/api/map?method=umap").json()
    rows = points["rows"]
    np.testing.assert_allclose(points["x"], np.arange(rows) / (rows - 1), atol=1e-5)
    np.testing.assert_allclose(points["y"], 1 - np.arange(rows) / (rows - 1), atol=1e-5)
    assert calls == [{"n_components": 2, "metric": "cosine", "random_state": 0}]


# --- dense views -------------------------------------------------------------------------------
def test_dense_pca_and_similarity_pictures_equal_the_tools(client, collection):
    cat = row_of(collection, "cat.jpg")
    view = client.post("/api/dense", data={"row": str(cat), "resolution": "256"})
    assert view.status_code == 200, view.text
    view = view.json()
    embedder = Embedder(collection.embedder.model, collection.embedder.source, 256)
    (expected_pca,) = pca_images(embedder, [collection.folder / "cat.jpg"])
    got_pca = Image.open(io.BytesIO(client.get(view["pca"]).content))
    assert (view["width"], view["height"]) == got_pca.size == expected_pca.size
    assert view["grid"] == [view["height"] // 16, view["width"] // 16]
    np.testing.assert_array_equal(np.asarray(got_pca), np.asarray(expected_pca))
    shown = Image.open(io.BytesIO(client.get(view["image"]).content))
    assert shown.size == got_pca.size

    original = Image.open(collection.folder / "cat.jpg")
    x, y = 0.3, 0.6
    answer = client.get(f"/api/dense/{view['id']}/similarity.png?x={x}&y={y}")
    expected_heat, similarity = similarity_image(embedder, collection.folder / "cat.jpg", (x * original.width, y * original.height))
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(answer.content))), np.asarray(expected_heat))
    row, col = (int(v) for v in answer.headers["x-patch"].split(","))
    assert (row, col) == np.unravel_index(similarity.argmax(), similarity.shape)
    other = client.get(f"/api/dense/{view['id']}/similarity.png?x=0.9&y=0.1").content
    assert other != answer.content

    coffee = collection.folder / "coffee.jpg"
    ref = client.post("/api/dense", files={"file": ("ref.jpg", coffee.read_bytes())}, data={"resolution": "256"}).json()
    assert ref["id"].startswith("u")
    against = client.get(f"/api/dense/{view['id']}/similarity.png?x={x}&y={y}&target={ref['id']}")
    _, ref_similarity = similarity_image(embedder, collection.folder / "cat.jpg", (x * original.width, y * original.height), coffee)
    low, high = (float(v) for v in against.headers["x-similarity-range"].split(","))
    assert (low, high) == pytest.approx((ref_similarity.min(), ref_similarity.max()), abs=1e-4)
    assert Image.open(io.BytesIO(against.content)).size == (ref["width"], ref["height"])


def test_bad_dense_requests_are_4xx_json(client, collection):
    assert_error(client.post("/api/dense", data={"resolution": "256"}), 400, "either an image file or a row")
    both = client.post("/api/dense", files={"file": ("a.jpg", (PHOTOS / "cat.jpg").read_bytes())}, data={"row": "0"})
    assert_error(both, 400, "not both")
    assert_error(client.post("/api/dense", data={"row": "0", "resolution": "2048"}), 422, "resolution")
    assert_error(client.post("/api/dense", data={"row": "0", "resolution": "100"}), 422, "resolution")
    assert_error(client.post("/api/dense", data={"row": "9999"}), 404, "row 9999")
    assert_error(client.post("/api/dense", files={"file": ("a.txt", b"%PDF-1.4 not an image")}), 422, "not a usable image")
    assert_error(client.get("/api/dense/r0-999/pca.png"), 404, "open the image again")
    assert_error(client.get("/api/dense/..%2Fx/pca.png"), 404)
    assert_error(client.get("/api/dense/r0-224/similarity.png?x=1&y=0.5"), 422, "x")
    assert_error(client.get("/api/dense/r0-224/similarity.png?x=0.5&y=0.5&target=../../etc"), 422, "target")


def test_elongated_images_are_capped_to_a_bounded_number_of_patches(client):
    panorama = png(Image.open(PHOTOS / "rocket.jpg").resize((2000, 100)))
    view = client.post("/api/dense", files={"file": ("wide.png", panorama)}, data={"resolution": "1024"}).json()
    assert view["width"] <= 2048 and view["resolution"] < 1024


# --- robustness and safety ---------------------------------------------------------------------
def test_concurrent_requests_share_one_model_safely(client, collection):
    upload = (collection.folder / "coffee.jpg").read_bytes()
    expected = client.post("/api/search", files={"file": ("q.jpg", upload)}, data={"k": "3"}).json()["hits"]

    def search(_):
        return client.post("/api/search", files={"file": ("q.jpg", upload)}, data={"k": "3"})

    def dense(number):
        return client.post("/api/dense", data={"row": str(number % 3), "resolution": "224"})

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(search, range(8))) + list(pool.map(dense, range(6)))
    assert all(a.status_code == 200 for a in answers)
    for answer in answers[:8]:
        assert [h["row"] for h in answer.json()["hits"]] == [h["row"] for h in expected]


def test_model_calls_are_serialized(collection, tmp_path):
    explorer = Explorer(collection.index, collection.embedder, thumbnails=ThumbnailCache(tmp_path))
    inside, most = 0, 0
    guard = threading.Lock()
    model = explorer.embedder(explorer.resolution)
    original = Embedder.__call__

    def counting(self, pixels):
        nonlocal inside, most
        with guard:
            inside += 1
            most = max(most, inside)
        try:
            return original(self, pixels)
        finally:
            with guard:
                inside -= 1

    data = (collection.folder / "cat.jpg").read_bytes()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Embedder, "__call__", counting)
        with ThreadPoolExecutor(6) as pool:
            list(pool.map(lambda _: explorer.embed_upload(data), range(6)))
    assert most == 1 and model is explorer.embedder(explorer.resolution)


def test_an_internal_error_is_a_json_500_and_the_server_goes_on(app, client, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("something broke")

    monkeypatch.setattr(app.state.explorer, "row_info", broken)
    assert_error(client.get("/api/rows/0"), 500, "something broke")
    monkeypatch.undo()
    assert client.get("/api/rows/0").status_code == 200


def test_without_a_model_rows_still_search_and_uploads_say_why(collection, tmp_path):
    explorer = Explorer(collection.index, thumbnails=ThumbnailCache(tmp_path), load_model=False)
    client = TestClient(create_app(explorer))
    info = client.get("/api/info").json()
    assert info["model_loaded"] is False and info["rows"] == explorer.rows
    assert client.get("/api/search?row=1&k=3").status_code == 200
    assert_error(client.post("/api/search", files={"file": ("q.jpg", (PHOTOS / "cat.jpg").read_bytes())}), 503, "no model")
    assert_error(client.post("/api/dense", data={"row": "0"}), 503, "no model")


def test_another_model_is_refused_unless_allowed(collection, tmp_path):
    _, other = save_hf_vit(tmp_path / "wide", seed=1, hidden_size=32, intermediate_size=64)
    with pytest.raises(ValueError, match="cannot be compared"):
        Explorer(collection.index, other, device="cpu", thumbnails=ThumbnailCache(tmp_path / "t"))
    _, same_width = save_hf_vit(tmp_path / "other", seed=12, num_register_tokens=2)  # another model of the same width
    with pytest.raises(ValueError, match="allow-model-mismatch"):
        Explorer(collection.index, same_width, device="cpu", thumbnails=ThumbnailCache(tmp_path / "t"))
    allowed = Explorer(collection.index, same_width, device="cpu", thumbnails=ThumbnailCache(tmp_path / "t"), allow_model_mismatch=True)
    assert allowed.has_model


def test_host_header_is_checked_on_loopback(collection, tmp_path):
    client = TestClient(create_app(collection.index, collection.embedder, thumbnail_dir=tmp_path, allowed_hosts=LOOPBACK_NAMES))
    assert_error(client.get("/api/info", headers={"host": "attacker.example:8000"}), 400, "Host")
    for host in ("127.0.0.1:8000", "localhost", "[::1]:8000"):
        assert client.get("/api/info", headers={"host": host}).status_code == 200
    assert host_name("[::1]:80") == "::1" and host_name("LocalHost:1") == "localhost" and host_name("::1") == "::1"


def test_the_page_docs_and_static_files_are_served_without_external_resources(client):
    page = client.get("/")
    assert page.status_code == 200 and "default-src 'self'" in page.headers["content-security-policy"]
    texts = [page.text] + [client.get(f"/static/{name}").text for name in ("app.js", "style.css")]
    assert all(len(text) > 500 for text in texts)
    for text in texts:
        assert "http://" not in text and "https://" not in text and "//cdn" not in text
    docs = client.get("/docs")
    assert docs.status_code == 200 and "https://" not in docs.text
    for route in ("/api/search", "/api/duplicates", "/api/map", "/api/dense", "/api/thumbnails/{row}", "SearchResult"):
        assert route in docs.text
    spec = client.get("/openapi.json").json()
    assert spec["paths"]["/api/search"]["get"]["parameters"][1]["schema"]["maximum"] == 1000
    assert_error(client.get("/nothing/here"), 404, "/docs")


def test_static_files_are_package_data():
    text = Path(__file__).resolve().parents[1].joinpath("pyproject.toml").read_text()
    assert '"dinov3kit.serve" = ["static/*.html", "static/*.js", "static/*.css"]' in text
    static = Path(cli.__file__).parent / "serve" / "static"
    assert {p.name for p in static.iterdir()} >= {"index.html", "app.js", "style.css"}


# --- the command -------------------------------------------------------------------------------
def test_serve_command_prints_the_url_and_warns_off_loopback(collection, tmp_path, monkeypatch, capsys):
    started = []
    monkeypatch.setattr("uvicorn.Server.run", lambda self, sockets: started.append((self.config.app, sockets)))
    argv = ["serve", str(collection.index), "--model", str(collection.model), "--device", "cpu", "--port", "0",
            "--thumbnail-dir", str(tmp_path / "t")]
    assert cli.main(argv) == 0
    out, err = capsys.readouterr()
    ((app, (sock,)),) = started
    port = sock.getsockname()[1]
    assert f"http://127.0.0.1:{port}/" in out and "warning" not in err
    assert TestClient(app).get("/api/info", headers={"host": f"127.0.0.1:{port}"}).json()["model_loaded"] is True
    sock.close()
    assert cli.main([*argv[:-4], "--host", "0.0.0.0", "--port", "0", "--no-model", "--thumbnail-dir", str(tmp_path / "t")]) == 0
    out, err = capsys.readouterr()
    assert "warning: listening on 0.0.0.0" in err and "http://127.0.0.1:" in out
    started[-1][1][0].close()


def test_serve_command_errors_exit_2_with_a_message(collection, tmp_path, capsys):
    assert cli.main(["serve", str(tmp_path / "missing.parquet")]) == 2
    assert "missing.parquet" in capsys.readouterr().err
    assert cli.main(["serve", str(collection.index), "--max-upload-mb", "0"]) == 2
    assert "--max-upload-mb must be more than 0" in capsys.readouterr().err
    busy = serve_cli.listen("127.0.0.1", 0)
    try:
        port = busy.getsockname()[1]
        assert cli.main(["serve", str(collection.index), "--no-model", "--port", str(port), "--thumbnail-dir", str(tmp_path)]) == 2
        assert f"cannot listen on 127.0.0.1:{port}" in capsys.readouterr().err
    finally:
        busy.close()


def test_loopback_detection():
    assert serve_cli.is_loopback("127.0.0.1") and serve_cli.is_loopback("::1") and serve_cli.is_loopback("localhost")
    assert serve_cli.is_loopback("127.0.0.5") and serve_cli.is_loopback("[::1]")
    assert not serve_cli.is_loopback("0.0.0.0") and not serve_cli.is_loopback("::") and not serve_cli.is_loopback("192.168.1.4")
    args = cli.build_parser().parse_args(["serve", "index.parquet"])
    assert (args.host, args.port, args.max_upload_mb) == ("127.0.0.1", 8000, 20)
