"""Dense probes: a linear head on patch features trained from a few images with masks (foreground or
multi-class segmentation), after Meta's foreground-segmentation notebook, and its masks and overlays.

Recipe (as the notebook): patch features of the image at shortest side `resolution`, aspect ratio kept; each
patch's label is the class covering it (patches mixing classes, under 99 % pure, are left out); a logistic
regression on the patch features; at prediction a 3x3 median filter on the patch probabilities, then
bilinear upsampling to the input's resolution. Differences: features are standardised and the L2 strength
is chosen by cross-validation over whole images (the notebook fixes C = 0.1 after a leave-one-image-out
sweep); several classes are handled by a multinomial model.

Masks: one per image, same file stem, any image format. An image with an alpha channel is foreground where
opaque; a mask of only 0 and 255 (or 0 and 1) is background / foreground; otherwise each grey level (or
palette index) is a class and 255 marks pixels to ignore.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import save_file

from ..fileio import atomic_write
from ..images import ImageLoadError, load_image
from ..optional import require
from . import probe_math as pm
from .probe import METADATA_KEY, ProbeError, load_head_file
from .runtime import Embedder
from .sources import collect_images

IGNORE = 255
PURITY = 0.99
MAX_TRAIN_PATCHES = 50_000
DEFAULT_DENSE_RESOLUTION = 448
PALETTE = [(230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180),
           (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128), (170, 110, 40)]
MASK_SUFFIXES = (".png", ".bmp", ".tif", ".tiff", ".gif", ".webp", ".jpg", ".jpeg")


def read_mask(path: str | os.PathLike) -> tuple[np.ndarray, bool]:
    """[H, W] int array of mask values (IGNORE = unlabelled) and whether the mask is binary (0 / 1)."""
    try:
        with Image.open(path) as image:
            image.load()
    except (OSError, ValueError) as error:
        raise ProbeError(f"{path}: cannot read the mask ({error})") from error
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        return (np.array(image.convert("RGBA"))[..., 3] > 127).astype(np.int64), True
    values = np.array(image if image.mode in ("P", "L", "I", "I;16") else image.convert("L")).astype(np.int64)
    present = set(np.unique(values).tolist())
    if present <= {0, 255} or present <= {0, 1}:
        return (values > 0).astype(np.int64), True
    return values, False


def find_mask(image: str, masks: Path) -> Path:
    """The mask of `image` in the folder `masks`: the file with the image's stem."""
    stem = Path(image).stem
    for suffix in MASK_SUFFIXES:
        for candidate in (masks / f"{stem}{suffix}", masks / f"{stem}{suffix.upper()}"):
            if candidate.is_file():
                return candidate
    raise ProbeError(f"{image}: no mask named {stem}.png (or another image format) in {masks}")


def patch_fractions(mask: np.ndarray, values: Sequence[int], grid: tuple[int, int]) -> torch.Tensor:
    """[C, h, w] share of each class among the pixels under each patch (ignored pixels count for none)."""
    planes = torch.stack([torch.from_numpy(mask == value) for value in values]).float()  # [C, H, W]
    return F.interpolate(planes.unsqueeze(0), size=grid, mode="area")[0]


def median_filter_3x3(maps: torch.Tensor) -> torch.Tensor:
    """Median of each 3x3 neighbourhood of [C, h, w] maps (edges replicated), as the notebook's medfilt2d."""
    padded = F.pad(maps.unsqueeze(0), (1, 1, 1, 1), mode="replicate")[0]
    windows = padded.unfold(1, 3, 1).unfold(2, 3, 1)  # [C, h, w, 3, 3]
    return windows.reshape(*maps.shape, 9).median(dim=-1).values


@dataclass
class DenseHead:
    """A linear head on standardised patch features and its description (classes, mask values, model)."""

    meta: dict
    weight: torch.Tensor  # [C, D]
    bias: torch.Tensor  # [C]
    mean: torch.Tensor  # [D]
    std: torch.Tensor  # [D]

    @property
    def classes(self) -> list[str]:
        return list(self.meta["classes"])

    def patch_probabilities(self, features: torch.Tensor) -> torch.Tensor:
        """[C, h, w] class probabilities of patch features [h, w, D], median-filtered (then summing to one)."""
        if features.shape[-1] != self.weight.shape[1]:
            raise ProbeError(f"patch features of width {features.shape[-1]} given to a head trained on width {self.weight.shape[1]} "
                             f"({self.meta.get('model')}); use the model the head was trained with")
        flat = (features.reshape(-1, features.shape[-1]).double() - self.mean) / self.std
        probabilities = pm.logistic_probabilities(flat, self.weight, self.bias).float()
        filtered = median_filter_3x3(probabilities.T.reshape(-1, *features.shape[:2]))
        return filtered / filtered.sum(dim=0, keepdim=True).clamp_min(1e-12)

    def save(self, path: str | os.PathLike) -> Path:


        tensors = {"linear.weight": self.weight, "linear.bias": self.bias, "standardize.mean": self.mean, "standardize.std": self.std}
        with atomic_write(path) as temporary:
            save_file({k: v.float().contiguous() for k, v in tensors.items()}, str(temporary), metadata={METADATA_KEY: json.dumps(self.meta)})
        return Path(path)

    @classmethod
    def load(cls, path: str | os.PathLike) -> DenseHead:
        meta, tensors = load_head_file(path, kind="dense")
        return cls(meta, *(tensors[k].double() for k in ("linear.weight", "linear.bias", "standardize.mean", "standardize.std")))


