"""`dinov3kit probe ...` (few-shot probes on an index, dense probes on images) registered on the main
parser by `add_head_commands`; the work is done in `dinov3kit.tools.probe` and `dinov3kit.tools.dense_probe`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .tools.devices import DTYPE_HELP


def add_head_commands(commands) -> None:
    """Add the `probe` command (and its subcommands) to the main parser's subcommands."""
    probe = commands.add_parser("probe", help="train and apply small heads (kNN, linear, dense) on your labelled images",
                                description="Few-shot probes: kNN and logistic regression on index features; linear segmentation heads on patch features.")
    actions = probe.add_subparsers(dest="action", required=True, metavar="ACTION")

    fit = actions.add_parser("fit", help="train kNN + linear probes on an index's labelled rows, report k-fold accuracy")
    fit.set_defaults(run=run_probe_fit)
    fit.add_argument("index", type=Path, metavar="INDEX", help="a Parquet index made by `dinov3kit embed`")
    source = fit.add_mutually_exclusive_group(required=True)
    source.add_argument("--labels", type=Path, metavar="CSV", help="`path,label` rows (paths relative to the CSV's folder or absolute)")
    source.add_argument("--labels-from-folder", action="store_true", help="label = name of each image's parent folder")
    fit.add_argument("-o", "--output", type=Path, metavar="HEAD.safetensors", help="head file (default: INDEX with .probe.safetensors)")
    fit.add_argument("--features", choices=("cls", "cls+mean_patch"), default="cls+mean_patch", help="probe input (default cls+mean_patch)")
    fit.add_argument("--folds", type=int, default=5, help="cross-validation folds (default 5; fewer when a class is smaller)")
    fit.add_argument("--l2", type=float, default=None, help="L2 strength of the linear probe (default: chosen by cross-validation)")
    fit.add_argument("-k", type=int, default=20, help="kNN neighbours (default 20, as Meta)")
    fit.add_argument("--temperature", type=float, default=0.07, help="kNN softmax temperature (default 0.07, as Meta)")
    fit.add_argument("--skip-unlabelled", action="store_true", help="train on the labelled rows, ignoring the others")
    fit.add_argument("--seed", type=int, default=0, help="seed of the fold split")

    predict = actions.add_parser("predict", help="classify images (or an index's rows) with a probe head")
    predict.set_defaults(run=run_probe_predict)
    predict.add_argument("head", type=Path, metavar="HEAD")
    predict.add_argument("inputs", nargs="+", metavar="IMAGES|INDEX", help="images, folders, globs or lists; or one .parquet index")
    predict.add_argument("-o", "--output", type=Path, metavar="OUT", help=".csv or .parquet (default: a table on the terminal)")
    predict.add_argument("--method", choices=("linear", "knn"), default="linear", help="which probe (default linear)")
    _model_options(predict, batches=True)

    fit_dense = actions.add_parser("fit-dense", help="train a linear segmentation head on patch features of images with masks")
    fit_dense.set_defaults(run=run_probe_fit_dense)
    fit_dense.add_argument("images", nargs="+", metavar="IMAGES", help="images, folders, globs or lists")
    fit_dense.add_argument("--masks", required=True, type=Path, metavar="DIR", help="one mask per image, same file stem (any image format)")
    fit_dense.add_argument("-o", "--output", required=True, type=Path, metavar="HEAD.safetensors")
    fit_dense.add_argument("--l2", type=float, default=None, help="L2 strength (default: chosen by cross-validation over images)")
    _model_options(fit_dense, batches=False, resolution=448)

    predict_dense = actions.add_parser("predict-dense", help="masks and overlays of images with a dense head")
    predict_dense.set_defaults(run=run_probe_predict_dense)
    predict_dense.add_argument("head", type=Path, metavar="HEAD")
    predict_dense.add_argument("images", nargs="+", metavar="IMAGES")
    predict_dense.add_argument("-o", "--output", required=True, type=Path, metavar="DIR", help="folder for STEM_mask.png and STEM_overlay.png")
    _model_options(predict_dense, batches=False)
    add_classify_command(commands)
    add_depth_command(commands)


