"""dino.txt subcommands of `dinov3kit`: `search INDEX --text`, `classify` and `segment` (see tools/text.py)."""

from __future__ import annotations

import csv
import io
import json
import sys
from collections.abc import Callable
from pathlib import Path


def add_text_commands(commands, command: Callable) -> None:
    """Register `classify` and `segment`, and `--text` on the existing `search` subcommand.
    `command(commands, name, run, help, resolution=..., batches=...)` builds a subcommand with the shared
    model options (cli._command)."""
    search = commands.choices["search"]
    search.add_argument(
        "--text", action="append", metavar="TEXT",
        help="search an index embedded with a dino.txt model by words (repeatable), instead of QUERY images",
    )  # fmt: skip

    if "classify" in commands.choices:  # Meta's linear ImageNet head (cli_heads) owns it: --labels switches to dino.txt
        classify = commands.choices["classify"]
        linear_head = classify.get_default("run")
        classify.set_defaults(run=lambda args: run_classify(args) if args.labels else linear_head(args))
        classify.add_argument("--batch-size", type=int, default=32, help="images per forward pass with --labels (default 32)")
    else:
        classify = command(commands, "classify", run_classify, "zero-shot labels of images with a dino.txt model", resolution=224)
        classify.add_argument("images", nargs="+", metavar="IMAGE", help="image files, folders (recursive), globs or .txt/.csv lists")
    classify.add_argument("--labels", help='zero-shot with a dino.txt --model: comma-separated labels, e.g. "cat,dog,car"')
    _templates_option(classify)
    classify.add_argument("--format", choices=("table", "csv", "json"), default="table")
    classify.add_argument("-o", "--output", type=Path, help="write to this file instead of the terminal")
    classify.add_argument("-q", "--quiet", action="store_true", help="no progress bar")

    segment = command(commands, "segment", run_segment, "open-vocabulary segmentation picture with a dino.txt model", resolution=512, batches=False)
    segment.add_argument("image", metavar="IMAGE")
    segment.add_argument("--labels", required=True, help='comma-separated labels, e.g. "road,car,sky,tree"')
    segment.add_argument("-o", "--output", required=True, type=Path, metavar="OUT.png")
    segment.add_argument("--mode", choices=("slide", "whole"), default="slide", help="sliding windows (default, Meta's recipe) or one pass")
    segment.add_argument("--side", type=int, default=384, help="window side in pixels for --mode slide (default 384)")
    segment.add_argument("--stride", type=int, default=192, help="window stride in pixels (default 192)")
    segment.add_argument("--patch-source", choices=("head", "backbone"), default="head", help="vision-head patch features (default) or the backbone's")
    segment.add_argument("--scores", type=Path, metavar="OUT.npy", help="also save the label scores [labels, H, W] as float16")
    _templates_option(segment)


def _templates_option(parser) -> None:
    parser.add_argument(
        "--templates", default="imagenet",
        help="prompt templates: imagenet (Meta's 80, default), none (the bare label), or templates separated by | with {} for the label",
    )  # fmt: skip


def _templates(value: str):
    return value if value in ("imagenet", "none") else [t for t in value.split("|") if t.strip()]


def _load(args):
    from .tools.runtime import model_source
    from .tools.text_models import load_text_model

    return load_text_model(model_source(args.model), device=args.device, dtype=args.dtype)


def run_text_search(args) -> int:
    """`dinov3kit search INDEX --text "a red car"`."""
    from .tools.store import read_index
    from .tools.text import index_model, search_text
    from .tools.text_models import load_text_model

    if args.queries:
        raise ValueError("give either QUERY images/rows or --text, not both")
    if args.grid or args.feature != "cls" or args.exclude_self:
        raise ValueError("--grid, --feature and --exclude-self do not apply to --text searches")
    index = read_index(args.index, "cls")
    model = load_text_model(args.model or index_model(index), device=args.device, dtype=args.dtype)
    results = search_text(index, args.text, k=args.k, model=model, backend=args.backend)
    if args.json:
        print(json.dumps([result.to_dict() for result in results], indent=2))
        return 0
    for result in results:
        print(f"text: {result.query}")
        print(_table(["rank", "score", "row", "path"], [[h.rank, f"{h.score:.4f}", h.row, h.path] for h in result.hits]))
    return 0


def run_classify(args) -> int:
    from .tools.sources import collect_images
    from .tools.text import parse_labels, zero_shot_classify

    if getattr(args, "head", None) is not None:
        raise ValueError("--head (Meta's linear ImageNet head) and --labels (dino.txt zero-shot) exclude each other")
    labels = parse_labels(args.labels)
    paths = [str(p) for p in collect_images(args.images)]
    if not paths:
        raise ValueError("the arguments name no images")
    results = zero_shot_classify(
        paths, labels, model=_load(args), templates=_templates(args.templates), resolution=args.resolution,
        batch_size=args.batch_size, progress=not args.quiet,
    )
    if args.format == "json":
        text = json.dumps([r.to_dict() for r in results], indent=2) + "\n"
    else:
        rows = [[r.path, r.label or "", *(f"{r.probabilities[label]:.4f}" if r.probabilities else "" for label in labels), r.error or ""] for r in results]
        headers = ["path", "label", *labels, "error"]
        if args.format == "csv":
            buffer = io.StringIO()
            writer = csv.writer(buffer, lineterminator="\n")
            writer.writerows([headers, *rows])
            text = buffer.getvalue()
        else:
            text = _table(headers, rows) + "\n"
    if args.output:
        from .fileio import write_bytes_atomic

        write_bytes_atomic(args.output, text.encode("utf-8"))
        print(f"{len(results)} images -> {args.output}")
    else:
        sys.stdout.write(text)
    failed = [r for r in results if r.error]
    for result in failed:
        print(f"dinov3kit classify: {result.error}", file=sys.stderr)
    return 0


def run_segment(args) -> int:
    import numpy as np

    from .fileio import atomic_write
    from .tools.text import segment_image

    segmentation = segment_image(
        args.image, args.labels, model=_load(args), templates=_templates(args.templates), resolution=args.resolution,
        mode=args.mode, side=args.side, stride=args.stride, patch_source=args.patch_source,
    )  # fmt: skip
    picture = segmentation.picture()
    with atomic_write(args.output, sources=[args.image]) as temporary:
        picture.save(temporary, format="PNG")
    if args.scores:
        with atomic_write(args.scores, sources=[args.image]) as temporary:
            with open(temporary, "wb") as handle:
                np.save(handle, segmentation.scores.numpy().astype(np.float16))
    shares = ", ".join(f"{label} {100 * share:.1f}%" for label, share in segmentation.fractions().items())
    print(f"{picture.width}x{picture.height} -> {args.output} ({shares})")
    return 0


def _table(headers: list[str], rows: list[list]) -> str:
    cells = [[str(value) for value in row] for row in rows]
    widths = [max([len(h)] + [len(row[i]) for row in cells]) for i, h in enumerate(headers)]
    return "\n".join("  ".join(v.ljust(w) for v, w in zip(line, widths)).rstrip() for line in [headers, *cells])
