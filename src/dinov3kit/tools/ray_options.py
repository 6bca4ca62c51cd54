"""The command-line options of `embed --engine ray` (kept apart so that the CLI never imports ray)."""

from __future__ import annotations

import argparse


def add_ray_options(embed: argparse.ArgumentParser) -> None:
    """Add --engine and the ray engine's options to the `embed` parser."""
    group = embed.add_argument_group("scale out on Ray Data (--engine ray; needs pip install 'dinov3kit[ray]')")
    group.add_argument("--engine", choices=("local", "ray"), default="local",
                       help="local: this process and its decoding workers (default); ray: a Ray cluster, OUT is a folder of shards")
    group.add_argument("--address", metavar="ADDR", help="the Ray cluster: auto, HOST:PORT or ray://HOST:PORT (default: a new local one)")
    group.add_argument("--gpus-per-worker", type=float, default=0.0, metavar="G", help="GPUs per model actor (default 0: CPU actors)")
    group.add_argument("--cpus-per-worker", type=float, default=1.0, metavar="C", help="CPUs reserved per model actor (default 1)")
    group.add_argument("--model-threads", type=int, metavar="T", help="torch threads of a CPU model actor (default: its CPUs)")
    group.add_argument("--decode-cpus", type=int, metavar="C", help="decoding tasks at once, one CPU each (default: all free CPUs)")
    group.add_argument("--verbose", action="store_true", help="show Ray's own progress bars and logs")


def ray_options(args: argparse.Namespace) -> dict:
    """The keyword arguments of `embed_images` for the ray engine ({} for the local engine, which refuses
    ray-only options the user set)."""
    if args.engine == "local":
        given = [flag for flag, value, default in (
            ("--address", args.address, None), ("--gpus-per-worker", args.gpus_per_worker, 0.0),
            ("--cpus-per-worker", args.cpus_per_worker, 1.0), ("--model-threads", args.model_threads, None),
            ("--decode-cpus", args.decode_cpus, None), ("--verbose", args.verbose, False)) if value != default]
        if given:
            raise ValueError(f"{', '.join(given)}: options of --engine ray")
        return {}
    return {"engine": "ray", "address": args.address, "gpus_per_worker": args.gpus_per_worker, "cpus_per_worker": args.cpus_per_worker,
            "model_threads": args.model_threads, "decode_cpus": args.decode_cpus, "verbose": args.verbose}
