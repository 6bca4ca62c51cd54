"""load_image / load_images: every accepted input kind, the conversions, and one clear error per bad input."""

from __future__ import annotations

import base64
import io
import pickle

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps
from tests.oracles.images import encode, exif_jpeg, http_server, photo, sixteen_bit_gray, special_images, with_alpha

from dinov3kit.images import ImageLoadError, LoadedImages, load_image, load_images


@pytest.fixture(scope="module")
def coffee() -> Image.Image:
    return photo("coffee")


def pixels(image: Image.Image) -> np.ndarray:
    assert image.mode == "RGB"
    return np.asarray(image)


# --- accepted inputs --------------------------------------------------------------------------
def test_pil_rgb_is_returned_with_the_same_pixels(coffee):
    assert np.array_equal(pixels(load_image(coffee)), np.asarray(coffee))


@pytest.mark.parametrize(
    ("make", "tolerance"),
    [
        pytest.param(lambda a: a, 0, id="hwc"),
        pytest.param(lambda a: np.ascontiguousarray(a.transpose(2, 0, 1)), 0, id="chw"),
        pytest.param(lambda a: a.astype(np.uint16) * 257, 0, id="uint16"),
        pytest.param(lambda a: a.astype(np.float32) / 255, 0, id="float01"),
        pytest.param(lambda a: a.astype(np.float64), 0, id="float255"),
        pytest.param(lambda a: torch.from_numpy(a.copy()).permute(2, 0, 1), 0, id="tensor_chw"),
        pytest.param(lambda a: torch.from_numpy(a / 255).permute(2, 0, 1).to(torch.bfloat16), 1, id="tensor_bf16"),
        pytest.param(lambda a: torch.from_numpy(a.astype(np.int32)), 0, id="tensor_int32"),
        pytest.param(lambda a: a[None], 0, id="batch_of_one"),
    ],
)
def test_arrays_and_tensors(coffee, make, tolerance):
    expected = np.asarray(coffee).astype(np.int16)
    result = pixels(load_image(make(np.asarray(coffee)))).astype(np.int16)
    assert np.abs(result - expected).max() <= tolerance


def test_grayscale_and_bool_arrays():
    gray = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20
    assert np.array_equal(pixels(load_image(gray)), np.repeat(gray[..., None], 3, axis=-1))
    mask = np.eye(4, dtype=bool)
    assert np.array_equal(pixels(load_image(mask))[..., 0], mask.astype(np.uint8) * 255)


def test_rgba_array_is_composited_on_white():
    rgba = np.zeros((2, 2, 4), np.uint8)
    rgba[0, 0] = (255, 0, 0, 255)  # opaque red
    rgba[0, 1] = (255, 0, 0, 0)  # transparent: white
    rgba[1, 0] = (0, 0, 0, 128)  # half-transparent black: mid gray
    out = pixels(load_image(rgba))
    assert tuple(out[0, 0]) == (255, 0, 0)
    assert tuple(out[0, 1]) == (255, 255, 255)
    assert all(abs(int(v) - 127) <= 1 for v in out[1, 0])


def test_transparent_pil_modes_match_transformers_compositing(coffee):
    rgba = with_alpha(coffee)
    background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    expected = np.asarray(Image.alpha_composite(background, rgba).convert("RGB"))
    assert np.array_equal(pixels(load_image(rgba)), expected)
    palette = coffee.convert("P")
    palette.info["transparency"] = 0
    assert pixels(load_image(palette)).shape == (*coffee.size[::-1], 3)
    assert pixels(load_image(rgba.convert("LA"))).shape == (*coffee.size[::-1], 3)


@pytest.mark.parametrize("name", ["grayscale", "cmyk", "palette"])
def test_other_modes_use_pil_rgb_conversion(name):
    image = special_images()[name]
    assert np.array_equal(pixels(load_image(image)), np.asarray(image.convert("RGB")))


def test_sixteen_bit_images_are_scaled_not_clipped(coffee, tmp_path):
    image16, gray8 = sixteen_bit_gray(coffee)
    assert image16.mode.startswith("I;16")
    path = tmp_path / "gray16.png"
    image16.save(path)
    for source in (image16, path, np.asarray(image16)):
        out = pixels(load_image(source))
        assert np.array_equal(out[..., 0], gray8), source  # PIL's own RGB conversion would clip to 255


def test_files_paths_bytes_file_objects_and_data_uris(coffee, tmp_path):
    data = encode(coffee, "PNG")
    path = tmp_path / "coffee.png"
    path.write_bytes(data)
    uri = "data:image/png;base64," + base64.b64encode(data).decode()
    for source in (str(path), path, data, bytearray(data), io.BytesIO(data), uri):
        assert np.array_equal(pixels(load_image(source)), np.asarray(coffee)), type(source)


