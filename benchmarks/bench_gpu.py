"""The GPU table of issue 6 in one run: bf16 ViT forward, dinov3kit vs transformers vs timm, eager and compiled.

    .venv/bin/python benchmarks/bench_gpu.py [--budget 450] [--compile regional|full|none] [--cases ...]
    .venv/bin/python benchmarks/bench_gpu.py --smoke     # tiny CPU run that checks the script itself

Per case (variant, resolution, batch) the three models are built directly on the GPU in bf16 with random
weights, timed eager (interleaved rounds, medians), then dinov3kit and transformers are compiled the same
way (`regional`: each block compiled once and reused by every block, what fits the time budget; `full`:
the whole model; `cuda-graphs`: the whole model with mode="reduce-overhead", for small fixed batches) and timed again; compile time is the first compiled call. Throughput is also given as
achieved TFLOP/s (analytic FLOPs of the forward) and MFU against a bf16 matmul peak measured at the start.
Cases run in priority order; compilation is skipped once `--budget` seconds would be exceeded, so the whole
table fits 8 minutes on one H100. Results also go to $OUT/bench_gpu.json when $OUT is set.

Targets (issue 6, same run): ViT-S >= 2.0x transformers eager, ViT-B >= 1.8x, ViT-L >= 1.5x (>= 50% MFU),
7B >= 1.2x (>= 65% MFU), each also >= transformers compiled; ViT-L at 1024 px >= 1.3x.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import time
from functools import partial

import common
import torch

#: (variant, image size, batch) in priority order; batches are those of the peers' table in the issue.
CASES = "vitb16:224:512,vitl16:224:256,vits16:224:512,vit7b16:224:32,vith16plus:224:128,vitl16:1024:8"
SMOKE_CASES = "vits16:64:2"
HF_KEYS = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "hidden_act",
           "use_gated_mlp", "query_bias", "key_bias", "value_bias", "num_register_tokens", "layerscale_value")
COMPILE_ESTIMATE_S = 40  # per model with regional compilation; a compile is skipped past the budget


def forward_flops(config, height: int, width: int) -> float:
    """Multiply-adds x 2 of one image's forward pass (matmuls, attention and patch embedding)."""
    dim, hidden, p = config.hidden_size, config.intermediate_size, config.patch_size
    patches = (height // p) * (width // p)
    tokens = config.num_prefix_tokens + patches
    projections = 2 * tokens * dim * 4 * dim  # qkv and output projection
    attention = 2 * 2 * tokens * tokens * dim  # scores and weighted values
    mlp = 2 * tokens * dim * hidden * (3 if config.use_gated_mlp else 2)
    return config.num_hidden_layers * (projections + attention + mlp) + 2 * patches * 3 * p * p * dim


def matmul_peak(device: torch.device, size: int = 8192, iters: int = 20) -> float:
    """Best measured bf16 matmul TFLOP/s on `device` (the MFU denominator)."""
    a = torch.randn(size, size, device=device, dtype=torch.bfloat16)
    b = torch.randn(size, size, device=device, dtype=torch.bfloat16)
    best = 0.0
    for _ in range(3):
        seconds = timed(lambda: a @ b, iters, device)
        best = max(best, 2 * size**3 / seconds / 1e12)
    return best


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, iters: int, device: torch.device) -> float:
    """Seconds per call of `iters` back-to-back calls."""
    synchronize(device)
    start = time.perf_counter()
    for _ in range(iters):
        fn()
    synchronize(device)
    return (time.perf_counter() - start) / iters


