"""Recreate the sample photos of this folder from scikit-image's bundled images (public domain / CC0).

Run once with scikit-image installed: `python examples/photos/make_photos.py`. The photos are kept in the
repository, so nothing else needs scikit-image.
"""

from pathlib import Path

from PIL import Image
from skimage import data

#: file name → (scikit-image function, longest side in pixels)
PHOTOS = {
    "astronaut.jpg": ("astronaut", 512),
    "cat.jpg": ("chelsea", 451),
    "coffee.jpg": ("coffee", 600),
    "rocket.jpg": ("rocket", 640),
    "retina.jpg": ("retina", 512),
    "hubble.jpg": ("hubble_deep_field", 512),
}


def main() -> None:
    folder = Path(__file__).parent
    for name, (function, longest) in PHOTOS.items():
        image = Image.fromarray(getattr(data, function)()).convert("RGB")
        image.thumbnail((longest, longest), Image.Resampling.LANCZOS)
        image.save(folder / name, quality=85, optimize=True)
        print(f"{name}: {image.width}x{image.height}")


if __name__ == "__main__":
    main()