def add_classify_command(commands) -> None:
    """`dinov3kit classify`: Meta's linear ImageNet-1k classifier on a DINOv3 backbone."""
    classify = commands.add_parser("classify", help="ImageNet-1k classes of images with Meta's linear head (dinov3_vit7b16_lc)")
    classify.set_defaults(run=run_classify)
    classify.add_argument("images", nargs="+", metavar="IMAGES", help="images, folders, globs or lists")
    classify.add_argument("--head", type=Path, metavar="HEAD.pth", help="Meta's linear head file (dinov3_vit7b16_imagenet1k_linear_head-*.pth); or --labels for dino.txt zero-shot")
    classify.add_argument("-k", "--top-k", type=int, default=5, help="classes per image (default 5)")
    classify.add_argument("--model", help="the backbone: Meta .pth, transformers folder or hub id (default: $DINOV3KIT_MODEL)")
    classify.add_argument("--device", default="auto", help="auto (CUDA if present), cpu, cuda, ...")
    classify.add_argument("--dtype", default="auto", help=DTYPE_HELP)
    classify.add_argument("--resolution", type=int, default=224, help="input size in pixels (default 224)")


def add_depth_command(commands) -> None:
    """`dinov3kit depth`: Meta's DPT depth heads (dinov3_vit7b16_dd, CHMv2 canopy height) as a coloured picture."""
    depth = commands.add_parser("depth", help="depth (or canopy height) of an image with Meta's DPT head, as a coloured PNG")
    depth.set_defaults(run=run_depth)
    depth.add_argument("image", metavar="IMAGE")
    depth.add_argument("--head", required=True, type=Path, metavar="HEAD.pth", help="Meta's DPT head file (dinov3_vit7b16_synthmix_dpt_head-*.pth or dinov3_vitl16_chmv2_dpt_head-*.pth)")
    depth.add_argument("-o", "--output", required=True, type=Path, metavar="OUT.png")
    depth.add_argument("--model", help="the backbone: Meta .pth, transformers folder or hub id (default: $DINOV3KIT_MODEL)")
    depth.add_argument("--preset", choices=("dinov3_vit7b16_dd", "dinov3_vitl16_chmv2"), help="head settings (default: recognised from the file)")
    depth.add_argument("--out-layers", metavar="I,J,K,L", help="0-based backbone blocks the head reads (default: the preset's)")
    depth.add_argument("--resolution", type=int, default=None, help="shorter side seen by the model (default: 512 for depth, the image's own size for CHMv2)")
    depth.add_argument("--save-raw", action="store_true", help="also write the map in metres as OUT.npy (float32)")
    depth.add_argument("--device", default="auto", help="auto (CUDA if present), cpu, cuda, ...")
    depth.add_argument("--dtype", default="auto", help=DTYPE_HELP)


def run_depth(args) -> int:
    import numpy as np

    from .fileio import atomic_write
    from .tools.heads import colorize_depth, estimate_depth, load_depth_estimator
    from .tools.runtime import model_source, pick_device, pick_dtype

    try:
        layers = [int(v) for v in args.out_layers.split(",")] if args.out_layers else None
    except ValueError:
        raise ValueError(f"--out-layers must be comma-separated block numbers, e.g. 4,11,17,23; got {args.out_layers!r}") from None
    device = pick_device(args.device)
    estimator = load_depth_estimator(model_source(args.model), args.head, preset=args.preset, out_layers=layers,
                                     device=device, dtype=pick_dtype(args.dtype, device))
    depth = estimate_depth(estimator, args.image, resolution="preset" if args.resolution is None else args.resolution)
    quantity = estimator.config.quantity
    with atomic_write(args.output, sources=[args.image]) as temporary:
        colorize_depth(depth, invert=quantity == "depth").save(temporary, format="PNG")
    print(f"{args.image}: {quantity} {float(depth.min()):.3f} .. {float(depth.max()):.3f} m -> {args.output}")
    if args.save_raw:
        raw = args.output.with_suffix(".npy")
        with atomic_write(raw, sources=[args.image]) as temporary:
            with open(temporary, "wb") as handle:
                np.save(handle, depth.numpy().astype(np.float32))
        print(f"raw depth -> {raw}")
    return 0