def test_url(coffee):
    with http_server({"/coffee.png": encode(coffee)}) as base:
        assert np.array_equal(pixels(load_image(base + "/coffee.png")), np.asarray(coffee))


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_is_applied(orientation):
    image = photo("chelsea").resize((60, 40))
    data = exif_jpeg(image, orientation)
    expected = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB"))
    out = pixels(load_image(data))
    assert out.shape == expected.shape
    assert np.array_equal(out, expected)
    assert out.shape[:2] == ((60, 40) if orientation >= 5 else (40, 60))


# --- bad inputs -------------------------------------------------------------------------------
def assert_load_error(source, *words, **kwargs) -> ImageLoadError:
    with pytest.raises(ImageLoadError) as caught:
        load_image(source, **kwargs)
    message = str(caught.value)
    for word in words:
        assert word in message, message
    assert isinstance(caught.value, ValueError)
    return caught.value


def test_corrupt_truncated_and_empty_files(coffee, tmp_path):
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(b"this is not an image at all" * 10)
    assert_load_error(corrupt, "corrupt.jpg", "not an image")
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(encode(coffee, "JPEG")[:2000])
    assert_load_error(truncated, "truncated.jpg", "truncated")
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    assert_load_error(empty, "empty.png", "empty")
    assert_load_error(b"", "0 bytes", "empty")
    assert_load_error(Image.open(truncated), "PIL image", "truncated")  # PIL opens lazily: decoding fails later
    assert_load_error(tmp_path / "missing.png", "missing.png", "no such file")
    assert_load_error(tmp_path, str(tmp_path.name), "folder")


def test_images_without_pixels_and_unsupported_types():
    assert_load_error(Image.new("RGB", (0, 0)), "0x0", "empty")
    assert_load_error(np.zeros((0, 0, 3), np.uint8), "numpy array", "empty")
    assert_load_error(torch.zeros(3, 0, 5), "torch tensor", "empty")
    assert_load_error(object(), "object", "unsupported input type")
    assert_load_error(42, "int", "unsupported input type")
    assert_load_error(np.zeros((5, 6, 7), np.uint8), "channel axis")
    assert_load_error(np.full((4, 4, 3), -0.5, np.float32), "normalised")
    assert_load_error(np.full((4, 4, 3), np.nan, np.float32), "NaN")
    assert_load_error(np.zeros((2, 4, 4, 3), np.uint8), "load_images")


def test_one_pixel_image_is_valid():
    assert pixels(load_image(np.full((1, 1, 3), 7, np.uint8))).shape == (1, 1, 3)


def test_decompression_bomb_limit_stays_on(coffee, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    assert_load_error(encode(coffee), "decompression bomb", "MAX_IMAGE_PIXELS")


def test_url_timeout_http_error_and_size_limit(coffee):
    data = encode(coffee)
    with http_server({"/slow.png": data}, delay=2.0) as base:
        assert_load_error(base + "/slow.png", "slow.png", "timeout", timeout=0.3)
    with http_server({"/coffee.png": data}) as base:
        assert_load_error(base + "/missing.png", "missing.png", "404")
        assert_load_error(base + "/coffee.png", "coffee.png", "limit", max_bytes=1000)


def test_error_is_picklable():
    error = ImageLoadError("'a.jpg'", "truncated", 3)
    copy = pickle.loads(pickle.dumps(error))
    assert str(copy) == str(error) == "image 3 ('a.jpg'): truncated"


# --- batches ----------------------------------------------------------------------------------
def test_load_images_names_the_bad_input_or_skips_it(coffee, tmp_path):
    good = encode(coffee)
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"garbage")
    with pytest.raises(ImageLoadError, match=r"image 1 \('.*bad.png'\)"):
        load_images([good, bad, coffee])
    loaded = load_images([good, bad, coffee, b""], skip_errors=True)
    assert isinstance(loaded, LoadedImages) and len(loaded) == 2
    assert [error.index for error in loaded.skipped] == [1, 3]
    assert "bad.png" in str(loaded.skipped[0]) and "0 bytes" in str(loaded.skipped[1])
    assert len(load_images(coffee)) == 1


def test_rgbx_view_shares_pillows_memory_and_outlives_the_image():
    import gc

    from dinov3kit.images import rgbx_view

    pixels = (np.random.default_rng(0).random((37, 53, 3)) * 255).astype(np.uint8)
    image = Image.fromarray(pixels)
    view = rgbx_view(image)
    if view is None:
        pytest.skip("this Pillow has no Arrow export (Pillow < 11.2); the processor copies the pixels instead")
    assert view.shape == (37, 53, 4) and not view.flags.writeable
    assert np.array_equal(view[..., :3], pixels)
    assert np.array_equal(rgbx_view(image.crop((3, 4, 20, 30)))[..., :3], pixels[4:30, 3:20])
    del image
    gc.collect()
    assert np.array_equal(view[..., :3], pixels)  # the export keeps the memory alive
    assert rgbx_view(Image.new("L", (4, 4))) is None and rgbx_view(Image.new("RGBA", (4, 4))) is None


