"""The `dinov3kit` command: embed image collections, search them, find duplicates, draw dense features,
convert, export and inspect checkpoints. Each subcommand is a thin layer over `dinov3kit.tools`."""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import re
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path

from .backend.allocator import keep_freed_memory
from .cli_heads import add_head_commands
from .cli_text import add_text_commands, run_text_search
from .fileio import MAX_BYTES_ENV, OutputLockedError, atomic_write, parse_size
from .serve.cli import add_serve_command
from .tools.devices import DTYPE_HELP
from .tools.runtime import DEFAULT_MODEL, DEFAULT_RESOLUTION, MODEL_ENV

DENSE_RESOLUTION = 768
EXIT_ERROR = 2
EXIT_INTERNAL = 1
#: Characters a terminal acts on (C0/C1 controls, DEL, bidi and zero-width marks, line separators) and
#: undecodable bytes of file names (surrogates): printed escaped, never raw.
_UNPRINTABLE = re.compile("[\x00-\x1f\x7f-\x9f\u200b-\u200f\u2028-\u202e\u2060-\u206f\ufeff\ud800-\udfff]")


class UsageError(ValueError):
    """A command-line value that cannot be used (the message says which and why)."""


def printable(text: object, *, newlines: bool = False) -> str:
    """`text` safe to print on a terminal: control characters escaped (\\x1b, \\n, \\u202e, ...), so a
    file name cannot clear the screen or fake output lines. With `newlines`, line breaks of a
    multi-line message are kept and its continuation lines indented."""
    text = str(text)
    if newlines:
        return "\n  ".join(printable(line) for line in text.split("\n"))
    return _UNPRINTABLE.sub(_escape, text)


def _escape(match: re.Match) -> str:
    char = match.group()
    return {"\n": "\\n", "\r": "\\r", "\t": "\\t"}.get(char) or (f"\\x{ord(char):02x}" if ord(char) < 0x100 else f"\\u{ord(char):04x}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    with warnings.catch_warnings():
        warnings.showwarning = _show_warning
        try:
            return args.run(args)
        except KeyboardInterrupt:
            print("\ndinov3kit: interrupted", file=sys.stderr)
            return 130
        except (ValueError, ImportError, OSError, OutputLockedError) as error:  # CheckpointError, SourceError, ...
            if args.debug:
                raise
            print(f"dinov3kit {args.command}: error: {_error_text(error, args)}", file=sys.stderr)
            return EXIT_ERROR
        except MemoryError:
            if args.debug:
                raise
            print(f"dinov3kit {args.command}: error: out of memory", file=sys.stderr)
            return EXIT_INTERNAL
        except Exception as error:  # a bug: a short report, the traceback with --debug
            if args.debug:
                raise
            print(
                f"dinov3kit {args.command}: internal error: {type(error).__name__}: {_error_text(error, args)}\n"
                "  rerun with --debug for the traceback, and please report it",
                file=sys.stderr,
            )
            return EXIT_INTERNAL


def _error_text(error: BaseException, args: argparse.Namespace) -> str:
    """The message of `error` for the terminal: the command-line values it quotes fully escaped (a name
    with a line break stays on its line), then control characters escaped, keeping the message's own
    line breaks with its continuation lines indented."""
    message = str(error)
    values = [v for value in vars(args).values() for v in (value if isinstance(value, list) else [value])]
    for value in sorted({str(v) for v in values if isinstance(v, (str, Path))}, key=len, reverse=True):
        if _UNPRINTABLE.search(value) and value in message:
            message = message.replace(value, printable(value))
    return printable(message, newlines=True)


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"dinov3kit: warning: {printable(message, newlines=True)}", file=sys.stderr)


