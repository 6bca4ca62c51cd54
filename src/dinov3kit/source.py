"""What a model source is, decided once: a hub id, a folder, a `config.json`, a processor config, a
safetensors file or a Meta `.pth` checkpoint.

`resolve_source` looks at the path (or hub id) once and returns a `Source`; every loader (model,
config, image processor, pipeline) takes that object, so one `pipeline(model="x.pth")` opens the file
once. Files are found lazily: asking for the processor config does not download the weights, and a
folder holding only a `preprocessor_config.json` is a valid source for a processor.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import CheckpointError
from .variants import dataset_in_name

CONFIG_NAME = "config.json"
SAFE_WEIGHTS_NAME = "model.safetensors"
SAFE_WEIGHTS_INDEX_NAME = "model.safetensors.index.json"
IMAGE_PROCESSOR_NAME = "preprocessor_config.json"
PROCESSOR_NAME = "processor_config.json"
TORCH_SUFFIXES = (".pth", ".pt", ".bin", ".pth.tar")
_HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+$")


@dataclass
class HubOptions:
    """Arguments passed through to huggingface_hub (None: its own defaults and environment)."""

    revision: str | None = None
    token: str | bool | None = None
    cache_dir: str | os.PathLike | None = None
    local_files_only: bool | None = None


@dataclass(eq=False)
class Source:
    """A resolved model source.

    `kind`: "hub" (a hub id), "folder", "file" (a weights or JSON file). `layout`: "hf" (transformers:
    config.json + safetensors) or "meta" (Meta's `.pth` state dict, config inferred from the tensors).
    What loaders compute from a source (its opened tensors, its config) is kept in `memo`, so a source
    is read once however many loaders take it.
    """

    name: str
    kind: str
    path: Path | None = None
    hub: HubOptions = field(default_factory=HubOptions)
    memo: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def layout(self) -> str:
        if self.kind == "file" and self.path.suffix != ".json" and not self.path.name.endswith(".safetensors"):
            return "meta"
        return "hf"

    @property
    def is_local(self) -> bool:
        return self.kind != "hub"

    def remember(self, key: str, compute: Callable[[], Any]) -> Any:
        """`compute()` the first time `key` is asked for, the same value afterwards."""
        if key not in self.memo:
            self.memo[key] = compute()
        return self.memo[key]

    def file(self, filename: str, *, missing_ok: bool = False) -> Path | None:
        """A file of the checkpoint by name: beside a file source, inside a folder, or from the hub
        (downloaded once, then from its cache). None when absent and `missing_ok`."""
        if self.kind == "hub":
            try:
                return hub_file(self.name, filename, self.hub, missing_ok=missing_ok)
            except FileNotFoundError:
                return None
        folder = self.path if self.kind == "folder" else self.path.parent
        candidate = folder / filename
        if candidate.is_file():
            return candidate
        if missing_ok:
            return None
        raise CheckpointError(f"{folder}: has no {filename}")

    @property
    def config_file(self) -> Path:
        """The transformers `config.json` of the source (a Meta checkpoint has none)."""
        if self.kind == "file" and self.path.suffix == ".json" and self.path.name not in _PROCESSOR_NAMES:
            return self.path
        if self.layout == "meta":
            raise CheckpointError(f"{self.name}: a Meta checkpoint has no {CONFIG_NAME}; its config is read from the tensors")
        if self.kind == "folder" and not (self.path / CONFIG_NAME).is_file():
            pickles = sorted(p.name for p in self.path.iterdir() if p.name.endswith(TORCH_SUFFIXES))
            hint = f"; to load a Meta checkpoint pass the file itself, e.g. {self.path / pickles[0]}" if pickles else ""
            raise CheckpointError(f"{self.path}: has no {CONFIG_NAME}{hint}")
        return self.remember("config_file", lambda: self.file(CONFIG_NAME))

    def config_data(self) -> dict[str, Any]:
        """The parsed `config.json` (read once)."""

        def read() -> dict[str, Any]:
            path = self.config_file
            try:
                data = json.loads(Path(path).read_text(encoding="utf-8"))
            except (OSError, ValueError) as error:
                raise CheckpointError(f"{path}: not a readable JSON config ({error})") from error
            if not isinstance(data, dict) or "model_type" not in data:
                raise CheckpointError(f"{path}: has no model_type; is it a transformers config.json?")
            return data

        return self.remember("config_data", read)

    def weight_files(self) -> tuple[list[Path], dict[str, str] | None]:
        """The safetensors files of a transformers-layout source and, when sharded, its key → shard map."""
        if self.layout == "meta":
            return [self.path], None
        if self.kind == "file" and self.path.name.endswith(".safetensors"):
            return [self.path], None
        single = self.file(SAFE_WEIGHTS_NAME, missing_ok=True)
        if single is not None:
            return [single], None
        index = self.file(SAFE_WEIGHTS_INDEX_NAME, missing_ok=True)
        if index is None:
            where = self.path if self.kind == "folder" else self.name
            raise CheckpointError(f"{where}: has no {SAFE_WEIGHTS_NAME} nor {SAFE_WEIGHTS_INDEX_NAME}")
        weight_map = read_safetensors_index(index)
        shards = [self.file(name, missing_ok=True) for name in sorted(set(weight_map.values()))]
        missing = [name for name, path in zip(sorted(set(weight_map.values())), shards) if path is None]
        if missing:
            raise CheckpointError(f"{self.name}: shards {missing} named by {SAFE_WEIGHTS_INDEX_NAME} are missing")
        return shards, weight_map

    @property
    def processor_file(self) -> Path | None:
        """The saved image processor options (`preprocessor_config.json` or `processor_config.json`), or
        None when the source has none (a model-only folder, a Meta `.pth` file)."""
        if self.kind == "file":
            return self.path if self.path.suffix == ".json" else None

        def find() -> Path | None:
            for name in _PROCESSOR_NAMES:
                path = self.file(name, missing_ok=True)
                if path is not None:
                    return path
            return None

        return self.remember("processor_file", find)

    @property
    def dataset(self) -> str | None:
        """The pretraining dataset named by the source's path or hub id, or recorded in a local config.json."""
        named = dataset_in_name(self.name)
        if named or self.kind == "hub" or self.layout == "meta":
            return named
        try:
            return self.config_data().get("dinov3_pretrain_dataset")
        except CheckpointError:
            return None


_PROCESSOR_NAMES = (IMAGE_PROCESSOR_NAME, PROCESSOR_NAME)


def resolve_source(source: str | os.PathLike | Source, hub: HubOptions | None = None) -> Source:
    """The `Source` named by a path or hub id (a `Source` is returned as it is)."""
    if isinstance(source, Source):
        return source
    hub = hub or HubOptions()
    path = Path(source).expanduser()
    if path.is_dir():
        return Source(str(source), "folder", path, hub)
    if path.is_file():
        if path.name == CONFIG_NAME:
            return Source(str(source), "folder", path.parent, hub)
        return Source(str(source), "file", path, hub)
    if is_hub_id(source) and not str(source).endswith(TORCH_SUFFIXES):
        return Source(str(source), "hub", None, hub)
    raise CheckpointError(
        f"{source}: no such file or folder, and not a Hugging Face hub id (owner/name); pass a hub id, a folder "
        "with config.json and model.safetensors, or a Meta .pth checkpoint"
    )


def is_hub_id(source: object) -> bool:
    """Whether `source` has the form of a Hugging Face hub id ("owner/name")."""
    return isinstance(source, str) and _HUB_ID.match(source) is not None


def read_safetensors_index(index_path: Path) -> dict[str, str]:
    """The key → shard file map of a `model.safetensors.index.json`."""
    try:
        return dict(json.loads(index_path.read_text(encoding="utf-8"))["weight_map"])
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise CheckpointError(f"{index_path}: not a valid safetensors index ({error})") from error


def hub_file(repo_id: str, filename: str, hub: HubOptions, missing_ok: bool = False) -> Path:
    """Download (or take from the cache) one file of a hub repository; errors say what to do. Raises
    FileNotFoundError for a file the repository lacks when `missing_ok`."""
    from huggingface_hub import hf_hub_download  # optional at import time: only hub ids need it
    from huggingface_hub.errors import (
        EntryNotFoundError,
        GatedRepoError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    try:
        return Path(
            hf_hub_download(
                repo_id,
                filename,
                revision=hub.revision,
                token=hub.token,
                cache_dir=hub.cache_dir,
                local_files_only=bool(hub.local_files_only),
            )
        )
    except GatedRepoError as error:
        raise CheckpointError(f"{repo_id}: this repository is gated. {gated_advice(repo_id)}") from error
    except RepositoryNotFoundError as error:
        raise CheckpointError(
            f"{repo_id}: no such hub repository, or it is private and no valid token was given (HF_TOKEN)"
        ) from error
    except RevisionNotFoundError as error:
        raise CheckpointError(f"{repo_id}: revision {hub.revision!r} does not exist") from error
    except LocalEntryNotFoundError as error:
        if missing_ok and _entry_known_missing(repo_id, filename, hub):
            raise FileNotFoundError(filename) from error
        raise CheckpointError(
            f"{repo_id}: {filename} is not in the local cache and the hub cannot be reached (offline mode: "
            "HF_HUB_OFFLINE is set, or no network). Download it once with network access, or point at a "
            "local folder or .pth file"
        ) from error
    except EntryNotFoundError as error:
        if missing_ok:
            raise FileNotFoundError(filename) from error
        raise CheckpointError(f"{repo_id}: the repository has no file {filename}") from error


def gated_advice(repo_id: str) -> str:
    """What to do about a gated hub repository; for hub ids only (a local file is never gated)."""
    return (
        f"Request access at https://huggingface.co/{repo_id} (accept the DINOv3 license), then log in with "
        "`hf auth login` or set HF_TOKEN; or point at a local copy (a folder or a Meta .pth file)"
    )


def _entry_known_missing(repo_id: str, filename: str, hub: HubOptions) -> bool:
    """Whether the cache holds the repository's snapshot but not this file (offline sharded checkpoints)."""
    from huggingface_hub import try_to_load_from_cache

    try:
        config = try_to_load_from_cache(repo_id, CONFIG_NAME, cache_dir=hub.cache_dir, revision=hub.revision)
    except Exception:
        return False
    return isinstance(config, str) and (Path(config).parent / SAFE_WEIGHTS_INDEX_NAME).exists()
