"""`embed_images` through the Python API: stored features are the model's, with any number of decoding
workers, for ViT and ConvNeXt checkpoints, with patch grids on request."""

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from dinov3kit.images import load_image
from dinov3kit.tools.embed import embed_images
from dinov3kit.tools.runtime import Embedder
from dinov3kit.tools.store import read_meta
from oracles.convnext_twins import hf_convnext
from oracles.hf_twin import save_hf_vit

PHOTOS = Path(__file__).resolve().parents[1] / "examples" / "photos"


@pytest.fixture(scope="module")
def vit(tmp_path_factory) -> Embedder:
    _, folder = save_hf_vit(tmp_path_factory.mktemp("vit") / "hf", seed=5, num_register_tokens=4)
    return Embedder.load(folder, device="cpu", resolution=160)


def columns(index: Path) -> dict:
    table = pq.read_table(index)
    return {name: table.column(name).to_pylist() for name in table.column_names}


def test_patch_grids_and_features_match_the_model_with_or_without_workers(vit, tmp_path):
    embed_images([PHOTOS], tmp_path / "a.parquet", embedder=vit, batch_size=4, workers=0, patches=True, progress=False)
    embed_images([PHOTOS], tmp_path / "b.parquet", embedder=vit, batch_size=3, workers=2, patches=True, progress=False)
    a, b = columns(tmp_path / "a.parquet"), columns(tmp_path / "b.parquet")
    assert a["path"] == b["path"] == sorted(str(p) for p in PHOTOS.glob("*.jpg"))
    np.testing.assert_allclose(np.array(a["cls"]), np.array(b["cls"]), rtol=1e-5, atol=1e-6)
    meta = read_meta(tmp_path / "a.parquet")
    assert meta["patch_grid"] == [10, 10] and meta["patches"] is True
    pixels = torch.stack([vit.preprocess(load_image(path)) for path in a["path"]])
    expected = vit(pixels)
    np.testing.assert_allclose(np.array(a["cls"]), expected.cls.numpy(), rtol=1e-4, atol=1e-5)
    patches = np.array(a["patches"], dtype=np.float32).reshape(len(a["path"]), 10, 10, -1)
    np.testing.assert_allclose(patches, expected.patches.numpy(), rtol=2e-3, atol=2e-3)  # float16
    np.testing.assert_allclose(np.array(a["mean_patch"]), expected.patches.mean(dim=(1, 2)).numpy(), rtol=1e-4, atol=1e-5)


def test_convnext_checkpoints_embed_too(tmp_path):
    hf_convnext(seed=2).save_pretrained(tmp_path / "convnext")
    embedder = Embedder.load(tmp_path / "convnext", device="cpu", dtype="fp32", resolution=224)
    summary = embed_images([PHOTOS / "cat.jpg", PHOTOS / "coffee.jpg"], tmp_path / "c.parquet", embedder=embedder,
                           workers=0, patches=True, progress=False)
    assert (summary.embedded, summary.failed) == (2, 0)
    stored = columns(tmp_path / "c.parquet")
    output = embedder.model(torch.stack([embedder.preprocess(load_image(PHOTOS / "cat.jpg"))]))
    np.testing.assert_allclose(stored["cls"][0], output.pooler_output[0].detach().numpy(), rtol=1e-4, atol=1e-5)
    assert read_meta(tmp_path / "c.parquet")["patch_grid"] == [7, 7]
