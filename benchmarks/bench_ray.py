"""`embed --engine ray` against the local engine, decoding throughput against decoding CPUs, and how busy
many model actors stay.

    .venv/bin/python benchmarks/bench_ray.py [--count 2000] [--photo-size 2000] [--variant vits16]
        [--decode-cpus 1,2] [--actors 3] [--device cpu] [--gpus-per-worker 0]

1. Local vs ray: `embed_images` on `--count` photo-like JPEGs (the sample photos enlarged to `--photo-size`
   px, re-encoded), same model, batch size and device; ray with one model actor. Target: ray >= 80% of
   the local engine's images/s. Ray's figure includes starting the actor and loading the model in it
   (the local one's excludes the model load), on a cluster already running.
2. Decoding alone (listing → decode/preprocess tasks), with 1, 2, ... decoding CPUs: images/s.
3. `--actors` model actors on one local cluster: each actor's busy time inside its batches over its
   lifetime from its first batch to its last (target >= 90%: the actors are fed, not starved).

The model is the released architecture with random weights (speed does not depend on the values), saved
to a temporary folder that the actors load. On a GPU machine run it with --device cuda --gpus-per-worker 1
(benchmarks/gpu_ray_check.sh); it was not run on a GPU for this table.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import ray
from bench_embed import make_collection
from common import machine, print_table

from dinov3kit import DINOv3ViTConfig, DINOv3ViTModel
from dinov3kit.tools.embed import default_workers, embed_images
from dinov3kit.tools.inputs import collect_items
from dinov3kit.tools.ray_engine import ModelActor, _pipeline, decoding_dataset, processor_for_source
from dinov3kit.tools.runtime import pick_device

LOCAL_TARGET, BUSY_TARGET = 0.80, 0.90


class TimedActor(ModelActor):
    """ModelActor that reports its pid and the wall-clock span of each batch."""

    def __call__(self, batch):
        import os

        start = time.time()
        output = super().__call__(batch)
        count = len(output["cls"])
        output.update(bench_pid=np.full(count, os.getpid()), bench_start=np.full(count, start), bench_end=np.full(count, time.time()))
        return output


def decode_rate(items, processor, decode_cpus: int) -> float:
    start = time.perf_counter()
    count = sum(len(batch["_item_key"]) for batch in decoding_dataset(ray, items, processor, decode_cpus).iter_batches(batch_size=None))
    return count / (time.perf_counter() - start)


def actor_busy(items, folder: Path, args) -> tuple[float, list[float], float]:
    """Images/s of `args.actors` actors, each actor's busy fraction, and the pool's."""
    dataset = _pipeline(
        ray, items, processor_for_source(str(folder), args.resolution), source=str(folder), device=args.device, dtype="auto",
        resolution=args.resolution, patches=False, batch_size=args.batch_size, workers=args.actors,
        gpus_per_worker=args.gpus_per_worker, cpus_per_worker=1.0, model_threads=args.model_threads, decode_cpus=None,
        actor_class=TimedActor,
    )
    spans: dict[int, list[tuple[float, float]]] = {}
    start = time.perf_counter()
    for batch in dataset.iter_batches(batch_size=None, batch_format="numpy"):
        for pid, begin, end in {(int(p), float(b), float(e)) for p, b, e in zip(batch["bench_pid"], batch["bench_start"], batch["bench_end"])}:
            spans.setdefault(pid, []).append((begin, end))
    rate = len(items) / (time.perf_counter() - start)
    fractions = []
    for batches in spans.values():
        busy = sum(end - begin for begin, end in batches)
        fractions.append(busy / (max(end for _, end in batches) - min(begin for begin, _ in batches)))
    return rate, fractions, float(np.mean(fractions))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=2000, help="images (2,000 in the issue; fewer for a quick look)")
    parser.add_argument("--photo-size", type=int, default=2000, help="longest side of the generated photos")
    parser.add_argument("--variant", default="vits16")
    parser.add_argument("--resolution", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--gpus-per-worker", type=float, default=0.0)
    parser.add_argument("--model-threads", type=int, default=None, help="torch threads per CPU model actor (default: all cores)")
    parser.add_argument("--decode-cpus", default=None, help="decoding CPUs to try, e.g. 1,2,4 (default 1..cores)")
    parser.add_argument("--actors", type=int, default=3, help="model actors of the utilisation run")
    parser.add_argument("--num-cpus", type=int, default=None, help="CPUs of the local Ray instance (default: the cores)")
    args = parser.parse_args()
    cores = len(__import__("os").sched_getaffinity(0))
    args.model_threads = args.model_threads or (cores if args.device == "cpu" else 1)
    decode_cpus = [int(c) for c in args.decode_cpus.split(",")] if args.decode_cpus else list(range(1, cores + 1))

    work = Path(tempfile.mkdtemp(prefix="bench_ray_"))
    try:
        folder = work / "model"
        DINOv3ViTModel(DINOv3ViTConfig.from_preset(args.variant)).eval().save_pretrained(folder)
        photos = work / "photos"
        photos.mkdir()
        make_collection(photos, args.count, args.photo_size)
        device = pick_device(args.device)
        ray.init(num_cpus=args.num_cpus or max(cores, args.actors + 1), include_dashboard=False, log_to_driver=False,
                 logging_level="ERROR")
        common = dict(model=folder, device=args.device, resolution=args.resolution, batch_size=args.batch_size, progress=False)
        local = embed_images([photos], work / "local.parquet", workers=default_workers(device), **common)
        remote = embed_images([photos], work / "ray", engine="ray", workers=1, gpus_per_worker=args.gpus_per_worker,
                              model_threads=args.model_threads, **common)
        assert remote.embedded == local.embedded == args.count, (remote, local)
        items = collect_items([photos])
        processor = processor_for_source(str(folder), args.resolution)
        decoding = [(c, decode_rate(items, processor, c)) for c in decode_cpus]
        rate, fractions, busy = actor_busy(items, folder, args)
    finally:
        if ray.is_initialized():
            ray.shutdown()
        shutil.rmtree(work, ignore_errors=True)

    print(f"{machine()}\n{args.variant} (random weights), {args.resolution}px, batch {args.batch_size}, {args.device}, "
          f"{args.count} photos of {args.photo_size}px, model actors with {args.model_threads} torch threads")
    ratio = remote.images_per_second / local.images_per_second
    print_table("local vs ray engine (one model actor)", ["engine", "images/s", "of local", "wall s"], [
        ["local", f"{local.images_per_second:.1f}", "100%", f"{local.seconds:.1f}"],
        ["ray", f"{remote.images_per_second:.1f}", f"{ratio:.0%}", f"{remote.seconds:.1f}"],
    ])
    print_table("decoding alone (read, decode, preprocess tasks)", ["decode CPUs", "images/s", "vs 1 CPU"],
                [[c, f"{r:.1f}", f"{r / decoding[0][1]:.2f}x"] for c, r in decoding])
    print_table(f"{args.actors} model actors on one local cluster", ["actors", "images/s", "busy per actor", "mean busy"],
                [[len(fractions), f"{rate:.1f}", " ".join(f"{f:.0%}" for f in fractions), f"{busy:.0%}"]])
    ok = ratio >= LOCAL_TARGET and busy >= BUSY_TARGET
    print(f"ray {'meets' if ratio >= LOCAL_TARGET else 'MISSES'} the {LOCAL_TARGET:.0%} of local target; actors "
          f"{'meet' if busy >= BUSY_TARGET else 'MISS'} the {BUSY_TARGET:.0%} busy target")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
