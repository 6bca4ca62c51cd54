"""AutoConfig / AutoModel / AutoBackbone / AutoImageProcessor dispatch on the model type of transformers
folders, config files, hub ids (through a local hub cache) and Meta .pth checkpoints."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from tests.oracles.convnext_twins import hf_convnext, meta_convnext_state_dict
from tests.oracles.hf_twin import save_hf_vit
from tests.oracles.meta_twin import meta_vit_state_dict

from dinov3kit import (
    AutoBackbone,
    AutoConfig,
    AutoImageProcessor,
    AutoModel,
    CheckpointError,
    DINOv3ConvNextBackbone,
    DINOv3ConvNextConfig,
    DINOv3ConvNextModel,
    DINOv3ViTBackbone,
    DINOv3ViTConfig,
    DINOv3ViTImageProcessor,
    DINOv3ViTModel,
)
from dinov3kit.variants import SAT493M_MEAN


@pytest.fixture(scope="module")
def vit_folder(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("vit")
    save_hf_vit(folder, num_register_tokens=4)
    return folder


@pytest.fixture(scope="module")
def convnext_folder(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("convnext")
    hf_convnext().save_pretrained(folder)
    return folder


def test_transformers_folders(vit_folder, convnext_folder):
    assert isinstance(AutoConfig.from_pretrained(vit_folder), DINOv3ViTConfig)
    assert isinstance(AutoConfig.from_pretrained(vit_folder / "config.json"), DINOv3ViTConfig)
    assert type(AutoModel.from_pretrained(vit_folder)) is DINOv3ViTModel
    backbone = AutoBackbone.from_pretrained(vit_folder, out_indices=[1, 2])
    assert type(backbone) is DINOv3ViTBackbone and backbone.out_indices == [1, 2]
    assert isinstance(AutoConfig.from_pretrained(convnext_folder), DINOv3ConvNextConfig)
    assert type(AutoModel.from_pretrained(convnext_folder)) is DINOv3ConvNextModel
    assert type(AutoBackbone.from_pretrained(convnext_folder)) is DINOv3ConvNextBackbone
    assert AutoConfig.from_pretrained(vit_folder, num_register_tokens=2).num_register_tokens == 2


def test_auto_model_loads_the_same_weights(vit_folder):
    pixels = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    direct = DINOv3ViTModel.from_pretrained(vit_folder)
    auto = AutoModel.from_pretrained(vit_folder)
    with torch.no_grad():
        assert torch.equal(direct(pixels).last_hidden_state, auto(pixels).last_hidden_state)


def test_meta_checkpoints(tmp_path):
    vit_path = tmp_path / "dinov3_vits16plus_pretrain_lvd1689m-4057cbaa.pth"
    torch.save(meta_vit_state_dict("vits16plus"), vit_path)
    assert type(AutoModel.from_pretrained(vit_path)) is DINOv3ViTModel
    assert type(AutoBackbone.from_pretrained(vit_path)) is DINOv3ViTBackbone
    assert AutoConfig.from_pretrained(vit_path).use_gated_mlp
    convnext_path = tmp_path / "dinov3_convnext_tiny_pretrain_lvd1689m-21b726bb.pth"
    torch.save(meta_convnext_state_dict("tiny"), convnext_path)
    assert type(AutoModel.from_pretrained(convnext_path)) is DINOv3ConvNextModel
    assert isinstance(AutoConfig.from_pretrained(convnext_path), DINOv3ConvNextConfig)
    sat_path = tmp_path / "dinov3_vitl16_pretrain_sat493m-eadcf0ff.pth"
    shutil.copy(vit_path, sat_path)
    assert tuple(AutoImageProcessor.from_pretrained(sat_path).image_mean) == SAT493M_MEAN
    assert AutoImageProcessor.from_pretrained(convnext_path).patch_size == 32


def test_from_config_builds_random_models():
    vit = DINOv3ViTConfig(num_hidden_layers=1, hidden_size=64, num_attention_heads=1)
    assert type(AutoModel.from_config(vit)) is DINOv3ViTModel
    convnext = DINOv3ConvNextConfig(hidden_sizes=[8, 8, 8, 8], depths=[1, 1, 1, 1])
    assert type(AutoBackbone.from_config(convnext)) is DINOv3ConvNextBackbone
    assert isinstance(AutoConfig.for_model("dinov3_convnext"), DINOv3ConvNextConfig)


def test_image_processor_of_a_folder(vit_folder, tmp_path):
    assert isinstance(AutoImageProcessor.from_pretrained(vit_folder), DINOv3ViTImageProcessor)  # no processor file
    DINOv3ViTImageProcessor(size={"shortest_edge": 256}).save_pretrained(tmp_path)
    assert AutoImageProcessor.from_pretrained(tmp_path, use_fast=True).size == {"shortest_edge": 256}


def test_hub_ids_through_the_cache(vit_folder, tmp_path, monkeypatch):
    """A hub id resolves through huggingface_hub's cache (offline here): config, weights and processor."""
    repo = "facebook/dinov3-vits16-pretrain-sat493m"
    snapshot = tmp_path / "models--facebook--dinov3-vits16-pretrain-sat493m" / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("0" * 40)
    for name in ("config.json", "model.safetensors"):
        shutil.copy(vit_folder / name, snapshot / name)
    from transformers import DINOv3ViTImageProcessor as TransformersProcessor

    TransformersProcessor().save_pretrained(snapshot)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    hub = dict(cache_dir=tmp_path, local_files_only=True)
    assert isinstance(AutoConfig.from_pretrained(repo, **hub), DINOv3ViTConfig)
    assert type(AutoModel.from_pretrained(repo, **hub)) is DINOv3ViTModel
    processor = AutoImageProcessor.from_pretrained(repo, **hub)
    assert tuple(processor.image_mean) == SAT493M_MEAN  # the id names a SAT-493M checkpoint


def test_unknown_model_types_are_refused(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "vit", "hidden_size": 8}))
    with pytest.raises(CheckpointError, match="'vit' is not a DINOv3 model"):
        AutoModel.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"hidden_size": 8}))
    with pytest.raises(CheckpointError, match="no model_type"):
        AutoConfig.from_pretrained(tmp_path)
    not_a_checkpoint = tmp_path / "weights.pth"
    torch.save({"fc.weight": torch.zeros(2, 2)}, not_a_checkpoint)
    with pytest.raises(CheckpointError, match="not a DINOv3 checkpoint"):
        AutoModel.from_pretrained(not_a_checkpoint)
    with pytest.raises(CheckpointError, match="no such"):
        AutoModel.from_pretrained(tmp_path / "missing")
