"""Shared helpers of the benchmark scripts: interleaved timing, robust statistics, tables, twins.

Every script compares implementations in one run, interleaving them round by round so that drifts of
the machine (frequency, other load) hit every contender alike, and reports the median with its spread
(the interquartile range as a percentage of the median). CPU model forwards run each contender in its
own process (`Isolated`): in one process the contenders share the C allocator, and how much memory one
of them leaves cached decides how many page faults the next one takes, which moved single ratios by up
to 25% on the 2-core box.
"""

from __future__ import annotations

import multiprocessing
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

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
    def of(cls, values: Sequence[float]) -> Stats:
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
    self_timed: bool = False,
) -> dict[str, Stats]:
    """Time each callable `number` times per round for `repeats` rounds, rotating who goes first.

    Returns the per-call time statistics. `warmup` untimed calls run first (one-off costs: allocator,
    kernel selection, lazy initialisation). With `min_seconds`, rounds continue past `repeats` until
    every contender has been timed that long in total. With `self_timed`, each call returns its own
    duration in seconds (a contender in another process times itself, leaving out the messaging).
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
            start, own = time.perf_counter(), 0.0
            for _ in range(number):
                result = contenders[name]()
                own += result if self_timed else 0.0
            times[name].append((own if self_timed else time.perf_counter() - start) / number)
        round_ += 1
    return {name: Stats.of(values) for name, values in times.items()}


#: Pause before each timed call of an `Isolated` contender.
IDLE_BEFORE_TIMING_S = 0.02


#: How an `Isolated` contender times itself: elapsed time, or the CPU time of its process (with one torch
#: thread, what the forward itself costs, which other processes on a shared machine barely change).
CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}


class Isolated:
    """Contenders that each live in their own process, built there by `builders[name]()` (a picklable
    callable returning the zero-argument function to time), with `threads` torch threads each, timed by
    `clock` (see CLOCKS). Only one process works at a time: the others wait on their pipe. Use as a context manager; `timers()` feeds
    `interleaved(..., self_timed=True)` and `output(name)` returns one call's result for parity checks."""

    def __init__(
        self, builders: dict[str, Callable[[], Callable[[], object]]], *, threads: int, clock: str = "wall"
    ) -> None:
        if clock not in CLOCKS:
            raise ValueError(f"clock must be one of {sorted(CLOCKS)}, got {clock!r}")
        context = multiprocessing.get_context("spawn")
        self.pipes, self.processes = {}, {}
        for name, build in builders.items():
            parent, child = context.Pipe()
            process = context.Process(target=_serve, args=(child, build, threads, clock), daemon=True)
            process.start()
            self.pipes[name], self.processes[name] = parent, process
        for name in builders:
            self._receive(name)

    def _receive(self, name: str):
        reply, value = self.pipes[name].recv()
        if reply == "error":
            raise RuntimeError(f"contender {name!r} failed in its process:\n{value}")
        return value

    def ask(self, name: str, command: object):
        """Send a command ("output", ("time", n)) to one contender and return its reply."""
        self.pipes[name].send(command)
        return self._receive(name)

    def output(self, name: str):
        return self.ask(name, "output")

    def timers(self, number: int = 1) -> dict[str, Callable[[], float]]:
        """Callables for `interleaved(..., self_timed=True)`: each runs `number` calls of a contender in a
        row and returns their mean duration, so that one process runs as a user's loop would."""
        return {name: (lambda name=name: self.time(name, number)) for name in self.pipes}

    def time(self, name: str, number: int = 1) -> float:
        """Mean seconds of `number` calls in a row. The pause before them lets the OpenMP threads of the
        process that ran last stop spinning (libgomp spins for milliseconds after its last parallel region)."""
        time.sleep(IDLE_BEFORE_TIMING_S)
        return self.ask(name, ("time", number))

    def __enter__(self) -> Isolated:
        return self

    def __exit__(self, *exc) -> None:
        for name, pipe in self.pipes.items():
            pipe.send("stop")
            self.processes[name].join(timeout=60)