def byte_count(text: str) -> int:
    """A size such as 1000, 64K, 256M or 2G (argparse type of --max-bytes)."""
    try:
        return parse_size(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dinov3kit",
        description="DINOv3 features for image collections: embed, search, dedup, pca, similarity, convert, export, info.",
    )
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    embed = _command(commands, "embed", run_embed, "embed images into a Parquet index (resumable)", resolution=DEFAULT_RESOLUTION)
    embed.add_argument("sources", nargs="+", metavar="SOURCE", help="folders (recursive), image files, globs, .txt/.csv lists of paths, "
                       "Parquet/CSV tables with a path column, WebDataset shards (shards/{0000..0099}.tar), fsspec URLs")
    embed.add_argument("-o", "--output", required=True, type=Path, metavar="OUT", help="the Parquet index to write or add to (a folder of shards with --engine ray)")
    embed.add_argument("--patches", action="store_true", help="also store the float16 patch grid of every image")
    embed.add_argument("--workers", default=None, metavar="N", help="local: decoding processes (default: from the device and cores); "
                       "ray: model actors, N or MIN,MAX (default 1, or one per GPU)")
    embed.add_argument("--path-column", metavar="NAME", help="the column of Parquet/CSV sources that holds the paths or URLs")
    embed.add_argument("--chunk-size", type=int, default=1024, help="rows per atomic commit (default 1024)")
    mode = embed.add_mutually_exclusive_group()
    mode.add_argument("--resume", action="store_true", help="add to OUT, skipping images already in it (the default when OUT exists)")
    mode.add_argument("--overwrite", action="store_true", help="start OUT over")
    embed.add_argument("--strict", action="store_true", help="stop at the first bad image instead of recording it")
    embed.add_argument("--allow-model-mismatch", action="store_true", help="add to an index made by another model of the same width")
    embed.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    from .tools.ray_options import add_ray_options

    add_ray_options(embed)

    search = _command(commands, "search", run_search, "nearest neighbours of query images or rows", resolution=None)
    search.add_argument("index", type=Path, metavar="INDEX")
    search.add_argument("queries", nargs="*", metavar="QUERY", help="image files (embedded with the index's model) or row ids")
    search.add_argument("-k", type=int, default=10, help="neighbours per query (default 10)")
    search.add_argument("--feature", choices=("cls", "mean_patch"), default="cls", help="which embedding to compare (default cls)")
    search.add_argument("--exclude-self", action="store_true", help="leave a row-id query out of its own results")
    search.add_argument("--backend", choices=("torch", "faiss"), default="torch", help="exact search in torch (default) or FAISS")
    search.add_argument("--json", action="store_true", help="print JSON instead of a table")
    search.add_argument("--grid", type=Path, metavar="PNG", help="also draw a contact sheet of queries and results")
    search.add_argument("--allow-model-mismatch", action="store_true", help="embed query images with another model than the index's")

    dedup = commands.add_parser("dedup", help="groups of near-duplicate images in an index")
    dedup.set_defaults(run=run_dedup)
    dedup.add_argument("index", type=Path, metavar="INDEX")
    dedup.add_argument("--threshold", type=float, default=0.95, help="cosine similarity joining two images (default 0.95)")
    dedup.add_argument("--feature", choices=("cls", "mean_patch"), default="cls")
    dedup.add_argument("--format", choices=("table", "json", "csv"), default="table")
    dedup.add_argument("-o", "--output", type=Path, help="write to this file instead of the terminal")

    pca = _command(commands, "pca", run_pca, "first three principal components of patch features as RGB", resolution=DENSE_RESOLUTION, batches=False)
    pca.add_argument("images", nargs="+", metavar="IMAGE", help="images sharing one PCA basis")
    pca.add_argument("-o", "--output", required=True, type=Path, metavar="OUT", help="a .png for one image, a folder for several")
    pca.add_argument("--mask", action="store_true", help="black out the background (foreground from the first component)")

    similarity = _command(commands, "similarity", run_similarity, "heat map of one patch against all patches", resolution=DENSE_RESOLUTION, batches=False)
    similarity.add_argument("image", metavar="IMAGE")
    similarity.add_argument("--point", required=True, metavar="X,Y", help="pixel of IMAGE (x from the left, y from the top)")
    similarity.add_argument("--ref", metavar="OTHER", help="compare against the patches of this image instead")
    similarity.add_argument("-o", "--output", required=True, type=Path, metavar="OUT.png")

    convert = commands.add_parser("convert", help="Meta .pth ↔ transformers folder")
    convert.set_defaults(run=run_convert)
    convert.add_argument("source", metavar="SRC", help="hub id, transformers folder or Meta .pth")
    convert.add_argument("destination", type=Path, metavar="DST", help="a .pth file (Meta layout) or a folder (transformers layout)")

    export = commands.add_parser("export", help="write a checkpoint as an ONNX graph (any batch size and resolution)")
    export.set_defaults(run=run_export)
    export.add_argument("model", metavar="MODEL", help="hub id, transformers folder or Meta .pth")
    export.add_argument("-o", "--output", required=True, type=Path, metavar="OUT.onnx")
    export.add_argument(
        "--opset",
        type=int,
        default=None,
        help="ONNX opset (default: the exporter's, 18; from 23 on, a ViT's RoPE and attention are ONNX "
        "RotaryEmbedding / Attention ops: faster in onnxruntime >= 1.23, fewer other runtimes)",
    )
    export.add_argument("--no-check", action="store_true", help="skip comparing onnxruntime with torch")

    merge = commands.add_parser("merge", help="compact a folder index (embed --engine ray) into one Parquet file")
    merge.set_defaults(run=run_merge)
    merge.add_argument("folder", type=Path, metavar="OUT_DIR")
    merge.add_argument("-o", "--output", required=True, type=Path, metavar="ONE.parquet")

    info = commands.add_parser("info", help="what a checkpoint (or an index) holds")
    info.set_defaults(run=run_info)
    info.add_argument("model", nargs="?", metavar="MODEL", help=f"hub id, folder, .pth, or a .parquet index (default ${MODEL_ENV} or {DEFAULT_MODEL})")
    info.add_argument("--json", action="store_true")
    add_head_commands(commands)
    add_text_commands(commands, _command)
    add_serve_command(commands)
    for command in commands.choices.values():  # also accepted after the command's name
        command.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show the traceback of an error")
    return parser


