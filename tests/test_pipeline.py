"""pipeline("image-feature-extraction") returns what transformers' pipeline returns for the same
random-weight checkpoint and inputs, and reports unreadable inputs clearly or skips them."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from tests.oracles.convnext_twins import hf_convnext
from tests.oracles.hf_twin import save_hf_vit
from tests.oracles.images import encode, photo
from transformers import DINOv3ViTImageProcessor as TransformersProcessor
from transformers import pipeline as transformers_pipeline

import dinov3kit
from dinov3kit import DINOv3ViTModel, ImageLoadError
from dinov3kit.pipeline import ImageFeatureExtractionPipeline
from dinov3kit.weights.placement import fast_dtype

TOLERANCE = 1e-4  # model outputs of magnitude ~1-10 after two blocks, float32


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("vit")
    save_hf_vit(folder, num_register_tokens=4)
    TransformersProcessor(size={"height": 64, "width": 64}).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def pipes(checkpoint):
    return (
        transformers_pipeline("image-feature-extraction", model=str(checkpoint)),
        dinov3kit.pipeline("image-feature-extraction", model=checkpoint, dtype="auto"),  # the stored fp32
    )


@pytest.fixture(scope="module")
def images():
    return [photo("coffee"), photo("astronaut"), photo("chelsea")]


def assert_same(expected, result) -> None:
    assert type(expected) is type(result)
    expected_array, result_array = np.asarray(expected, dtype=np.float64), np.asarray(result, dtype=np.float64)
    assert expected_array.shape == result_array.shape
    assert np.abs(expected_array - result_array).max() <= TOLERANCE


@pytest.mark.parametrize(
    "options",
    [{}, {"pool": True}, {"batch_size": 2}, {"return_tensors": True}, {"pool": True, "return_tensors": True}],
    ids=["default", "pool", "batch_size", "return_tensors", "pooled_tensors"],
)
def test_same_outputs_as_transformers(pipes, images, options):
    theirs, ours = pipes
    single_theirs, single_ours = theirs(images[0], **options), ours(images[0], **options)
    if options.get("return_tensors"):
        assert isinstance(single_ours, torch.Tensor) and single_ours.shape == single_theirs.shape
        assert (single_ours - single_theirs).abs().max() <= TOLERANCE
    else:
        assert_same(single_theirs, single_ours)
    many_theirs, many_ours = theirs(images, **options), ours(images, **options)
    assert isinstance(many_ours, list) and len(many_ours) == len(images)
    for expected, result in zip(many_theirs, many_ours):
        if options.get("return_tensors"):
            assert (result - expected).abs().max() <= TOLERANCE
        else:
            assert_same(expected, result)


def test_file_paths_and_shapes(pipes, images, tmp_path):
    theirs, ours = pipes
    path = tmp_path / "coffee.png"
    path.write_bytes(encode(images[0]))
    assert_same(theirs(str(path)), ours(str(path)))
    tokens = np.asarray(ours(path))
    assert tokens.shape == (1, 1 + 4 + 16, 64)  # CLS, 4 registers, 4x4 patches of a 64 px input
    with_bar = ours(iter([path, str(path)]), progress=True)  # any iterable; a progress bar on stderr
    assert len(with_bar) == 2 and np.array_equal(np.asarray(with_bar[1]), tokens)


def test_model_instance_and_dtype(checkpoint, images):
    model = DINOv3ViTModel.from_pretrained(checkpoint)
    from_instance = dinov3kit.pipeline(model=model, image_processor=checkpoint)
    from_folder = dinov3kit.pipeline(model=checkpoint, dtype="auto")
    assert_same(from_folder(images[0]), from_instance(images[0]))
    assert from_instance.dtype == torch.float32  # an instance keeps its dtype
    assert dinov3kit.pipeline(model=checkpoint).dtype == fast_dtype(torch.device("cpu"))  # bf16 on AMX CPUs
    bf16 = dinov3kit.pipeline(model=checkpoint, dtype=torch.bfloat16)
    assert bf16.dtype == torch.bfloat16 and bf16(images[0], return_tensors=True).dtype == torch.bfloat16
    default_processor = dinov3kit.pipeline(model=model)  # built for the model: 224 px
    assert np.asarray(default_processor(images[0])).shape == (1, 1 + 4 + 196, 64)


def test_convnext_matches_transformers(tmp_path, images):
    hf_convnext().save_pretrained(tmp_path)
    TransformersProcessor(size={"height": 64, "width": 64}).save_pretrained(tmp_path)
    theirs = transformers_pipeline("image-feature-extraction", model=str(tmp_path))
    ours = dinov3kit.pipeline("image-feature-extraction", model=tmp_path, dtype="auto")
    assert_same(theirs(images[0]), ours(images[0]))
    assert_same(theirs(images[:2], pool=True), ours(images[:2], pool=True))


def test_bad_inputs_raise_or_are_skipped(pipes, images, tmp_path, caplog):
    _, ours = pipes
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(encode(images[0], "JPEG")[:300])
    batch = [images[0], broken, images[1], b""]
    with pytest.raises(ImageLoadError, match=r"image 1 \('.*broken.jpg'\)"):
        ours(batch)
    with caplog.at_level(logging.WARNING, logger="dinov3kit.pipeline"):
        results = ours(batch, skip_errors=True, batch_size=2)
    assert results[1] is None and results[3] is None
    assert [error.index for error in ours.skipped] == [1, 3]
    assert_same(ours(images[1]), results[2])
    assert "broken.jpg" in caplog.text and "skipped 2" in caplog.text


def test_arguments_are_checked(checkpoint):
    with pytest.raises(ValueError, match="tasks"):
        dinov3kit.pipeline("image-classification", model=checkpoint)
    with pytest.raises(ValueError, match="model="):
        dinov3kit.pipeline("image-feature-extraction")
    pipe = dinov3kit.pipeline(model=checkpoint)
    assert isinstance(pipe, ImageFeatureExtractionPipeline)
    with pytest.raises(TypeError, match="unknown pipeline options"):
        pipe(photo("coffee"), pooling=True)
    with pytest.raises(ValueError, match="batch_size"):
        pipe([photo("coffee")], batch_size=0)


def test_a_meta_checkpoint_is_opened_once(tmp_path, monkeypatch):
    """The source is resolved once: model, config and processor read the same opened file."""
    from dinov3kit.weights import files, save_meta_checkpoint

    model = DINOv3ViTModel(dinov3kit.DINOv3ViTConfig(hidden_size=64, num_attention_heads=2, num_hidden_layers=2))
    save_meta_checkpoint(model, tmp_path / "dinov3_vits16_pretrain_sat493m.pth")
    opened = []
    original = files.open_torch_pickle
    monkeypatch.setattr(files, "open_torch_pickle", lambda path: opened.append(path) or original(path))
    pipe = dinov3kit.pipeline(model=tmp_path / "dinov3_vits16_pretrain_sat493m.pth")
    assert len(opened) == 1
    assert pipe.image_processor.image_mean == dinov3kit.variants.SAT493M_MEAN  # the dataset named by the file
    assert pipe(np.zeros((32, 32, 3), np.uint8), return_tensors=True).shape == (1, 1 + 14 * 14, 64)
