"""The `dinov3kit` command end to end, as a user runs it (subprocesses), on real photos with random-weight
checkpoints in the transformers and Meta formats: embed → search → dedup → pca → similarity, resuming
a killed run, bad inputs, convert and info, and the demo script."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from dinov3kit.cli import main
from dinov3kit.images import load_image
from dinov3kit.tools.embed import embed_images
from dinov3kit.tools.runtime import Embedder
from oracles.hf_twin import save_hf_vit
from oracles.meta_twin import meta_vit_state_dict

ROOT = Path(__file__).resolve().parents[1]
PHOTOS = ROOT / "examples" / "photos"
BAD_INPUTS = {
    "broken.jpg": "not an image file",
    "empty.png": "empty file",
    "truncated.jpg": "truncated or corrupt",
    "missing.jpg": "no such file",
}


def dinov3kit(*args, timeout: float = 120, env: dict | None = None, check: bool = True) -> subprocess.CompletedProcess:
    """Run the command line in a fresh interpreter, as a user would."""
    command = [sys.executable, "-m", "dinov3kit.cli", *map(str, args)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})})
    if check:
        assert result.returncode == 0, f"{command} failed:\n{result.stdout}\n{result.stderr}"
    return result


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("checkpoints")
    _, hf_folder = save_hf_vit(folder / "hf", seed=3, num_register_tokens=2)
    torch.save(meta_vit_state_dict("vits16", seed=4), folder / "dinov3_vits16_tiny.pth")
    return {"hf": hf_folder, "meta": folder / "dinov3_vits16_tiny.pth"}


@pytest.fixture(scope="module")
def collection(tmp_path_factory) -> Path:
    """The sample photos, an exact copy and a re-encoded copy of the cat, and bad files of every kind."""
    folder = tmp_path_factory.mktemp("collection")
    photos = folder / "photos"
    shutil.copytree(PHOTOS, photos, ignore=shutil.ignore_patterns("*.md", "*.py"))
    shutil.copy(PHOTOS / "cat.jpg", photos / "cat_copy.jpg")
    Image.open(PHOTOS / "cat.jpg").save(photos / "cat_reencoded.jpg", quality=60)
    (photos / "broken.jpg").write_bytes(b"this is not a JPEG")
    (photos / "empty.png").write_bytes(b"")
    (photos / "truncated.jpg").write_bytes((PHOTOS / "rocket.jpg").read_bytes()[:3000])
    (folder / "extra.txt").write_text("photos/missing.jpg\n")
    return folder


GOOD = sorted(p.name for p in PHOTOS.glob("*.jpg")) + ["cat_copy.jpg", "cat_reencoded.jpg"]


def in_process(capsys):
    """The same command line run through `main` in this interpreter (no interpreter start-up)."""

    def run(*args) -> subprocess.CompletedProcess:
        capsys.readouterr()
        code = main([str(arg) for arg in args])
        captured = capsys.readouterr()
        assert code == 0, f"{args} failed:\n{captured.out}\n{captured.err}"
        return subprocess.CompletedProcess(args, code, captured.out, captured.err)

    return run


# The transformers checkpoint goes through fresh interpreters, as a user runs the command; the Meta one
# through `main` in-process (same code, without paying the interpreter start-up five more times).
@pytest.mark.parametrize("layout, runner", [("hf", "subprocess"), ("meta", "in-process")])
def test_embed_search_dedup_pca_similarity(layout, runner, checkpoints, collection, tmp_path, capsys):
    model = checkpoints[layout]
    dinov3kit = globals()["dinov3kit"] if runner == "subprocess" else in_process(capsys)
    photos = collection / "photos"
    index = tmp_path / "index.parquet"

    # embed: every good photo once, bad inputs recorded with their reason, the run goes on
    run = dinov3kit("embed", photos, collection / "extra.txt", "-o", index, "--model", model, "--batch-size", "3", "--workers", "1", "-q")
    assert f"embedded {len(GOOD)} of {len(GOOD) + len(BAD_INPUTS)} images" in run.stdout
    assert f"{len(BAD_INPUTS)} failed" in run.stdout
    table = pq.read_table(index)
    assert sorted(Path(p).name for p in table.column("path").to_pylist()) == sorted(GOOD)
    meta = json.loads(pq.read_metadata(index).metadata[b"dinov3kit"])
    assert meta["model"] == str(model) and meta["resolution"] == 224 and meta["rows"] == len(GOOD)
    assert {Path(e["path"]).name: e["error"] for e in meta["errors"]}.keys() == BAD_INPUTS.keys()
    for error in meta["errors"]:
        assert BAD_INPUTS[Path(error["path"]).name] in error["error"]
    rows = {Path(p).name: i for i, p in enumerate(table.column("path").to_pylist())}
    cat = rows["cat.jpg"]
    with Image.open(PHOTOS / "cat.jpg") as image:
        assert (table.column("width")[cat].as_py(), table.column("height")[cat].as_py()) == image.size
    assert table.column("sha256")[cat].as_py() == hashlib.sha256((PHOTOS / "cat.jpg").read_bytes()).hexdigest()
    # the stored features are the model's, for the processed photo
    embedder = Embedder.load(model, device="cpu")
    expected = embedder(embedder.preprocess(load_image(PHOTOS / "cat.jpg")).unsqueeze(0))
    np.testing.assert_allclose(table.column("cls")[cat].as_py(), expected.cls[0].numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(table.column("mean_patch")[cat].as_py(), expected.mean_patch[0].numpy(), rtol=1e-4, atol=1e-5)

    # search: the query photo and its exact copy come first with score ~1, then the re-encoded copy
    grid = tmp_path / "grid.png"
    found = json.loads(dinov3kit("search", index, PHOTOS / "cat.jpg", rows["astronaut.jpg"], "-k", "3", "--json", "--grid", grid).stdout)
    cat_hits = found[0]["hits"]
    assert {Path(h["path"]).name for h in cat_hits[:2]} == {"cat.jpg", "cat_copy.jpg"}
    assert all(h["score"] == pytest.approx(1.0, abs=1e-4) for h in cat_hits[:2])
    assert Path(cat_hits[2]["path"]).name == "cat_reencoded.jpg" and cat_hits[2]["score"] < cat_hits[1]["score"]
    assert Path(found[1]["hits"][0]["path"]).name == "astronaut.jpg" and found[1]["row"] == rows["astronaut.jpg"]
    with Image.open(grid) as sheet:
        assert sheet.width > 4 * 160 and sheet.height > 2 * 160

    # dedup: one group, the cat and its two copies
    groups = json.loads(dinov3kit("dedup", index, "--threshold", "0.995", "--format", "json").stdout)
    assert [sorted(Path(m["path"]).name for m in g["members"]) for g in groups] == [["cat.jpg", "cat_copy.jpg", "cat_reencoded.jpg"]]
    csv_file = tmp_path / "groups.csv"
    assert main(["dedup", str(index), "--threshold", "0.995", "--format", "csv", "-o", str(csv_file)]) == 0
    csv_lines = csv_file.read_text().splitlines()
    assert csv_lines[0] == "group,row,similarity,path" and len(csv_lines) == 4

    # pca: the model input size (aspect ratio kept), three informative colour channels
    pca_png = tmp_path / "pca.png"
    dinov3kit("pca", PHOTOS / "cat.jpg", "-o", pca_png, "--model", model, "--resolution", "160")
    expected_hw = tuple(Embedder(embedder.model, str(model), 160).preprocess_dense(load_image(PHOTOS / "cat.jpg")).shape[-2:])
    pixels = np.asarray(Image.open(pca_png).convert("RGB"), dtype=np.float32)
    assert pixels.shape[:2] == expected_hw == (160, 240)
    assert pixels.reshape(-1, 3).std(axis=0).min() > 20
    assert len(np.unique(pixels.reshape(-1, 3).astype(np.uint8), axis=0)) > 1000

    # similarity: of a cat patch against the astronaut photo, and against the cat itself (peak = 1)
    sim_png = tmp_path / "similarity.png"
    output = dinov3kit("similarity", PHOTOS / "cat.jpg", "--point", "240,110", "--ref", PHOTOS / "astronaut.jpg", "-o", sim_png,
                       "--model", model, "--resolution", "160").stdout
    assert "similarity" in output
    with Image.open(sim_png) as picture:
        assert picture.height == 160 and picture.width == 240 + 8 + 160
    self_png = tmp_path / "self.png"
    assert main(["similarity", str(PHOTOS / "cat.jpg"), "--point", "240,110", "-o", str(self_png), "--model", str(model), "--resolution", "160"]) == 0
    assert capsys.readouterr().out.rstrip().endswith(".. 1.000)")
    assert Image.open(self_png).size == (240, 160)


def make_photos(folder: Path, count: int, size: tuple[int, int]) -> list[Path]:
    """`count` distinct photos (shifted crops of the samples, enlarged to `size` so that decoding takes a while)."""
    folder.mkdir(parents=True)
    sources = sorted(PHOTOS.glob("*.jpg"))
    paths = []
    for number in range(count):
        with Image.open(sources[number % len(sources)]) as image:
            shift = 8 * (number // len(sources))
            photo = image.crop((shift, shift, shift + 240, shift + 200)).resize(size, Image.Resampling.BILINEAR)
        path = folder / f"photo{number:03d}.jpg"
        photo.save(path, quality=90)
        paths.append(path)
    return paths


def read_rows(index: Path) -> dict[str, np.ndarray]:
    table = pq.read_table(index)
    paths = table.column("path").to_pylist()
    assert len(paths) == len(set(paths)), "duplicated rows"
    return dict(zip(paths, np.stack(table.column("cls").to_pylist())))


def test_a_killed_run_resumes_without_losing_or_repeating_rows(checkpoints, tmp_path):
    photos = make_photos(tmp_path / "photos", 24, (640, 480))
    args = ["--model", checkpoints["hf"], "--batch-size", "2", "--chunk-size", "4", "--workers", "0", "-q"]
    index = tmp_path / "index.parquet"
    partial = tmp_path / "index.parquet.partial"
    command = [sys.executable, "-m", "dinov3kit.cli", "embed", str(tmp_path / "photos"), "-o", str(index), *map(str, args)]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while len(list(partial.glob("*.parquet"))) < 2 and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL, "the run ended before it could be killed part-way"
    assert not index.exists()
    committed = sum(pq.read_table(chunk).num_rows for chunk in partial.glob("*.parquet"))
    assert 0 < committed < len(photos)

    resumed = dinov3kit("embed", tmp_path / "photos", "-o", index, *args)
    assert f"{committed} already in the index" in resumed.stdout
    assert not partial.exists()
    reference = tmp_path / "reference.parquet"
    embed_images([tmp_path / "photos"], reference, model=checkpoints["hf"], batch_size=5, workers=0, progress=False)
    got, want = read_rows(index), read_rows(reference)
    assert sorted(got) == sorted(want) == sorted(str(p) for p in photos)
    for path, vector in want.items():
        np.testing.assert_allclose(got[path], vector, rtol=1e-5, atol=1e-6)


def test_strict_mode_stops_at_a_bad_image_and_mismatched_options_are_refused(checkpoints, collection, tmp_path, capsys):
    index = tmp_path / "index.parquet"
    assert main(["embed", str(collection / "photos"), "-o", str(index), "--model", str(checkpoints["meta"]), "--strict", "-q"]) == 1
    stderr = capsys.readouterr().err
    assert "broken.jpg" in stderr and "without --strict" in stderr
    assert main(["embed", str(collection / "photos"), "-o", str(index), "--model", str(checkpoints["meta"]), "--resolution", "160"]) == 2
    assert "resolution 224 (now 160)" in capsys.readouterr().err
    assert main(["embed", str(tmp_path / "nowhere"), "-o", str(index)]) == 2
    assert "no such file or folder" in capsys.readouterr().err


def test_convert_both_ways_and_info(checkpoints, tmp_path, capsys):
    meta_file, folder = tmp_path / "converted.pth", tmp_path / "converted"
    assert main(["convert", str(checkpoints["hf"]), str(meta_file)]) == 0
    assert main(["convert", str(meta_file), str(folder)]) == 0
    from dinov3kit import DINOv3ViTModel

    pixels = torch.randn(1, 3, 64, 48)
    original = DINOv3ViTModel.from_pretrained(checkpoints["hf"])(pixels).last_hidden_state
    for converted in (meta_file, folder):
        torch.testing.assert_close(DINOv3ViTModel.from_pretrained(converted)(pixels).last_hidden_state, original)
    capsys.readouterr()
    assert main(["info", str(folder), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["parameters"] == DINOv3ViTModel.from_pretrained(checkpoints["hf"]).num_parameters()
    assert info["model_type"] == "dinov3_vit" and info["num_register_tokens"] == 2 and info["dtype"] == "float32"
    assert info["normalization"].startswith("lvd1689m")


def test_unavailable_weights_are_explained_never_replaced(tmp_path, monkeypatch, capsys):
    offline = {"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf-home"), "DINOV3KIT_MODEL": ""}
    demo = subprocess.run([sys.executable, ROOT / "examples" / "quickstart.py", "--out", tmp_path / "demo"],
                          capture_output=True, text=True, timeout=120, env={**os.environ, **offline})
    assert demo.returncode == 1
    for needed in ("no DINOv3 weights could be loaded", "gated", "https://huggingface.co/facebook/dinov3-vits16-pretrain-lvd1689m",
                   "--model", "DINOV3KIT_MODEL", "never substitutes random weights"):
        assert needed in demo.stderr
    assert not (tmp_path / "demo").exists()
    missing = tmp_path / "no-such-checkpoint.pth"
    assert main(["embed", str(PHOTOS), "-o", str(tmp_path / "x.parquet"), "--model", str(missing)]) == 2
    assert "never substitutes random weights" in capsys.readouterr().err
    assert not (tmp_path / "x.parquet").exists() and not (tmp_path / "x.parquet.partial").exists()


def test_demo_runs_on_a_given_checkpoint(checkpoints, tmp_path):
    demo = subprocess.run([sys.executable, ROOT / "examples" / "quickstart.py", "--model", checkpoints["meta"], "--out", tmp_path],
                          capture_output=True, text=True, timeout=180)
    assert demo.returncode == 0, demo.stderr
    for name in ("photos.parquet", "search.png", "astronaut_pca.png", "cat_pca.png"):
        assert str(tmp_path / name) in demo.stdout and (tmp_path / name).is_file()
    assert "#1  1.000  cat.jpg" in demo.stdout


def test_console_script_is_installed():
    script = Path(sys.executable).with_name("dinov3kit")
    result = subprocess.run([script, "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0
    for command in ("embed", "search", "dedup", "pca", "similarity", "convert", "info"):
        assert command in result.stdout


@pytest.mark.slow
def test_export_writes_an_onnx_graph_that_matches_torch(checkpoints, tmp_path, capsys):
    out = tmp_path / "model.onnx"
    assert main(["export", str(checkpoints["meta"]), "-o", str(out)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert out.is_file() and len(lines) == 3
    assert all(float(line.rsplit(" ", 1)[1]) < 1e-4 for line in lines[1:])


# --- hostile inputs and concurrent use (issue 14) ------------------------------------------------
def run_main(capsys, *args) -> tuple[int, str, str]:
    """`main` on these arguments: exit code, stdout and stderr."""
    capsys.readouterr()
    try:
        code = main([str(arg) for arg in args])
    except SystemExit as exit:  # argparse's usage errors
        code = exit.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_clean_error(code: int, err: str, *needles: str) -> None:
    assert code == 2, err
    assert "Traceback" not in err and err.count("\n") <= 6, err
    for needle in needles:
        assert needle in err, err


@pytest.mark.parametrize("kind", ["same", "symlink", "hardlink"])
def test_convert_refuses_to_write_over_its_source(checkpoints, tmp_path, capsys, kind):
    source = tmp_path / "m.pth"
    shutil.copy(checkpoints["meta"], source)
    before = source.read_bytes()
    destination = {"same": source, "symlink": tmp_path / "link.pth", "hardlink": tmp_path / "hard.pth"}[kind]
    if kind == "symlink":
        destination.symlink_to(source)
    elif kind == "hardlink":
        os.link(source, destination)
    code, _, err = run_main(capsys, "convert", source, destination)
    assert_clean_error(code, err, "refusing to write over the input", str(source))
    assert source.read_bytes() == before
    code, _, err = run_main(capsys, "convert", checkpoints["hf"], checkpoints["hf"])  # a folder into itself
    assert_clean_error(code, err, "refusing to write over the input")


def test_a_second_embed_on_one_output_is_refused_and_readers_see_the_last_complete_index(checkpoints, tmp_path, capsys):
    photos = make_photos(tmp_path / "photos", 24, (480, 360))
    index = tmp_path / "index.parquet"
    args = ["--model", checkpoints["hf"], "--batch-size", "2", "--chunk-size", "4", "--workers", "0", "-q"]
    assert main(["embed", *map(str, photos[:4]), "-o", str(index), *map(str, args)]) == 0
    command = [sys.executable, "-m", "dinov3kit.cli", "embed", str(tmp_path / "photos"), "-o", str(index), *map(str, args)]
    first = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lock = tmp_path / "index.parquet.lock"
    deadline = time.monotonic() + 120
    while (not lock.exists() or lock.read_text().strip() != str(first.pid)) and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    try:
        code, _, err = run_main(capsys, "embed", tmp_path / "photos", "-o", index, *args)
        assert_clean_error(code, err, f"another `dinov3kit embed` (pid {first.pid}) is writing {index}")
        code, out, _ = run_main(capsys, "info", index, "--json")  # a reader during the run: the last complete index
        assert code == 0 and json.loads(out)["rows"] == 4
        code, out, _ = run_main(capsys, "search", index, "0", "-k", "2", "--json")
        assert code == 0 and len(json.loads(out)[0]["hits"]) == 2
        assert first.poll() is None, "the first run ended before the second was tried"
    finally:
        out, err = first.communicate(timeout=300)
    assert first.returncode == 0, err
    assert "embedded 20 of 24 images, 4 already in the index" in out
    assert sorted(read_rows(index)) == sorted(str(p) for p in photos)


def test_special_files_and_symlink_loops_neither_hang_nor_repeat(checkpoints, tmp_path):
    photos = tmp_path / "photos"
    shutil.copytree(PHOTOS, photos, ignore=shutil.ignore_patterns("*.md", "*.py", "[a-h]*"))
    os.mkfifo(photos / "pipe.png")
    (photos / "zero.jpg").symlink_to("/dev/zero")
    (photos / "loop").symlink_to(photos)
    (photos / "inner").mkdir()
    (photos / "inner" / "back").symlink_to(photos)
    shutil.copy(PHOTOS / "cat.jpg", photos / "inner" / "cat.jpg")
    index = tmp_path / "index.parquet"
    run = dinov3kit("embed", photos, "-o", index, "--model", checkpoints["hf"], "--workers", "1", "-q", timeout=180)
    good = ["inner/cat.jpg", "retina.jpg", "rocket.jpg"]
    assert f"embedded {len(good)} of {len(good) + 2} images" in run.stdout
    assert sorted(os.path.relpath(p, photos) for p in read_rows(index)) == good
    errors = {Path(e["path"]).name: e["error"] for e in json.loads(pq.read_metadata(index).metadata[b"dinov3kit"])["errors"]}
    assert "named pipe" in errors["pipe.png"] and "character device" in errors["zero.jpg"]


def test_byte_limit_option(checkpoints, tmp_path, capsys):
    index = tmp_path / "index.parquet"
    code, out, _ = run_main(capsys, "embed", PHOTOS / "cat.jpg", PHOTOS / "rocket.jpg", "-o", index, "--model", checkpoints["hf"],
                            "--max-bytes", "1K", "--workers", "0", "-q")
    assert code == 0 and "embedded 0 of 2 images" in out and "over the limit of 1024 bytes per file" in out
    code, _, err = run_main(capsys, "embed", PHOTOS, "-o", index, "--max-bytes", "lots")
    assert code == 2 and "--max-bytes: a size must be a number of bytes" in err


def test_indexes_record_their_model_and_refuse_another(checkpoints, tmp_path, capsys):
    index = tmp_path / "index.parquet"
    _, other = save_hf_vit(tmp_path / "other", seed=11, num_register_tokens=2)  # same width, other weights
    _, narrow = save_hf_vit(tmp_path / "narrow", seed=12, hidden_size=32, intermediate_size=64)
    base = ["--workers", "0", "-q"]
    assert main(["embed", str(PHOTOS / "cat.jpg"), str(PHOTOS / "rocket.jpg"), "-o", str(index), "--model", str(checkpoints["hf"]), *base]) == 0
    meta = json.loads(pq.read_metadata(index).metadata[b"dinov3kit"])
    assert len(meta["model_digest"]) == 64 and meta["dim"] == 64 and len(meta["weight_sample"]) > 20
    code, out, _ = run_main(capsys, "search", index, PHOTOS / "cat.jpg", "--json")  # the recorded model
    assert code == 0 and Path(json.loads(out)[0]["hits"][0]["path"]).name == "cat.jpg"
    code, _, err = run_main(capsys, "search", index, PHOTOS / "cat.jpg", "--model", other)
    assert_clean_error(code, err, str(index), "differs in its weights or config", "--allow-model-mismatch")
    code, out, _ = run_main(capsys, "search", index, PHOTOS / "cat.jpg", "--model", other, "--allow-model-mismatch", "--json")
    assert code == 0 and len(json.loads(out)[0]["hits"]) == 2
    code, _, err = run_main(capsys, "search", index, PHOTOS / "cat.jpg", "--model", narrow, "--allow-model-mismatch")
    assert_clean_error(code, err, "holds 64-wide vectors", "makes 32-wide ones")  # never a numpy broadcast error
    code, _, err = run_main(capsys, "embed", PHOTOS / "coffee.jpg", "-o", index, "--model", other, "--allow-model-mismatch", *base)
    assert code == 0, err  # the same path key is waived, the same width holds
    code, _, err = run_main(capsys, "embed", PHOTOS / "hubble.jpg", "-o", index, "--model", narrow, "--allow-model-mismatch", *base)
    assert_clean_error(code, err, "64-wide vectors")


def test_control_characters_in_names_are_printed_escaped(checkpoints, tmp_path, capsys):
    photos = tmp_path / "photos"
    photos.mkdir()
    evil = "evil\x1b[2J\nfaked line\u202e.jpg"
    shutil.copy(PHOTOS / "cat.jpg", photos / evil)
    (photos / "bad\x07\r.jpg").write_bytes(b"not an image")
    index = tmp_path / "index.parquet"
    outputs = [run_main(capsys, "embed", photos, "-o", index, "--model", checkpoints["hf"], "--workers", "0", "-q")]
    outputs.append(run_main(capsys, "info", index))
    outputs.append(run_main(capsys, "search", index, "0"))
    outputs.append(run_main(capsys, "dedup", index, "--threshold", "-1"))
    outputs.append(run_main(capsys, "search", photos / evil, "0"))
    for _, out, err in outputs:
        for text in (out, err):
            assert not any(c in text for c in "\x1b\x07\r\u202e"), text
            assert "faked line" not in text or "\\nfaked line" in text
    assert "evil\\x1b[2J\\nfaked line\\u202e.jpg" in outputs[1][1] + outputs[2][1]


def test_hostile_tool_inputs_get_short_errors(checkpoints, tmp_path, capsys):
    thin = tmp_path / "thin.png"
    Image.new("RGB", (1200, 3), "white").save(thin)
    started = time.monotonic()
    code, _, err = run_main(capsys, "pca", thin, "-o", tmp_path / "pca.png", "--model", checkpoints["hf"])
    assert_clean_error(code, err, str(thin), "1200x3", "megapixels", "lower --resolution")
    code, _, err = run_main(capsys, "similarity", thin, "--point", "1,1", "-o", tmp_path / "s.png", "--model", checkpoints["hf"])
    assert_clean_error(code, err, "megapixels")
    assert time.monotonic() - started < 30 and not (tmp_path / "pca.png").exists()
    index, cat = tmp_path / "index.parquet", tmp_path / "cat.jpg"
    shutil.copy(PHOTOS / "cat.jpg", cat)
    assert main(["embed", str(cat), "-o", str(index), "--model", str(checkpoints["hf"]), "--workers", "0", "-q"]) == 0
    code, _, err = run_main(capsys, "search", index, "-1")
    assert_clean_error(code, err, "row -1 is out of range: row ids are 0..0")
    code, _, err = run_main(capsys, "dedup", index, "--threshold", "2")
    assert_clean_error(code, err, "cosine similarity from -1 to 1")
    listing = tmp_path / "list.txt"
    listing.write_text("http://host/x.jpg\n")
    code, _, err = run_main(capsys, "embed", listing, "-o", tmp_path / "u.parquet")
    assert_clean_error(code, err, "http://host/x.jpg", "local files only")
    corrupt = tmp_path / "corrupt.parquet"
    corrupt.write_bytes(index.read_bytes()[:-200])
    for command in (["info", corrupt], ["search", corrupt, "0"], ["dedup", corrupt]):
        code, _, err = run_main(capsys, *command)
        assert_clean_error(code, err, str(corrupt))
    before = cat.read_bytes()
    code, _, err = run_main(capsys, "embed", cat, "-o", cat, "--overwrite")
    assert_clean_error(code, err, "refusing to write over the input")
    code, _, err = run_main(capsys, "search", index, "0", "--grid", cat)  # the grid would replace a result's image
    assert_clean_error(code, err, "refusing to write over the input")
    assert cat.read_bytes() == before


def test_debug_shows_the_traceback_and_hub_advice_is_for_hub_ids_only(tmp_path, capsys):
    missing = tmp_path / "nowhere.pth"
    code, _, err = run_main(capsys, "info", missing)
    assert_clean_error(code, err, str(missing), "Check the path")
    assert "gated" not in err
    for debug in (["--debug", "info", str(missing)], ["info", str(missing), "--debug"]):
        with pytest.raises(ValueError):
            main(debug)
    offline = {"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf-home")}
    result = dinov3kit("info", "facebook/dinov3-vits16-pretrain-lvd1689m", env=offline, check=False)
    assert result.returncode == 2 and "gated" in result.stderr and "Traceback" not in result.stderr