def _command(commands, name: str, run, help: str, *, resolution: int | None, batches: bool = True) -> argparse.ArgumentParser:
    """A subcommand with the model options every model-running command shares."""
    command = commands.add_parser(name, help=help, description=help)
    command.set_defaults(run=run)
    model_help = f"hub id, transformers folder or Meta .pth (default: ${MODEL_ENV}, else {DEFAULT_MODEL})"
    if resolution is None:
        model_help = "the checkpoint that made the index (default: the one it records)"
    command.add_argument("--model", help=model_help)
    command.add_argument("--device", default="auto", help="auto (CUDA if present), cpu, cuda, cuda:1, ...")
    command.add_argument("--dtype", default="auto", help=DTYPE_HELP)
    if batches:
        command.add_argument("--batch-size", type=int, default=32, help="images per forward pass (default 32)")
    if resolution is not None:
        command.add_argument("--resolution", type=int, default=resolution, help=f"input size in pixels (default {resolution})")
    command.add_argument("--max-bytes", type=byte_count, default=None, metavar="SIZE",
                         help=f"largest image file read, e.g. 512M (default: ${MAX_BYTES_ENV}, else 256M)")
    return command


def _embedder(args, model: str | None = None, resolution: int | None = None):
    from .tools.runtime import Embedder

    return Embedder.load(model or args.model, device=args.device, dtype=args.dtype, resolution=resolution or args.resolution)


# --- embed -------------------------------------------------------------------------------------
def run_embed(args) -> int:
    from .tools.embed import BadImageError, embed_images
    from .tools.ray_options import ray_options

    try:
        summary = embed_images(
            args.sources,
            args.output,
            model=args.model,
            device=args.device,
            dtype=args.dtype,
            resolution=args.resolution,
            batch_size=args.batch_size,
            workers=_workers(args),
            patches=args.patches,
            chunk_size=args.chunk_size,
            overwrite=args.overwrite,
            strict=args.strict,
            progress=not args.quiet,
            max_bytes=args.max_bytes,
            allow_model_mismatch=args.allow_model_mismatch,
            path_column=args.path_column,
            **ray_options(args),
        )
    except BadImageError as error:
        print(f"dinov3kit embed: bad image: {printable(error)}\nRerun the same command without --strict to go on.", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"\ndinov3kit embed: interrupted; rerun the same command to resume {printable(args.output)}", file=sys.stderr)
        return 130
    parts = [f"embedded {summary.embedded} of {summary.found} images"]
    if summary.skipped:
        parts.append(f"{summary.skipped} already in the index")
    parts.append(f"{summary.failed} failed")
    rate = f", {summary.images_per_second:.1f} img/s once the model was loaded" if summary.embedded else ""
    print(f"{', '.join(parts)} in {summary.seconds:.1f} s{rate} -> {printable(summary.out)}")
    if summary.errors:
        print(f"{len(summary.errors)} bad inputs (kept in the index's error table; `dinov3kit info {printable(summary.out)}` lists them):")
        for error in summary.errors[:10]:
            print(f"  {printable(error['path'])}: {printable(error['error'])}")
        if len(summary.errors) > 10:
            print(f"  ... and {len(summary.errors) - 10} more")
    return 0


