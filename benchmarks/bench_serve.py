"""`dinov3kit serve` on a 100,000-row index: search and thumbnail latency, and a bounded load run.

    .venv/bin/python benchmarks/bench_serve.py [--rows 100000] [--dim 384] [--clients 16] [--requests 2000]

1. Top-k in process: the server's search (torch `exact_top_k` under `Explorer.search`, with the JSON rows)
   against numpy's argpartition and FAISS's exact IndexFlatIP (when faiss-cpu is installed).
2. Over HTTP against `dinov3kit serve INDEX --no-model` in its own process (loopback, keep-alive): search
   by row id (the query's embedding is not part of it) and cached thumbnails, as the server's own time
   (its `Server-Timing` header) and the client's round trip. Targets: search ≤ 50 ms, thumbnail ≤ 5 ms.
3. A load run: `--clients` threads share `--requests` requests (search 50%, thumbnail 40%, row 10%),
   each thread with its own connection; every answer must be a 200.
4. The map page with every row in Debian's headless Chromium: redraw and hover look-up times.

Parts 2 and 3 run once per `--server-threads` value (torch's default, then 1 thread): on a 2-core machine
that other jobs keep busy, waking torch's second thread for each 256 KB operation can cost a scheduler
tick (~20 ms), so one thread answers faster there.

The index holds random unit vectors (search speed does not depend on their values) and its rows point
at 64 JPEG files made from the sample photos. Nothing leaves the machine: only 127.0.0.1 is contacted.
"""

from __future__ import annotations

import argparse
import http.client
import json
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch
from common import interleaved, machine, print_table

from dinov3kit.serve.explorer import Explorer
from dinov3kit.serve.thumbnails import ThumbnailCache
from dinov3kit.tools.store import META_KEY, index_schema, read_index, rows_table

PHOTOS = Path(__file__).resolve().parents[1] / "examples" / "photos"
SEARCH_TARGET_MS, THUMB_TARGET_MS = 50.0, 5.0


