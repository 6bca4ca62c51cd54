"""DINOv3ViTConfig: transformers' names and defaults, config.json round trip, presets."""

import dataclasses
import json
import re

import pytest
import torch
from transformers import DINOv3ViTConfig as HFConfig

from dinov3kit import VIT_VARIANTS, DINOv3ViTConfig, DINOv3ViTModel
from dinov3kit.weights.keymap import translate
from dinov3kit.weights.loading import LAYOUTS
from oracles.meta_twin import LAYOUTS as META_LAYOUTS

HF_FIELDS = [
    "patch_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "hidden_act",
    "attention_dropout", "initializer_range", "layer_norm_eps", "rope_theta", "image_size", "num_channels",
    "query_bias", "key_bias", "value_bias", "proj_bias", "mlp_bias", "layerscale_value", "drop_path_rate",
    "use_gated_mlp", "num_register_tokens", "pos_embed_shift", "pos_embed_jitter", "pos_embed_rescale",
    "out_features", "out_indices", "apply_layernorm", "reshape_hidden_states",
]  # fmt: skip


def test_defaults_match_transformers():
    ours, theirs = DINOv3ViTConfig(), HFConfig()
    for name in HF_FIELDS:
        assert getattr(ours, name) == getattr(theirs, name), name
    assert ours.return_class_token is False
    assert ours.stage_names == theirs.stage_names


def test_reads_transformers_config_json_and_keeps_unknown_keys(tmp_path):
    HFConfig(hidden_size=128, num_attention_heads=2, num_register_tokens=4, out_indices=[1, 3]).save_pretrained(tmp_path)
    data = json.loads((tmp_path / "config.json").read_text())
    data["some_future_key"] = {"nested": [1, 2]}
    (tmp_path / "config.json").write_text(json.dumps(data))
    config = DINOv3ViTConfig.from_pretrained(tmp_path)
    assert (config.hidden_size, config.num_register_tokens, config.out_features) == (128, 4, ["stage1", "stage3"])
    assert config.extra["some_future_key"] == {"nested": [1, 2]}
    config.save_pretrained(tmp_path / "ours")
    written = json.loads((tmp_path / "ours" / "config.json").read_text())
    assert written == {**data, "return_class_token": False}  # nothing dropped or changed; one field added
    reread = HFConfig.from_pretrained(tmp_path / "ours")
    assert all(getattr(reread, name) == getattr(config, name) for name in HF_FIELDS)


def test_out_features_and_indices_align_like_transformers():
    for kwargs in [dict(out_indices=[0, 2]), dict(out_features=["stage1", "stage3"]), dict()]:
        ours = DINOv3ViTConfig(num_hidden_layers=3, **kwargs)
        theirs = HFConfig(num_hidden_layers=3, **kwargs)
        assert (ours.out_features, ours.out_indices) == (theirs.out_features, theirs.out_indices)
    with pytest.raises(ValueError, match="not stages"):
        DINOv3ViTConfig(num_hidden_layers=3, out_features=["stage9"])
    with pytest.raises(ValueError, match="order"):
        DINOv3ViTConfig(num_hidden_layers=3, out_features=["stage2", "stage1"])
    with pytest.raises(ValueError, match="different stages"):
        DINOv3ViTConfig(num_hidden_layers=3, out_features=["stage1"], out_indices=[2])


def test_invalid_head_count_is_refused():
    with pytest.raises(ValueError, match="divisible"):
        DINOv3ViTConfig(hidden_size=100, num_attention_heads=3)


def test_config_is_a_dataclass_with_every_transformers_field():
    names = {f.name for f in dataclasses.fields(DINOv3ViTConfig)}
    assert set(HF_FIELDS) <= names


@pytest.mark.parametrize("name", sorted(VIT_VARIANTS))
def test_presets_have_meta_checkpoint_shapes(name):
    """Each preset, written in Meta's layout, has exactly the keys and shapes of Meta's released file."""
    config = DINOv3ViTConfig.from_preset(name)
    with torch.device("meta"):
        model = DINOv3ViTModel(config)
    ours = model.state_dict()
    layout = LAYOUTS["dinov3_vit", "meta"]
    theirs, _ = translate(layout.rules(config), ours.__getitem__, ours, None, direction="to_theirs", origin=name)
    layout.finish_save(theirs, config)
    reference = META_LAYOUTS[f"dinov3_{name}"]
    depth = reference["repeats"]["blocks"]
    expected = {
        pattern.replace(".N.", f".{n}."): tuple(shape)
        for pattern, shape in reference["keys"].items()
        if not pattern.startswith("local_cls_norm")
        for n in (range(depth) if ".N." in pattern else [None])
    }
    assert {k: tuple(v.shape) for k, v in theirs.items()} == expected
    if config.query_bias:
        assert sum(1 for k in theirs if re.fullmatch(r"blocks\.\d+\.attn\.qkv\.bias_mask", k)) == depth


def test_from_preset_accepts_meta_names_and_rejects_unknown():
    assert DINOv3ViTConfig.from_preset("dinov3_vitb16").hidden_size == 768
    assert DINOv3ViTConfig.from_preset("vit7b16").query_bias is False
    with pytest.raises(ValueError, match="unknown"):
        DINOv3ViTConfig.from_preset("vit_giant")
