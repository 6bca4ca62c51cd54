"""Checkpoint loading: time and peak memory of `from_pretrained`, dinov3kit vs transformers.

    .venv/bin/python benchmarks/bench_load.py [--variant vitb16] [--repeats 5] [--dtype float32]

One random checkpoint is written once (transformers folder with model.safetensors, and Meta's .pth
layout); each load then runs in a fresh interpreter (imports done before the clock starts), interleaved
and repeated, with the files in the page cache after a warm-up round. Peak RSS is the process's
high-water mark minus its RSS after the imports, at the end of the load and after reading every
weight once (memory-mapped weights become resident only when used). Targets (issue 6): time <= 0.5x transformers, peak
growth <= weights + 300 MB.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import common

LOADER = """
import json, time
def status_mb(field):  # VmHWM: this process's peak (ru_maxrss would include the parent's, kept across exec)
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
import torch
torch.set_num_threads({threads})
{imports}
before = status_mb("VmRSS")
start = time.perf_counter()
model = {load}
seconds = time.perf_counter() - start
peak = status_mb("VmHWM")
total = sum(float(p.float().sum()) for p in model.parameters())  # reads every weight, as a first forward would
assert total == total, "NaN in the loaded weights"
print(json.dumps(dict(seconds=seconds, before=before, peak=peak, used=status_mb("VmHWM"))))
"""

CONTENDERS = {
    "dinov3kit (safetensors)": (
        "from dinov3kit import DINOv3ViTModel",
        "DINOv3ViTModel.from_pretrained({hf!r}, dtype={dtype!r})",
    ),
    "dinov3kit (Meta .pth)": (
        "from dinov3kit import DINOv3ViTModel",
        "DINOv3ViTModel.from_pretrained({meta!r}, dtype={dtype!r})",
    ),
    "transformers (safetensors)": (
        "from transformers import DINOv3ViTModel",
        "DINOv3ViTModel.from_pretrained({hf!r}, dtype=getattr(torch, {dtype!r}))",
    ),
}


def write_checkpoints(variant: str, folder: Path, dtype: str) -> tuple[Path, Path, int]:
    """The transformers folder, the Meta .pth and the weights' size in bytes (in the load dtype)."""
    import torch
    from tests.oracles.hf_twin import hf_vit

    from dinov3kit import DINOv3ViTConfig
    from dinov3kit.weights import save_meta_checkpoint

    config = DINOv3ViTConfig.from_preset(variant).to_dict()
    keep = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "hidden_act",
            "use_gated_mlp", "query_bias", "key_bias", "value_bias", "num_register_tokens", "layerscale_value")
    model = hf_vit(0, **{k: config[k] for k in keep})
    model.save_pretrained(folder / "hf")
    from dinov3kit import DINOv3ViTModel

    ours = DINOv3ViTModel.from_pretrained(folder / "hf")
    save_meta_checkpoint(ours, folder / "meta.pth")
    size = sum(p.numel() for p in ours.parameters()) * torch.empty(0, dtype=getattr(torch, dtype)).element_size()
    return folder / "hf", folder / "meta.pth", size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variant", default="vitb16")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    print(common.machine())
    with tempfile.TemporaryDirectory() as tmp:
        hf, meta, size = write_checkpoints(args.variant, Path(tmp), args.dtype)
        scripts = {
            name: LOADER.format(
                threads=args.threads,
                imports=imports,
                load=load.format(hf=str(hf), meta=str(meta), dtype=args.dtype),
            )
            for name, (imports, load) in CONTENDERS.items()
        }
        results: dict[str, list[dict]] = {name: [] for name in scripts}
        for round_ in range(args.repeats + 1):  # round 0 warms the page cache and is dropped
            names = list(scripts)
            for name in names[round_ % len(names) :] + names[: round_ % len(names)]:
                result = json.loads(common.run_python(scripts[name]).strip().splitlines()[-1])
                if round_:
                    results[name].append(result)
    weights_mb = size / 2**20
    reference = common.Stats.of([r["seconds"] for r in results["transformers (safetensors)"]]).median
    rows = []
    for name, runs in results.items():
        seconds = common.Stats.of([r["seconds"] for r in runs])
        growth = common.Stats.of([r["peak"] - r["before"] for r in runs])
        used = common.Stats.of([r["used"] - r["before"] for r in runs])
        rows.append([
            name,
            f"{seconds.median:.3f} {seconds.spread_text()}",
            f"{seconds.median / reference:.2f}x",
            f"{growth.median:.0f}",
            f"{used.median:.0f}",
            f"{used.median - weights_mb:+.0f}",
        ])
    common.print_table(
        f"Loading {args.variant} ({args.dtype}, weights {weights_mb:.0f} MB), fresh process each, median of {args.repeats}",
        ["loader", "seconds", "vs transformers", "peak RSS growth MB", "after reading all weights MB", "vs weights MB"],
        rows,
    )


if __name__ == "__main__":
    main()