def _workers(args):
    if args.workers is None or args.engine == "ray":
        return args.workers
    if not args.workers.isdigit():
        raise UsageError(f"--workers takes a number of decoding processes with the local engine, got {args.workers!r}")
    return int(args.workers)


# --- search ------------------------------------------------------------------------------------
def run_search(args) -> int:
    from .tools.search import search_index
    from .tools.store import read_index

    if args.text:
        return run_text_search(args)
    if not args.queries:
        raise UsageError("give QUERY images or row ids, or --text \"words\" for an index made with a dino.txt model")
    index = read_index(args.index, args.feature)
    needs_model = any(os.path.isfile(query) for query in args.queries)
    if needs_model and not (args.model or index.meta.get("model")):
        raise UsageError(f"{args.index}: does not record the model that made it; pass it with --model")
    embedder = _embedder(args, args.model or index.meta["model"], index.meta.get("resolution", DEFAULT_RESOLUTION)) if needs_model else None
    results = search_index(
        index,
        args.queries,
        k=args.k,
        embedder=embedder,
        feature=args.feature,
        backend=args.backend,
        exclude_self=args.exclude_self,
        batch_size=args.batch_size,
        allow_model_mismatch=args.allow_model_mismatch,
        max_bytes=args.max_bytes,
    )
    if args.json:
        print(json.dumps([result.to_dict() for result in results], indent=2))
    else:
        for result in results:
            print(f"query: {printable(result.query)}" + (f" (row {result.row})" if result.row is not None else ""))
            print(_table(["rank", "score", "row", "path"], [[h.rank, f"{h.score:.4f}", h.row, h.path] for h in result.hits]))
    if args.grid:
        from .tools.sheet import contact_sheet

        rows = [(r.image, [(h.path, f"#{h.rank}  {h.score:.3f}") for h in r.hits]) for r in results]
        _save_png(contact_sheet(rows), args.grid, [args.index, *args.queries, *(h.path for r in results for h in r.hits)])
        print(f"contact sheet -> {printable(args.grid)}", file=sys.stderr if args.json else sys.stdout)
    return 0


# --- dedup -------------------------------------------------------------------------------------
def run_dedup(args) -> int:
    from .tools.dedup import find_duplicates
    from .tools.store import read_index

    if not -1.0 <= args.threshold <= 1.0:
        raise UsageError(f"--threshold is a cosine similarity from -1 to 1 (e.g. 0.95), got {args.threshold}")
    groups = find_duplicates(read_index(args.index, args.feature), args.threshold)
    to_terminal = args.output is None
    flat = [[g.group, m.row, f"{m.similarity:.4f}", printable(m.path) if to_terminal else m.path] for g in groups for m in g.members]
    if args.format == "json":
        text = json.dumps([group.to_dict() for group in groups], indent=2) + "\n"
    elif args.format == "csv":
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(["group", "row", "similarity", "path"])
        writer.writerows(flat)
        text = buffer.getvalue()
    else:
        duplicates = sum(len(g.members) - 1 for g in groups)
        text = (_table(["group", "row", "similarity", "path"], flat) + "\n") if groups else ""
        text += f"{len(groups)} groups, {duplicates} images duplicating another (threshold {args.threshold})\n"
    if args.output:
        with atomic_write(args.output, sources=[args.index]) as temporary:
            temporary.write_text(text, encoding="utf-8", errors="surrogateescape")
        print(f"{len(groups)} groups -> {printable(args.output)}")
    else:
        sys.stdout.write(text)
    return 0


# --- pca and similarity ------------------------------------------------------------------------
def run_pca(args) -> int:
    from .tools.pca import pca_images

    if len(args.images) > 1 and args.output.suffix.lower() == ".png":
        raise UsageError(f"{len(args.images)} images give {len(args.images)} pictures: pass a folder as -o, not {args.output}")
    pictures = pca_images(_embedder(args), args.images, foreground=args.mask, max_bytes=args.max_bytes)
    if len(args.images) == 1:
        targets = [args.output if args.output.suffix else args.output / f"{Path(args.images[0]).stem}_pca.png"]
    else:
        targets = [args.output / f"{Path(image).stem}_pca.png" for image in args.images]
    for picture, target in zip(pictures, targets):
        _save_png(picture, target, args.images)
        print(f"{picture.width}x{picture.height} -> {printable(target)}")
    return 0


