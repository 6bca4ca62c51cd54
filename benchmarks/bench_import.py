"""Import time in a fresh interpreter: `import torch` vs `import dinov3kit` vs transformers' and timm's DINOv3.

    .venv/bin/python benchmarks/bench_import.py [--repeats 7]

Each statement runs in its own new process (interleaved, repeated); the clock covers the import only,
not the interpreter start (nor the untimed `import torch` of the "torch already imported" rows, which
give the cost on top of torch with less noise). Target (issue 6): `import dinov3kit` <= 0.3 s more than `import torch`.
"""

from __future__ import annotations

import argparse

import common

#: name -> (untimed setup, timed statement)
STATEMENTS = {
    "import torch": ("", "import torch"),
    "import dinov3kit": ("", "import dinov3kit"),
    "from transformers import DINOv3ViTModel": ("", "from transformers import DINOv3ViTModel"),
    "timm.create_model (DINOv3 ViT-S)": ("", "import timm; timm.create_model('vit_small_patch16_dinov3')"),
    "import dinov3kit, torch already imported": ("import torch", "import dinov3kit"),
    "transformers' DINOv3, torch already imported": ("import torch", "from transformers import DINOv3ViTModel"),
}

TIMER = """
import time
{setup}
start = time.perf_counter()
{statement}
print(time.perf_counter() - start)
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    print(common.machine())
    times: dict[str, list[float]] = {name: [] for name in STATEMENTS}
    names = list(STATEMENTS)
    for round_ in range(args.repeats + 1):  # round 0 warms the file cache and is dropped
        for name in names[round_ % len(names) :] + names[: round_ % len(names)]:
            setup, statement = STATEMENTS[name]
            seconds = float(common.run_python(TIMER.format(setup=setup, statement=statement)).strip().splitlines()[-1])
            if round_:
                times[name].append(seconds)
    stats = {name: common.Stats.of(values) for name, values in times.items()}
    torch_time = stats["import torch"].median
    rows = [
        [name, f"{s.median:.2f} {s.spread_text()}", "" if "already" in name else f"{s.median - torch_time:+.2f}"]
        for name, s in stats.items()
    ]
    common.print_table(
        f"Import time, fresh interpreter, median of {args.repeats}",
        ["statement", "seconds", "vs import torch"],
        rows,
    )


if __name__ == "__main__":
    main()