@dataclass
class DenseFitResult:
    head: DenseHead
    accuracy: float | None
    iou: dict[str, float]
    patches: int
    images: int

    def report(self) -> str:
        lines = [f"{self.patches} labelled patches from {self.images} images, {len(self.head.classes)} classes, L2 {self.head.meta['l2']:g}"]
        if self.accuracy is None:
            lines.append("no cross-validation (one image)")
        else:
            lines.append(f"cross-validated over images: patch accuracy {self.accuracy:.4f}, "
                         f"mean IoU {np.mean(list(self.iou.values())):.4f}")
            lines += [f"  IoU {name}: {value:.4f}" for name, value in self.iou.items()]
        return "\n".join(lines) + "\n"


def _embedder(model, device, dtype, resolution):

    return Embedder.load(model, device=device, dtype=dtype, resolution=resolution)


def fit_dense_probe(
    images: Sequence[str | os.PathLike],
    masks: str | os.PathLike,
    *,
    embedder=None,
    model: str | None = None,
    device: str | torch.device = "auto",
    dtype: str | torch.dtype = "auto",
    resolution: int = DEFAULT_DENSE_RESOLUTION,
    l2: float | None = None,
    max_patches: int = MAX_TRAIN_PATCHES,
    seed: int = 0,
    progress: bool = False,
) -> DenseFitResult:
    """Train a linear segmentation head on the patch features of `images` labelled by the masks in the
    folder `masks` (see the module docstring for the mask conventions)."""

    masks = Path(masks)
    if not masks.is_dir():
        raise ProbeError(f"{masks}: no such folder of masks")
    paths = [str(p) for p in collect_images(images)]
    if not paths:
        raise ProbeError("the inputs name no images")
    mask_files = {path: find_mask(path, masks) for path in paths}  # all missing masks are found before any work
    embedder = embedder or _embedder(model, device, dtype, resolution)
    read = {path: read_mask(mask_files[path]) for path in paths}
    binary = all(is_binary for _, is_binary in read.values())
    values = [0, 1] if binary else sorted(set().union(*(np.unique(m).tolist() for m, _ in read.values())) - {IGNORE})
    if len(values) < 2:
        raise ProbeError(f"the masks in {masks} hold a single class ({values}); a head needs at least two")
    xs, ys, groups = [], [], []
    tqdm = require("tqdm").tqdm
    for number, path in enumerate(tqdm(paths, desc="fit-dense", unit="img", disable=not progress)):
        image = load_image(path)
        mask, _ = read[path]
        if abs(mask.shape[1] / mask.shape[0] - image.width / image.height) > 0.01 * image.width / image.height:
            raise ProbeError(f"{mask_files[path]}: a {mask.shape[1]}x{mask.shape[0]} mask for the {image.width}x{image.height} image {path}")
        features = embedder(embedder.preprocess_dense(image)).patches[0].cpu()  # [h, w, D]
        fractions = patch_fractions(mask, values, features.shape[:2])  # [C, h, w]
        share, label = fractions.max(dim=0)
        pure = share >= PURITY
        xs.append(features[pure])
        ys.append(label[pure])
        groups.append(torch.full((int(pure.sum()),), number))
    x, y, group = torch.cat(xs), torch.cat(ys), torch.cat(groups)
    if len(y) > max_patches:
        keep = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))[:max_patches]
        x, y, group = x[keep], y[keep], group[keep]
    present = torch.bincount(y, minlength=len(values))
    if int((present > 0).sum()) < 2:
        raise ProbeError("fewer than two classes cover whole patches; use larger objects, larger images or a higher --resolution")
    names = ["background", "foreground"] if binary else [str(v) for v in values]
    accuracy, iou, n_folds = None, {}, min(5, len(paths))
    if n_folds >= 2:
        test_folds = [f for f in pm.folds(y, n_folds, groups=group, seed=seed) if len(f)]
        if l2 is None:
            l2, _ = pm.choose_l2(x, y, len(values), test_folds)
        predicted = pm.out_of_fold(pm.logistic_predictor(len(values), l2), x, y, test_folds, len(values)).argmax(dim=1)
        accuracy = float((predicted == y).double().mean())
        confusion = pm.confusion_matrix(y, predicted, len(values)).double()
        union = confusion.sum(0) + confusion.sum(1) - confusion.diag()
        iou = {name: float(confusion[i, i] / union[i]) for i, name in enumerate(names) if union[i] > 0}
    l2 = 1e-2 if l2 is None else l2
    scale = pm.Standardizer.fit(x)
    weight, bias = pm.fit_logistic(scale(x), y, len(values), l2)
    meta = {
        "format": "dinov3kit-probe", "version": 1, "kind": "dense", "classes": names, "values": [0, 255] if binary else values,
        "binary": binary, "model": embedder.source, "resolution": embedder.resolution, "width": int(x.shape[1]), "l2": l2,
        "cv": {"folds": n_folds if n_folds >= 2 else 0, "accuracy": accuracy, "iou": iou}, "train_patches": len(y),
    }
    return DenseFitResult(DenseHead(meta, weight, bias, scale.mean, scale.std), accuracy, iou, len(y), len(paths))


