"""Quantization quality and CPU speed: torchao schemes and ONNX Runtime (fp32, int8) next to fp32 / bf16.

    .venv/bin/python benchmarks/bench_quantize_cpu.py [--threads 2] [--batch 4] [--repeats 5]
        [--variants vits16,vits16plus,convnext_tiny] [--no-onnx] [--opset 18]

Quality: a model of each variant (ViT-S/16, ViT-S+/16 with SwiGLU, ConvNeXt-T) with random non-trivial
weights (tests/oracles/random_weights.py) embeds the four scikit-image photos (astronaut, coffee,
chelsea, rocket) at 224 px; each runtime's CLS (ConvNeXt: pooled) and patch tokens are compared with
torch fp32 by cosine similarity, and the weights' memory is measured (quantized tensors with their
scales; onnxruntime: the file). Speed: `inference_mode` forwards of a batch of those photos, interleaved
round by round, images/s medians. Targets (issue 7): cosine >= 0.99 for int8, >= 0.97 for int4 on
ViT-S/16; int8 and ONNX Runtime rows next to fp32 / bf16. Issue 17: ONNX Runtime fp32 >= 0.9x torch fp32,
its int8 >= 1.5x its fp32 with cosine >= 0.99.
"""

from __future__ import annotations

import argparse
import copy
import tempfile
from pathlib import Path

import common
import torch
from tests.oracles.random_weights import randomize_
from torch import nn

from dinov3kit import DINOv3ConvNextConfig, DINOv3ConvNextModel, DINOv3ViTConfig, DINOv3ViTModel
from dinov3kit.processing import DINOv3ViTImageProcessor
from dinov3kit.quantize import QuantizationError, quantize, weights_nbytes

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket")
SCHEMES = ("int8", "int8-dynamic", "int4", "fp8")


def photo_batch(batch: int) -> torch.Tensor:
    """The four photos, preprocessed as the DINOv3 processor does, repeated up to `batch` images."""
    from skimage import data

    images = [getattr(data, name)() for name in PHOTOS]
    pixels = DINOv3ViTImageProcessor()(images, return_tensors="pt")["pixel_values"]
    return pixels.repeat((batch + len(PHOTOS) - 1) // len(PHOTOS), 1, 1, 1)[:batch]


def random_model(variant: str) -> DINOv3ViTModel | DINOv3ConvNextModel:
    """A ViT preset (vits16, ...) or a ConvNeXt one (convnext_tiny, ...) with random non-trivial weights."""
    if variant.startswith("convnext"):
        return randomize_(DINOv3ConvNextModel(DINOv3ConvNextConfig.from_preset(variant))).eval()
    return randomize_(DINOv3ViTModel(DINOv3ViTConfig.from_preset(variant))).eval()


def similarity(tokens: torch.Tensor, reference: torch.Tensor, prefix: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Cosine similarity per token: (CLS of each image [B], patch tokens [B, h*w])."""
    cosine = nn.functional.cosine_similarity(tokens.float(), reference, dim=-1)
    return cosine[:, 0], cosine[:, prefix:]


def contenders(model, folder: Path, args, notes: dict[str, str]) -> dict[str, tuple]:
    """name → (pixels → tokens, weights bytes) for fp32, bf16, each torchao scheme and onnxruntime."""
    runs = {"fp32 (torch)": (lambda x: model(x).last_hidden_state, weights_nbytes(model))}
    bf16 = copy.deepcopy(model).to(torch.bfloat16)
    runs["bf16 (torch)"] = (lambda x: bf16(x).last_hidden_state, weights_nbytes(bf16))
    for scheme in SCHEMES:
        try:
            quantized = quantize(copy.deepcopy(model), scheme)
        except QuantizationError as error:
            runs[f"{scheme} (torchao)"] = (None, None)
            notes[scheme] = str(error)
            continue
        runs[f"{scheme} (torchao)"] = (lambda x, m=quantized: m(x).last_hidden_state, weights_nbytes(quantized))
    if args.onnx:
        from dinov3kit.export import INPUT_NAME, export_onnx, onnx_session, quantize_onnx

        fp32_path = export_onnx(model, folder / "model.onnx", opset=args.opset)
        for name, path in (("fp32", fp32_path), ("int8-dynamic", quantize_onnx(fp32_path, folder / "int8.onnx"))):
            session = onnx_session(path, threads=args.threads)
            run = lambda x, s=session: torch.from_numpy(s.run(None, {INPUT_NAME: x.numpy()})[0])  # noqa: E731
            runs[f"{name} (onnxruntime)"] = (run, path.stat().st_size)
    return runs


def run_variant(variant: str, photos: torch.Tensor, batch: torch.Tensor, args, notes: dict[str, str]):
    """(quality rows, speed rows) of one variant."""
    model = random_model(variant)
    prefix = model.config.num_prefix_tokens
    quality, timed = [], {}
    with tempfile.TemporaryDirectory() as folder, torch.inference_mode():
        runs = contenders(model, Path(folder), args, notes)
        reference = model(photos).last_hidden_state
        full = runs["fp32 (torch)"][1]
        for name, (run, size) in runs.items():
            if run is None:
                quality.append([variant, name, "n/a here", "", "", "", ""])
                continue
            cls, patches = similarity(run(photos), reference, prefix)
            quality.append([
                variant, name, f"{cls.min():.4f}", f"{patches.mean(1).min():.4f}", f"{patches.min():.4f}",
                f"{size / 2**20:.1f}", f"{full / size:.2f}x",
            ])  # fmt: skip
            timed[name] = lambda run=run: run(batch)
        stats = common.interleaved(timed, repeats=args.repeats)
    rate = {name: len(batch) / s.median for name, s in stats.items()}
    speed = [
        [variant, name, f"{rate[name]:.2f} {s.spread_text()}", f"{rate[name] / rate['fp32 (torch)']:.2f}x"]
        for name, s in stats.items()
    ]
    return quality, speed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--variants", default="vits16,vits16plus,convnext_tiny", help="comma-separated presets")
    parser.add_argument("--no-onnx", dest="onnx", action="store_false", help="skip the ONNX Runtime rows")
    parser.add_argument("--opset", type=int, default=18, help="ONNX opset of the export (23: RoPE and attention as ONNX ops)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(common.machine())
    notes: dict[str, str] = {}
    quality, speed = [], []
    for variant in args.variants.split(","):
        rows = run_variant(variant, photo_batch(len(PHOTOS)), photo_batch(args.batch), args, notes)
        quality += rows[0]
        speed += rows[1]
    common.print_table(
        "Features vs fp32 on 4 photos, 224 px (cosine similarity: worst CLS, worst per-image patch mean, worst "
        "patch token) and weights' memory (onnxruntime: file size)",
        ["model", "runtime", "CLS min", "patch mean min", "patch min", "weights MiB", "smaller"],
        quality,
    )
    for scheme, reason in notes.items():
        print(f"{scheme}: {reason}\n")
    common.print_table(
        f"CPU speed, batch {args.batch} at 224 px, {args.threads} threads, images/s (median ± half IQR)",
        ["model", "runtime", "images/s", "vs fp32"],
        speed,
    )


if __name__ == "__main__":
    main()
