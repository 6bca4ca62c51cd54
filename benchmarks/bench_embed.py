"""End-to-end `embed` throughput against model-only throughput (same model, batch size and device).

    .venv/bin/python benchmarks/bench_embed.py [--images 96] [--batch-size 16] [--variant vits16] [--device cpu]

Model-only: forward passes on ready-made pixel tensors. End to end: `embed_images` on JPEG files (read,
hash, decode, preprocess in DataLoader workers, model, Parquet chunks), with the model already loaded.
Target: end to end >= 85% of model-only, i.e. decoding is not the bottleneck. The model is the released
architecture with random weights (speed does not depend on the values); no weights are downloaded.
Both are measured `--repeats` times, alternately, and the best of each is kept (robust to other load).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import common
import torch
from PIL import Image

from dinov3kit import DINOv3ViTConfig, DINOv3ViTModel
from dinov3kit.images import load_image
from dinov3kit.tools.embed import default_workers, embed_images
from dinov3kit.tools.runtime import Embedder, pick_device, pick_dtype

PHOTOS = Path(__file__).resolve().parents[1] / "examples" / "photos"
TARGET = 0.85


def make_collection(folder: Path, count: int, longest: int | None) -> None:
    """`count` JPEG files made from the sample photos (optionally enlarged to camera-like sizes)."""
    samples = sorted(PHOTOS.glob("*.jpg"))
    for number in range(count):
        with Image.open(samples[number % len(samples)]) as image:
            image = image.convert("RGB")
            if longest:
                scale = longest / max(image.size)
                image = image.resize((round(image.width * scale), round(image.height * scale)), Image.Resampling.BICUBIC)
            image.save(folder / f"photo{number:05d}.jpg", quality=90)


@torch.inference_mode()
def model_only(embedder: Embedder, batch_size: int, batches: int) -> tuple[float, float]:
    """Images per second of the model alone on preprocessed batches, and its CPU seconds per image."""
    size = embedder.resolution
    pixels = torch.randn(batch_size, 3, size, size)
    embedder(pixels)  # warm-up
    if embedder.device.type == "cuda":
        torch.cuda.synchronize()
    start, cpu = time.perf_counter(), time.process_time()
    for _ in range(batches):
        embedder(pixels)
    if embedder.device.type == "cuda":
        torch.cuda.synchronize()
    images = batches * batch_size
    return images / (time.perf_counter() - start), (time.process_time() - cpu) / images


def preprocessing_cpu(embedder: Embedder, photos: list[Path]) -> float:
    """CPU seconds per image to read, decode and preprocess, on one thread (as in a decoding worker)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        start = time.process_time()
        for photo in photos:
            embedder.preprocess(load_image(photo.read_bytes()))
        return (time.process_time() - start) / len(photos)
    finally:
        torch.set_num_threads(threads)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=96)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--variant", default="vits16", help="released architecture (random weights)")
    parser.add_argument("--resolution", type=int, default=224)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--workers", type=int, default=None, help="decoding workers (default: embed's default)")
    parser.add_argument("--photo-size", type=int, default=None, help="enlarge photos to this longest side (e.g. 3000)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    device = pick_device(args.device)
    dtype = pick_dtype(args.dtype, device)
    model = DINOv3ViTModel(DINOv3ViTConfig.from_preset(args.variant)).to(device, dtype).eval()
    embedder = Embedder(model, f"random {args.variant}", args.resolution)
    workers = default_workers(device) if args.workers is None else args.workers
    work = Path(tempfile.mkdtemp(prefix="bench_embed_"))
    try:
        photos = work / "photos"
        photos.mkdir()
        make_collection(photos, args.images, args.photo_size)
        model_rate = end_to_end = 0.0
        model_cpu = float("inf")
        for _ in range(args.repeats):
            rate, cpu = model_only(embedder, args.batch_size, max(2, args.images // args.batch_size))
            model_rate, model_cpu = max(model_rate, rate), min(model_cpu, cpu)
            summary = embed_images(
                [photos], work / "index.parquet", embedder=embedder, batch_size=args.batch_size, workers=workers,
                overwrite=True, progress=False,
            )
            end_to_end = max(end_to_end, summary.images_per_second)
        decode_cpu = preprocessing_cpu(embedder, sorted(photos.iterdir()))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    ratio = end_to_end / model_rate
    photo = f"{args.photo_size}px photos" if args.photo_size else "sample photos (<= 640 px)"
    print(common.machine())
    print(f"{args.variant} (random weights), {args.resolution}px, batch {args.batch_size}, {device} {str(dtype).removeprefix('torch.')}, "
          f"{torch.get_num_threads()} torch threads, {workers} decoding workers, {args.images} {photo}, best of {args.repeats}")
    print(f"{'mode':<22}{'images/s':>10}{'of model-only':>16}")
    print(f"{'model only':<22}{model_rate:>10.1f}{'100%':>16}")
    print(f"{'embed end to end':<22}{end_to_end:>10.1f}{ratio:>15.0%}")
    if device.type == "cpu":
        bound = model_cpu / (model_cpu + decode_cpu)
        print(f"CPU per image: model {1000 * model_cpu:.1f} ms, read + decode + preprocess {1000 * decode_cpu:.1f} ms: when "
              f"every core is busy, end to end can reach at most {bound:.0%} of model-only")
    verdict = "meets" if ratio >= TARGET else "MISSES"
    print(f"end to end {verdict} the target of {TARGET:.0%} of model-only throughput")
    return 0 if ratio >= TARGET else 1


if __name__ == "__main__":
    sys.exit(main())