@dataclass
class DensePrediction:
    """One image's class probabilities [C, H, W] and labels [H, W] at its own resolution (or why it failed)."""

    path: str
    image: Image.Image | None
    probabilities: torch.Tensor | None
    labels: torch.Tensor | None
    error: str | None = None


def segment(head: DenseHead, embedder, image: Image.Image) -> tuple[torch.Tensor, torch.Tensor]:
    """[C, H, W] probabilities and [H, W] class ids of `image` at its own resolution."""
    features = embedder(embedder.preprocess_dense(image)).patches[0].cpu()
    patch = head.patch_probabilities(features)
    probabilities = F.interpolate(patch.unsqueeze(0), size=(image.height, image.width), mode="bilinear", align_corners=False)[0]
    return probabilities, probabilities.argmax(dim=0)


def predict_dense(
    head: DenseHead | str | os.PathLike,
    images: Sequence[str | os.PathLike],
    *,
    embedder=None,
    model: str | None = None,
    device: str | torch.device = "auto",
    dtype: str | torch.dtype = "auto",
    progress: bool = False,
) -> list[DensePrediction]:
    """Segment every image named by `images` with the head (embedded with the head's model and resolution,
    or `embedder` / `model`, whose width must match)."""

    head = head if isinstance(head, DenseHead) else DenseHead.load(head)
    paths = [str(p) for p in collect_images(images)]
    if not paths:
        raise ProbeError("the inputs name no images")
    embedder = embedder or _embedder(model or head.meta["model"], device, dtype, head.meta["resolution"])
    results = []
    tqdm = require("tqdm").tqdm
    for path in tqdm(paths, desc="predict-dense", unit="img", disable=not progress):
        try:
            image = load_image(path)
        except (ImageLoadError, OSError, ValueError) as error:
            results.append(DensePrediction(path, None, None, None, getattr(error, "reason", None) or str(error)))
            continue
        results.append(DensePrediction(path, image, *segment(head, embedder, image)))
    return results


def mask_image(labels: torch.Tensor, head: DenseHead) -> Image.Image:
    """The predicted mask as a greyscale PNG: 0 / 255 for foreground heads, else the training mask values."""
    values = np.array(head.meta["values"])
    if values.max() <= 255:
        return Image.fromarray(values.astype(np.uint8)[labels.numpy()], "L")
    return Image.fromarray(values.astype(np.uint16)[labels.numpy()], "I;16")


def overlay_image(image: Image.Image, labels: torch.Tensor, head: DenseHead, alpha: float = 0.5) -> Image.Image:
    """The image with each class tinted in its colour (background left as is for foreground heads)."""
    rgb = np.asarray(image.convert("RGB"), dtype=np.float32)
    colours = np.array([PALETTE[i % len(PALETTE)] for i in range(len(head.classes))], dtype=np.float32)
    tint = colours[labels.numpy()]
    mix = np.full(labels.shape, alpha, dtype=np.float32)
    if head.meta.get("binary"):
        mix[labels.numpy() == 0] = 0.0
        rgb = np.where((labels.numpy() == 0)[..., None], rgb * 0.6, rgb)
    out = rgb * (1 - mix[..., None]) + tint * mix[..., None]
    return Image.fromarray(np.clip(out + 0.5, 0, 255).astype(np.uint8), "RGB")


def save_dense_prediction(prediction: DensePrediction, head: DenseHead, folder: str | os.PathLike) -> tuple[Path, Path]:
    """Write STEM_mask.png and STEM_overlay.png into `folder`."""

    folder = Path(folder)
    stem = Path(prediction.path).stem
    targets = folder / f"{stem}_mask.png", folder / f"{stem}_overlay.png"
    pictures = mask_image(prediction.labels, head), overlay_image(prediction.image, prediction.labels, head)
    for picture, target in zip(pictures, targets):
        with atomic_write(target, sources=[prediction.path]) as temporary:
            picture.save(temporary, format="PNG")
    return targets
