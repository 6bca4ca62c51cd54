"""Where a checkpoint lives: a local folder, a `.pth` file or a Hugging Face hub id (through its cache)."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from .errors import CheckpointError
from .files import SAFE_WEIGHTS_INDEX_NAME, SAFE_WEIGHTS_NAME, TensorFile, open_safetensors, open_torch_pickle
from .files import read_safetensors_index

CONFIG_NAME = "config.json"
TORCH_SUFFIXES = (".pth", ".pt", ".bin", ".pth.tar")
_HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+$")


@dataclass
class HubOptions:
    """Arguments passed through to huggingface_hub (None: its own defaults and environment)."""

    revision: str | None = None
    token: str | bool | None = None
    cache_dir: str | os.PathLike | None = None
    local_files_only: bool | None = None


@dataclass
class Checkpoint:
    """A located checkpoint: its layout ("hf" folder or "meta" state dict), config file and tensors."""

    name: str
    layout: str
    tensors: TensorFile
    config_file: Path | None = None


def locate(source: str | os.PathLike, hub: HubOptions | None = None) -> Checkpoint:
    """Find the checkpoint named by `source` and open its tensors lazily."""
    path = Path(source).expanduser()
    if path.is_dir():
        return _open_folder(path)
    if path.is_file():
        if path.name == CONFIG_NAME:
            return _open_folder(path.parent)
        if path.name.endswith(".safetensors") and (path.parent / CONFIG_NAME).is_file():
            return Checkpoint(str(path), "hf", open_safetensors([path]), path.parent / CONFIG_NAME)
        return Checkpoint(str(path), "meta", open_torch_pickle(path))
    if is_hub_id(source) and not str(source).endswith(TORCH_SUFFIXES):
        return _open_hub(source, hub or HubOptions())
    raise CheckpointError(
        f"{source}: no such file or folder, and not a Hugging Face hub id (owner/name); pass a hub id, a folder "
        "with config.json and model.safetensors, or a Meta .pth checkpoint"
    )


def is_hub_id(source: object) -> bool:
    """Whether `source` has the form of a Hugging Face hub id ("owner/name")."""
    return isinstance(source, str) and _HUB_ID.match(source) is not None


def resolve_config_file(source: str | os.PathLike, hub: HubOptions | None = None) -> Path:
    """The `config.json` of a folder, a file path, or a hub id."""
    path = Path(source).expanduser()
    if path.is_file() and path.suffix == ".json":
        return path
    if path.is_dir():
        if not (path / CONFIG_NAME).is_file():
            raise CheckpointError(f"{path}: has no {CONFIG_NAME}")
        return path / CONFIG_NAME
    if is_hub_id(source):
        return hub_file(source, CONFIG_NAME, hub or HubOptions())
    raise CheckpointError(f"{source}: no such config file, folder or hub id")


def _open_folder(folder: Path) -> Checkpoint:
    config = folder / CONFIG_NAME
    if not config.is_file():
        pickles = sorted(p.name for p in folder.iterdir() if p.name.endswith(TORCH_SUFFIXES))
        hint = f"; to load a Meta checkpoint pass the file itself, e.g. {folder / pickles[0]}" if pickles else ""
        raise CheckpointError(f"{folder}: has no {CONFIG_NAME}{hint}")
    if (folder / SAFE_WEIGHTS_NAME).is_file():
        return Checkpoint(str(folder), "hf", open_safetensors([folder / SAFE_WEIGHTS_NAME]), config)
    if (folder / SAFE_WEIGHTS_INDEX_NAME).is_file():
        weight_map = read_safetensors_index(folder / SAFE_WEIGHTS_INDEX_NAME)
        shards = [folder / name for name in sorted(set(weight_map.values()))]
        missing = [str(p) for p in shards if not p.is_file()]
        if missing:
            raise CheckpointError(f"{folder}: shards {missing} named by {SAFE_WEIGHTS_INDEX_NAME} are missing")
        return Checkpoint(str(folder), "hf", open_safetensors(shards, weight_map), config)
    raise CheckpointError(f"{folder}: has no {SAFE_WEIGHTS_NAME} nor {SAFE_WEIGHTS_INDEX_NAME}")


def _open_hub(repo_id: str, hub: HubOptions) -> Checkpoint:
    config = hub_file(repo_id, CONFIG_NAME, hub)
    try:
        weights = [hub_file(repo_id, SAFE_WEIGHTS_NAME, hub, missing_ok=True)]
    except FileNotFoundError:
        index = hub_file(repo_id, SAFE_WEIGHTS_INDEX_NAME, hub)
        weight_map = read_safetensors_index(index)
        weights = [hub_file(repo_id, name, hub) for name in sorted(set(weight_map.values()))]
        return Checkpoint(repo_id, "hf", open_safetensors(weights, weight_map), config)
    return Checkpoint(repo_id, "hf", open_safetensors(weights), config)


def hub_file(repo_id: str, filename: str, hub: HubOptions, missing_ok: bool = False) -> Path:
    """Download (or take from the cache) one file of a hub repository; errors say what to do."""
    from huggingface_hub import hf_hub_download
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
        raise CheckpointError(
            f"{repo_id}: this repository is gated. Request access at https://huggingface.co/{repo_id} (accept "
            "the DINOv3 license), then log in with `hf auth login` or set HF_TOKEN; or point at a local copy "
            "(a folder or a Meta .pth file)"
        ) from error
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


def _entry_known_missing(repo_id: str, filename: str, hub: HubOptions) -> bool:
    """Whether the cache holds the repository's snapshot but not this file (offline sharded checkpoints)."""
    from huggingface_hub import try_to_load_from_cache

    try:
        config = try_to_load_from_cache(repo_id, CONFIG_NAME, cache_dir=hub.cache_dir, revision=hub.revision)
    except Exception:
        return False
    return isinstance(config, str) and (Path(config).parent / SAFE_WEIGHTS_INDEX_NAME).exists()