def run_classify(args) -> int:
    from .tools.heads import classify_images, load_linear_classifier
    from .tools.runtime import model_source, pick_device, pick_dtype

    if args.head is None:
        raise ValueError('give --head HEAD.pth (Meta\'s linear ImageNet head) or --labels "cat,dog" (zero-shot with a dino.txt --model)')
    device = pick_device(args.device)
    classifier = load_linear_classifier(model_source(args.model), args.head, device=device, dtype=pick_dtype(args.dtype, device))
    for result in classify_images(classifier, args.images, top_k=args.top_k, resolution=args.resolution):
        if result.error:
            print(f"{result.path}\terror: {result.error}", file=sys.stderr)
            continue
        print(result.path)
        for index, label, probability in result.top:
            print(f"  {probability:.4f}  {index:4d}  {label}")
    return 0


def _model_options(command: argparse.ArgumentParser, *, batches: bool, resolution: int | None = None) -> None:
    command.add_argument("--model", help="checkpoint (default: the one the head was trained with)" if resolution is None
                         else "hub id, transformers folder or Meta .pth (default: $DINOV3KIT_MODEL or the default model)")
    command.add_argument("--device", default="auto", help="auto (CUDA if present), cpu, cuda, ...")
    command.add_argument("--dtype", default="auto", help=DTYPE_HELP)
    if batches:
        command.add_argument("--batch-size", type=int, default=32, help="images per forward pass (default 32)")
    if resolution is not None:
        command.add_argument("--resolution", type=int, default=resolution, help=f"shortest side in pixels (default {resolution})")
    command.add_argument("-q", "--quiet", action="store_true", help="no progress bar")


def run_probe_fit(args) -> int:
    from .fileio import atomic_write
    from .tools.probe import confusion_image, fit_probe

    result = fit_probe(
        args.index, labels=args.labels, labels_from_folder=args.labels_from_folder, features=args.features,
        n_folds=args.folds, l2=args.l2, k=args.k, temperature=args.temperature, skip_unlabelled=args.skip_unlabelled,
        seed=args.seed,
    )
    head_path = args.output or args.index.with_name(args.index.stem + ".probe.safetensors")
    result.head.save(head_path)
    report = result.report()
    sys.stdout.write(report)
    stem = head_path.with_suffix("")
    with atomic_write(stem.with_name(stem.name + ".report.txt")) as temporary:
        temporary.write_text(report, encoding="utf-8")
    written = [head_path, stem.with_name(stem.name + ".report.txt")]
    if result.folds:
        titles = {m: f"{m}: {result.folds}-fold accuracy {result.accuracy[m]:.3f}" for m in result.confusion}
        picture = confusion_image(result.confusion, result.head.classes, titles)
        target = stem.with_name(stem.name + ".confusion.png")
        with atomic_write(target) as temporary:
            picture.save(temporary, format="PNG")
        written.append(target)
    print("wrote " + ", ".join(map(str, written)))
    return 0


def run_probe_predict(args) -> int:
    from .tools.probe import ProbeHead, predict_probe, write_predictions

    head = ProbeHead.load(args.head)
    predictions = predict_probe(head, args.inputs, method=args.method, model=args.model, device=args.device,
                                dtype=args.dtype, batch_size=args.batch_size, progress=not args.quiet)
    failed = [p for p in predictions if p.error]
    if args.output:
        write_predictions(predictions, head.classes, args.output)
        print(f"{len(predictions) - len(failed)} predictions -> {args.output}")
    else:
        for p in predictions:
            print(f"{p.path}\t{p.label}\t{p.probability:.4f}" if p.error is None else f"{p.path}\t-\terror: {p.error}")
    for p in failed[:10]:
        print(f"  could not classify {p.path}: {p.error}", file=sys.stderr)
    return 0


def run_probe_fit_dense(args) -> int:
    from .tools.dense_probe import fit_dense_probe

    result = fit_dense_probe(args.images, args.masks, model=args.model, device=args.device, dtype=args.dtype,
                             resolution=args.resolution, l2=args.l2, progress=not args.quiet)
    result.head.save(args.output)
    sys.stdout.write(result.report())
    print(f"wrote {args.output}")
    return 0


def run_probe_predict_dense(args) -> int:
    from .tools.dense_probe import DenseHead, predict_dense, save_dense_prediction

    head = DenseHead.load(args.head)
    for prediction in predict_dense(head, args.images, model=args.model, device=args.device, dtype=args.dtype,
                                    progress=not args.quiet):
        if prediction.error:
            print(f"  could not segment {prediction.path}: {prediction.error}", file=sys.stderr)
            continue
        mask, overlay = save_dense_prediction(prediction, head, args.output)
        print(f"{prediction.path} -> {mask}, {overlay}")
    return 0
