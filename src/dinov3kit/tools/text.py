"""Text tools on dino.txt models: search an index by words, zero-shot labels, open-vocabulary segmentation.

    from dinov3kit.tools.text import load_text_model, search_text, zero_shot_classify, segment_image
    model = load_text_model("dinotxt-folder")          # or Meta's head .pth with the ViT-L/16 .pth beside it
    search_text(read_index("photos.parquet"), ["a red car"], model=model)
    zero_shot_classify(["cat.jpg"], ["cat", "dog", "car"], model=model)
    segment_image("street.jpg", ["road", "car", "sky"], model=model).picture()

Prompts follow Meta's notebooks: each label is written into the 80 ImageNet templates of OpenAI's CLIP,
the normalised text embeddings are averaged per label and normalised again. Segmentation compares the
patch-aligned half of those embeddings with the vision head's patch features (Meta's segmentation recipe:
shorter side 512, sliding 384-pixel windows with stride 192, softmax per window, averaged).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

from ..images import ImageLoadError, load_image
from ..models.dinotxt import DINOv3TextModel
from ..optional import require
from ..processing import processor_for_model
from ..text import default_tokenizer
from .search import Hit, QueryResult, exact_top_k, faiss_top_k
from .text_models import MODEL_TYPE, ImageTower, NotATextModelError, load_text_model, text_models_hint

CLASSIFY_RESIZE, CLASSIFY_CROP = 256, 224
SEGMENT_RESOLUTION, SEGMENT_SIDE, SEGMENT_STRIDE = 512, 384, 192
BICUBIC = 3
#: Largest labels x pixels upsampled at once for the label map (64M floats, 256 MB).
MAX_UPSAMPLED = 64 * 2**20

#: OpenAI CLIP's 80 ImageNet prompt templates, as in Meta's dino.txt notebooks.
PROMPT_TEMPLATES: tuple[str, ...] = tuple(
    t.replace("{}", "{0}")
    for t in (
        "a bad photo of a {}.", "a photo of many {}.", "a sculpture of a {}.", "a photo of the hard to see {}.",
        "a low resolution photo of the {}.", "a rendering of a {}.", "graffiti of a {}.", "a bad photo of the {}.",
        "a cropped photo of the {}.", "a tattoo of a {}.", "the embroidered {}.", "a photo of a hard to see {}.",
        "a bright photo of a {}.", "a photo of a clean {}.", "a photo of a dirty {}.", "a dark photo of the {}.",
        "a drawing of a {}.", "a photo of my {}.", "the plastic {}.", "a photo of the cool {}.",
        "a close-up photo of a {}.", "a black and white photo of the {}.", "a painting of the {}.",
        "a painting of a {}.", "a pixelated photo of the {}.", "a sculpture of the {}.", "a bright photo of the {}.",
        "a cropped photo of a {}.", "a plastic {}.", "a photo of the dirty {}.", "a jpeg corrupted photo of a {}.",
        "a blurry photo of the {}.", "a photo of the {}.", "a good photo of the {}.", "a rendering of the {}.",
        "a {} in a video game.", "a photo of one {}.", "a doodle of a {}.", "a close-up photo of the {}.",
        "a photo of a {}.", "the origami {}.", "the {} in a video game.", "a sketch of a {}.", "a doodle of the {}.",
        "a origami {}.", "a low resolution photo of a {}.", "the toy {}.", "a rendition of the {}.",
        "a photo of the clean {}.", "a photo of a large {}.", "a rendition of a {}.", "a photo of a nice {}.",
        "a photo of a weird {}.", "a blurry photo of a {}.", "a cartoon {}.", "art of a {}.", "a sketch of the {}.",
        "a embroidered {}.", "a pixelated photo of a {}.", "itap of the {}.", "a jpeg corrupted photo of the {}.",
        "a good photo of a {}.", "a plushie {}.", "a photo of the nice {}.", "a photo of the small {}.",
        "a photo of the weird {}.", "the cartoon {}.", "art of the {}.", "a drawing of the {}.",
        "a photo of the large {}.", "a black and white photo of a {}.", "the plushie {}.", "a dark photo of a {}.",
        "itap of a {}.", "graffiti of the {}.", "a toy {}.", "itap of my {}.", "a photo of a cool {}.",
        "a photo of a small {}.", "a tattoo of the {}.",
    )
)  # fmt: skip
TEMPLATE_SETS = {"imagenet": PROMPT_TEMPLATES, "none": ("{0}",)}


# --- text embeddings ---------------------------------------------------------------------------------
@torch.inference_mode()
def encode_texts(model: DINOv3TextModel, texts: Sequence[str], *, batch_size: int = 256) -> torch.Tensor:
    """Unit-length text embeddings [T, E] in float32."""

    tokenizer = default_tokenizer()
    out = []
    for start in range(0, len(texts), batch_size):
        ids = tokenizer(list(texts[start : start + batch_size]), context_length=model.config.text_context_length)
        out.append(model.get_text_features(ids.to(model.device)).float())
    return F.normalize(torch.cat(out), dim=-1) if out else torch.zeros(0, model.config.projection_dim)


def parse_labels(labels: str | Sequence[str]) -> list[str]:
    """Labels from "cat,dog,car" or a list; empty entries dropped; duplicates refused."""
    items = labels.split(",") if isinstance(labels, str) else list(labels)
    cleaned = [item.strip() for item in items if item.strip()]
    if not cleaned:
        raise ValueError(f"no labels in {labels!r}; give them as --labels \"cat,dog,car\"")
    repeated = sorted({label for label in cleaned if cleaned.count(label) > 1})
    if repeated:
        raise ValueError(f"labels {repeated} are given more than once")
    return cleaned


def resolve_templates(templates: str | Sequence[str]) -> tuple[str, ...]:
    """A template set name ("imagenet": Meta's 80; "none": the bare label) or templates with "{}"/"{0}"."""
    if isinstance(templates, str):
        if templates not in TEMPLATE_SETS:
            raise ValueError(f"unknown template set {templates!r}; choose from {sorted(TEMPLATE_SETS)} or give templates with {{}}")
        return TEMPLATE_SETS[templates]
    resolved = tuple(t.replace("{}", "{0}") for t in templates)
    missing = [t for t in resolved if "{0}" not in t]
    if not resolved or missing:
        raise ValueError(f"every prompt template needs a {{}} for the label; got {missing or 'none'}")
    return resolved


def label_embeddings(
    model: DINOv3TextModel, labels: Sequence[str], templates: Sequence[str] = PROMPT_TEMPLATES, *, patch_aligned: bool = False
) -> torch.Tensor:
    """[C, E] (or [C, P] with `patch_aligned`) unit vectors: per label, the normalised mean of its normalised
    prompt embeddings (Meta's zero-shot classifier and segmentation recipe)."""
    prompts = [template.format(label) for label in labels for template in templates]
    with torch.inference_mode():
        tokens = encode_texts(model, prompts)
    if patch_aligned:
        tokens = F.normalize(model.patch_aligned_text(tokens), dim=-1)
    return F.normalize(tokens.unflatten(0, (len(labels), len(templates))).mean(dim=1), dim=-1)


# --- search by text ------------------------------------------------------------------------------------
def index_model(index) -> str:
    """The dino.txt checkpoint that made `index`; `NotATextModelError` when it was another model."""
    model_type, model = index.meta.get("model_type"), index.meta.get("model")
    if model_type != MODEL_TYPE:
        raise NotATextModelError(
            f"{index.path} was embedded with {model} ({model_type}), which cannot read text; re-embed it with "
            f"`dinov3kit embed --model <dino.txt model>`: {text_models_hint()}"
        )
    return model


def search_text(index, texts: Sequence[str], *, k: int = 10, model: DINOv3TextModel | None = None, backend: str = "torch") -> list:
    """The `k` rows of a dino.txt `index` (read with feature "cls") closest to each text, best first."""

    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    if backend not in ("torch", "faiss"):
        raise ValueError(f"backend must be 'torch' or 'faiss', got {backend!r}")
    source = index_model(index)
    model = model if model is not None else load_text_model(source)
    queries = encode_texts(model, list(texts)).numpy()
    if queries.shape[1] != index.vectors.shape[1]:
        raise ValueError(f"{index.path}: vectors of width {index.vectors.shape[1]}, the text model gives {queries.shape[1]}")
    top_k = faiss_top_k if backend == "faiss" else exact_top_k
    scores, rows = top_k(index.vectors, queries, k)
    return [
        QueryResult(text, "", None, [Hit(rank + 1, int(r), index.paths[r], float(s)) for rank, (r, s) in enumerate(zip(rs, ss))])
        for text, ss, rs in zip(texts, scores, rows)
    ]


# --- zero-shot classification ----------------------------------------------------------------------------
@dataclass
class Classification:
    """Label probabilities of one image (softmax of the model's scaled cosine logits), or why it failed."""

    path: str
    probabilities: dict[str, float] | None
    error: str | None = None

    @property
    def label(self) -> str | None:
        return max(self.probabilities, key=self.probabilities.get) if self.probabilities else None

    def to_dict(self) -> dict:
        return {"path": self.path, "label": self.label, "probabilities": self.probabilities, "error": self.error}


def zero_shot_classify(
    images: Iterable[str | os.PathLike],
    labels: str | Sequence[str],
    *,
    model: DINOv3TextModel,
    templates: str | Sequence[str] = "imagenet",
    resolution: int = CLASSIFY_CROP,
    batch_size: int = 16,
    progress: bool = False,
) -> list[Classification]:
    """Zero-shot labels for image files: Meta's evaluation preprocessing (shorter side 256 bicubic, centre
    crop 224; other crops `resolution` keep the 256/224 ratio), logits exp(logit_scale) * cosine with each label's prompt embedding, softmax over labels.
    A bad image gives a `Classification` with `error` set; the others go on."""

    names = parse_labels(labels)
    classifier = label_embeddings(model, names, resolve_templates(templates))  # [C, E]
    processor = processor_for_model(
        ImageTower(model), size={"shortest_edge": resolution * CLASSIFY_RESIZE // CLASSIFY_CROP}, resample=BICUBIC,
        do_center_crop=True, crop_size={"height": resolution, "width": resolution},
    )  # fmt: skip
    scale = float(model.logit_scale.detach().exp())
    paths = [str(p) for p in images]
    results: list[Classification] = []
    bar = require("tqdm").tqdm(total=len(paths), unit="img", desc="classify", disable=not progress)
    for start in range(0, len(paths), batch_size):
        batch, pixels = [], []
        for path in paths[start : start + batch_size]:
            try:
                pixels.append(processor(load_image(path), return_tensors="pt")["pixel_values"][0])
                batch.append(path)
            except (ImageLoadError, OSError) as error:
                results.append(Classification(path, None, str(error)))
        if pixels:
            with torch.inference_mode():
                features = model.get_image_features(torch.stack(pixels).to(model.device, model.dtype), normalize=True)
                probabilities = (scale * features.float() @ classifier.to(features.device).T).softmax(dim=-1).cpu()
            for path, row in zip(batch, probabilities):
                results.append(Classification(path, {name: float(p) for name, p in zip(names, row)}))
        bar.update(len(paths[start : start + batch_size]))
    bar.close()
    order = {path: i for i, path in enumerate(paths)}
    return sorted(results, key=lambda r: order[r.path])


# --- open-vocabulary segmentation ------------------------------------------------------------------------
#: Colours of the first labels in segmentation pictures (then generated).
PALETTE = [
    (230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180), (70, 240, 240),
    (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128), (220, 190, 255), (170, 110, 40),
    (255, 250, 200), (128, 0, 0), (170, 255, 195), (128, 128, 0), (255, 215, 180), (0, 0, 128), (128, 128, 128),
]  # fmt: skip


def label_colour(index: int) -> tuple[int, int, int]:
    if index < len(PALETTE):
        return PALETTE[index]
    rng = np.random.default_rng(index)
    return tuple(int(v) for v in rng.integers(40, 255, 3))  # type: ignore[return-value]


@dataclass
class Segmentation:
    """Label scores [C, H', W'] at the processed size (shorter side `resolution`), the best label per pixel
    [H, W] at the image's size, and the image to draw on."""

    labels: list[str]
    scores: torch.Tensor
    label_map: np.ndarray
    image: Image.Image

    def fractions(self) -> dict[str, float]:
        """Share of the image's pixels given to each label."""
        counts = np.bincount(self.label_map.ravel(), minlength=len(self.labels))
        return {label: float(c) / self.label_map.size for label, c in zip(self.labels, counts)}

    def picture(self, opacity: float = 0.55) -> Image.Image:
        """The image under a colour per label, with a legend strip below."""
        colours = np.array([label_colour(i) for i in range(len(self.labels))], dtype=np.uint8)
        overlay = Image.fromarray(colours[self.label_map])
        blended = Image.blend(self.image.convert("RGB"), overlay, opacity)
        row, swatch = 22, 14
        shown = [(i, label) for i, label in enumerate(self.labels)]
        canvas = Image.new("RGB", (blended.width, blended.height + row * len(shown) + 6), "white")
        canvas.paste(blended, (0, 0))
        draw = ImageDraw.Draw(canvas)
        share = self.fractions()
        for line, (i, label) in enumerate(shown):
            top = blended.height + 4 + line * row
            draw.rectangle([6, top + 3, 6 + swatch, top + 3 + swatch], fill=label_colour(i), outline="black")
            draw.text((28, top + 3), f"{label}  {100 * share[label]:.1f}%", fill="black")
        return canvas


def _window_scores(model: DINOv3TextModel, pixels: torch.Tensor, text: torch.Tensor, patch_source: str) -> torch.Tensor:
    """[C, h, w] cosine similarities of one [1, 3, H, W] input's patches with the label vectors [C, P]; an
    input whose sides are not multiples of the patch size is stretched to the next multiples (as Meta)."""
    patch = model.backbone.config.patch_size
    size = tuple(-(-n // patch) * patch for n in pixels.shape[-2:])
    if size != tuple(pixels.shape[-2:]):
        pixels = F.interpolate(pixels, size=size, mode="bicubic", align_corners=False)
    patches = model.get_patch_features(pixels.to(model.device, model.dtype), normalize=True, source=patch_source)
    return torch.einsum("hwp,cp->chw", patches[0].float(), text.to(patches.device))


@torch.inference_mode()
def segment_image(
    image: str | os.PathLike | Image.Image,
    labels: str | Sequence[str],
    *,
    model: DINOv3TextModel,
    templates: str | Sequence[str] = "imagenet",
    resolution: int = SEGMENT_RESOLUTION,
    mode: str = "slide",
    side: int = SEGMENT_SIDE,
    stride: int = SEGMENT_STRIDE,
    patch_source: str = "head",
) -> Segmentation:
    """Open-vocabulary segmentation (Meta's dino.txt recipe): the image, shorter side `resolution`, is
    scored patch by patch against each label's patch-aligned text vector, in one pass (`mode="whole"`) or
    in `side`-pixel windows every `stride` pixels whose per-window softmax is averaged (`"slide"`); scores
    are upsampled bilinearly to the image's size and each pixel takes the best label. `patch_source`
    "backbone" compares the backbone's patch features instead (what Meta's segmentation notebook reads)."""

    if mode not in ("slide", "whole"):
        raise ValueError(f"mode must be 'slide' or 'whole', got {mode!r}")
    patch = model.backbone.config.patch_size
    if side < patch or stride < 1:
        raise ValueError(f"side must be at least one {patch}px patch and stride positive, got {side} and {stride}")
    names = parse_labels(labels)
    picture = load_image(image)
    processor = processor_for_model(ImageTower(model), size={"shortest_edge": resolution}, keep_aspect_ratio=True, resample=BICUBIC)
    pixels = processor(picture, return_tensors="pt")["pixel_values"]  # [1, 3, H, W], sides multiples of the patch
    text = label_embeddings(model, names, resolve_templates(templates), patch_aligned=True)  # [C, P]
    height, width = pixels.shape[-2:]
    if mode == "whole":
        scores = F.interpolate(_window_scores(model, pixels, text, patch_source)[None], size=(height, width), mode="bilinear", align_corners=False)[0]
    else:
        scores = torch.zeros(len(names), height, width)
        counts = torch.zeros(height, width)
        rows = max(height - side + stride - 1, 0) // stride + 1
        cols = max(width - side + stride - 1, 0) // stride + 1
        for i in range(rows):
            for j in range(cols):
                bottom, right = min(i * stride + side, height), min(j * stride + side, width)
                top, left = max(bottom - side, 0), max(right - side, 0)
                window = pixels[..., top:bottom, left:right]
                cos = _window_scores(model, window, text, patch_source)
                cos = F.interpolate(cos[None], size=window.shape[-2:], mode="bilinear", align_corners=False)[0]
                scores[:, top:bottom, left:right] += cos.softmax(dim=0).cpu()
                counts[top:bottom, left:right] += 1
        scores /= counts
    return Segmentation(names, scores, _label_map(scores, picture.height, picture.width), picture)


def _label_map(scores: torch.Tensor, height: int, width: int) -> np.ndarray:
    """Best label per pixel of the `height` x `width` image: argmax of the bilinearly upsampled scores, or,
    past MAX_UPSAMPLED values, the processed-size argmax resized (nearest) to bound memory."""
    if scores.shape[0] * height * width <= MAX_UPSAMPLED:
        full = F.interpolate(scores[None].float(), size=(height, width), mode="bilinear", align_corners=False)[0]
        return full.argmax(dim=0).numpy().astype(np.int64)
    small = Image.fromarray(scores.argmax(dim=0).numpy().astype(np.int32))
    return np.asarray(small.resize((width, height), Image.NEAREST)).astype(np.int64)
