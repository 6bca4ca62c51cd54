"""DINOv3ViTConfig: transformers' names and defaults, config.json round trip, presets."""

import dataclasses
import json
import re

import pytest
import torch
from transformers import DINOv3ViTConfig as HFConfig

from dinov3kit import VIT_VARIANTS, AutoConfig, CheckpointError, DINOv3ConvNextConfig, DINOv3ViTConfig, DINOv3ViTModel
from dinov3kit.configs import HIDDEN_ACTS, ConfigError
from dinov3kit.models.layers import ACTIVATIONS
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


# --- validation -----------------------------------------------------------------------------------
HOSTILE_VIT = [
    ("num_attention_heads", 0, r"num_attention_heads=0 is out of range; allowed: 1 <= num_attention_heads <= 1024"),
    ("num_register_tokens", -1, r"num_register_tokens=-1 is out of range; allowed: 0 <="),
    ("num_hidden_layers", 10**9, r"num_hidden_layers=1000000000 is out of range; allowed: 1 <= num_hidden_layers <= 1024"),
    ("patch_size", 0, r"patch_size=0 is out of range"),
    ("hidden_size", "384", r"hidden_size='384': expected a number"),
    ("hidden_size", 384.0, r"hidden_size=384.0: expected an integer"),
    ("layer_norm_eps", float("nan"), r"layer_norm_eps=nan: expected a finite number"),
    ("layer_norm_eps", 0.0, r"layer_norm_eps=0.0 is out of range; allowed: 0 < layer_norm_eps"),
    ("rope_theta", float("inf"), r"rope_theta=inf: expected a finite number"),
    ("drop_path_rate", 1.0, r"drop_path_rate=1.0 is out of range"),
    ("query_bias", 1, r"query_bias=1: expected true or false"),
    ("hidden_act", "tanh", r"hidden_act='tanh': expected one of"),
    ("num_channels", None, r"num_channels=None: a value is required"),
    ("pos_embed_rescale", 0.5, r"pos_embed_rescale=0.5 is out of range"),
    ("out_indices", "12", r"out_indices='12': expected a list of integers"),
    ("intermediate_size", -5, r"intermediate_size=-5 is out of range"),
]


@pytest.mark.parametrize(("name", "value", "message"), HOSTILE_VIT, ids=[f"{n}={v!r}" for n, v, _ in HOSTILE_VIT])
def test_every_vit_field_is_validated_with_its_name_value_and_range(name, value, message):
    with pytest.raises(ConfigError, match=message):
        DINOv3ViTConfig(**{name: value})


def test_width_and_heads_and_model_size_are_checked_together():
    with pytest.raises(ConfigError, match=r"hidden_size=100 is not divisible by num_attention_heads=3"):
        DINOv3ViTConfig(hidden_size=100, num_attention_heads=3)
    with pytest.raises(ConfigError, match=r"head dimension of 6; RoPE needs a multiple of 4"):
        DINOv3ViTConfig(hidden_size=12, num_attention_heads=2)
    with pytest.raises(ConfigError, match=r"about 3\.22e\+12 parameters, over the 5e\+10 cap"):
        DINOv3ViTConfig(hidden_size=16384, intermediate_size=65536, num_hidden_layers=1000, num_attention_heads=128)
    largest = DINOv3ViTConfig.from_preset("vit7b16")
    assert 6.5e9 < largest.parameter_estimate() < 7e9  # ViT-7B is well inside the cap
    assert abs(DINOv3ViTConfig.from_preset("vits16").parameter_estimate() - 21.6e6) < 0.5e6


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        (dict(depths=[3, 3, -1, 3]), r"depths\[2\]=-1 is out of range"),
        (dict(depths=[3, 3, 3]), r"depths=\[3, 3, 3\] and hidden_sizes=\[96, 192, 384, 768\] must name the same, non-zero"),
        (dict(hidden_sizes="wide"), r"hidden_sizes='wide': expected a list of 1 to 8 integers"),
        (dict(hidden_sizes=[96, 192, 0, 768]), r"hidden_sizes\[2\]=0 is out of range"),
        (dict(depths=[10**9] * 4), r"depths\[0\]=1000000000 is out of range"),
        (dict(layer_norm_eps=-1.0), r"layer_norm_eps=-1.0 is out of range"),
        (dict(image_size=[224, 0]), r"image_size=0 is out of range"),
        (dict(hidden_sizes=[60000] * 4, depths=[1000] * 4), r"parameters, over the 5e\+10 cap"),
    ],
)
def test_every_convnext_field_is_validated(fields, message):
    with pytest.raises(ConfigError, match=message):
        DINOv3ConvNextConfig(**fields)


def test_activation_names_are_the_ones_the_models_implement():
    assert set(HIDDEN_ACTS) == set(ACTIVATIONS)


def test_hostile_config_json_is_refused_before_anything_is_allocated(tmp_path):
    """A config.json with a billion layers fails at once with a message naming the file and the field
    (the model is never built: this would otherwise take all the machine's memory)."""
    DINOv3ViTConfig(hidden_size=64, num_attention_heads=2).save_pretrained(tmp_path)
    data = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**data, "num_hidden_layers": 10**9}))
    with pytest.raises(CheckpointError, match=r"config\.json: invalid config .*num_hidden_layers=1000000000"):
        AutoConfig.from_pretrained(tmp_path)
    with pytest.raises(CheckpointError, match=r"num_hidden_layers=1000000000 is out of range"):
        DINOv3ViTModel.from_pretrained(tmp_path)
    with pytest.raises(CheckpointError, match=r"overrides .*num_attention_heads=0 is out of range"):
        AutoConfig.from_pretrained(tmp_path / "config.json", num_hidden_layers=2, num_attention_heads=0)
    assert AutoConfig.from_pretrained(tmp_path, num_hidden_layers=12).num_hidden_layers == 12  # an override may fix it


def test_meta_checkpoint_with_an_impossible_architecture_names_the_file(tmp_path):
    state = {
        "cls_token": torch.zeros(1, 1, 64),
        "patch_embed.proj.weight": torch.zeros(64, 3, 0, 0),
        "blocks.0.attn.qkv.weight": torch.zeros(192, 64),
        "blocks.0.mlp.fc1.weight": torch.zeros(128, 64),
        "rope_embed.periods": torch.ones(4),
    }
    torch.save(state, tmp_path / "broken.pth")
    with pytest.raises(CheckpointError, match=r"broken\.pth: the architecture read from its tensors is invalid: .*patch_size=0"):
        AutoConfig.from_pretrained(tmp_path / "broken.pth")
    torch.save({**state, "rope_embed.periods": torch.ones(0)}, tmp_path / "no_periods.pth")
    with pytest.raises(CheckpointError, match=r"no_periods\.pth: inconsistent shapes"):
        AutoConfig.from_pretrained(tmp_path / "no_periods.pth")
