"""GPU correctness checks and a kernel profile, in one short run before `bench_gpu.py` (issue 6).

    PYTHONPATH=src:. python3 benchmarks/gpu_check.py [--profile vitb16:224:256]

1. Parity on the GPU: the same random ViT (non-trivial weights) in dinov3kit, transformers and timm,
   fp32 with TF32 off, max |diff| of the tokens (target <= 1e-5), plain and gated MLP.
2. bf16 against fp32 on a real photo (scikit-image's astronaut): relative error of ours and transformers'
   (target <= 1e-2).
3. Compiled (`model.compile()`) and CUDA-graph (`mode="reduce-overhead"`) forwards against eager, bf16.
4. A profile of one bf16 forward of ours and of transformers: time per call and the top CUDA kernels.
Writes gpu_check.json to $OUT when it is set.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import common
import numpy as np
import torch

RESULTS: dict = {}


def photo(device: torch.device) -> torch.Tensor:
    from PIL import Image
    from skimage import data

    image = np.asarray(Image.fromarray(data.astronaut()).resize((224, 224), Image.BICUBIC), dtype=np.float32)
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    return torch.from_numpy(((image / 255 - mean) / std).astype(np.float32)).permute(2, 0, 1)[None].to(device)


def check_parity(device: torch.device) -> None:
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    pixels = photo(device)
    for variant in ("vits16", "vits16plus"):
        with tempfile.TemporaryDirectory() as folder:
            ours, theirs, timm_model = common.vit_twins(variant, folder=Path(folder))
        ours, theirs, timm_model = (model.to(device) for model in (ours, theirs, timm_model))
        models = {
            "dinov3kit": lambda x, m=ours: m(x).last_hidden_state,
            "transformers": lambda x, m=theirs: m(pixel_values=x).last_hidden_state,
            "timm": lambda x, m=timm_model: m.forward_features(x),
        }
        with torch.inference_mode():
            fp32 = {name: fn(pixels) for name, fn in models.items()}
            diffs = {name: (out - fp32["transformers"]).abs().max().item() for name, out in fp32.items()}
            reference = fp32["dinov3kit"]
            bf16 = {}
            for name, model in (("dinov3kit", ours), ("transformers", theirs)):
                model.to(torch.bfloat16)
                out = models[name](pixels.bfloat16()).float()
                bf16[name] = ((out - reference).norm() / reference.norm()).item()
        RESULTS[f"parity {variant}"] = dict(fp32_max_abs_diff_vs_transformers=diffs, bf16_relative_error=bf16)
        print(f"{variant}: fp32 max|diff| vs transformers {diffs}; bf16 rel. error vs fp32 {bf16}", flush=True)
    torch.backends.cuda.matmul.allow_tf32 = True


def check_compiled(device: torch.device) -> None:
    from dinov3kit import DINOv3ViTConfig, DINOv3ViTModel

    config = DINOv3ViTConfig.from_preset("vits16", num_hidden_layers=2)
    torch.manual_seed(0)
    eager = DINOv3ViTModel(config).to(device, torch.bfloat16).eval()
    for mode in ("reduce-overhead",):  # CUDA graphs over the inductor graph: checks both
        compiled = DINOv3ViTModel(config).to(device, torch.bfloat16).eval()
        compiled.load_state_dict(eager.state_dict())
        start = time.perf_counter()
        compiled.compile(mode=mode)
        diffs = []
        with torch.inference_mode():
            for batch, size in ((8, 224), (8, 224), (4, 320), (8, 224)):
                pixels = torch.randn(batch, 3, size, size, device=device, dtype=torch.bfloat16)
                expected = eager(pixels).last_hidden_state.float()
                got = compiled(pixels).last_hidden_state.float()
                diffs.append(((got - expected).norm() / expected.norm()).item())
        seconds = time.perf_counter() - start
        RESULTS[f"compiled mode={mode}"] = dict(relative_diff_vs_eager=diffs, seconds=seconds)
        print(f"compiled mode={mode}: rel. diff vs eager {[f'{d:.1e}' for d in diffs]} ({seconds:.0f} s)", flush=True)


def profile(case: str, device: torch.device) -> None:
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile
    from transformers import DINOv3ViTConfig as HFConfig
    from transformers import DINOv3ViTModel as HFModel

    from dinov3kit import DINOv3ViTConfig, DINOv3ViTModel

    variant, size, batch = case.split(":")
    config = DINOv3ViTConfig.from_preset(variant)
    keys = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "hidden_act",
            "use_gated_mlp", "query_bias", "key_bias", "value_bias", "num_register_tokens", "layerscale_value")
    ours = DINOv3ViTModel(config).to(device, torch.bfloat16).eval()
    theirs = HFModel._from_config(HFConfig(**{k: getattr(config, k) for k in keys}), attn_implementation="sdpa")
    theirs = theirs.to(device, torch.bfloat16).eval()
    pixels = torch.randn(int(batch), 3, int(size), int(size), device=device, dtype=torch.bfloat16)
    from dinov3kit.backend import overridden

    def unfused():
        with overridden(fused_kernels=False):
            return ours(pixels)

    runs = {
        "dinov3kit": lambda: ours(pixels),
        "dinov3kit without fused kernels": unfused,
        "transformers": lambda: theirs(pixel_values=pixels),
    }
    with torch.inference_mode():
        fused, plain = (ours(pixels).last_hidden_state.float(), unfused().last_hidden_state.float())
        RESULTS[f"fused vs unfused {case}"] = ((fused - plain).norm() / plain.norm()).item()
        print(f"fused vs torch RoPE, rel. diff {RESULTS[f'fused vs unfused {case}']:.1e}")
        for name, fn in runs.items():
            for _ in range(3):
                fn()
            torch.cuda.synchronize()
            with torch_profile(activities=[ProfilerActivity.CUDA]) as prof:
                fn()
                torch.cuda.synchronize()
            start = time.perf_counter()
            for _ in range(5):
                fn()
            torch.cuda.synchronize()
            wall = (time.perf_counter() - start) / 5 * 1e3
            events = [e for e in prof.key_averages() if e.device_time_total > 0]
            events.sort(key=lambda e: -e.self_device_time_total)
            total = sum(e.self_device_time_total for e in events) / 1e3
            top = [(e.key[:90], e.count, round(e.self_device_time_total / 1e3, 3)) for e in events[:14]]
            RESULTS[f"profile {case} {name}"] = dict(wall_ms=wall, kernel_ms=total, kernels=top)
            print(f"\n{name} {case}: {wall:.1f} ms per forward, {total:.1f} ms of kernels")
            for key, count, ms in top:
                print(f"  {ms:8.2f} ms  x{count:<4d} {key}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="vitb16:224:256,vith16plus:224:128")
    parser.add_argument("--device", default="cuda", help="cpu checks the script itself (no profile)")
    args = parser.parse_args()
    device = torch.device(args.device)
    print(common.machine(), flush=True)
    profiles = [lambda d, c=c: profile(c, d) for c in args.profile.split(",")] if device.type == "cuda" else []
    for step in (check_parity, check_compiled, *profiles):
        try:
            step(device)
        except Exception as error:  # report and go on: one broken check must not cost the GPU session
            print(f"FAILED {getattr(step, '__name__', step)}: {type(error).__name__}: {error}", flush=True)
            RESULTS.setdefault("failures", []).append(f"{type(error).__name__}: {error}")
        if os.environ.get("OUT"):
            Path(os.environ["OUT"], "gpu_check.json").write_text(json.dumps(RESULTS, indent=1))


if __name__ == "__main__":
    main()
