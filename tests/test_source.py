"""source.py: what a model source is, decided once (kind, layout, config, processor config, dataset)."""

from __future__ import annotations

import json

import pytest
import torch

from dinov3kit import CheckpointError
from dinov3kit.source import HubOptions, Source, resolve_source


def test_local_sources(tmp_path):
    folder = tmp_path / "dinov3-vitl16-pretrain-sat493m"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "dinov3_vit"}))
    source = resolve_source(folder)
    assert (source.kind, source.layout, source.config_file) == ("folder", "hf", folder / "config.json")
    assert source.processor_file is None and source.dataset == "sat493m"
    assert resolve_source(folder / "config.json").path == folder  # a config.json names its folder
    (folder / "preprocessor_config.json").write_text("{}")
    assert resolve_source(folder).processor_file == folder / "preprocessor_config.json"
    with pytest.raises(CheckpointError, match="has no model.safetensors nor model.safetensors.index.json"):
        source.weight_files()

    pth = tmp_path / "weights.pth"
    torch.save({}, pth)
    meta = resolve_source(pth)
    assert (meta.kind, meta.layout, meta.processor_file, meta.dataset) == ("file", "meta", None, None)
    with pytest.raises(CheckpointError, match="a Meta checkpoint has no config.json"):
        _ = meta.config_file

    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "config.json").write_text(json.dumps({"model_type": "dinov3_vit", "dinov3_pretrain_dataset": "sat493m"}))
    assert resolve_source(plain).dataset == "sat493m"  # recorded in the config


def test_a_source_is_resolved_once_and_remembers_what_loaders_read(tmp_path):
    source = resolve_source(tmp_path)
    assert resolve_source(source) is source
    calls = []
    assert source.remember("x", lambda: calls.append(1) or 42) == source.remember("x", lambda: calls.append(1)) == 42
    assert calls == [1]


def test_hub_ids_and_bad_sources(tmp_path):
    hub = resolve_source("facebook/dinov3-vits16-pretrain-lvd1689m", HubOptions(revision="main"))
    assert isinstance(hub, Source) and (hub.kind, hub.layout, hub.dataset) == ("hub", "hf", "lvd1689m")
    assert hub.hub.revision == "main" and not hub.is_local
    with pytest.raises(CheckpointError, match="no such file or folder, and not a Hugging Face hub id"):
        resolve_source(tmp_path / "absent.pth")
    with pytest.raises(CheckpointError, match="not a Hugging Face hub id"):
        resolve_source("owner/name/extra")
