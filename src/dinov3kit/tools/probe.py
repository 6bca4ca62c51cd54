"""Few-shot probes on an index: a kNN classifier (Meta's weighted vote) and a logistic-regression linear
probe trained on the features `embed` stored, their k-fold accuracy and confusion matrices, a small head
file, and predictions for new images or another index.

    from dinov3kit.tools.probe import fit_probe, predict_probe
    result = fit_probe("photos.parquet", labels="labels.csv")       # or labels_from_folder=True
    result.head.save("photos_head.safetensors")
    rows = predict_probe("photos_head.safetensors", ["new/"])        # images, folders or an index

Features: the L2-normalised CLS token, and by default the L2-normalised mean patch token beside it
(`features="cls+mean_patch"`, as Meta's linear classifiers). The head file is one safetensors file: the
linear probe (on standardised features), the kNN memory (the training features and labels) and, in its
metadata, the JSON description (classes, model, resolution, cross-validation results).
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from ..fileio import atomic_write
from ..images import ImageLoadError, load_image
from ..optional import require
from . import probe_math as pm
from .runtime import Embedder
from .sources import collect_images
from .store import read_index

HEAD_FORMAT = "dinov3kit-probe"
HEAD_VERSION = 1
METADATA_KEY = "dinov3kit_probe"
FEATURES = ("cls", "cls+mean_patch")
DEFAULT_FEATURES = "cls+mean_patch"
DEFAULT_FOLDS = 5
METHODS = ("linear", "knn")


class ProbeError(ValueError):
    """Labels, heads or inputs that cannot be used for a probe (the message says which and what to do)."""


# --- labels -------------------------------------------------------------------------------------
def read_labels_csv(path: str | os.PathLike) -> dict[str, str]:
    """{absolute image path: label} from a CSV of `path,label` rows (a `path,label` header is optional;
    relative paths are taken from the CSV's folder, or from the current directory)."""
    path = Path(path)
    if not path.is_file():
        raise ProbeError(f"{path}: no such labels file; write one with a `path,label` row per image, or use --labels-from-folder")
    text = path.read_text(encoding="utf-8-sig")
    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    rows = [row for row in csv.reader(text.splitlines(), delimiter=delimiter) if row and any(cell.strip() for cell in row)]
    if rows and [cell.strip().lower() for cell in rows[0][:2]] == ["path", "label"]:
        rows = rows[1:]
    labels: dict[str, str] = {}
    for number, row in enumerate(rows, start=1):
        if len(row) < 2 or not row[0].strip() or not row[1].strip():
            raise ProbeError(f"{path}: row {number} {row!r} is not `path,label`")
        image = _labelled_path(row[0].strip(), path.parent)
        label = row[1].strip()
        if labels.get(image, label) != label:
            raise ProbeError(f"{path}: {row[0].strip()} has two labels ({labels[image]!r} and {label!r})")
        labels[image] = label
    if not labels:
        raise ProbeError(f"{path}: no `path,label` rows")
    return labels


def _labelled_path(name: str, folder: Path) -> str:
    """Absolute path of a labels-file entry: relative to the labels file's folder, else (when only that
    exists) to the current directory."""
    beside = os.path.abspath(folder / name)
    here = os.path.abspath(name)
    return here if not os.path.exists(beside) and os.path.exists(here) else beside


def align_labels(paths: Sequence[str], labels: dict[str, str], *, source: str, skip_unlabelled: bool = False,
                 bad_inputs: Iterable[str] = ()) -> tuple[list[int], list[str]]:
    """Rows of `paths` that have a label and their labels; errors name missing and unknown paths."""
    by_path = {os.path.abspath(p): p for p in paths}
    unknown = [p for p in labels if p not in by_path]
    if unknown:
        bad = set(map(os.path.abspath, bad_inputs))
        failed = [p for p in unknown if p in bad]
        hint = f" ({len(failed)} of them could not be embedded: see `dinov3kit info INDEX`)" if failed else ""
        raise ProbeError(
            f"{source}: {len(unknown)} labelled images are not in the index{hint}, e.g. {', '.join(unknown[:3])}; "
            "embed them first (`dinov3kit embed ... -o INDEX`, which adds to an index) or drop those rows"
        )
    rows = [row for row, p in enumerate(paths) if os.path.abspath(p) in labels]
    missing = len(paths) - len(rows)
    if missing and not skip_unlabelled:
        examples = [p for p in paths if os.path.abspath(p) not in labels][:3]
        raise ProbeError(
            f"{source}: {missing} of {len(paths)} index rows have no label, e.g. {', '.join(examples)}; "
            "add rows for them, or pass --skip-unlabelled to train on the labelled rows only"
        )
    return rows, [labels[os.path.abspath(paths[row])] for row in rows]


def folder_labels(paths: Sequence[str]) -> dict[str, str]:
    """{path: name of its parent folder} (the ImageFolder convention)."""
    return {os.path.abspath(p): Path(p).parent.name for p in paths}


def encode_labels(labels: Sequence[str], source: str) -> tuple[list[str], torch.Tensor]:
    """Sorted class names and [N] class ids; refuses fewer than two classes."""
    classes = sorted(set(labels))
    if len(classes) < 2:
        found = f"only the class {classes[0]!r}" if classes else "no labels"
        raise ProbeError(f"{source}: {found}; a classifier needs images of at least two classes")
    ids = {name: i for i, name in enumerate(classes)}
    return classes, torch.tensor([ids[name] for name in labels], dtype=torch.long)


# --- features -----------------------------------------------------------------------------------
def combine_features(cls: torch.Tensor | np.ndarray, mean_patch: torch.Tensor | np.ndarray | None, features: str) -> torch.Tensor:
    """The probe's input [N, D or 2D]: normalised CLS, then (for "cls+mean_patch") the normalised mean patch."""
    if features not in FEATURES:
        raise ValueError(f"features must be one of {FEATURES}, got {features!r}")
    parts = [torch.as_tensor(cls, dtype=torch.float32)]
    if features == "cls+mean_patch":
        parts.append(torch.as_tensor(mean_patch, dtype=torch.float32))
    return torch.cat([F.normalize(part, dim=1) for part in parts], dim=1)


@dataclass
class IndexFeatures:
    """Paths, probe features and metadata of an index."""

    paths: list[str]
    x: torch.Tensor
    meta: dict


def index_features(index: str | os.PathLike, features: str = DEFAULT_FEATURES) -> IndexFeatures:
    """Read the features a probe uses from an index made by `dinov3kit embed`."""

    cls = read_index(index, "cls")
    mean = read_index(index, "mean_patch") if features == "cls+mean_patch" else None
    if mean is not None and mean.paths != cls.paths:
        raise ProbeError(f"{index}: the cls and mean_patch columns list different rows")
    return IndexFeatures(cls.paths, combine_features(cls.vectors, None if mean is None else mean.vectors, features), cls.meta)


# --- the head -----------------------------------------------------------------------------------
@dataclass
class ProbeHead:
    """A trained probe: a linear layer on standardised features and a kNN memory, plus their description."""

    meta: dict
    weight: torch.Tensor  # [C, F]
    bias: torch.Tensor  # [C]
    mean: torch.Tensor  # [F]
    std: torch.Tensor  # [F]
    memory: torch.Tensor  # [N, F] training features (kNN)
    memory_labels: torch.Tensor  # [N]

    @property
    def classes(self) -> list[str]:
        return list(self.meta["classes"])

    def probabilities(self, x: torch.Tensor, method: str = "linear") -> torch.Tensor:
        """[N, C] class probabilities of probe features `x` (see `combine_features`)."""
        if method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {method!r}")
        if x.shape[1] != self.weight.shape[1]:
            raise ProbeError(f"features of width {x.shape[1]} given to a head trained on width {self.weight.shape[1]}")
        if method == "knn":
            knn = self.meta["knn"]
            return pm.knn_probabilities(self.memory, self.memory_labels, x, len(self.classes), knn["k"], knn["temperature"])
        return pm.logistic_probabilities((x.double() - self.mean) / self.std, self.weight, self.bias)

    def tensors(self) -> dict[str, torch.Tensor]:
        return {
            "linear.weight": self.weight.float(), "linear.bias": self.bias.float(),
            "standardize.mean": self.mean.float(), "standardize.std": self.std.float(),
            "knn.features": self.memory.to(torch.float16), "knn.labels": self.memory_labels.to(torch.int64),
        }

    def save(self, path: str | os.PathLike) -> Path:
        """Write the head as one safetensors file (JSON description in its metadata), atomically."""


        path = Path(path)
        with atomic_write(path) as temporary:
            save_file({k: v.contiguous() for k, v in self.tensors().items()}, str(temporary), metadata={METADATA_KEY: json.dumps(self.meta)})
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> ProbeHead:
        meta, tensors = load_head_file(path, kind="classifier")
        return cls(
            meta, tensors["linear.weight"].double(), tensors["linear.bias"].double(),
            tensors["standardize.mean"].double(), tensors["standardize.std"].double(),
            tensors["knn.features"].float(), tensors["knn.labels"].long(),
        )


def load_head_file(path: str | os.PathLike, kind: str) -> tuple[dict, dict[str, torch.Tensor]]:
    """The description and tensors of a probe head file of `kind` ("classifier" or "dense")."""

    path = Path(path)
    if not path.is_file():
        raise ProbeError(f"{path}: no such head file; make one with `dinov3kit probe {'fit' if kind == 'classifier' else 'fit-dense'}`")
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    except (SafetensorError, OSError) as error:
        raise ProbeError(f"{path}: not a readable safetensors file ({error})") from error
    if METADATA_KEY not in metadata:
        raise ProbeError(f"{path}: not a dinov3kit probe head (no {METADATA_KEY} metadata)")
    meta = json.loads(metadata[METADATA_KEY])
    if meta.get("kind") != kind:
        other = "probe predict" if meta.get("kind") == "classifier" else "probe predict-dense"
        raise ProbeError(f"{path}: a {meta.get('kind')} head, not a {kind} head; use `dinov3kit {other}`")
    return meta, tensors


# --- fitting ------------------------------------------------------------------------------------
@dataclass
class ProbeResult:
    """A fitted head and what cross-validation measured: accuracies, out-of-fold confusion matrices."""

    head: ProbeHead
    accuracy: dict[str, float]
    confusion: dict[str, np.ndarray]
    l2_scores: dict[float, float] = field(default_factory=dict)
    folds: int = 0

    def report(self) -> str:
        """Accuracies and confusion matrices as text."""
        classes = self.head.classes
        if not self.folds:
            return "no cross-validation (a class has a single example)\n"
        lines = [f"{self.folds}-fold cross-validated accuracy over {int(self.confusion['linear'].sum())} images, "
                 f"{len(classes)} classes (chance {1 / len(classes):.3f}):"]
        knn = self.head.meta["knn"]
        lines.append(f"  linear probe (L2 {self.head.meta['l2']:g}): {self.accuracy['linear']:.4f}")
        lines.append(f"  kNN (k={knn['k']}, T={knn['temperature']:g}): {self.accuracy['knn']:.4f}")
        for method in METHODS:
            lines += ["", f"confusion matrix, {method} (rows: true class, columns: predicted)", confusion_text(self.confusion[method], classes)]
        return "\n".join(lines) + "\n"


def fit_probe(
    index: str | os.PathLike,
    *,
    labels: str | os.PathLike | dict[str, str] | None = None,
    labels_from_folder: bool = False,
    features: str = DEFAULT_FEATURES,
    n_folds: int = DEFAULT_FOLDS,
    l2: float | None = None,
    k: int = pm.KNN_K,
    temperature: float = pm.KNN_TEMPERATURE,
    skip_unlabelled: bool = False,
    seed: int = 0,
) -> ProbeResult:
    """Train the linear probe and the kNN classifier on the labelled rows of `index`.

    `labels` is a CSV of `path,label` rows (or a {path: label} dict); `labels_from_folder` takes each
    image's parent folder name instead. `l2` None picks the L2 strength by k-fold cross-validation.
    """
    if (labels is None) == (not labels_from_folder):
        raise ProbeError("give labels (a CSV of path,label rows) or labels_from_folder=True, one of the two")
    data = index_features(index, features)
    if labels_from_folder:
        table, source = folder_labels(data.paths), "folder names"
    elif isinstance(labels, dict):
        table, source = {os.path.abspath(p): str(v) for p, v in labels.items()}, "labels"
    else:
        table, source = read_labels_csv(labels), str(labels)
    rows, names = align_labels(data.paths, table, source=source, skip_unlabelled=skip_unlabelled,
                               bad_inputs=[e["path"] for e in data.meta.get("errors", [])])
    classes, y = encode_labels(names, source)
    x = data.x[rows]
    return _fit(x, y, classes, data.meta, features=features, n_folds=n_folds, l2=l2, k=k, temperature=temperature, seed=seed)


def _fit(x: torch.Tensor, y: torch.Tensor, classes: list[str], index_meta: dict, *, features: str, n_folds: int,
         l2: float | None, k: int, temperature: float, seed: int) -> ProbeResult:
    num_classes = len(classes)
    smallest = int(torch.bincount(y, minlength=num_classes).min())
    n_folds = min(n_folds, smallest)
    accuracy, confusion, l2_scores = {}, {}, {}
    if n_folds >= 2:
        test_folds = pm.folds(y, n_folds, seed=seed)
        if l2 is None:
            l2, l2_scores = pm.choose_l2(x, y, num_classes, test_folds)
        predictors = {"linear": pm.logistic_predictor(num_classes, l2), "knn": pm.knn_predictor(num_classes, k, temperature)}
        for method, predict in predictors.items():
            probabilities = pm.out_of_fold(predict, x, y, test_folds, num_classes)
            accuracy[method] = pm.accuracy(probabilities, y)
            confusion[method] = pm.confusion_matrix(y, probabilities.argmax(dim=1), num_classes).numpy()
    else:
        n_folds = 0
        l2 = 1.0 / len(y) if l2 is None else l2  # scikit-learn's default C = 1
    scale = pm.Standardizer.fit(x)
    weight, bias = pm.fit_logistic(scale(x), y, num_classes, l2)
    meta = {
        "format": HEAD_FORMAT, "version": HEAD_VERSION, "kind": "classifier", "classes": classes,
        "model": index_meta.get("model"), "model_type": index_meta.get("model_type"),
        "resolution": index_meta.get("resolution"), "features": features, "width": int(x.shape[1]),
        "l2": l2, "knn": {"k": k, "temperature": temperature}, "train_rows": len(y),
        "cv": {"folds": n_folds, "accuracy": accuracy, "l2_scores": {str(key): v for key, v in l2_scores.items()}},
    }
    memory = x.to(torch.float16).float()  # as the head file stores it, so a saved head predicts the same
    head = ProbeHead(meta, weight, bias, scale.mean, scale.std, memory, y.clone())
    return ProbeResult(head, accuracy, confusion, l2_scores, n_folds)


# --- predicting ---------------------------------------------------------------------------------
@dataclass
class Prediction:
    """One input's predicted label, its probability and all class probabilities (or why it failed)."""

    path: str
    label: str | None
    probability: float | None
    probabilities: list[float] | None
    error: str | None = None


def check_compatible(head_meta: dict, model: str | None, width: int | None, *, what: str) -> None:
    """Refuse features from another model (or of another width) than the head was trained on."""
    if width is not None and head_meta.get("width") is not None and width != head_meta["width"]:
        raise ProbeError(
            f"{what} gives features of width {width}, the head was trained on width {head_meta['width']} "
            f"({head_meta.get('model')}); use the model and --features the head was trained with"
        )
    if model is not None and head_meta.get("model") is not None and model != head_meta["model"]:
        raise ProbeError(
            f"{what} was made with {model!r}, the head was trained on features of {head_meta['model']!r}; "
            f"embed the images with `--model {head_meta['model']}` (features of different models do not mix)"
        )


def is_index(path: str | os.PathLike) -> bool:
    """Whether `path` names a Parquet index (a .parquet file or a folder of .parquet shards)."""
    path = Path(path)
    return path.suffix.lower() == ".parquet" or (path.is_dir() and any(path.glob("*.parquet")) and not any(
        p.suffix.lower() in {".jpg", ".jpeg", ".png", ".webp"} for p in path.iterdir()))


def predict_probe(
    head: ProbeHead | str | os.PathLike,
    inputs: Sequence[str | os.PathLike],
    *,
    method: str = "linear",
    embedder=None,
    model: str | None = None,
    device: str | torch.device = "auto",
    dtype: str | torch.dtype = "auto",
    batch_size: int = 32,
    progress: bool = False,
) -> list[Prediction]:
    """Predict the class of every image named by `inputs` (files, folders, globs, lists) or of every row of
    one index. Images are embedded with the head's model (or `embedder` / `model`, whose width must match)."""
    head = head if isinstance(head, ProbeHead) else ProbeHead.load(head)
    features = head.meta["features"]
    if len(inputs) == 1 and is_index(inputs[0]):
        data = index_features(inputs[0], features)
        check_compatible(head.meta, data.meta.get("model"), int(data.x.shape[1]), what=str(inputs[0]))
        return _predictions(head, data.paths, data.x, method)
    paths, good, x, errors = embed_for_probe(head.meta, inputs, embedder=embedder, model=model, device=device, dtype=dtype,
                                             batch_size=batch_size, progress=progress)
    predicted = {p.path: p for p in _predictions(head, good, x, method)}
    return [predicted.get(path) or Prediction(path, None, None, None, errors[path]) for path in paths]


def _predictions(head: ProbeHead, paths: list[str], x: torch.Tensor, method: str) -> list[Prediction]:
    probabilities = head.probabilities(x, method).float()
    best = probabilities.argmax(dim=1)
    classes = head.classes
    return [
        Prediction(path, classes[int(b)], float(p[b]), p.tolist())
        for path, p, b in zip(paths, probabilities, best)
    ]


def embed_for_probe(head_meta: dict, inputs: Sequence[str | os.PathLike], *, embedder=None, model: str | None = None,
                    device="auto", dtype="auto", batch_size: int = 32, progress: bool = False):
    """Probe features of images: (all paths, paths embedded, their [N, F] features, {path: error} of the
    others). An explicit `embedder` or `model` is checked only for its width (it may be a moved copy)."""

    paths = [str(p) for p in collect_images(inputs)]
    if not paths:
        raise ProbeError("the inputs name no images")
    if embedder is None:
        if not (model or head_meta.get("model")):
            raise ProbeError("the head does not record its model; pass --model")
        embedder = Embedder.load(model or head_meta["model"], device=device, dtype=dtype, resolution=head_meta.get("resolution") or 224)
    good, chunks, errors = [], [], {}
    tqdm = require("tqdm").tqdm
    with tqdm(total=len(paths), unit="img", desc="probe", disable=not progress) as bar:
        for start in range(0, len(paths), batch_size):
            pixels = []
            for path in paths[start:start + batch_size]:
                try:
                    pixels.append(embedder.preprocess(load_image(path)))
                    good.append(path)
                except (ImageLoadError, OSError, ValueError) as error:
                    errors[path] = getattr(error, "reason", None) or str(error)
            if pixels:
                out = embedder(torch.stack(pixels))
                chunks.append(combine_features(out.cls.cpu(), out.mean_patch.cpu(), head_meta["features"]))
            bar.update(min(batch_size, len(paths) - start))
    x = torch.cat(chunks) if chunks else torch.zeros(0, head_meta["width"])
    if chunks:
        check_compatible(head_meta, None, int(x.shape[1]), what=f"the model {embedder.source}")
    return paths, good, x, errors


def write_predictions(predictions: Sequence[Prediction], classes: Sequence[str], out: str | os.PathLike) -> Path:
    """Write predictions as CSV or Parquet (by the suffix of `out`): path, label, probability, error and
    one `p_<class>` column per class."""

    out = Path(out)
    columns = {
        "path": [p.path for p in predictions],
        "label": [p.label for p in predictions],
        "probability": [p.probability for p in predictions],
        "error": [p.error for p in predictions],
    }
    for i, name in enumerate(classes):
        columns[f"p_{name}"] = [None if p.probabilities is None else p.probabilities[i] for p in predictions]
    with atomic_write(out) as temporary:
        if out.suffix.lower() == ".parquet":
            pa, pq = require("pyarrow"), require("pyarrow.parquet")
            pq.write_table(pa.table(columns), temporary)
        else:
            with open(temporary, "w", newline="", encoding="utf-8") as handle:
                writer = csv.writer(handle)
                writer.writerow(list(columns))
                for row in zip(*columns.values()):
                    writer.writerow(["" if v is None else (f"{v:.6f}" if isinstance(v, float) else v) for v in row])
    return out


# --- confusion matrices -------------------------------------------------------------------------
def confusion_text(matrix: np.ndarray, classes: Sequence[str]) -> str:
    """A confusion matrix as an aligned text table."""
    names = [str(c) for c in classes]
    width = max(max(map(len, names)), len(str(int(matrix.max(initial=0)))), 4)
    header = " " * width + "  " + "  ".join(n[:width].rjust(width) for n in names)
    rows = [n.ljust(width) + "  " + "  ".join(str(int(v)).rjust(width) for v in row) for n, row in zip(names, matrix)]
    return "\n".join([header, *rows])


def confusion_image(matrices: dict[str, np.ndarray], classes: Sequence[str], titles: dict[str, str] | None = None) -> Image.Image:
    """Confusion matrices side by side: cells shaded by the row's fraction, counts written in."""
    font = ImageFont.load_default()
    n = len(classes)
    cell = max(28, min(64, 640 // max(n, 1)))
    label_width = min(160, 8 + 7 * max(len(str(c)) for c in classes))
    panel_width, panel_height = label_width + n * cell + 16, 40 + label_width + n * cell
    picture = Image.new("RGB", (panel_width * len(matrices), panel_height), "white")
    draw = ImageDraw.Draw(picture)
    for panel, (method, matrix) in enumerate(matrices.items()):
        left = panel * panel_width
        draw.text((left + 8, 8), (titles or {}).get(method, method), fill="black", font=font)
        top = 40 + label_width
        for i, name in enumerate(classes):
            draw.text((left + 4, top + i * cell + cell // 2 - 5), str(name)[:22], fill="black", font=font)
            column = Image.new("RGBA", (label_width, 14), (255, 255, 255, 0))
            ImageDraw.Draw(column).text((2, 1), str(name)[:22], fill="black", font=font)
            rotated = column.rotate(90, expand=True)
            picture.paste(rotated, (left + label_width + i * cell + cell // 2 - 7, 36), rotated)
        totals = np.maximum(matrix.sum(axis=1, keepdims=True), 1)
        for i in range(n):
            for j in range(n):
                share = float(matrix[i, j] / totals[i, 0])
                shade = (int(255 - 200 * share), int(255 - 150 * share), 255)
                x0, y0 = left + label_width + j * cell, top + i * cell
                draw.rectangle([x0, y0, x0 + cell - 1, y0 + cell - 1], fill=shade, outline=(200, 200, 200))
                draw.text((x0 + cell // 2 - 4 * len(str(int(matrix[i, j]))), y0 + cell // 2 - 5), str(int(matrix[i, j])),
                          fill="white" if share > 0.6 else "black", font=font)
    return picture
