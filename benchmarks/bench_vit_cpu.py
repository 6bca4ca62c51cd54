"""ViT forward speed on the CPU: dinov3kit vs transformers vs timm on the same random weights.

    .venv/bin/python benchmarks/bench_vit_cpu.py [--threads 2] [--repeats 5] [--cases vits16:fp32:1,...]

Each case builds the three models from one checkpoint, checks that their normed tokens agree, then
times `no_grad` forwards of a 224 px batch, interleaved round by round. Images/s are medians.
Target (issue 6): ours >= 1.1x transformers in every case.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import common
import torch

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
DEFAULT_CASES = "vits16:fp32:1,vits16:fp32:16,vitb16:fp32:1,vitb16:fp32:16,vits16:bf16:16"


def forwards(ours, theirs, timm_model) -> dict:
    return {
        "dinov3kit": lambda x: ours(x).last_hidden_state,
        "transformers": lambda x: theirs(pixel_values=x).last_hidden_state,
        "timm": lambda x: timm_model.forward_features(x),
    }


def run_case(variant: str, dtype_name: str, batch: int, repeats: int, size: int) -> list:
    dtype = DTYPES[dtype_name]
    with tempfile.TemporaryDirectory() as folder:
        models = common.vit_twins(variant, folder=Path(folder))
    models = [m.to(dtype).eval() for m in models]
    fns = forwards(*models)
    pixel_values = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(0)).to(dtype)
    with torch.inference_mode():
        diffs = common.same_outputs(fns, pixel_values)
        stats = common.interleaved({n: (lambda f=f: f(pixel_values)) for n, f in fns.items()}, repeats=repeats)
    rate = {name: batch / s.median for name, s in stats.items()}
    return [
        f"{variant} {dtype_name} b{batch}",
        *(f"{rate[n]:.2f} {stats[n].spread_text()}" for n in fns),
        f"{rate['dinov3kit'] / rate['transformers']:.2f}x",
        f"{rate['dinov3kit'] / rate['timm']:.2f}x",
        f"{max(diffs['transformers'], diffs['timm']):.1e}",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--cases", default=DEFAULT_CASES, help="comma-separated variant:dtype:batch")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(common.machine())
    rows = []
    for case in args.cases.split(","):
        variant, dtype_name, batch = case.split(":")
        rows.append(run_case(variant, dtype_name, int(batch), args.repeats, args.size))
        print(" | ".join(rows[-1]), flush=True)
    common.print_table(
        f"ViT forward on CPU, {args.size} px, {args.threads} threads, images/s (median ± half IQR)",
        ["case", "dinov3kit", "transformers", "timm", "vs transformers", "vs timm", "max |diff|"],
        rows,
    )


if __name__ == "__main__":
    main()
