"""DINOv3ViTImageProcessor against transformers' (the oracle): same pixels (max |diff| <= 1e-5) for real
photographs, awkward images, every input kind and the option combinations users set; plus saving,
loading, the SAT-493M statistics, the dense (aspect-preserving) mode and clear errors."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch
from PIL import Image
from tests.oracles.images import encode, photo, photos, sixteen_bit_gray, special_images
from transformers import AutoImageProcessor as TransformersAuto
from transformers import DINOv3ViTImageProcessor as TransformersProcessor

from dinov3kit import DINOv3ViTConfig, DINOv3ViTImageProcessor, DINOv3ViTImageProcessorFast, ImageLoadError
from dinov3kit.processing import BatchFeature, processor_for_model
from dinov3kit.variants import IMAGENET_MEAN, IMAGENET_STD, SAT493M_MEAN, SAT493M_STD

TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def theirs() -> TransformersProcessor:
    return TransformersProcessor()


@pytest.fixture(scope="module")
def ours() -> DINOv3ViTImageProcessor:
    return DINOv3ViTImageProcessor()


def max_diff(a, b) -> float:
    """Max |a - b| over one tensor or a list of them; shapes must agree."""
    a, b = (x if isinstance(x, (list, tuple)) else [x] for x in (a, b))
    assert len(a) == len(b)
    worst = 0.0
    for x, y in zip(a, b):
        x, y = torch.as_tensor(np.asarray(x)), torch.as_tensor(np.asarray(y))
        assert x.shape == y.shape, (x.shape, y.shape)
        worst = max(worst, (x.double() - y.double()).abs().max().item())
    return worst


def assert_parity(theirs, ours, images, **options) -> None:
    expected = theirs(images, return_tensors=None, **options)["pixel_values"]
    result = ours(images, return_tensors=None, **options)["pixel_values"]
    assert max_diff(expected, result) <= TOLERANCE


def test_defaults_match_transformers(theirs, ours):
    for name in ("do_resize", "do_rescale", "rescale_factor", "do_normalize", "do_center_crop", "do_convert_rgb"):
        assert getattr(ours, name) == getattr(theirs, name), name
    assert ours.size == dict(theirs.size) == {"height": 224, "width": 224}
    assert tuple(ours.image_mean) == tuple(theirs.image_mean) == IMAGENET_MEAN
    assert tuple(ours.image_std) == tuple(theirs.image_std) == IMAGENET_STD
    assert ours.resample == int(theirs.resample) == 2
    assert DINOv3ViTImageProcessorFast is DINOv3ViTImageProcessor


OPTION_SETS = {
    "default": {},
    "square_448": {"size": {"height": 448, "width": 448}},
    "non_square": {"size": (160, 320)},
    "int_size": {"size": 256},
    "shortest_edge": {"size": {"shortest_edge": 256}},
    "shortest_then_crop": {"size": {"shortest_edge": 256}, "do_center_crop": True, "crop_size": 224},
    "shortest_and_longest": {"size": {"shortest_edge": 300, "longest_edge": 400}},
    "max_height_width": {"size": {"max_height": 300, "max_width": 200}},
    "bicubic": {"resample": Image.Resampling.BICUBIC},
    "lanczos": {"resample": 1},
    "nearest": {"resample": 0},
    "upscale": {"size": {"height": 777, "width": 901}},
    "no_resize": {"do_resize": False},
    "no_normalize": {"do_normalize": False},
    "sat_stats": {"image_mean": list(SAT493M_MEAN), "image_std": list(SAT493M_STD)},
    "scalar_stats": {"image_mean": 0.5, "image_std": 0.25},
    "rescale_factor": {"rescale_factor": 1 / 127.5},
    "crop_larger_than_image": {"do_center_crop": True, "crop_size": {"height": 260, "width": 200}},
    "convert_rgb": {"do_convert_rgb": True},
}


#: Option sets checked on all four photographs; the others on two (coffee: landscape, astronaut: square).
ALL_PHOTOS = ("default", "shortest_then_crop", "bicubic", "lanczos")


@pytest.mark.parametrize("name", OPTION_SETS)
def test_photographs_every_option_set(theirs, ours, name):
    images = list(photos().values()) if name in ALL_PHOTOS else [photo("coffee"), photo("astronaut")]
    assert_parity(theirs, ours, images, **OPTION_SETS[name])


@pytest.mark.parametrize("name", ["large", "tiny", "one_pixel", "grayscale", "rgba", "gray_alpha", "cmyk", "palette"])
def test_awkward_images(theirs, ours, name):
    image = special_images()[name]
    if name in ("large", "tiny", "one_pixel", "grayscale"):  # transformers handles these without conversion
        assert_parity(theirs, ours, image)
    if name != "large":
        assert_parity(theirs, ours, image, do_convert_rgb=True)


def test_large_photo_dense_size(theirs, ours):
    assert_parity(theirs, ours, special_images()["large"], size={"shortest_edge": 768})


@pytest.mark.filterwarnings("ignore:The image decoding:DeprecationWarning")  # torchvision reads the path
def test_input_kinds(theirs, ours, tmp_path):
    image = photo("chelsea")
    array = np.asarray(image)
    kinds = {
        "numpy_hwc": array,
        "numpy_chw": np.ascontiguousarray(array.transpose(2, 0, 1)),
        "torch_chw": torch.from_numpy(array.copy()).permute(2, 0, 1),
        "torch_hwc": torch.from_numpy(array.copy()),
        "float64": array.astype(np.float64),
        "batch_4d": np.stack([array, array[::-1].copy()]),
        "nested_list": [[image], [photo("rocket")]],
        "rgba_array": np.asarray(special_images()["rgba"]),
    }
    for name, images in kinds.items():
        options = {"do_convert_rgb": True} if name == "rgba_array" else {}
        expected = theirs(images, return_tensors=None, **options)["pixel_values"]
        assert max_diff(expected, ours(images, return_tensors=None, **options)["pixel_values"]) <= TOLERANCE, name
    path = tmp_path / "chelsea.png"
    path.write_bytes(encode(image))
    expected = theirs(str(path), return_tensors="pt")["pixel_values"]
    for source in (str(path), path, path.read_bytes()):
        assert max_diff(expected, ours(source, return_tensors="pt")["pixel_values"]) <= TOLERANCE


def test_float_pixels_without_rescale(theirs, ours):
    floats = np.asarray(photo("astronaut")).astype(np.float32) / 255
    assert_parity(theirs, ours, floats, do_rescale=False)


def test_return_types_and_data_format(ours):
    images = [photo("coffee"), photo("rocket")]
    pt = ours(images, return_tensors="pt")
    assert isinstance(pt, BatchFeature) and pt.pixel_values is pt["pixel_values"]
    assert pt["pixel_values"].shape == (2, 3, 224, 224) and pt["pixel_values"].dtype == torch.float32
    as_np = ours(images, return_tensors="np")["pixel_values"]
    assert isinstance(as_np, np.ndarray) and np.array_equal(as_np, pt["pixel_values"].numpy())
    listed = ours(images)["pixel_values"]
    assert isinstance(listed, list) and all(x.shape == (3, 224, 224) for x in listed)
    last = ours(images, return_tensors="pt", data_format="channels_last")["pixel_values"]
    assert torch.equal(last, pt["pixel_values"].permute(0, 2, 3, 1))
    assert pt.to(torch.bfloat16)["pixel_values"].dtype == torch.bfloat16


# --- our additions and deliberate differences -------------------------------------------------
def test_non_rgb_inputs_are_converted_by_default(theirs, ours):
    """transformers leaves RGBA/CMYK with 4 channels unless do_convert_rgb=True (and then fails)."""
    for name in ("rgba", "cmyk", "palette"):
        image = special_images()[name]
        expected = theirs(image, return_tensors="pt", do_convert_rgb=True)["pixel_values"]
        assert max_diff(expected, ours(image, return_tensors="pt")["pixel_values"]) <= TOLERANCE
    kept = ours(np.asarray(special_images()["rgba"]), do_convert_rgb=False, do_normalize=False)["pixel_values"][0]
    assert kept.shape[0] == 4


def test_sixteen_bit_inputs_are_scaled_to_eight_bit(theirs, ours):
    image16, gray8 = sixteen_bit_gray(photo("coffee"))
    expected = theirs(np.repeat(gray8[..., None], 3, -1).astype(np.float32), return_tensors="pt")["pixel_values"]
    for source in (image16, np.asarray(image16), torch.from_numpy(np.asarray(image16).astype(np.int32)).to(torch.uint16)):
        assert max_diff(expected, ours(source, return_tensors="pt")["pixel_values"]) <= TOLERANCE


def test_exif_orientation_of_pil_images_is_applied(ours):
    import io

    from tests.oracles.images import exif_jpeg

    rotated = Image.open(io.BytesIO(exif_jpeg(photo("chelsea").resize((90, 60)), 6)))
    out = ours(rotated, do_resize=False, return_tensors="pt")["pixel_values"]
    assert out.shape == (1, 3, 90, 60)


def test_keep_aspect_ratio_rounds_each_side_to_patches(theirs):
    dense = DINOv3ViTImageProcessor(keep_aspect_ratio=True, size={"shortest_edge": 448})
    for image in photos().values():
        out = dense(image, return_tensors="pt")["pixel_values"]
        height, width = out.shape[-2:]
        assert height % 16 == 0 and width % 16 == 0 and min(height, width) == 448
        assert abs(width / height - image.width / image.height) <= 16 / 448
        expected = theirs(image, size={"height": height, "width": width}, return_tensors="pt")["pixel_values"]
        assert max_diff(expected, out) <= TOLERANCE
    assert dense.output_size(480, 640) == (448, 592)
    assert dense.output_size(3000, 4000, {"height": 512, "width": 512}) == (384, 512)
    assert dense.output_size(10, 10, patch_size=14) == (448, 448)
    assert DINOv3ViTImageProcessor(keep_aspect_ratio=True, size={"shortest_edge": 8}).output_size(5, 500) == (16, 800)


def test_images_of_different_sizes(ours):
    dense = DINOv3ViTImageProcessor(keep_aspect_ratio=True, size={"shortest_edge": 224})
    images = [photo("coffee"), photo("astronaut"), photo("rocket")]
    mixed = dense(images, return_tensors="pt")["pixel_values"]
    assert isinstance(mixed, list)
    assert [tuple(x.shape) for x in mixed] == [(1, 3, 224, 336), (1, 3, 224, 224), (1, 3, 224, 336)]
    alone = dense(images[1], return_tensors="pt")["pixel_values"]
    assert torch.equal(mixed[1], alone)
    padded = dense(images, return_tensors="pt", do_pad=True)["pixel_values"]
    assert padded.shape == (3, 3, 224, 336)
    assert torch.equal(padded[1, :, :, :224], alone[0]) and not padded[1, :, :, 224:].any()
    fixed = dense(images, return_tensors="pt", do_pad=True, pad_size={"height": 240, "width": 400})["pixel_values"]
    assert fixed.shape == (3, 3, 240, 400)
    with pytest.raises(ValueError, match="pad_size"):
        dense(images, do_pad=True, pad_size={"height": 100, "width": 100})


# --- statistics, saving and loading -----------------------------------------------------------
def test_sat493m_statistics_for_sat_models():
    sat = DINOv3ViTConfig(extra={"dinov3_pretrain_dataset": "sat493m"})
    processor = processor_for_model(sat)
    assert tuple(processor.image_mean) == SAT493M_MEAN and tuple(processor.image_std) == SAT493M_STD
    assert tuple(processor_for_model(DINOv3ViTConfig()).image_mean) == IMAGENET_MEAN
    assert tuple(processor_for_model(sat, image_mean=(0.5, 0.5, 0.5)).image_mean) == (0.5, 0.5, 0.5)
    assert processor_for_model(DINOv3ViTConfig(patch_size=14)).patch_size == 14
    assert DINOv3ViTImageProcessor.for_model(sat).image_std == processor.image_std


def test_save_pretrained_is_read_by_transformers(tmp_path, ours):
    custom = DINOv3ViTImageProcessor(size={"shortest_edge": 256}, do_center_crop=True, crop_size=224, resample=3)
    custom.save_pretrained(tmp_path)
    data = json.loads((tmp_path / "preprocessor_config.json").read_text())
    assert data["image_processor_type"] == "DINOv3ViTImageProcessor" and data["resample"] == 3
    loaded = TransformersAuto.from_pretrained(tmp_path)
    images = list(photos().values())
    expected = loaded(images, return_tensors="pt")["pixel_values"]
    assert max_diff(expected, custom(images, return_tensors="pt")["pixel_values"]) <= TOLERANCE
    assert DINOv3ViTImageProcessor.from_pretrained(tmp_path).to_dict() == custom.to_dict()


def test_from_pretrained_reads_transformers_files(tmp_path):
    TransformersProcessor(size={"height": 320, "width": 320}, image_mean=[0.1, 0.2, 0.3]).save_pretrained(tmp_path)
    ours = DINOv3ViTImageProcessor.from_pretrained(tmp_path)
    assert ours.size == {"height": 320, "width": 320} and tuple(ours.image_mean) == (0.1, 0.2, 0.3)
    assert DINOv3ViTImageProcessor.from_pretrained(tmp_path / "preprocessor_config.json").size == ours.size
    assert DINOv3ViTImageProcessor.from_pretrained(tmp_path, size=128).size == {"height": 128, "width": 128}
    nested = tmp_path / "nested"
    nested.mkdir()
    (nested / "processor_config.json").write_text(json.dumps({"image_processor": {"size": {"shortest_edge": 100}}}))
    assert DINOv3ViTImageProcessor.from_pretrained(nested).size == {"shortest_edge": 100}


def test_sat_checkpoint_folder_gets_sat_statistics(tmp_path, caplog):
    folder = tmp_path / "dinov3-vitl16-pretrain-sat493m"
    TransformersProcessor().save_pretrained(folder)
    with caplog.at_level(logging.WARNING, logger="dinov3kit.processing"):
        processor = DINOv3ViTImageProcessor.from_pretrained(folder)
    assert tuple(processor.image_mean) == SAT493M_MEAN and "SAT-493M" in caplog.text
    chosen = DINOv3ViTImageProcessor.from_pretrained(folder, image_mean=list(IMAGENET_MEAN), image_std=list(IMAGENET_STD))
    assert tuple(chosen.image_mean) == IMAGENET_MEAN


def test_model_folders_without_processor_config(tmp_path):
    config = DINOv3ViTConfig(extra={"dinov3_pretrain_dataset": "sat493m"})
    config.save_pretrained(tmp_path)
    processor = DINOv3ViTImageProcessor.from_pretrained(tmp_path)
    assert tuple(processor.image_std) == SAT493M_STD


# --- bad inputs and options -------------------------------------------------------------------
def test_bad_inputs_name_their_position(ours, tmp_path):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(encode(photo("coffee"), "JPEG")[:500])
    with pytest.raises(ImageLoadError, match=r"image 2 \('.*broken.jpg'\): truncated"):
        ours([photo("coffee"), photo("rocket"), broken])
    with pytest.raises(ImageLoadError, match="image 1 .*empty"):
        ours([photo("coffee"), np.zeros((0, 5, 3), np.uint8)])
    with pytest.raises(ImageLoadError, match="unsupported input type"):
        ours(3.5)
    with pytest.raises(ValueError, match="empty list"):
        ours([])


def test_bad_options_are_explained(ours):
    image = photo("coffee")
    with pytest.raises(TypeError, match="unknown processor options"):
        ours(image, sise=224)
    with pytest.raises(ValueError, match="crop_size"):
        ours(image, do_center_crop=True)
    with pytest.raises(ValueError, match="size must"):
        ours(image, size={"width": 5})
    with pytest.raises(ValueError, match="BOX"):
        ours(image, resample=4)
    with pytest.raises(ValueError, match="image_mean has 2 values"):
        ours(image, image_mean=[0.5, 0.5])
    with pytest.raises(ValueError, match="return_tensors"):
        ours(image, return_tensors="tf")
