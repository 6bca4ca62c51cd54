"""dino.txt tools through the CLI (in-process) and the Python API: embed stores the aligned embedding,
search by text, zero-shot labels, segmentation pictures, and clear errors for vision-only models."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from dinov3kit.cli import main
from dinov3kit.images import load_image
from dinov3kit.models.dinotxt import DINOv3TextModel
from dinov3kit.text import default_tokenizer
from dinov3kit.tools.store import read_index
from dinov3kit.tools.text import (
    PROMPT_TEMPLATES,
    encode_texts,
    label_embeddings,
    search_text,
    segment_image,
    zero_shot_classify,
)
from dinov3kit.tools.text_models import BACKBONE_ENV, NotATextModelError, load_text_model
from dinov3kit.weights import placement
from oracles.dinotxt_twin import meta_dinotxt_state_dict
from oracles.meta_twin import meta_vit_state_dict

PHOTOS = Path(__file__).resolve().parents[1] / "examples" / "photos"
HEAD = "dinov3_vitl16_dinotxt_vision_head_and_text_encoder-00000000.pth"
BACKBONE = "dinov3_vitl16_pretrain_lvd1689m-00000000.pth"


@pytest.fixture(autouse=True)
def fp32_by_default(monkeypatch):
    """The tools' "auto" dtype is fp32 here, as on CPUs without bf16 units: outputs are compared with fp32."""
    monkeypatch.setattr(placement, "has_half_matmul_units", lambda: False)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("dinotxt_tools")
    meta = root / "meta"
    meta.mkdir()
    torch.save(meta_vit_state_dict("vitl16", bf16_periods=False, seed=1), meta / BACKBONE)
    torch.save(meta_dinotxt_state_dict(text_dim=64, text_layers=1, seed=2), meta / HEAD)
    model = DINOv3TextModel.from_pretrained(meta / HEAD, backbone=meta / BACKBONE)
    model.save_pretrained(root / "folder")
    vit_only = root / "vit.pth"
    shutil.copy(meta / BACKBONE, vit_only)
    return {"head": meta / HEAD, "folder": root / "folder", "vit": vit_only}


@pytest.fixture(scope="module")
def model(checkpoints) -> DINOv3TextModel:
    return load_text_model(checkpoints["folder"], device="cpu", dtype="fp32")


