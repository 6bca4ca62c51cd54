"""Seeded, bounded fuzzing of everything that reads user files: random truncations and byte flips of real
photos, checkpoints (Meta .pth, safetensors, config.json of tiny random models) and index files, fed to
`load_image`, `from_pretrained` and the `embed`, `search` and `info` commands.

Every case must end in a right result or a clean error: one of our error classes (or a ValueError /
OSError) with a message, and for the command line exit 0 or 2 without a traceback; never a crash, a
hang or an unexpected exception. Cases run in a worker process (limited to `MEMORY_LIMIT` of data)
that reports each one, so a crash or a hang is pinned to its case and the rest still run. The default
tier runs `COUNTS` cases; the slow tier `SLOW_FACTOR` times as many (other seeds).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import queue
import resource
import shutil
import subprocess
import sys
import threading
import traceback
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
PHOTOS = ROOT / "examples" / "photos"
SEED = 14
#: Cases per kind in the default tier.
COUNTS = {"image": 24, "safetensors": 12, "config": 8, "pth": 10, "index": 8, "query": 4}
SLOW_FACTOR = 20
CASE_TIMEOUT_S = 60.0
MEMORY_LIMIT = 6 * 2**30
#: Hostile values of single config.json fields (valid JSON), loaded with the intact weights.
HOSTILE_CONFIG = {"num_attention_heads": 0, "num_register_tokens": -1, "hidden_size": -64, "rope_theta": None,
                  "patch_size": 0, "layer_norm_eps": "tiny", "num_hidden_layers": -2}
#: Cases that show bugs in modules this test does not own (configs.py validation, issue 14 item 5).
KNOWN_BUGS: dict[str, str] = {}


# --- mutations -----------------------------------------------------------------------------------
def mutate(data: bytes, rng: np.random.Generator) -> bytes:
    """A truncation, a few byte flips (half of them in the first 512 bytes, where headers are), or both."""
    kind = int(rng.integers(3))
    out = bytearray(data)
    if kind in (0, 2):
        out = out[: int(rng.integers(0, len(out)))]
    if kind in (1, 2) and out:
        for _ in range(int(rng.integers(1, 9))):
            span = min(len(out), 512) if rng.random() < 0.5 else len(out)
            out[int(rng.integers(span))] ^= int(rng.integers(1, 256))
    return bytes(out)


def mutate_digits(data: bytes, rng: np.random.Generator) -> bytes:
    """One to three digits replaced by others: still valid JSON, with other (possibly hostile) values."""
    out = bytearray(data)
    digits = [i for i, byte in enumerate(out) if chr(byte).isdigit()]
    for position in rng.choice(digits, size=min(len(digits), int(rng.integers(1, 4))), replace=False):
        out[position] = ord(str(int(rng.integers(10))))
    return bytes(out)


def build_cases(folder: Path, counts: dict[str, int], seed: int) -> list[dict]:
    """Write the fuzzed files under `folder` and return the cases that read them (the first case of
    each kind reads an intact file, so that a right result is checked too)."""
    from PIL import Image

    from dinov3kit import DINOv3ViTConfig, DINOv3ViTModel
    from oracles.meta_twin import meta_vit_state_dict
    from oracles.random_weights import randomize_

    rng = np.random.default_rng(seed)
    cases: list[dict] = []
    photos = sorted(PHOTOS.glob("*.jpg"))
    images = folder / "images"
    images.mkdir()
    png = io.BytesIO()
    Image.open(photos[0]).save(png, format="PNG")
    originals = [p.read_bytes() for p in photos] + [png.getvalue()]
    for number in range(counts["image"]):
        source = originals[number % len(originals)]
        suffix = ".png" if source is originals[-1] else ".jpg"
        path = images / f"fuzz{number:03d}{suffix}"
        path.write_bytes(source if number == 0 else mutate(source, rng))
        cases.append({"id": f"image-{number}", "kind": "load_image", "path": str(path), "intact": number == 0})

    hf = folder / "hf"  # saved by dinov3kit itself: importing transformers would double this test's time
    config = DINOv3ViTConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=1, num_register_tokens=2)
    randomize_(DINOv3ViTModel(config), seed).save_pretrained(hf)
    for kind, name in (("safetensors", "model.safetensors"), ("config", "config.json")):
        data = (hf / name).read_bytes()
        for number in range(counts[kind]):
            copy = folder / f"{kind}{number:03d}"
            shutil.copytree(hf, copy)
            mutated = mutate_digits(data, rng) if kind == "config" and number % 2 else mutate(data, rng)
            (copy / name).write_bytes(data if number == 0 else mutated)
            cases.append({"id": f"{kind}-{number}", "kind": "from_pretrained", "path": str(copy), "intact": number == 0})
    for field, value in HOSTILE_CONFIG.items():
        copy = folder / f"hostile-{field}"
        shutil.copytree(hf, copy)
        (copy / "config.json").write_text(json.dumps(json.loads((hf / "config.json").read_text()) | {field: value}))
        cases.append({"id": f"hostile-{field}", "kind": "from_pretrained", "path": str(copy)})
    pth = folder / "meta.pth"
    torch.save(meta_vit_state_dict("vits16", seed=seed), pth)
    data = pth.read_bytes()
    for number in range(counts["pth"]):
        path = folder / f"meta{number:03d}.pth"
        path.write_bytes(data if number == 0 else mutate(data, rng))
        cases.append({"id": f"pth-{number}", "kind": "from_pretrained", "path": str(path), "intact": number == 0})

    index = folder / "index.parquet"
    cases.append({"id": "embed", "kind": "cli", "intact": True,
                  "args": ["embed", str(images), "-o", str(index), "--model", str(hf), "--workers", "0", "-q"]})
    cases.append({"id": "index-intact", "kind": "index", "path": str(index), "source": str(index), "intact": True})
    for number in range(1, counts["index"]):
        path = folder / f"index{number:03d}.parquet"
        cases.append({"id": f"index-{number}", "kind": "index", "path": str(path), "source": str(index), "seed": int(rng.integers(2**31))})
    fuzzed_images = [c["path"] for c in cases if c["kind"] == "load_image"]
    for number in range(counts["query"]):
        cases.append({"id": f"query-{number}", "kind": "cli", "args": ["search", str(index), fuzzed_images[number], "-k", "2"]})
    return cases


# --- the worker: runs cases, reports each ------------------------------------------------------------
def run_case(case: dict) -> dict:
    """Run one case in this process; status "ok" (a result), "clean" (a clean error) or "unclean"."""
    from dinov3kit.auto import AutoModel
    from dinov3kit.cli import main
    from dinov3kit.images import load_image

    if case["kind"] == "index":  # the mutated copy is made once the intact index exists (written by the embed case)
        data = Path(case["source"]).read_bytes()
        Path(case["path"]).write_bytes(data if case.get("intact") else mutate(data, np.random.default_rng(case["seed"])))
        results = [run_case({"kind": "cli", "args": args}) for args in (["info", case["path"]], ["search", case["path"], "0", "-k", "3"])]
        worst = max(results, key=lambda r: ("ok", "clean", "unclean").index(r["status"]))
        return worst
    if case["kind"] == "cli":
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main(case["args"])
            except SystemExit as exit:
                code = exit.code
        text = err.getvalue()
        clean = code in (0, 2) and "Traceback" not in text and "internal error" not in text and (code == 0 or text.strip())
        return {"status": ("ok" if code == 0 else "clean") if clean else "unclean", "detail": f"exit {code}: {text[-2000:]}"}
    call = load_image if case["kind"] == "load_image" else lambda path: AutoModel.from_pretrained(path, device="cpu")
    try:
        result = call(case["path"])
    except (ValueError, OSError) as error:
        clean = bool(str(error).strip()) and "Traceback" not in str(error)
        return {"status": "clean" if clean else "unclean", "detail": f"{type(error).__name__}: {error}"[:2000]}
    except Exception as error:  # noqa: BLE001 - any other exception is what this test looks for
        return {"status": "unclean", "detail": "".join(traceback.format_exception(error))[-3000:]}
    if case["kind"] == "load_image" and not (result.width > 0 and result.height > 0 and result.mode == "RGB"):
        return {"status": "unclean", "detail": f"an image without pixels: {result}"}
    return {"status": "ok", "detail": type(result).__name__}


def worker(cases_file: str, start: int) -> None:
    resource.setrlimit(resource.RLIMIT_DATA, (MEMORY_LIMIT, MEMORY_LIMIT))
    torch.set_num_threads(1)
    cases = json.loads(Path(cases_file).read_text())
    for number in range(start, len(cases)):
        print(json.dumps({"start": number}), flush=True)
        print(json.dumps({"done": number, **run_case(cases[number])}), flush=True)


def run_cases(cases: list[dict], folder: Path) -> dict[str, dict]:
    """Results by case id; a case that kills its worker or outlasts `CASE_TIMEOUT_S` is "unclean" and the
    worker is restarted after it."""
    cases_file = folder / "cases.json"
    cases_file.write_text(json.dumps(cases))
    results: dict[str, dict] = {}
    start = 0
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")])}
    while start < len(cases):
        process = subprocess.Popen([sys.executable, __file__, cases_file, str(start)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                   text=True, env=env, cwd=folder)
        lines: queue.Queue = queue.Queue()
        threading.Thread(target=lambda lines=lines, process=process: [lines.put(line) for line in process.stdout] + [lines.put(None)], daemon=True).start()
        current = None
        while True:
            try:
                line = lines.get(timeout=CASE_TIMEOUT_S)
            except queue.Empty:
                process.kill()
                results[cases[current]["id"]] = {"status": "unclean", "detail": f"no answer within {CASE_TIMEOUT_S} s (a hang)"}
                break
            if line is None:
                process.wait()
                if current is not None and cases[current]["id"] not in results:
                    results[cases[current]["id"]] = {"status": "unclean", "detail": f"the worker died (exit {process.returncode}): "
                                                     f"{process.stderr.read()[-2000:]}"}
                break
            message = json.loads(line)
            if "start" in message:
                current = message["start"]
            else:
                results[cases[message["done"]]["id"]] = message
        process.wait()
        start = (current + 1) if current is not None else len(cases)
    return results


# --- the tests ---------------------------------------------------------------------------------------
def case_ids(counts: dict[str, int]) -> list[str]:
    ids = [f"image-{n}" for n in range(counts["image"])]
    ids += [f"{kind}-{n}" for kind in ("safetensors", "config") for n in range(counts[kind])]
    ids += [f"hostile-{field}" for field in HOSTILE_CONFIG]
    ids += [f"pth-{n}" for n in range(counts["pth"])] + ["embed", "index-intact"]
    ids += [f"index-{n}" for n in range(1, counts["index"])] + [f"query-{n}" for n in range(counts["query"])]
    return ids


def with_known_bugs(ids: list[str]) -> list:
    return [pytest.param(i, marks=pytest.mark.xfail(strict=True, reason=KNOWN_BUGS[i])) if i in KNOWN_BUGS else i for i in ids]


@pytest.fixture(scope="module")
def fuzzed(tmp_path_factory) -> tuple[dict[str, dict], dict[str, dict]]:
    folder = tmp_path_factory.mktemp("fuzz")
    cases = build_cases(folder, COUNTS, SEED)
    return run_cases(cases, folder), {case["id"]: case for case in cases}


@pytest.mark.parametrize("case_id", with_known_bugs(case_ids(COUNTS)))
def test_fuzzed_input_gives_a_result_or_a_clean_error(fuzzed, case_id):
    results, cases = fuzzed
    result, case = results[case_id], cases[case_id]
    assert result["status"] in ("ok", "clean"), f"{case}:\n{result['detail']}"
    if case.get("intact"):
        assert result["status"] == "ok", f"an intact input failed: {case}:\n{result['detail']}"


def test_embedding_fuzzed_images_keeps_every_good_one(fuzzed):
    import pyarrow.parquet as pq

    results, cases = fuzzed
    index = Path(cases["index-intact"]["path"])
    paths = set(pq.read_table(index, columns=["path"]).column("path").to_pylist())
    errors = {e["path"] for e in json.loads(pq.read_metadata(index).metadata[b"dinov3kit"])["errors"]}
    images = [c for c in cases.values() if c["kind"] == "load_image"]
    assert paths | errors == {c["path"] for c in images} and not paths & errors
    for case in images:  # embed agrees with load_image on every file
        assert (case["path"] in paths) == (results[case["id"]]["status"] == "ok"), case


@pytest.mark.slow
def test_fuzzing_longer(tmp_path):
    counts = {kind: count * SLOW_FACTOR for kind, count in COUNTS.items()}
    results = run_cases(build_cases(tmp_path, counts, SEED + 1), tmp_path)
    unclean = {case: result["detail"] for case, result in results.items() if result["status"] == "unclean" and case not in KNOWN_BUGS}
    assert not unclean, "\n\n".join(f"{case}: {detail}" for case, detail in unclean.items())


if __name__ == "__main__":
    worker(sys.argv[1], int(sys.argv[2]))
