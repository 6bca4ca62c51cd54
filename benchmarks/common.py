"""Shared helpers of the benchmark scripts: interleaved timing, robust statistics, tables, twins.

Every script compares implementations inside one process run, interleaving them round by round so
that drifts of the machine (frequency, other load) hit every contender alike, and reports the median
with its spread (the interquartile range as a percentage of the median).
"""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

ROOT = Path(__file__).resolve().parents[1]
for path in (ROOT, ROOT / "src"):  # the test oracles build the twins; src for an uninstalled checkout
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))


@dataclass(frozen=True)
class Stats:
    """Median and spread of repeated measurements (seconds, bytes, ... whatever was measured)."""

    median: float
    spread: float  # interquartile range / median
    samples: int

    @classmethod
    def of(cls, values: Sequence[float]) -> "Stats":
        values = sorted(values)
        median = statistics.median(values)
        if len(values) >= 4:
            q1, _, q3 = statistics.quantiles(values, n=4)
        else:
            q1, q3 = values[0], values[-1]
        return cls(median, (q3 - q1) / median if median else 0.0, len(values))

    def spread_text(self) -> str:
        return f"±{100 * self.spread / 2:.1f}%"


def interleaved(
    contenders: dict[str, Callable[[], object]],
    *,
    repeats: int,
    number: int = 1,
    warmup: int = 1,
    min_seconds: float = 0.0,
) -> dict[str, Stats]:
    """Time each callable `number` times per round for `repeats` rounds, rotating who goes first.

    Returns the per-call time statistics. `warmup` untimed calls run first (one-off costs: allocator,
    kernel selection, lazy initialisation). With `min_seconds`, rounds continue past `repeats` until
    every contender has been timed that long in total.
    """
    names = list(contenders)
    for name in names:
        for _ in range(warmup):
            contenders[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    round_ = 0
    while round_ < repeats or min(sum(t) * number for t in times.values()) < min_seconds:
        order = names[round_ % len(names) :] + names[: round_ % len(names)]
        for name in order:
            start = time.perf_counter()
            for _ in range(number):
                contenders[name]()
            times[name].append((time.perf_counter() - start) / number)
        round_ += 1
    return {name: Stats.of(values) for name, values in times.items()}


def run_python(code: str, *, env: dict[str, str] | None = None, timeout: float = 600) -> str:
    """Run `code` in a fresh interpreter of this venv and return its stdout (raises with stderr on failure)."""
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)]), **(env or {})},
    )
    if result.returncode != 0:
        raise RuntimeError(f"subprocess failed ({result.returncode}):\n{result.stderr[-4000:]}")
    return result.stdout


def print_table(title: str, header: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    """A Markdown table (pastes into benchmarks/README.md)."""
    cells = [[str(c) for c in header]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    line = lambda row: "| " + " | ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths))) + " |"
    print(f"\n### {title}\n")
    print(line(cells[0]))
    print("|" + "|".join(("-" * (w + 1) + ":") if i else ("-" * (w + 2)) for i, w in enumerate(widths)) + "|")
    for row in cells[1:]:
        print(line(row))
    print(flush=True)


def machine() -> str:
    """One line naming the CPU (and GPU), thread count and library versions."""
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    parts = [f"{cpu}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads"]
    if torch.cuda.is_available():
        parts.append(torch.cuda.get_device_name())
    if hasattr(os, "getloadavg"):  # other processes skew timings; say how busy the machine was
        parts.append(f"load average {os.getloadavg()[0]:.1f}")
    versions = [f"torch {torch.__version__}"]
    for module in ("transformers", "timm"):
        try:
            versions.append(f"{module} {__import__(module).__version__}")
        except ImportError:
            pass
    return "; ".join(parts + [", ".join(versions)])


def vit_twins(variant: str, *, seed: int = 0, folder: Path, attn_implementation: str = "sdpa", **overrides):
    """The same random ViT as (ours, transformers, timm), built from one transformers checkpoint.

    transformers' model gets random non-trivial weights and is saved; ours loads that folder; timm
    loads the Meta-layout checkpoint that ours writes (through timm's own checkpoint filter).
    """
    import torch

    from dinov3kit import DINOv3ViTConfig, DINOv3ViTModel
    from dinov3kit.weights import save_meta_checkpoint
    from tests.oracles.hf_twin import hf_vit
    from tests.oracles.meta_twin import timm_vit_from_meta

    config = DINOv3ViTConfig.from_preset(variant, **overrides).to_dict()
    keep = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "hidden_act",
            "use_gated_mlp", "query_bias", "key_bias", "value_bias", "num_register_tokens", "layerscale_value")
    theirs = hf_vit(seed, attn_implementation=attn_implementation, **{k: config[k] for k in keep})
    theirs.save_pretrained(folder / "hf")
    ours = DINOv3ViTModel.from_pretrained(folder / "hf")
    save_meta_checkpoint(ours, folder / "meta.pth")
    state = torch.load(folder / "meta.pth", map_location="cpu", weights_only=True)
    timm_model = timm_vit_from_meta(state, num_heads=config["num_attention_heads"])
    return ours, theirs, timm_model


def same_outputs(models: dict[str, Callable], pixel_values) -> dict[str, float]:
    """Max |difference| of each model's normed tokens from the first one's (proves the weights match)."""
    outputs = {name: fn(pixel_values).float() for name, fn in models.items()}
    reference = next(iter(outputs.values()))
    return {name: (out - reference).abs().max().item() for name, out in outputs.items()}
