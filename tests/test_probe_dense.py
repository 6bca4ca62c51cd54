"""Dense probes on synthetic images with known masks: foreground and three-class heads learn the masks
(through a random-weight model, the objects differ in colour), predictions come out at the input's size,
the 3x3 median filter, and bad input."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dinov3kit.cli import main
from dinov3kit.tools.dense_probe import (
    DenseHead,
    fit_dense_probe,
    median_filter_3x3,
    patch_fractions,
    predict_dense,
    read_mask,
)
from dinov3kit.tools.probe import ProbeError
from dinov3kit.tools.runtime import Embedder
from oracles.hf_twin import save_hf_vit

WIDTH, HEIGHT = 160, 112


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: see conftest.one_thread


def scene(rng: np.random.Generator) -> tuple[Image.Image, np.ndarray]:
    """A noisy grey background with a red rectangle (class 1) in the left half and a blue one (class 2) in
    the right half; returns image, mask."""
    pixels = np.clip(rng.normal(120, 25, (HEIGHT, WIDTH, 3)), 0, 255)
    mask = np.zeros((HEIGHT, WIDTH), dtype=np.uint8)
    for value, colour, left in ((1, (220, 30, 30), 0), (2, (30, 40, 220), WIDTH // 2)):
        h, w = rng.integers(36, 56, 2)
        y, x = rng.integers(0, HEIGHT - h), left + rng.integers(0, WIDTH // 2 - w)
        pixels[y:y + h, x:x + w] = np.clip(np.array(colour) + rng.normal(0, 15, (h, w, 3)), 0, 255)
        mask[y:y + h, x:x + w] = value
    return Image.fromarray(pixels.astype(np.uint8)), mask


def make_scenes(folder: Path, count: int, seed: int, binary: bool) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    (folder / "images").mkdir(parents=True)
    (folder / "masks").mkdir()
    truth = {}
    for i in range(count):
        image, mask = scene(rng)
        image.save(folder / "images" / f"scene{i}.png")
        stored = (mask > 0).astype(np.uint8) * 255 if binary else mask
        Image.fromarray(stored, "L").save(folder / "masks" / f"scene{i}.png")
        truth[str(folder / "images" / f"scene{i}.png")] = stored
    return truth


@pytest.fixture(scope="module")
def embedder(tmp_path_factory):
    _, model = save_hf_vit(tmp_path_factory.mktemp("dense") / "vit", seed=3)
    return Embedder.load(model, device="cpu", resolution=224)


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


def test_foreground_head_through_the_cli(embedder, tmp_path, capsys):
    make_scenes(tmp_path / "train", 6, seed=0, binary=True)
    truth = make_scenes(tmp_path / "test", 3, seed=1, binary=True)
    head = tmp_path / "fg.safetensors"
    assert main(["probe", "fit-dense", str(tmp_path / "train" / "images"), "--masks", str(tmp_path / "train" / "masks"),
                 "-o", str(head), "--model", embedder.source, "--resolution", "224", "-q"]) == 0
    report = capsys.readouterr().out
    assert "cross-validated over images" in report and "IoU foreground" in report
    assert DenseHead.load(head).meta["classes"] == ["background", "foreground"]
    assert main(["probe", "predict-dense", str(head), str(tmp_path / "test" / "images"), "-o", str(tmp_path / "out"), "-q"]) == 0
    for path, expected in truth.items():
        stem = Path(path).stem
        mask = np.array(Image.open(tmp_path / "out" / f"{stem}_mask.png"))
        overlay = Image.open(tmp_path / "out" / f"{stem}_overlay.png")
        assert mask.shape == (HEIGHT, WIDTH) and overlay.size == (WIDTH, HEIGHT) and set(np.unique(mask)) <= {0, 255}
        assert iou(mask > 0, expected > 0) > 0.7


def test_three_class_head_learns_each_class(embedder, tmp_path):
    make_scenes(tmp_path / "train", 6, seed=2, binary=False)
    truth = make_scenes(tmp_path / "test", 3, seed=3, binary=False)
    result = fit_dense_probe([tmp_path / "train" / "images"], tmp_path / "train" / "masks", embedder=embedder, l2=0.01)
    assert result.head.classes == ["0", "1", "2"] and result.accuracy > 0.8 and min(result.iou.values()) > 0.5
    for prediction in predict_dense(result.head, list(truth), embedder=embedder):
        assert prediction.probabilities.shape == (3, HEIGHT, WIDTH)
        torch.testing.assert_close(prediction.probabilities.sum(0), torch.ones(HEIGHT, WIDTH), rtol=0, atol=1e-4)
        expected = truth[prediction.path]
        for value in (1, 2):
            assert iou(prediction.labels.numpy() == value, expected == value) > 0.6


def test_patch_fractions_and_median_filter():
    mask = np.zeros((32, 48), dtype=np.int64)
    mask[:16, :24] = 1
    mask[16:, 40:] = 255  # ignored
    fractions = patch_fractions(mask, [0, 1], (2, 3))
    torch.testing.assert_close(fractions[1], torch.tensor([[1.0, 0.5, 0.0], [0.0, 0.0, 0.0]]))
    torch.testing.assert_close(fractions[0], torch.tensor([[0.0, 0.5, 1.0], [1.0, 1.0, 0.5]]))
    maps = torch.zeros(1, 5, 5)
    maps[0, 2, 2] = 1.0  # an isolated spike is removed, a block survives
    maps[0, :2, :] = 1.0
    filtered = median_filter_3x3(maps)[0]
    assert filtered[2, 2] == 0 and filtered[0].eq(1).all() and filtered[3:].eq(0).all()


def test_masks_read_by_convention(tmp_path):
    rgba = Image.new("RGBA", (4, 4), (10, 20, 30, 0))
    rgba.putpixel((1, 1), (10, 20, 30, 255))
    rgba.save(tmp_path / "a.png")
    values, binary = read_mask(tmp_path / "a.png")
    assert binary and values.sum() == 1 and values[1, 1] == 1
    Image.fromarray(np.array([[0, 3], [7, 255]], dtype=np.uint8), "L").save(tmp_path / "b.png")
    values, binary = read_mask(tmp_path / "b.png")
    assert not binary and values.tolist() == [[0, 3], [7, 255]]


def test_bad_dense_input(embedder, tmp_path):
    make_scenes(tmp_path / "d", 2, seed=4, binary=True)
    (tmp_path / "d" / "masks" / "scene1.png").unlink()
    with pytest.raises(ProbeError, match="scene1.png: no mask named scene1.png"):
        fit_dense_probe([tmp_path / "d" / "images"], tmp_path / "d" / "masks", embedder=embedder)
    with pytest.raises(ProbeError, match="no such folder of masks"):
        fit_dense_probe([tmp_path / "d" / "images"], tmp_path / "nowhere", embedder=embedder)
    Image.new("L", (WIDTH, HEIGHT), 0).save(tmp_path / "d" / "masks" / "scene1.png")
    Image.new("L", (WIDTH, HEIGHT), 0).save(tmp_path / "d" / "masks" / "scene0.png")
    with pytest.raises(ProbeError, match="fewer than two classes"):
        fit_dense_probe([tmp_path / "d" / "images"], tmp_path / "d" / "masks", embedder=embedder)
    Image.new("L", (50, 50), 0).save(tmp_path / "d" / "masks" / "scene1.png")
    with pytest.raises(ProbeError, match="a 50x50 mask for the 160x112 image"):
        fit_dense_probe([tmp_path / "d" / "images"], tmp_path / "d" / "masks", embedder=embedder)
