"""ViT forward speed on the CPU: dinov3kit vs transformers vs timm on the same random weights.

    .venv/bin/python benchmarks/bench_vit_cpu.py [--threads 2] [--repeats 7] [--cases vits16:fp32:1,...]
                                                 [--same-process] [--compile]

Each case saves one random checkpoint, then runs each library in its own process (`common.Isolated`):
it loads the model there, the script checks that the three give the same normed tokens, then times
`inference_mode` forwards of a 224 px batch, one process at a time, round by round (each round runs
about `--round-seconds` of forwards in a row per library). Images/s are medians over the rounds.
`--clock cpu` times each process's CPU time instead of elapsed time: with `--threads 1` that is what
a forward costs, whatever else the machine runs (with more threads it also counts OpenMP's spinning).
`--keep-freed-memory` runs every contender with glibc keeping freed blocks (the settings of the `dinov3kit`
command, `backend/allocator.py`), which takes page faults out of the comparison.
`--same-process` runs the three in this process instead, where they share the C allocator (see common.py).
`--compile` adds dinov3kit and transformers after `model.compile()` as two more contenders (each compiles
on its first forward, before the timing) and two columns: compiled ours vs compiled transformers, and
compiled ours vs eager ours.
Target (issue 6): ours >= 1.1x transformers in every case.
"""

from __future__ import annotations

import argparse
import functools
import os
import tempfile
from pathlib import Path

import common
import torch

from dinov3kit.backend.allocator import MMAP_THRESHOLD_BYTES, TRIM_THRESHOLD_BYTES

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
DEFAULT_CASES = "vits16:fp32:1,vits16:fp32:16,vitb16:fp32:1,vitb16:fp32:16,vits16:bf16:16"
FORWARDS = {
    "dinov3kit": lambda model, x: model(x).last_hidden_state,
    "transformers": lambda model, x: model(pixel_values=x).last_hidden_state,
    "timm": lambda model, x: model.forward_features(x),
}
COMPILED = " compiled"


def contender(name: str, folder: Path, dtype_name: str, batch: int, size: int):
    """The timed call of one contender ("transformers", or "dinov3kit compiled": the library, compiled or
    not): a forward of a fixed random batch, built in the contender's process."""
    library = name.removesuffix(COMPILED)
    dtype = DTYPES[dtype_name]
    model = common.load_vit_twin(library, folder).to(dtype)
    if name.endswith(COMPILED):
        model.compile()
    pixel_values = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(0)).to(dtype)

    def forward():
        with torch.inference_mode():
            return FORWARDS[library](model, pixel_values)

    return forward


def contender_names(compile_too: bool) -> list[str]:
    names = list(FORWARDS)
    return names + [f"dinov3kit{COMPILED}", f"transformers{COMPILED}"] if compile_too else names


def ratio_columns(compile_too: bool) -> list[tuple[str, str, str]]:
    """The ratio columns of the table: (header, contender, contender it is divided by)."""
    columns = [("vs transformers", "dinov3kit", "transformers"), ("vs timm", "dinov3kit", "timm")]
    if compile_too:
        columns += [
            ("compiled: vs transformers", f"dinov3kit{COMPILED}", f"transformers{COMPILED}"),
            ("compiled vs eager", f"dinov3kit{COMPILED}", "dinov3kit"),
        ]
    return columns


def run_case(variant: str, dtype_name: str, batch: int, args: argparse.Namespace) -> list:
    names = contender_names(args.compile)
    with tempfile.TemporaryDirectory() as folder:
        common.save_vit_twins(variant, folder=Path(folder))
        builders = {
            name: functools.partial(contender, name, Path(folder), dtype_name, batch, args.size) for name in names
        }
        if args.same_process:
            fns = {name: build() for name, build in builders.items()}
            outputs = {name: fn().float() for name, fn in fns.items()}
            stats = common.interleaved(fns, repeats=args.repeats)
        else:
            with common.Isolated(builders, threads=args.threads, clock=args.clock) as isolated:
                outputs = {name: isolated.output(name) for name in builders}
                seconds = max(isolated.time(name) for name in builders)  # also the warm-up call
                number = max(1, round(args.round_seconds / seconds))
                stats = common.interleaved(isolated.timers(number), repeats=args.repeats, warmup=0, self_timed=True)
    diff = max((outputs[name] - outputs["dinov3kit"]).abs().max().item() for name in names)
    rate = {name: batch / s.median for name, s in stats.items()}
    return [
        f"{variant} {dtype_name} b{batch}",
        *(f"{rate[n]:.2f} {stats[n].spread_text()}" for n in names),
        *(f"{rate[ours] / rate[other]:.2f}x" for _, ours, other in ratio_columns(args.compile)),
        f"{diff:.1e}",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--cases", default=DEFAULT_CASES, help="comma-separated variant:dtype:batch")
    parser.add_argument("--same-process", action="store_true", help="run the three libraries in this process")
    parser.add_argument("--round-seconds", type=float, default=1.0, help="forwards in a row per library and round")
    parser.add_argument("--compile", action="store_true", help="also time dinov3kit and transformers compiled")
    parser.add_argument(
        "--clock", choices=sorted(common.CLOCKS), default="wall",
        help="wall: elapsed time; cpu: each process's CPU time (with --threads 1, robust to other load)",
    )  # fmt: skip
    parser.add_argument(
        "--keep-freed-memory", action="store_true",
        help="run every contender with glibc keeping freed memory (as the dinov3kit command does): no page faults",
    )  # fmt: skip
    args = parser.parse_args()
    if args.keep_freed_memory:  # read by each contender's fresh interpreter: the same for all of them
        os.environ.update(MALLOC_MMAP_THRESHOLD_=str(MMAP_THRESHOLD_BYTES), MALLOC_TRIM_THRESHOLD_=str(TRIM_THRESHOLD_BYTES))
    torch.set_num_threads(args.threads)
    print(common.machine())
    rows = []
    for case in args.cases.split(","):
        variant, dtype_name, batch = case.split(":")
        rows.append(run_case(variant, dtype_name, int(batch), args))
        print(" | ".join(rows[-1]), flush=True)
    where = "one process" if args.same_process else f"one process per library, {args.clock} clock"
    where += ", freed memory kept" if args.keep_freed_memory else ""
    common.print_table(
        f"ViT forward on CPU, {args.size} px, {args.threads} threads, {where}, images/s (median ± half IQR)",
        ["case", *contender_names(args.compile), *(column[0] for column in ratio_columns(args.compile)), "max |diff|"],
        rows,
    )


if __name__ == "__main__":
    main()
