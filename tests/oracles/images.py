"""Test images: real photographs (scikit-image), the awkward kinds (large, tiny, grayscale, RGBA, CMYK,
palette, 16-bit), encoded files, EXIF-rotated JPEGs, and a local HTTP server for URL inputs."""

from __future__ import annotations

import contextlib
import http.server
import io
import threading
import time
from collections.abc import Iterator
from functools import cache

import numpy as np
from PIL import Image

PHOTO_NAMES = ("astronaut", "coffee", "chelsea", "rocket")


@cache
def _photo_pixels(name: str) -> np.ndarray:
    from skimage import data

    pixels = getattr(data, name)()
    pixels.setflags(write=False)
    return pixels


def photo(name: str) -> Image.Image:
    """One of scikit-image's RGB photographs as a PIL image."""
    return Image.fromarray(_photo_pixels(name))


def photos() -> dict[str, Image.Image]:
    return {name: photo(name) for name in PHOTO_NAMES}


def with_alpha(image: Image.Image) -> Image.Image:
    """RGBA with an alpha ramp from transparent (left) to opaque (right) and a fully transparent corner."""
    pixels = np.array(image.convert("RGBA"))
    pixels[..., 3] = np.linspace(0, 255, pixels.shape[1]).astype(np.uint8)[None, :]
    pixels[:20, :20, 3] = 0
    return Image.fromarray(pixels)


def special_images() -> dict[str, Image.Image]:
    """The awkward kinds, each made from a photo: large, tiny, 1x1, grayscale, RGBA, LA, CMYK, palette."""
    coffee = photo("coffee")
    return {
        "large": coffee.resize((4000, 3000), Image.BICUBIC),
        "tiny": coffee.resize((7, 5), Image.BICUBIC),
        "one_pixel": Image.new("RGB", (1, 1), (200, 30, 90)),
        "grayscale": coffee.convert("L"),
        "rgba": with_alpha(coffee),
        "gray_alpha": with_alpha(coffee).convert("LA"),
        "cmyk": coffee.convert("CMYK"),
        "palette": coffee.convert("P"),
    }


def sixteen_bit_gray(image: Image.Image) -> tuple[Image.Image, np.ndarray]:
    """A 16-bit grayscale ("I;16") image whose values are the 8-bit gray values x 257, and those 8-bit values."""
    gray = np.asarray(image.convert("L"))
    return Image.fromarray(gray.astype(np.uint16) * 257), gray


def encode(image: Image.Image, fmt: str = "PNG", **params) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **params)
    return buffer.getvalue()


def exif_jpeg(image: Image.Image, orientation: int) -> bytes:
    """A JPEG of `image` carrying the EXIF orientation tag `orientation` (1..8)."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encode(image, "JPEG", quality=95, exif=exif.tobytes())


@contextlib.contextmanager
def http_server(routes: dict[str, bytes], delay: float = 0.0) -> Iterator[str]:
    """Serve `routes` (path → body) on localhost, each answer after `delay` seconds; yields the base URL.
    Unknown paths get a 404."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            time.sleep(delay)
            body = routes.get(self.path)
            try:
                if body is None:
                    self.send_error(404, "not found")
                    return
                self.send_response(200)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
            except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout tests)
                pass

        def log_message(self, *args) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
