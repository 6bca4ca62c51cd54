"""Preprocessing speed: dinov3kit's DINOv3ViTImageProcessor vs transformers' on the same photos.

    .venv/bin/python benchmarks/bench_processing.py [--threads 2] [--count 64] [--repeats 3]
        [--sizes 640x480,4000x3000] [--files]

The photos are scikit-image's astronaut, coffee, chelsea and rocket (flipped and cropped into `count`
distinct pictures), resized with PIL to each size and held in memory as PIL images, which is what
both processors receive (decoding is not timed). Each row processes all of them in one call
(`processor(images, return_tensors="pt")`, default options: 224x224 bilinear antialiased resize,
rescale, ImageNet normalisation), interleaving the two processors round by round; images/s are medians.
The last column is the max |difference| between the two outputs. Target (issue 4): >= 2x at 2 threads.
With `--files`, a second table passes the same photos as JPEG file paths (decoding timed: transformers
decodes with torchvision, dinov3kit with PIL).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import common
import numpy as np
import torch
from PIL import Image

DEFAULT_SIZES = "640x480,4000x3000"


def photos(count: int, width: int, height: int) -> list[Image.Image]:
    """`count` different RGB photos of `width` x `height`."""
    from skimage import data

    bases = [data.astronaut(), data.coffee(), data.chelsea(), data.rocket()]
    out = []
    for index in range(count):
        pixels = bases[index % len(bases)]
        variant = index // len(bases)
        if variant % 2:
            pixels = pixels[:, ::-1]
        crop = (variant // 2) % 8 * 4
        pixels = np.ascontiguousarray(pixels[crop : pixels.shape[0] - crop, crop : pixels.shape[1] - crop])
        out.append(Image.fromarray(pixels).resize((width, height), Image.BICUBIC))
    return out


def jpeg_files(images: list[Image.Image], folder: Path) -> list[str]:
    paths = []
    for index, image in enumerate(images):
        path = folder / f"photo{index:03d}.jpg"
        image.save(path, quality=90)
        paths.append(str(path))
    return paths


def run_size(width: int, height: int, count: int, repeats: int, folder: Path | None = None) -> list[str]:
    from transformers import DINOv3ViTImageProcessor as TransformersProcessor

    from dinov3kit import DINOv3ViTImageProcessor

    images = photos(count, width, height)
    if folder is not None:
        images = jpeg_files(images, folder)
    ours, theirs = DINOv3ViTImageProcessor(), TransformersProcessor()
    run = {
        "dinov3kit": lambda: ours(images, return_tensors="pt")["pixel_values"],
        "transformers": lambda: theirs(images, return_tensors="pt")["pixel_values"],
    }
    diff = (run["dinov3kit"]() - run["transformers"]()).abs().max().item()
    stats = common.interleaved(run, repeats=repeats, warmup=0)
    rate = {name: count / s.median for name, s in stats.items()}
    return [
        f"{width}x{height}",
        count,
        f"{rate['transformers']:.1f} {stats['transformers'].spread_text()}",
        f"{rate['dinov3kit']:.1f} {stats['dinov3kit'].spread_text()}",
        f"{rate['dinov3kit'] / rate['transformers']:.2f}x",
        f"{diff:.1e}",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--count", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--sizes", default=DEFAULT_SIZES, help="comma-separated WIDTHxHEIGHT")
    parser.add_argument("--files", action="store_true", help="also time JPEG file paths (decoding included)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(common.machine())
    sizes = [tuple(int(v) for v in size.lower().split("x")) for size in args.sizes.split(",")]
    header = ["size", "images", "transformers", "dinov3kit", "speedup", "max |diff|"]
    rows = [run_size(width, height, args.count, args.repeats) for width, height in sizes]
    title = f"{args.count} photos per call, {args.threads} threads (images/s, median ± half IQR)"
    common.print_table(f"Preprocessing PIL images, {title}", header, rows)
    if args.files:
        with tempfile.TemporaryDirectory() as folder:
            rows = [run_size(width, height, args.count, args.repeats, Path(folder)) for width, height in sizes]
        common.print_table(f"Decoding and preprocessing JPEG files, {title}", header, rows)


if __name__ == "__main__":
    main()
