"""ConvNeXt forward speed on the CPU: dinov3kit vs transformers' DINOv3ConvNextModel on the same random weights.

    .venv/bin/python benchmarks/bench_convnext_cpu.py [--threads 2] [--repeats 4] [--cases tiny:fp32:1,...]

Each case saves a transformers ConvNeXt with random non-trivial weights, loads it into ours, checks that
both give the same normed tokens, then times `inference_mode` forwards of a 224 px batch, interleaved
round by round. Images/s are medians; ± is half the interquartile range.

On a machine shared with other work, wall-clock rates swing with the load (several threads wait for
each other at every parallel step). With `--threads 1` the table adds rates from the thread's own CPU
time, which other processes barely affect.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import common
import torch

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
DEFAULT_CASES = "tiny:fp32:1,tiny:fp32:16,tiny:bf16:1,tiny:bf16:16"


def convnext_twins(variant: str, folder: Path):
    """(ours, transformers) with the same random weights, ours loaded from transformers' saved folder."""
    from tests.oracles.convnext_twins import hf_convnext

    from dinov3kit import DINOv3ConvNextConfig, DINOv3ConvNextModel

    config = DINOv3ConvNextConfig.from_preset(variant)
    theirs = hf_convnext(hidden_sizes=config.hidden_sizes, depths=config.depths)
    theirs.save_pretrained(folder)
    return DINOv3ConvNextModel.from_pretrained(folder), theirs


def run_case(variant: str, dtype_name: str, batch: int, repeats: int, size: int, cpu_clock: bool) -> list:
    with tempfile.TemporaryDirectory() as folder:
        ours, theirs = convnext_twins(variant, Path(folder))
    dtype = DTYPES[dtype_name]
    ours, theirs = ours.to(dtype), theirs.to(dtype)
    fns = {
        "dinov3kit": lambda x: ours(x).last_hidden_state,
        "transformers": lambda x: theirs(pixel_values=x).last_hidden_state,
    }
    pixel_values = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(0)).to(dtype)
    cpu_times: dict[str, list[float]] = {name: [] for name in fns}

    def timed(name: str):
        def call() -> None:
            start = time.thread_time()
            fns[name](pixel_values)
            cpu_times[name].append(time.thread_time() - start)

        return call

    with torch.inference_mode():
        diff = common.same_outputs(fns, pixel_values)["transformers"]
        stats = common.interleaved({name: timed(name) for name in fns}, repeats=repeats)
    row = [f"convnext_{variant} {dtype_name} b{batch}", *rate_cells(stats, batch)]
    if cpu_clock:
        row += rate_cells({name: common.Stats.of(times[1:]) for name, times in cpu_times.items()}, batch)  # no warmup
    return row + [f"{diff:.1e}"]


def rate_cells(stats: dict, batch: int) -> list[str]:
    """Images/s of ours and transformers with their spread, and their ratio."""
    rate = {name: batch / s.median for name, s in stats.items()}
    cells = [f"{rate[name]:.2f} {stats[name].spread_text()}" for name in ("dinov3kit", "transformers")]
    return cells + [f"{rate['dinov3kit'] / rate['transformers']:.2f}x"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=4)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--cases", default=DEFAULT_CASES, help="comma-separated variant:dtype:batch")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(common.machine())
    start, rows = time.perf_counter(), []
    for case in args.cases.split(","):
        variant, dtype_name, batch = case.split(":")
        rows.append(run_case(variant, dtype_name, int(batch), args.repeats, args.size, args.threads == 1))
        print(f"  {case} done ({time.perf_counter() - start:.0f} s)", flush=True)
    header = ["case", "dinov3kit", "transformers", "ours/transformers"]
    if args.threads == 1:
        header += ["dinov3kit (CPU time)", "transformers (CPU time)", "ours/transformers (CPU time)"]
    common.print_table(
        f"ConvNeXt images/s at {args.size} px, {args.threads} threads (median of {args.repeats} interleaved rounds)",
        header + ["max |diff|"],
        rows,
    )


if __name__ == "__main__":
    main()