def run_similarity(args) -> int:
    from .tools.similarity import similarity_image

    try:
        point = tuple(float(v) for v in args.point.split(","))
    except ValueError:
        point = ()
    if len(point) != 2:
        raise UsageError(f"--point must be X,Y in pixels, e.g. 120,80; got {args.point!r}")
    picture, similarity = similarity_image(_embedder(args), args.image, point, args.ref, max_bytes=args.max_bytes)
    _save_png(picture, args.output, [args.image] + ([args.ref] if args.ref else []))
    print(f"{picture.width}x{picture.height} -> {printable(args.output)} (similarity {similarity.min():.3f} .. {similarity.max():.3f})")
    return 0


# --- convert and info --------------------------------------------------------------------------
def run_convert(args) -> int:
    from .tools.checkpoints import convert_checkpoint

    written = convert_checkpoint(args.source, args.destination)
    print(f"{printable(args.source)} -> {printable(written)}")
    return 0


def run_export(args) -> int:
    from .export import DEFAULT_OPSET, export_pretrained
    from .tools.runtime import model_source

    result = export_pretrained(model_source(args.model), args.output, opset=args.opset or DEFAULT_OPSET, check=not args.no_check)
    print(f"{printable(args.model)} -> {printable(result.path)}")
    for (batch, height, width), difference in result.max_differences.items():
        print(f"  onnxruntime vs torch at batch {batch}, {height}x{width}: max |difference| {difference:.2e}")
    return 0


def run_info(args) -> int:
    if args.model and (args.model.endswith(".parquet") or _is_folder_index(args.model)):
        return _index_info(Path(args.model), args.json)
    from .tools.checkpoints import describe_model

    info = describe_model(args.model)
    print(json.dumps(info, indent=2) if args.json else _table(["key", "value"], list(info.items()), header=False))
    return 0


def _is_folder_index(path: str) -> bool:
    from .tools.store import SHARD_GLOB

    return Path(path).is_dir() and any(Path(path).glob(SHARD_GLOB))


def run_merge(args) -> int:
    from .tools.store import merge_index

    meta = merge_index(args.folder, args.output)
    print(f"{meta['rows']} rows, {len(meta.get('errors', []))} bad inputs: {args.folder} -> {args.output}")
    return 0


def _index_info(path: Path, as_json: bool) -> int:
    from .tools.store import read_meta

    meta = read_meta(path)
    if as_json:
        print(json.dumps(meta, indent=2))
        return 0
    shown = {k: v for k, v in meta.items() if k != "errors"}
    print(_table(["key", "value"], list(shown.items()), header=False))
    errors = [e for e in meta.get("errors", []) if isinstance(e, dict)]
    print(f"{len(errors)} bad inputs" + (":" if errors else ""))
    for error in errors:
        print(f"  {printable(error.get('path'))}: {printable(error.get('error'))}")
    return 0


# --- output helpers ----------------------------------------------------------------------------
def _table(headers: list[str], rows: list[list], header: bool = True) -> str:
    cells = [[printable(value) for value in row] for row in rows]
    widths = [max([len(h) if header else 0] + [len(row[i]) for row in cells]) for i, h in enumerate(headers)]
    lines = [headers] if header else []
    lines += cells
    return "\n".join("  ".join(value.ljust(width) for value, width in zip(line, widths)).rstrip() for line in lines)


def _save_png(image, path: Path, sources: Sequence[str | os.PathLike] = ()) -> None:
    """Write a picture atomically, refusing to write over one of the files it was made from."""
    with atomic_write(path, sources=[s for s in sources if os.path.exists(s)]) as temporary:
        image.save(temporary, format="PNG")


def run() -> None:
    """The `dinov3kit` command: this process is ours, so glibc may keep freed activations for reuse
    (`backend.allocator`), then `main`."""
    keep_freed_memory()
    sys.exit(main())


if __name__ == "__main__":
    run()