def run(capsys, *args) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def test_embed_stores_the_aligned_embedding_and_text_search_ranks_by_it(checkpoints, model, tmp_path, capsys):
    index = tmp_path / "index.parquet"
    code, _, err = run(capsys, "embed", PHOTOS, "-o", index, "--model", checkpoints["folder"], "--device", "cpu", "--dtype", "fp32", "--workers", "0", "-q", "--resolution", "64")
    assert code == 0, err
    table = pq.read_table(index)
    paths = table.column("path").to_pylist()
    from dinov3kit.processing import processor_for_model

    processor = processor_for_model(model.backbone, size={"height": 64, "width": 64})
    pixels = torch.cat([processor(load_image(p), return_tensors="pt")["pixel_values"] for p in paths])
    with torch.no_grad():
        expected = model.get_image_features(pixels)
    stored = np.array(table.column("cls").to_pylist())
    np.testing.assert_allclose(stored, expected.numpy(), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(np.array(table.column("mean_patch").to_pylist()), stored, rtol=1e-4, atol=1e-4)

    code, out, err = run(capsys, "search", index, "--text", "a red car", "--text", "an astronaut", "-k", "3", "--json")
    assert code == 0, err
    results = json.loads(out)
    text = encode_texts(model, ["a red car", "an astronaut"])
    scores = text @ F.normalize(expected, dim=-1).T
    for result, row in zip(results, scores):
        assert [hit["path"] for hit in result["hits"]] == [paths[i] for i in row.argsort(descending=True)[:3]]
        assert result["hits"][0]["score"] == pytest.approx(float(row.max()), abs=1e-4)
    api = search_text(read_index(index), ["a red car"], k=2, model=model)
    assert [h.path for h in api[0].hits] == [h["path"] for h in results[0]["hits"][:2]]

    vit_index = tmp_path / "vit.parquet"
    assert run(capsys, "embed", PHOTOS / "cat.jpg", "-o", vit_index, "--model", checkpoints["vit"], "--device", "cpu", "--workers", "0", "-q")[0] == 0
    code, _, err = run(capsys, "search", vit_index, "--text", "a cat")
    assert code == 2 and "cannot read text" in err and "dino.txt model" in err
    code, _, err = run(capsys, "search", index)
    assert code == 2 and "--text" in err


def test_classify_probabilities_csv_json_and_bad_images(checkpoints, model, tmp_path, capsys):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a jpeg")
    images = [PHOTOS / "cat.jpg", broken, PHOTOS / "rocket.jpg"]
    code, out, err = run(capsys, "classify", *images, "--labels", "cat, rocket,car", "--model", checkpoints["folder"],
                         "--format", "json", "--templates", "a photo of a {}.|a {}", "-q")  # fmt: skip
    assert code == 0 and "broken.jpg" in err
    results = json.loads(out)
    assert [r["path"] for r in results] == [str(p) for p in images]
    assert results[1]["error"] and results[1]["probabilities"] is None
    good = results[0]["probabilities"]
    assert list(good) == ["cat", "rocket", "car"] and sum(good.values()) == pytest.approx(1.0, abs=1e-5)

    api = zero_shot_classify([PHOTOS / "cat.jpg"], ["cat", "rocket", "car"], model=model, templates=["a photo of a {}.", "a {}"])
    assert api[0].probabilities == pytest.approx(good, abs=1e-6)
    weights = label_embeddings(model, ["cat", "rocket", "car"], ["a photo of a {0}.", "a {0}"])
    manual = []
    for label in ["cat", "rocket", "car"]:
        prompts = encode_texts(model, [f"a photo of a {label}.", f"a {label}"])
        manual.append(F.normalize(prompts.mean(0), dim=-1))
    assert torch.allclose(weights, torch.stack(manual), atol=1e-6)

    out_csv = tmp_path / "labels.csv"
    code, out, _ = run(capsys, "classify", PHOTOS / "cat.jpg", "--labels", "cat,dog", "--model", checkpoints["folder"], "--format", "csv", "-o", out_csv, "-q")
    assert code == 0 and out_csv.read_text().splitlines()[0] == "path,label,cat,dog,error"
    assert len(PROMPT_TEMPLATES) == 80 and len(set(PROMPT_TEMPLATES)) == 80


def test_segment_picture_and_whole_mode(checkpoints, model, tmp_path, capsys):
    out = tmp_path / "seg.png"
    code, printed, err = run(capsys, "segment", PHOTOS / "astronaut.jpg", "--labels", "person,sky,ground", "--model",
                             checkpoints["folder"], "-o", out, "--resolution", "96", "--side", "64", "--stride", "32",
                             "--scores", tmp_path / "scores.npy", "--templates", "none")  # fmt: skip
    assert code == 0, err
    image = load_image(PHOTOS / "astronaut.jpg")
    picture = Image.open(out)
    assert picture.width == image.width and picture.height > image.height  # legend strip below
    assert np.load(tmp_path / "scores.npy").shape[0] == 3 and "person" in printed

    whole = segment_image(PHOTOS / "astronaut.jpg", ["person", "sky"], model=model, templates="none", resolution=64, mode="whole")
    assert whole.label_map.shape == (image.height, image.width)
    assert sum(whole.fractions().values()) == pytest.approx(1.0)
    from dinov3kit.processing import processor_for_model

    pixels = processor_for_model(model.backbone, size={"shortest_edge": 64}, keep_aspect_ratio=True, resample=3)(image, return_tensors="pt")["pixel_values"]
    ids = default_tokenizer()(["person", "sky"])
    with torch.no_grad():
        similarity = model.get_patch_text_similarity(pixels, ids)[0]  # [C, h, w]
    expected = F.interpolate(similarity[None], size=pixels.shape[-2:], mode="bilinear", align_corners=False)[0]
    assert torch.allclose(whole.scores, expected, atol=1e-5)


def test_meta_checkpoint_finds_its_backbone(checkpoints, tmp_path, monkeypatch, model):
    loaded = load_text_model(checkpoints["head"], device="cpu")
    assert torch.equal(loaded.text_projection.weight, model.text_projection.weight)
    alone = tmp_path / HEAD
    shutil.copy(checkpoints["head"], alone)
    with pytest.raises(FileNotFoundError, match=BACKBONE_ENV):
        load_text_model(alone, device="cpu")
    monkeypatch.setenv(BACKBONE_ENV, str(checkpoints["vit"]))
    assert load_text_model(alone, device="cpu").config.projection_dim == 128


def test_vision_only_models_are_refused_with_the_models_that_can(checkpoints, capsys):
    with pytest.raises(NotATextModelError, match="need a dino.txt model"):
        load_text_model(checkpoints["vit"])
    code, _, err = run(capsys, "classify", PHOTOS / "cat.jpg", "--labels", "cat,dog", "--model", checkpoints["vit"])
    assert code == 2 and "dinov3_vitl16_dinotxt_vision_head_and_text_encoder" in err
    code, _, err = run(capsys, "segment", PHOTOS / "cat.jpg", "--labels", "cat", "--model", checkpoints["vit"], "-o", "x.png")
    assert code == 2 and "not a dino.txt model" in err
    code, _, err = run(capsys, "classify", PHOTOS / "cat.jpg", "--labels", "cat,cat", "--model", checkpoints["folder"])
    assert code == 2 and "more than once" in err
    code, _, err = run(capsys, "classify", PHOTOS / "cat.jpg", "--model", checkpoints["folder"])  # shared with the linear head
    assert code == 2 and "--head" in err and "--labels" in err
    code, _, err = run(capsys, "classify", PHOTOS / "cat.jpg", "--labels", "cat", "--head", "x.pth", "--model", checkpoints["folder"])
    assert code == 2 and "exclude each other" in err


def test_readme_example_runs(checkpoints, tmp_path, monkeypatch):
    import re

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme[readme.index("## Text search (dino.txt)") :]
    block = re.search(r"```python\n(.*?)```", section, flags=re.S).group(1)
    code = (
        block.replace('"checkpoints/dinov3_vitl16_dinotxt_vision_head_and_text_encoder-a442d8f5.pth"', repr(str(checkpoints["head"])))
        .replace('"photos/cat.jpg"', repr(str(PHOTOS / "cat.jpg")))
        .replace('"dinotxt-vitl16"', repr(str(tmp_path / "folder")))
        .replace('"cat_segments.png"', repr(str(tmp_path / "seg.png")))
    )
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)
    assert (tmp_path / "folder" / "model.safetensors").exists() and (tmp_path / "seg.png").exists()
    assert namespace["maps"].shape == (1, 2, 14, 14)


def test_info_and_convert_make_one_folder_from_metas_two_files(checkpoints, model, tmp_path, capsys):
    code, out, err = run(capsys, "info", checkpoints["head"], "--json")
    assert code == 0, err
    info = json.loads(out)
    assert info["model_type"] == "dinov3_dinotxt" and info["parameters"] == model.num_parameters()
    code, _, err = run(capsys, "convert", checkpoints["head"], tmp_path / "one")
    assert code == 0, err
    converted = load_text_model(tmp_path / "one", device="cpu")
    assert all(torch.equal(a, b) for a, b in zip(converted.state_dict().values(), model.state_dict().values()))