@contextlib.contextmanager
def building(device: torch.device, dtype: torch.dtype):
    """Create modules directly on `device` in `dtype` (no fp32 copy of a 7B model first)."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            yield
    finally:
        torch.set_default_dtype(previous)


def build_models(variant: str, device: torch.device, dtype: torch.dtype, smoke: bool) -> tuple:
    try:
        from timm.layers import LayerNorm
        from timm.models.eva import Eva
    except ImportError:  # timm is a peer, not a need: the table goes on without it
        Eva = None
    from transformers import DINOv3ViTConfig as HFConfig
    from transformers import DINOv3ViTModel as HFModel

    from dinov3kit import DINOv3ViTConfig, DINOv3ViTModel

    overrides = dict(num_hidden_layers=2) if smoke else {}
    config = DINOv3ViTConfig.from_preset(variant, **overrides)
    with building(device, dtype):
        ours = DINOv3ViTModel(config).eval()
        theirs = HFModel._from_config(
            HFConfig(**{k: getattr(config, k) for k in HF_KEYS}), attn_implementation="sdpa", dtype=dtype
        ).eval()
        timm_model = None if Eva is None else Eva(
            patch_size=16, embed_dim=config.hidden_size, depth=config.num_hidden_layers,
            num_heads=config.num_attention_heads, qkv_bias=config.query_bias,
            mlp_ratio=config.intermediate_size / config.hidden_size, swiglu_mlp=config.use_gated_mlp,
            swiglu_align_to=8, init_values=1e-5, rope_type="dinov3", rope_temperature=100, rope_rotate_half=True,
            use_rot_pos_emb=True, use_abs_pos_emb=False, num_reg_tokens=config.num_register_tokens,
            use_fc_norm=False, norm_layer=partial(LayerNorm, eps=1e-5), dynamic_img_size=True, num_classes=0,
        ).eval()  # fmt: skip
    return config, ours, theirs, timm_model


def compile_models(ours, theirs, how: str) -> None:
    """Compile dinov3kit's and transformers' models in place, the same way for both."""
    if how == "regional":
        for block in [*ours.blocks, *theirs.model.layer]:
            block.compile()
    elif how == "cuda-graphs":  # whole model, replayed as CUDA graphs: what small fixed batches need
        ours.compile(mode="reduce-overhead")
        theirs.compile(mode="reduce-overhead")
    else:
        ours.compile()
        theirs.compile(fullgraph=False)


def measure(contenders: dict, device: torch.device, repeats: int, target_s: float) -> dict[str, common.Stats]:
    """Per-call seconds of each contender: iterations per round sized to ~target_s, interleaved rounds."""
    calls = {}
    for name, fn in contenders.items():
        fn()
        once = timed(fn, 1, device)
        iters = max(1, min(50, round(target_s / max(once, 1e-6))))
        calls[name] = partial(timed, fn, iters, device)
    samples: dict[str, list[float]] = {name: [] for name in contenders}
    names = list(contenders)
    for round_ in range(repeats):
        for name in names[round_ % len(names) :] + names[: round_ % len(names)]:
            samples[name].append(calls[name]())
    return {name: common.Stats.of(values) for name, values in samples.items()}


def run_case(case: str, args, device, dtype, peak: float, deadline: float) -> list[dict]:
    variant, size, batch = case.split(":")
    size, batch = int(size), int(batch)
    built = time.perf_counter()
    config, ours, theirs, timm_model = build_models(variant, device, dtype, args.smoke)
    built = time.perf_counter() - built
    pixels = torch.randn(batch, 3, size, size, device=device, dtype=dtype)
    flops = forward_flops(config, size, size) * batch
    eager = {
        "dinov3kit eager": lambda: ours(pixels).last_hidden_state,
        "transformers eager": lambda: theirs(pixel_values=pixels).last_hidden_state,
        "timm eager": lambda: timm_model.forward_features(pixels),
    }
    if timm_model is None:
        del eager["timm eager"]
    results = []
    with torch.inference_mode():
        for name, fn in eager.items():
            if not torch.isfinite(fn().float()).all():
                raise RuntimeError(f"{case}: {name} gives non-finite outputs")
        stats = measure(eager, device, args.repeats, args.round_seconds)
        compile_s = {}
        if args.compile != "none" and time.perf_counter() + 2 * COMPILE_ESTIMATE_S < deadline:
            compile_models(ours, theirs, args.compile)
            compiled = {
                f"dinov3kit compiled ({args.compile})": eager["dinov3kit eager"],
                f"transformers compiled ({args.compile})": eager["transformers eager"],
            }
            for name, fn in compiled.items():
                start = time.perf_counter()
                fn()
                synchronize(device)
                compile_s[name] = time.perf_counter() - start
            stats.update(measure(compiled, device, args.repeats, args.round_seconds))
        elif args.compile != "none":
            print(f"{case}: compilation skipped, the {args.budget:.0f} s budget would be exceeded", flush=True)
    reference = batch / stats["transformers eager"].median
    memory = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
    for name, s in stats.items():
        rate = batch / s.median
        results.append(dict(
            case=case, variant=variant, size=size, batch=batch, implementation=name, images_per_s=rate,
            spread=s.spread, tflops=flops / s.median / 1e12, mfu=flops / s.median / 1e12 / peak,
            vs_transformers_eager=rate / reference, compile_s=compile_s.get(name), build_s=built,
            peak_memory_gib=memory,
        ))  # fmt: skip
    ours = theirs = timm_model = pixels = None  # free the models before the next case
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", default=None, help=f"comma-separated variant:size:batch (default {CASES})")
    parser.add_argument("--compile", choices=("regional", "full", "cuda-graphs", "none"), default="regional")
    parser.add_argument("--budget", type=float, default=450.0, help="seconds; later compilations are skipped")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--round-seconds", type=float, default=0.3)
    parser.add_argument("--smoke", action="store_true", help="tiny models on the CPU: checks the script only")
    args = parser.parse_args()
    start = time.perf_counter()
    if args.smoke:
        device, dtype, cases = torch.device("cpu"), torch.bfloat16, args.cases or SMOKE_CASES
        args.repeats, args.round_seconds = 2, 0.05
    else:
        if not torch.cuda.is_available():
            raise SystemExit("no CUDA device: run on a GPU machine, or pass --smoke to check the script on the CPU")
        device, dtype, cases = torch.device("cuda"), torch.bfloat16, args.cases or CASES
        torch.backends.cuda.matmul.allow_tf32 = True
    print(common.machine(), flush=True)
    peak = matmul_peak(device, 8192 if device.type == "cuda" else 512, 20 if device.type == "cuda" else 2)
    print(f"measured bf16 matmul peak: {peak:.1f} TFLOP/s", flush=True)
    deadline = start + args.budget
    rows, results = [], []
    out = os.environ.get("OUT")
    for case in cases.split(","):
        try:
            case_results = run_case(case, args, device, dtype, peak, deadline)
        except Exception as error:  # report and go on: one failing case must not cost the whole GPU run
            print(f"{case}: FAILED {type(error).__name__}: {error}", flush=True)
            gc.collect()
            if device.type == "cuda":
                torch.cuda.empty_cache()
            continue
        for r in case_results:
            results.append(r)
            rows.append([
                r["case"], r["implementation"], f"{r['images_per_s']:.1f} ±{50 * r['spread']:.1f}%",
                f"{r['tflops']:.1f}", f"{100 * r['mfu']:.0f}%", f"{r['vs_transformers_eager']:.2f}x",
                "" if r["compile_s"] is None else f"{r['compile_s']:.0f}", f"{r['peak_memory_gib']:.1f}",
            ])  # fmt: skip
            print(" | ".join(rows[-1]), flush=True)
        if out:
            with open(os.path.join(out, "bench_gpu.json"), "w") as handle:
                json.dump(dict(machine=common.machine(), peak_tflops=peak, results=results), handle, indent=1)
    common.print_table(
        f"ViT forward, bf16, images/s (median ± half IQR); MFU vs measured {peak:.0f} TFLOP/s bf16 matmul peak; "
        f"total {time.perf_counter() - start:.0f} s",
        ["case", "implementation", "images/s", "TFLOP/s", "MFU", "vs transformers eager", "compile s", "peak GiB"],
        rows,
    )


if __name__ == "__main__":
    main()
