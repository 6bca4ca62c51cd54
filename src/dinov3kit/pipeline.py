"""`pipeline("image-feature-extraction", model=...)`: transformers' feature-extraction pipeline for
DINOv3 models, with the same outputs for the same inputs.

Per image the output is the model's `last_hidden_state` [1, tokens, dim] (or `pooler_output` [1, dim]
with `pool=True`) as nested lists, or as a CPU tensor with `return_tensors=True`; a list of images
gives a list of those. Inputs are anything `load_image` reads. With `skip_errors=True` an unreadable
input gives `None` in its place, a warning names it, and `pipe.skipped` lists the errors.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import torch

from .auto import HUB_KEYS, AutoImageProcessor, AutoModel, source_of
from .optional import require
from .pixels import DEFAULT_TIMEOUT
from .source import Source
from .weights.placement import resolve_device, resolve_dtype

if TYPE_CHECKING:  # the pixels modules (PIL) load on first use: `import dinov3kit` stays fast
    from .pixels.decode import ImageLoadError

logger = logging.getLogger(__name__)

TASKS = ("image-feature-extraction",)


def pipeline(
    task: str = "image-feature-extraction",
    model: Any = None,
    *,
    image_processor: Any = None,
    dtype: torch.dtype | str | None = None,
    device: torch.device | str | int | None = None,
    pool: bool = False,
    batch_size: int = 1,
    return_tensors: bool = False,
    skip_errors: bool = False,
    timeout: float | None = DEFAULT_TIMEOUT,
    image_processor_kwargs: dict[str, Any] | None = None,
    progress: bool = False,
    torch_dtype: torch.dtype | str | None = None,
    **model_kwargs: Any,
) -> ImageFeatureExtractionPipeline:
    """Build the pipeline for `model`: a hub id, a folder, a Meta `.pth` file, a resolved `Source`, or a
    model instance.

    `dtype` / `device` load the weights in that dtype / on that device ("auto" picks the best device). The
    dtype defaults to "fast" for a checkpoint (`fast_dtype`: bf16 on GPUs and on CPUs with bf16 matrix
    units, fp32 elsewhere; "auto" keeps the stored dtype) and to the model's own for a model instance;
    `image_processor` defaults to the checkpoint's (`AutoImageProcessor`) or, for a model instance, the
    one `processor_for_model` builds. The other arguments are call defaults (see the pipeline's
    `__call__`); remaining keyword arguments go to `from_pretrained` (revision, token, ...).
    """
    if task not in TASKS:
        raise ValueError(f"dinov3kit pipelines support the tasks {TASKS}, got {task!r}")
    if model is None:
        raise ValueError(
            "pass model=: a hub id (e.g. facebook/dinov3-vits16-pretrain-lvd1689m), a folder, a .pth file or a model"
        )
    dtype = dtype if dtype is not None else torch_dtype
    if isinstance(device, int):  # transformers' convention: -1 is the CPU, n >= 0 CUDA device n
        device = resolve_device(device)
    if isinstance(model, (str, os.PathLike, Source)):
        source = source_of(model, **model_kwargs)  # resolved once: model and processor read the same files
        model = AutoModel.from_pretrained(source, dtype="fast" if dtype is None else dtype, device=device, **model_kwargs)
        if image_processor is None:
            hub = {key: model_kwargs[key] for key in HUB_KEYS if key in model_kwargs}
            image_processor = AutoImageProcessor.from_pretrained(source, **hub)
    else:
        if model_kwargs:
            raise TypeError(f"unexpected arguments {sorted(model_kwargs)} for a model instance")
        if device is not None:
            model = model.to(resolve_device(device))
        if dtype is not None:
            model = model.to(resolve_dtype(dtype, model.dtype, model.device))
        if image_processor is None:
            from .pixels.processor import processor_for_model  # PIL on first use

            image_processor = processor_for_model(model)
    if isinstance(image_processor, (str, os.PathLike)):
        image_processor = AutoImageProcessor.from_pretrained(image_processor)
    return ImageFeatureExtractionPipeline(
        model.eval(),
        image_processor,
        pool=pool,
        batch_size=batch_size,
        return_tensors=return_tensors,
        skip_errors=skip_errors,
        timeout=timeout,
        image_processor_kwargs=image_processor_kwargs,
        progress=progress,
    )


class ImageFeatureExtractionPipeline:
    """Callable returned by `pipeline`: images → features, as transformers' pipeline of the same task."""

    task = "image-feature-extraction"

    def __init__(
        self,
        model: torch.nn.Module,
        image_processor: Any,
        *,
        pool: bool = False,
        batch_size: int = 1,
        return_tensors: bool = False,
        skip_errors: bool = False,
        timeout: float | None = DEFAULT_TIMEOUT,
        image_processor_kwargs: dict[str, Any] | None = None,
        progress: bool = False,
    ) -> None:
        self.model = model
        self.image_processor = image_processor
        self.defaults = dict(
            pool=pool,
            batch_size=batch_size,
            return_tensors=return_tensors,
            skip_errors=skip_errors,
            timeout=timeout,
            image_processor_kwargs=dict(image_processor_kwargs or {}),
            progress=progress,
        )
        #: Errors (each with its input `index`) of the inputs skipped by the last call.
        self.skipped: list[ImageLoadError] = []

    @property
    def device(self) -> torch.device:
        return self.model.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.dtype

    def __call__(self, images: Any, **options: Any) -> Any:
        """Features of one image (→ one result) or of a list of images (→ a list of results).

        Options (defaults from `pipeline`): pool, batch_size, return_tensors, skip_errors, timeout,
        image_processor_kwargs, progress (a progress bar over the inputs).
        """
        unknown = sorted(set(options) - set(self.defaults))
        if unknown:
            raise TypeError(f"unknown pipeline options {unknown}; valid: {sorted(self.defaults)}")
        opts = {**self.defaults, **{key: value for key, value in options.items() if value is not None}}
        if opts["batch_size"] < 1:
            raise ValueError(f"batch_size must be at least 1, got {opts['batch_size']}")
        single = not _is_batch(images)
        items = [images] if single else list(images)
        self.skipped = []
        results: list[Any] = [None] * len(items)
        pending: list[tuple[int, torch.Tensor]] = []

        def flush() -> None:
            features = self._forward(torch.cat([tensor for _, tensor in pending]), opts["pool"])
            for position, (index, _) in enumerate(pending):
                item = features[position : position + 1]
                results[index] = item if opts["return_tensors"] else item.tolist()
            pending.clear()

        for index, item in enumerate(_progress(items, opts["progress"])):
            tensor = self._preprocess(index, item, opts)
            if tensor is None:
                continue
            if pending and (len(pending) == opts["batch_size"] or pending[0][1].shape != tensor.shape):
                flush()
            pending.append((index, tensor))
        if pending:
            flush()
        if self.skipped:
            logger.warning("skipped %d unreadable input(s): %s", len(self.skipped), "; ".join(map(str, self.skipped)))
        return results[0] if single else results

    def _preprocess(self, index: int, item: Any, opts: dict[str, Any]) -> torch.Tensor | None:
        from .pixels.decode import ImageLoadError  # PIL on first use
        from .pixels.load import load_image

        try:
            image = load_image(item, timeout=opts["timeout"])
            batch = self.image_processor(image, return_tensors="pt", **opts["image_processor_kwargs"])
        except ImageLoadError as error:
            if not opts["skip_errors"]:
                raise error.at(index) from error
            self.skipped.append(error.at(index))
            return None
        return batch["pixel_values"].to(device=self.device, dtype=self.dtype)

    @torch.inference_mode()
    def _forward(self, pixel_values: torch.Tensor, pool: bool) -> torch.Tensor:
        outputs = self.model(pixel_values=pixel_values)
        if pool:
            if getattr(outputs, "pooler_output", None) is None:
                raise ValueError("this model returns no pooled output; call with pool=False")
            features = outputs.pooler_output
        else:
            features = outputs.last_hidden_state
        return features.cpu()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(model={type(self.model).__name__}, device={self.device}, dtype={self.dtype})"


def _is_batch(images: Any) -> bool:
    """Whether `images` is a collection of inputs rather than one input."""
    if isinstance(images, (list, tuple)):
        return True
    single = (str, bytes, bytearray, os.PathLike, torch.Tensor)
    if isinstance(images, single) or hasattr(images, "read") or hasattr(images, "__array_interface__"):
        return False  # file objects, numpy arrays and PIL images (both expose __array_interface__)
    return isinstance(images, Iterable)


def _progress(items: list[Any], enabled: bool) -> Iterable[Any]:
    if not enabled:
        return items
    return require("tqdm.auto", "a progress bar").tqdm(items, desc="images", unit="img")