# --- bounded reads (hostile files) ------------------------------------------------------------------
def _within(seconds: float, call):
    """`call()` in a daemon thread; fails the test instead of hanging when it takes longer."""
    import threading

    result: list = []
    worker = threading.Thread(target=lambda: result.append(call()), daemon=True)
    worker.start()
    worker.join(seconds)
    if worker.is_alive() or not result:
        pytest.fail(f"did not return within {seconds} s")
    return result[0]


@pytest.mark.skipif(not hasattr(__import__("os"), "mkfifo"), reason="no named pipes on this system")
def test_named_pipes_and_devices_are_refused_at_once(tmp_path):
    import os

    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    error = _within(5, lambda: pytest.raises(ImageLoadError, load_image, fifo))
    assert "a named pipe" in str(error.value) and "not a regular file" in str(error.value)
    zero = tmp_path / "x.jpg"
    zero.symlink_to("/dev/zero")
    error = _within(5, lambda: pytest.raises(ImageLoadError, load_image, zero))
    assert "x.jpg" in str(error.value) and "a character device" in str(error.value)
    assert_load_error(tmp_path, "is a folder")


def test_bytes_read_per_input_are_bounded(coffee, tmp_path):
    data = encode(coffee, "PNG")
    path = tmp_path / "coffee.png"
    path.write_bytes(data)
    link = tmp_path / "link.png"
    link.symlink_to(path)  # symlinks to regular files are read
    assert pixels(load_image(link)).shape == (*coffee.size[::-1], 3)
    with pytest.raises(ImageLoadError, match=rf"coffee.png'?: {len(data)} bytes, over the limit of {len(data) - 1} bytes"):
        load_image(path, max_bytes=len(data) - 1)
    with pytest.raises(ImageLoadError, match=r"more than 100 bytes \(max_bytes\)"):
        load_image(io.BytesIO(data), max_bytes=100)
    assert pixels(load_image(path, max_bytes=len(data))).shape == (*coffee.size[::-1], 3)
    from dinov3kit.pixels import DEFAULT_MAX_BYTES

    assert DEFAULT_MAX_BYTES == 256 * 2**20


# --- Pillow's private routes and their fallbacks ----------------------------------------------------
def test_raw_pixels_and_its_fallback_give_the_same_pixels(coffee, monkeypatch):
    from dinov3kit.pixels import pillow

    for image in (coffee, coffee.convert("L"), coffee.convert("CMYK")):
        assert np.array_equal(pillow.raw_pixels(image), np.asarray(image))

    def missing(mode):
        raise AttributeError("module 'PIL.Image' has no attribute '_getencoder'")

    monkeypatch.setattr(pillow, "_raw_encoder", missing)  # a Pillow without the private encoder API
    for image in (coffee, coffee.convert("L")):
        assert np.array_equal(pillow.raw_pixels(image), np.asarray(image))


def test_processor_pixels_are_the_same_without_the_memory_view(coffee, monkeypatch):
    from dinov3kit.pixels import tensors
    from dinov3kit.processing import DINOv3ViTImageProcessor

    processor = DINOv3ViTImageProcessor()
    viewed = tensors.pil_to_tensor(coffee, None)
    expected = processor(coffee, return_tensors="pt")["pixel_values"]
    monkeypatch.setattr(tensors, "rgbx_view", lambda image: None)  # Pillow < 11.2: the copying route
    copied = tensors.pil_to_tensor(coffee, None)
    assert torch.equal(viewed, copied) and torch.equal(copied, torch.from_numpy(np.asarray(coffee)).permute(2, 0, 1))
    assert torch.equal(processor(coffee, return_tensors="pt")["pixel_values"], expected)


def test_one_rule_for_arrays_in_load_image_and_the_processor():
    """16-bit values, gray + alpha and RGBA go through the same conversions in both paths."""
    from dinov3kit.processing import DINOv3ViTImageProcessor

    rng = np.random.default_rng(0)
    rgba16 = (rng.random((20, 30, 4)) * 65535).astype(np.uint16)
    plain = DINOv3ViTImageProcessor(do_resize=False, do_rescale=False, do_normalize=False)
    processed = plain(rgba16, return_tensors="pt")["pixel_values"][0]  # float in [0, 255]
    loaded = torch.from_numpy(pixels(load_image(rgba16))).permute(2, 0, 1).float()
    assert (processed - loaded).abs().max() <= 2.0  # the picture quantises to 8 bits before compositing
    gray_alpha = (rng.random((2, 12, 10)) * 255).astype(np.uint8)
    as_rgba = gray_alpha[[0, 0, 0, 1]]
    assert np.array_equal(pixels(load_image(gray_alpha)), pixels(load_image(as_rgba)))