def make_index(folder: Path, rows: int, dim: int) -> Path:
    """An index of `rows` random unit vectors whose paths cycle through 64 JPEG files."""
    import pyarrow.parquet as pq
    from PIL import Image

    images = []
    samples = sorted(PHOTOS.glob("*.jpg"))
    for number in range(64):
        with Image.open(samples[number % len(samples)]) as image:
            image = image.convert("RGB").rotate(number * 5, expand=True)
            image.thumbnail((800, 800))
            path = folder / f"photo{number:02d}.jpg"
            image.save(path, quality=90)
            images.append(str(path))
    vectors = np.random.default_rng(0).standard_normal((rows, dim), dtype=np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    paths = [images[i % len(images)] for i in range(rows)]
    table = rows_table(index_schema(dim, None), {
        "path": paths, "sha256": ["0" * 64] * rows, "width": [800] * rows, "height": [600] * rows,
        "cls": vectors, "mean_patch": vectors,
    })
    meta = {"model": "random-vectors", "resolution": 224, "format_version": 1, "rows": rows, "errors": []}
    out = folder / "index.parquet"
    pq.write_table(table.replace_schema_metadata({META_KEY: json.dumps(meta)}), out)
    return out


# --- 1. top-k in process ----------------------------------------------------------------------
def in_process(index_path: Path, folder: Path, repeats: int, threads: int) -> None:
    index = read_index(index_path)
    explorer = Explorer(index, thumbnails=ThumbnailCache(folder / "thumbs-inprocess"), load_model=False)
    vectors = index.vectors
    rng = np.random.default_rng(1)
    query = vectors[rng.integers(len(vectors))]
    table, query_tensor = torch.from_numpy(vectors), torch.from_numpy(query)
    try:
        import faiss

        flat = faiss.IndexFlatIP(vectors.shape[1])
        flat.add(vectors)
    except ImportError:
        flat = None
    rows = []
    for k in (10, 100, 1000):
        contenders = {
            "dinov3kit serve (torch top-k + hits)": lambda k=k: explorer.search(query, k),
            "torch, top-k per block (no row-id tensors)": lambda k=k: block_top_k(table, query_tensor, k),
            "numpy argpartition": lambda k=k: numpy_top_k(vectors, query, k),
        }
        if flat is not None:
            contenders["faiss IndexFlatIP"] = lambda k=k: flat.search(query[None], k)
        stats = interleaved(contenders, repeats=repeats, warmup=2)
        ours = stats["dinov3kit serve (torch top-k + hits)"].median
        for name, stat in stats.items():
            rows.append([name, k, f"{stat.median * 1000:.2f}", stat.spread_text(), f"{stat.median / ours:.2f}x",
                         f"{cpu_ms(contenders[name], repeats):.2f}"])
    if flat is None:
        rows.append(["faiss IndexFlatIP", "-", "not installed", "", "", ""])
    print_table(f"Top-k over {len(vectors):,} x {vectors.shape[1]} in process, {threads} torch threads (median ms, lower is better)",
                ["contender", "k", "wall ms", "spread", "time vs ours", "CPU ms"], rows)


def cpu_ms(function, repeats: int) -> float:
    """Median CPU time of a call in milliseconds (all threads of this process): its cost without other load."""
    times = []
    for _ in range(repeats):
        start = time.process_time()
        function()
        times.append(time.process_time() - start)
    return statistics.median(times) * 1000


def block_top_k(vectors: torch.Tensor, query: torch.Tensor, k: int, block: int = 65536) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact top-k of one query keeping only k candidates per block (no row-id tensor of the block's size)."""
    best_scores, best_rows = torch.empty(0), torch.empty(0, dtype=torch.long)
    for start in range(0, len(vectors), block):
        scores, rows = (vectors[start : start + block] @ query).topk(min(k, len(vectors) - start))
        merged_scores, merged_rows = torch.cat([best_scores, scores]), torch.cat([best_rows, rows + start])
        best_scores, order = merged_scores.topk(min(k, len(merged_scores)))
        best_rows = merged_rows[order]
    return best_scores, best_rows


def numpy_top_k(vectors: np.ndarray, query: np.ndarray, k: int) -> np.ndarray:
    scores = vectors @ query
    best = np.argpartition(-scores, k)[:k]
    return best[np.argsort(-scores[best])]


# --- 2. over HTTP -----------------------------------------------------------------------------
def start_server(index_path: Path, folder: Path, threads: int | None) -> tuple[subprocess.Popen, str, int]:
    command = [sys.executable, "-m", "dinov3kit.cli", "serve", str(index_path), "--no-model", "--port", "0",
               "--thumbnail-dir", str(folder / f"thumbs{threads or ''}"), *(["--threads", str(threads)] if threads else [])]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 300
    for line in process.stdout:
        if "open http://" in line:
            address = line.split("open http://", 1)[1].split("/", 1)[0]
            host, port = address.rsplit(":", 1)
            threading.Thread(target=lambda: process.stdout.read(), daemon=True).start()
            return process, host, int(port)
        if time.monotonic() > deadline:
            break
    process.kill()
    raise RuntimeError(f"the server did not start: {process.stdout.read() if process.stdout else ''}")


def request(connection: http.client.HTTPConnection, path: str, answers: list | None = None) -> tuple[int, float, float]:
    """Status, server milliseconds (Server-Timing) and round-trip milliseconds of one GET (JSON answers
    are appended to `answers` when given)."""
    start = time.perf_counter()
    connection.request("GET", path)
    response = connection.getresponse()
    body = response.read()
    elapsed = (time.perf_counter() - start) * 1000
    timing = response.getheader("server-timing", "app;dur=nan")
    if answers is not None:
        answers.append(json.loads(body))
    return response.status, float(timing.split("dur=")[1]), elapsed


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def over_http(host: str, port: int, rows: int, repeats: int, threads: str) -> None:
    connection = http.client.HTTPConnection(host, port, timeout=120)
    start = time.perf_counter()
    status, server_ms, _ = request(connection, "/api/map")
    map_seconds = time.perf_counter() - start
    assert status == 200
    rng = random.Random(2)
    table = []
    for k in (10, 100, 1000):
        request(connection, f"/api/search?row=0&k={k}")  # warm-up
        answers: list[dict] = []
        samples = [request(connection, f"/api/search?row={rng.randrange(rows)}&k={k}", answers) for _ in range(repeats)]
        assert all(s[0] == 200 for s in samples)
        server = [s[1] for s in samples]
        table.append([f"search by row, k={k}", f"{statistics.median(server):.2f}", f"{percentile(server, 95):.2f}",
                      f"{statistics.median([s[2] for s in samples]):.2f}",
                      f"{statistics.median([a['search_cpu_ms'] for a in answers]):.2f}", f"≤ {SEARCH_TARGET_MS:g}",
                      "yes" if percentile(server, 95) <= SEARCH_TARGET_MS else "NO"])
    misses = [request(connection, f"/api/thumbnails/{row}?size=256") for row in range(64)]
    table.append(["thumbnail, made now (miss)", f"{statistics.median([m[1] for m in misses]):.2f}",
                  f"{percentile([m[1] for m in misses], 95):.2f}", f"{statistics.median([m[2] for m in misses]):.2f}", "", "", ""])
    hits = [request(connection, f"/api/thumbnails/{rng.randrange(rows)}?size=256") for _ in range(max(repeats, 200))]
    assert all(h[0] == 200 for h in hits)
    server = [h[1] for h in hits]
    table.append(["thumbnail from the cache", f"{statistics.median(server):.2f}", f"{percentile(server, 95):.2f}",
                  f"{statistics.median([h[2] for h in hits]):.2f}", "", f"≤ {THUMB_TARGET_MS:g}",
                  "yes" if percentile(server, 95) <= THUMB_TARGET_MS else "NO"])
    table.append([f"2D map (PCA of {rows:,} rows), first call", f"{server_ms:.0f}", "", f"{map_seconds * 1000:.0f}", "", "", ""])
    connection.close()
    print_table(f"Over HTTP, one client, {rows:,}-row index, server with {threads} torch threads (milliseconds; server = its Server-Timing header)",
                ["request", "server p50", "server p95", "round trip p50", "top-k CPU p50", "target", "met (p95)"], table)


# --- 3. load run ------------------------------------------------------------------------------
def load_run(host: str, port: int, rows: int, clients: int, total: int, threads: str) -> None:
    rng = random.Random(3)
    plan = []
    for _ in range(total):
        draw = rng.random()
        if draw < 0.5:
            plan.append(("search", f"/api/search?row={rng.randrange(rows)}&k=50"))
        elif draw < 0.9:
            plan.append(("thumbnail", f"/api/thumbnails/{rng.randrange(rows)}?size=256"))
        else:
            plan.append(("row", f"/api/rows/{rng.randrange(rows)}"))
    results: list[tuple[str, int, float, float]] = []
    errors: list[str] = []
    lock = threading.Lock()

    def client(number: int) -> None:
        connection = http.client.HTTPConnection(host, port, timeout=60)
        for kind, path in plan[number::clients]:
            try:
                status, server_ms, elapsed = request(connection, path)
            except (OSError, http.client.HTTPException) as error:
                with lock:
                    errors.append(f"{path}: {error}")
                connection.close()
                connection = http.client.HTTPConnection(host, port, timeout=60)
                continue
            with lock:
                results.append((kind, status, server_ms, elapsed))
        connection.close()

    workers = [threading.Thread(target=client, args=(n,)) for n in range(clients)]
    start = time.perf_counter()
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=600)
    wall = time.perf_counter() - start
    bad = [r for r in results if r[1] != 200]
    table = []
    for kind in ("search", "thumbnail", "row", "all"):
        chosen = [r for r in results if kind in ("all", r[0])]
        latencies = [r[3] for r in chosen]
        table.append([kind, len(chosen), f"{percentile(latencies, 50):.1f}", f"{percentile(latencies, 95):.1f}",
                      f"{percentile(latencies, 99):.1f}", f"{max(latencies):.1f}"])
    print_table(
        f"Load run ({threads} torch threads): {clients} concurrent clients, {total} requests in {wall:.1f} s ({len(results) / wall:.0f} requests/s); "
        f"errors: {len(errors)}, non-200 answers: {len(bad)}",
        ["requests", "count", "p50 ms", "p95 ms", "p99 ms", "max ms"], table,
    )
    if errors or bad:
        print("FAILED: " + "; ".join(errors[:5] + [f"status {r[1]} for {r[0]}" for r in bad[:5]]))


# --- 4. the map in a browser -------------------------------------------------------------------
def map_in_browser(host: str, port: int, rows: int) -> None:
    """Drawing and hover look-up times of the map page with every row, in Debian's headless Chromium."""
    chromium = shutil.which("chromium")
    try:
        from playwright.sync_api import expect, sync_playwright
    except ImportError:
        chromium = None
    if chromium is None:
        print("\n(map in a browser: skipped, needs playwright and Debian's chromium)")
        return
    args = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--no-first-run"]
    with sync_playwright() as driver:
        browser = driver.chromium.launch(executable_path=chromium, args=args)
        page = browser.new_page(viewport={"width": 1280, "height": 800})
        page.goto(f"http://{host}:{port}/")
        expect(page.locator("body")).to_have_attribute("data-ready", "1")
        start = time.perf_counter()
        page.click("#tabs button[data-tab=map]")
        expect(page.locator("#map-status")).to_contain_text(f"{rows:,}", timeout=300_000)
        shown = time.perf_counter() - start
        draws, lookups = page.evaluate(
            """() => {
                const draws = [], lookups = [], canvas = document.getElementById('map');
                for (let i = 0; i < 30; i++) { MapView.view.scale *= 1.03; MapView.draw(); draws.push(MapView.drawMs); }
                for (let round = 0; round < 10; round++) {  // per look-up, timed over 100 (the clock is coarse)
                    const start = performance.now();
                    for (let i = 0; i < 100; i++) MapView.nearest(Math.random() * canvas.width, Math.random() * canvas.height, 8);
                    lookups.push((performance.now() - start) / 100);
                }
                return [draws, lookups];
            }"""
        )
        browser.close()
    print_table(f"Map page with {rows:,} points in headless Chromium (software rendering)",
                ["step", "p50 ms", "p95 ms"],
                [["open the tab: fetch + parse + index + first draw", f"{shown * 1000:.0f}", ""],
                 ["redraw (zoom step)", f"{percentile(draws, 50):.1f}", f"{percentile(draws, 95):.1f}"],
                 ["hover look-up (nearest point)", f"{percentile(lookups, 50):.3f}", f"{percentile(lookups, 95):.3f}"]])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=384, help="feature width (384 ViT-S, 768 ViT-B, 1024 ViT-L)")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--skip-http", action="store_true", help="only the in-process top-k tables")
    parser.add_argument("--server-threads", type=int, nargs="+", default=[0, 1],
                        help="torch threads of the server, one run each (0: torch's default); default 0 1")
    args = parser.parse_args()
    print(machine())
    folder = Path(tempfile.mkdtemp(prefix="bench_serve_"))
    try:
        index_path = make_index(folder, args.rows, args.dim)
        default_threads = torch.get_num_threads()
        for threads in sorted({default_threads, 1}, reverse=True):
            torch.set_num_threads(threads)
            in_process(index_path, folder, args.repeats, threads)
        torch.set_num_threads(default_threads)
        for threads in [] if args.skip_http else args.server_threads:
            process, host, port = start_server(index_path, folder, threads or None)
            try:
                label = str(threads or f"{default_threads} (default)")
                over_http(host, port, args.rows, args.repeats, label)
                load_run(host, port, args.rows, args.clients, args.requests, label)
                if threads == args.server_threads[-1]:
                    map_in_browser(host, port, args.rows)
            finally:
                process.terminate()
                process.wait(timeout=30)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