def _serve(pipe, build: Callable[[], Callable[[], object]], threads: int, clock: str = "wall") -> None:
    """The loop of an `Isolated` contender's process."""
    import traceback

    import torch

    torch.set_num_threads(threads)
    try:
        fn = build()
        pipe.send(("ready", None))
    except Exception:
        pipe.send(("error", traceback.format_exc()))
        return
    while (command := pipe.recv()) != "stop":
        try:
            if command[0] == "time":
                timer = CLOCKS[clock]
                start = timer()
                for _ in range(command[1]):
                    fn()
                pipe.send(("ok", (timer() - start) / command[1]))
            else:
                pipe.send(("ok", fn().float()))
        except Exception:
            pipe.send(("error", traceback.format_exc()))


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


#: CPU flags (/proc/cpuinfo) that decide which matrix kernels run, in the order they are named.
MATRIX_FLAGS = {
    "amx_bf16": "AMX-BF16",
    "amx_int8": "AMX-INT8",
    "amx_fp16": "AMX-FP16",
    "avx512_bf16": "AVX512-BF16",
    "avx512_fp16": "AVX512-FP16",
    "avx512_vnni": "AVX512-VNNI",
    "avx_vnni": "AVX-VNNI",
    "avx512f": "AVX512",
    "avx2": "AVX2",
}


def matrix_isa() -> str:
    """The CPU's matrix instruction sets (AMX, AVX512-BF16, VNNI, ...), as its flags list them: what tells a
    table measured on a Xeon with AMX from one measured on an EPYC without bf16 units."""
    try:
        flags = next(
            line.split(":", 1)[1].split()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("flags")
        )
    except (OSError, StopIteration):
        return f"matrix ISA unknown on {platform.machine()}"
    found = [name for flag, name in MATRIX_FLAGS.items() if flag in flags]
    return ", ".join(found) or "no AVX2"


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
    parts = [f"{cpu} ({matrix_isa()}), {os.cpu_count()} cores, {torch.get_num_threads()} torch threads"]
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
    save_vit_twins(variant, seed=seed, folder=folder, attn_implementation=attn_implementation, **overrides)
    return tuple(load_vit_twin(name, folder, attn_implementation) for name in ("dinov3kit", "transformers", "timm"))


def save_vit_twins(
    variant: str, *, seed: int = 0, folder: Path, attn_implementation: str = "sdpa", **overrides
) -> None:
    """Write the checkpoints `load_vit_twin` reads: transformers' random model in `folder/hf`, the same
    weights in Meta's layout in `folder/meta.pth`."""
    from tests.oracles.hf_twin import hf_vit

    from dinov3kit import DINOv3ViTConfig, DINOv3ViTModel
    from dinov3kit.weights import save_meta_checkpoint

    config = DINOv3ViTConfig.from_preset(variant, **overrides).to_dict()
    keep = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "hidden_act",
            "use_gated_mlp", "query_bias", "key_bias", "value_bias", "num_register_tokens", "layerscale_value")
    theirs = hf_vit(seed, attn_implementation=attn_implementation, **{k: config[k] for k in keep})
    theirs.save_pretrained(folder / "hf")
    save_meta_checkpoint(DINOv3ViTModel.from_pretrained(folder / "hf"), folder / "meta.pth")


def load_vit_twin(name: str, folder: Path, attn_implementation: str = "sdpa"):
    """One of the models `save_vit_twins` wrote: "dinov3kit", "transformers" or "timm", in eval mode."""
    import torch

    if name == "dinov3kit":
        from dinov3kit import DINOv3ViTModel

        return DINOv3ViTModel.from_pretrained(folder / "hf").eval()
    if name == "transformers":
        from transformers import DINOv3ViTModel as HFModel

        return HFModel.from_pretrained(folder / "hf", attn_implementation=attn_implementation).eval()
    from tests.oracles.meta_twin import timm_vit_from_meta

    from dinov3kit import DINOv3ViTConfig

    state = torch.load(folder / "meta.pth", map_location="cpu", weights_only=True)
    num_heads = DINOv3ViTConfig.from_pretrained(folder / "hf").num_attention_heads
    return timm_vit_from_meta(state, num_heads=num_heads).eval()


def same_outputs(models: dict[str, Callable], pixel_values) -> dict[str, float]:
    """Max |difference| of each model's normed tokens from the first one's (proves the weights match)."""
    outputs = {name: fn(pixel_values).float() for name, fn in models.items()}
    reference = next(iter(outputs.values()))
    return {name: (out - reference).abs().max().item() for name, out in outputs.items()}
