"""DINOv3 ConvNeXt: config, model and backbone parity with transformers and timm on random weights,
checkpoints in both layouts (round trips, variant inference, errors), every tensor used, training."""

import json

import pytest
import torch
from safetensors.torch import save_file
from transformers import DINOv3ConvNextBackbone as HFBackbone
from transformers import DINOv3ConvNextConfig as HFConfig
from transformers import DINOv3ConvNextModel as HFModel

from dinov3kit import (
    CONVNEXT_VARIANTS,
    CheckpointError,
    DINOv3ConvNextBackbone,
    DINOv3ConvNextConfig,
    DINOv3ConvNextModel,
    DINOv3ViTModel,
)
from dinov3kit.weights import save_meta_checkpoint
from dinov3kit.weights.files import TensorFile
from dinov3kit.weights.meta import infer_convnext_config
from oracles.convnext_twins import (
    TINY,
    hf_convnext,
    load_meta_into_timm_,
    meta_convnext_state_dict,
    timm_convnext_from_meta,
)
from oracles.meta_twin import LAYOUTS, meta_vit_state_dict
from oracles.random_weights import perturbations

ATOL = 1e-5
SIZES = {"square": (64, 64), "non-square": (96, 160), "non-multiple-of-32": (100, 70)}
META_NAME = "dinov3_convnext_tiny_pretrain_lvd1689m-21b726bb.pth"


def max_diff(a, b) -> float:
    return (a - b).abs().max().item()


def nudged(tensor: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """`tensor` plus noise of its own scale. Noise, not a constant: a shift shared by all channels of
    the stem conv would vanish in the LayerNorm that follows it."""
    noise = torch.randn(tensor.shape, generator=torch.Generator().manual_seed(seed))
    return tensor + 0.5 * tensor.abs().mean().clamp_min(0.1) * noise


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: see conftest.one_thread


@pytest.fixture(scope="module")
def twins(tmp_path_factory):
    """(transformers model, ours loaded from its saved folder, the folder)."""
    folder = tmp_path_factory.mktemp("hf")
    reference = hf_convnext(seed=1)
    reference.save_pretrained(folder)
    return reference, DINOv3ConvNextModel.from_pretrained(folder), folder


@pytest.fixture(scope="module")
def meta_file(tmp_path_factory):
    """A tiny Meta-layout checkpoint under a released file name, and its state dict."""
    state = meta_convnext_state_dict(seed=2)
    path = tmp_path_factory.mktemp("meta") / META_NAME
    torch.save(state, path)
    return path, state


# --- config --------------------------------------------------------------------------------------


def test_config_defaults_and_json_match_transformers(tmp_path):
    ours, theirs = DINOv3ConvNextConfig(), HFConfig()
    for key, value in ours.to_dict().items():
        assert getattr(theirs, key) == value, key
    DINOv3ConvNextConfig(hidden_sizes=[8, 16], depths=[1, 2], out_indices=[0, 2]).save_pretrained(tmp_path)
    loaded = HFConfig.from_pretrained(tmp_path)
    assert (loaded.hidden_sizes, loaded.depths, loaded.out_features) == ([8, 16], [1, 2], ["stem", "stage2"])
    HFConfig(depths=[3, 3, 27, 3], out_features=["stage1", "stage3"]).save_pretrained(tmp_path)
    config = DINOv3ConvNextConfig.from_pretrained(tmp_path)
    assert config.depths == [3, 3, 27, 3] and config.out_indices == [1, 3]
    assert config.extra["transformers_version"]  # unknown keys survive the round trip
    assert json.loads(config.to_json_string())["model_type"] == "dinov3_convnext"


@pytest.mark.parametrize("name", sorted(CONVNEXT_VARIANTS))
def test_presets_have_the_released_sizes(name):
    config = DINOv3ConvNextConfig.from_preset(f"dinov3_convnext_{name}")
    assert DINOv3ConvNextConfig.from_preset(name) == config
    layout = LAYOUTS[f"dinov3_convnext_{name}"]
    with torch.device("meta"):
        model = DINOv3ConvNextModel(config)
    duplicate = 2 * config.hidden_sizes[-1]  # Meta stores the final norm twice (norms.3)
    assert model.num_parameters() == layout["params_total"] - duplicate
    assert config.depths == [layout["repeats"][f"stages.{i}"] for i in range(4)]


def test_config_errors_are_explained():
    with pytest.raises(ValueError, match="unknown DINOv3 ConvNeXt preset"):
        DINOv3ConvNextConfig.from_preset("huge")
    with pytest.raises(ValueError, match="same, non-zero number of stages"):
        DINOv3ConvNextConfig(hidden_sizes=[8, 16], depths=[1, 1, 1])
    with pytest.raises(ValueError, match="not stages"):
        DINOv3ConvNextConfig(out_features=["stage5"])


# --- parity with transformers --------------------------------------------------------------------


@pytest.mark.parametrize("size", sorted(SIZES))
def test_model_matches_transformers(twins, size):
    reference, ours, _ = twins
    pixels = torch.randn(2, 3, *SIZES[size])
    with torch.no_grad():
        expected = reference(pixels, output_hidden_states=True)
        got = ours(pixels, output_hidden_states=True)
    grid = (SIZES[size][0] // 32) * (SIZES[size][1] // 32)
    assert got.last_hidden_state.shape == expected.last_hidden_state.shape == (2, 1 + grid, 32)
    assert max_diff(got.last_hidden_state, expected.last_hidden_state) <= ATOL
    assert max_diff(got.pooler_output, expected.pooler_output) <= ATOL
    assert len(got.hidden_states) == len(expected.hidden_states) == 5
    for mine, theirs in zip(got.hidden_states, expected.hidden_states):
        assert mine.shape == theirs.shape and max_diff(mine, theirs) <= ATOL


@pytest.mark.parametrize(
    "selection", [dict(out_indices=[0, 1, 2, 3, 4]), dict(out_features=["stage2", "stage4"]), dict(out_indices=[-2])]
)
def test_backbone_matches_transformers(twins, selection):
    _, _, folder = twins
    reference = HFBackbone.from_pretrained(folder, **selection).eval()
    ours = DINOv3ConvNextBackbone.from_pretrained(folder, **selection)
    assert (ours.out_features, ours.out_indices) == (reference.out_features, reference.out_indices)
    assert (ours.channels, ours.num_features, ours.stage_names) == (
        reference.channels, reference.num_features, reference.stage_names,
    )  # fmt: skip
    pixels = torch.randn(2, 3, 96, 160)
    with torch.no_grad():
        expected = reference(pixels, output_hidden_states=True)
        got = ours(pixels, output_hidden_states=True)
        assert len(ours(pixels).feature_maps) == len(expected.feature_maps)
    assert len(got.feature_maps) == len(expected.feature_maps) == len(ours.out_features)
    for mine, theirs in zip(got.feature_maps + got.hidden_states, expected.feature_maps + expected.hidden_states):
        assert mine.shape == theirs.shape and max_diff(mine, theirs) <= ATOL


def test_token_views_agree(twins):
    _, ours, _ = twins
    pixels = torch.randn(2, 3, 96, 128)
    with torch.no_grad():
        tokens = ours(pixels).last_hidden_state
        features = ours.forward_features(pixels)
        layers = ours.get_intermediate_layers(pixels, n=4, reshape=True, return_class_token=True)
        stages = ours(pixels, output_hidden_states=True).hidden_states
    assert max_diff(features["x_norm_clstoken"], tokens[:, 0]) == 0
    assert max_diff(features["x_norm_patchtokens"], tokens[:, 1:]) == 0
    assert features["x_storage_tokens"].shape == (2, 0, 32)
    assert max_diff(features["x_prenorm"], stages[-1].flatten(2).transpose(1, 2)) == 0
    grid = (96 // ours.config.patch_size, 128 // ours.config.patch_size)
    assert tokens.shape[1] == ours.config.num_prefix_tokens + grid[0] * grid[1]
    for (patches, pooled), stage in zip(layers[:3], stages[1:4]):  # as Meta: earlier stages un-normed
        assert max_diff(patches, stage) == 0 and max_diff(pooled, stage.mean((-2, -1))) <= 1e-6
    assert layers[3][0].shape == (2, 32, *grid)
    assert max_diff(layers[3][0].flatten(2).transpose(1, 2), tokens[:, 1:]) == 0
    assert max_diff(layers[3][1], tokens[:, 0]) == 0


def test_full_size_convnext_tiny_matches_transformers_and_timm(tmp_path):
    """The released ConvNeXt-T architecture, read from a Meta file and written for transformers."""
    state = meta_convnext_state_dict("tiny", hidden_sizes=None, depths=None, seed=4)
    torch.save(state, tmp_path / META_NAME)
    ours = DINOv3ConvNextModel.from_pretrained(tmp_path / META_NAME)
    assert ours.config.extra["dinov3_variant"] == "convnext_tiny"
    timm_model = timm_convnext_from_meta(state, "convnext_tiny.dinov3_lvd1689m")
    ours.save_pretrained(tmp_path / "hf")
    reference = HFModel.from_pretrained(tmp_path / "hf").eval()
    pixels = torch.randn(2, 3, 96, 64)
    with torch.no_grad():
        got = ours(pixels)
        expected = reference(pixels)
        timm_map = timm_model.forward_features(pixels)
        timm_pooled = timm_model.forward_head(timm_map, pre_logits=True)
    assert max_diff(got.last_hidden_state, expected.last_hidden_state) <= ATOL
    assert max_diff(got.pooler_output, timm_pooled) <= ATOL
    assert max_diff(got.last_hidden_state[:, 1:], timm_model.head.norm(timm_map).flatten(2).transpose(1, 2)) <= ATOL


# --- parity with timm on Meta-layout weights ------------------------------------------------------


def test_meta_checkpoint_matches_timm(meta_file):
    path, state = meta_file
    ours = DINOv3ConvNextModel.from_pretrained(path)
    backbone = DINOv3ConvNextBackbone.from_pretrained(path, out_indices=[1, 2, 3, 4])
    timm_model = timm_convnext_from_meta(state)
    pixels = torch.randn(2, 3, 100, 70)
    with torch.no_grad():
        got = ours(pixels)
        maps = backbone(pixels).feature_maps
        timm_maps = timm_model.forward_intermediates(pixels, intermediates_only=True)
        timm_pooled = timm_model.forward_head(timm_model.forward_features(pixels), pre_logits=True)
    assert max_diff(got.pooler_output, timm_pooled) <= ATOL
    assert max_diff(got.last_hidden_state[:, 1:], timm_model.head.norm(timm_maps[-1]).flatten(2).transpose(1, 2)) <= ATOL
    assert len(maps) == len(timm_maps) == 4
    for mine, theirs in zip(maps, timm_maps):
        assert max_diff(mine, theirs) <= ATOL


def test_every_meta_tensor_matters(tmp_path, meta_file):
    """Changing any one tensor of the checkpoint changes our output, which still equals timm's."""
    _, state = meta_file
    pixels = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        baseline = DINOv3ConvNextModel.from_pretrained(meta_file[0])(pixels).last_hidden_state
    keys = [key for key in state if not key.startswith("norms.")]  # norms.3 is the final norm once more
    timm_model = timm_convnext_from_meta(state)
    for key in keys:
        changed = dict(state)
        changed[key] = nudged(state[key])
        if key.startswith("norm."):
            changed[key.replace("norm.", "norms.3.")] = changed[key]
        torch.save(changed, tmp_path / "changed.pth")
        with torch.no_grad():
            got = DINOv3ConvNextModel.from_pretrained(tmp_path / "changed.pth")(pixels).last_hidden_state
            load_meta_into_timm_(timm_model, changed)
            timm_map = timm_model.forward_features(pixels)
        assert max_diff(got, baseline) > 1e-4, f"{key} does not change the output"
        assert max_diff(got[:, 1:], timm_model.head.norm(timm_map).flatten(2).transpose(1, 2)) <= ATOL, key


def test_every_parameter_matters(twins):
    _, ours, _ = twins
    pixels = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        baseline = ours(pixels).last_hidden_state
        for name, undo in perturbations(ours):
            assert max_diff(ours(pixels).last_hidden_state, baseline) > 1e-4, f"{name} does not change the output"
            undo()
        assert max_diff(ours(pixels).last_hidden_state, baseline) == 0


# --- checkpoints -------------------------------------------------------------------------------


def test_round_trip_through_transformers(twins, tmp_path):
    _, ours, _ = twins
    ours.save_pretrained(tmp_path / "model")
    backbone = DINOv3ConvNextBackbone.from_pretrained(tmp_path / "model", out_indices=[2, 4])
    backbone.save_pretrained(tmp_path / "backbone")
    pixels = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        expected = ours(pixels, output_hidden_states=True)
        theirs = HFModel.from_pretrained(tmp_path / "model").eval()(pixels)
        their_maps = HFBackbone.from_pretrained(tmp_path / "backbone").eval()(pixels).feature_maps
        again = DINOv3ConvNextModel.from_pretrained(tmp_path / "model")(pixels)
    assert max_diff(theirs.last_hidden_state, expected.last_hidden_state) <= ATOL
    assert max_diff(again.last_hidden_state, expected.last_hidden_state) == 0
    assert max_diff(their_maps[0], expected.hidden_states[2]) <= ATOL
    assert max_diff(their_maps[1], expected.hidden_states[4]) <= ATOL
    assert json.loads((tmp_path / "backbone" / "config.json").read_text())["out_features"] == ["stage2", "stage4"]


def test_transformers_in_memory_keys_load(twins, tmp_path):
    """transformers 5.x names its modules `model.stages...`; files with those keys load too."""
    reference, ours, folder = twins
    state = reference.state_dict()
    assert any(key.startswith("model.stages.") for key in state)
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text((folder / "config.json").read_text())
    pixels = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert max_diff(DINOv3ConvNextModel.from_pretrained(tmp_path)(pixels)[0], ours(pixels)[0]) == 0


def test_transformers_backbone_checkpoint_loads_into_our_backbone(tmp_path):
    reference = hf_convnext(seed=5, backbone=True, out_indices=[1, 3])
    reference.save_pretrained(tmp_path)
    ours = DINOv3ConvNextBackbone.from_pretrained(tmp_path)
    pixels = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        for mine, theirs in zip(ours(pixels).feature_maps, reference(pixels).feature_maps):
            assert max_diff(mine, theirs) <= ATOL
    with pytest.raises(CheckpointError, match=r"missing tensors \[norm.bias, norm.weight\]"):
        DINOv3ConvNextModel.from_pretrained(tmp_path)  # a backbone checkpoint has no final norm


def test_meta_checkpoint_round_trip(meta_file, tmp_path):
    path, state = meta_file
    ours = DINOv3ConvNextModel.from_pretrained(path)
    assert ours.config.extra["dinov3_pretrain_dataset"] == "lvd1689m"
    assert ours.config.hidden_sizes == TINY["hidden_sizes"] and ours.config.depths == TINY["depths"]
    written = torch.load(save_meta_checkpoint(ours, tmp_path / "again.pth"), weights_only=True)
    assert sorted(written) == sorted(state)
    assert all(torch.equal(written[key], state[key]) for key in state)


@pytest.mark.parametrize("name", sorted(CONVNEXT_VARIANTS))
def test_variant_is_inferred_from_meta_tensor_shapes(name):
    """Full-size shapes without the memory: every tensor is a broadcast view of one zero."""
    layout = LAYOUTS[f"dinov3_convnext_{name}"]
    tensors = {}
    for pattern, shape in layout["keys"].items():
        stage = pattern.split(".")[1]
        for index in range(layout["repeats"].get(f"stages.{stage}", 1)) if ".N." in pattern else [None]:
            tensors[pattern.replace(".N.", f".{index}.")] = torch.zeros(1).expand(shape)
    config = infer_convnext_config(TensorFile("memory", tensors, tensors.__getitem__), f"dinov3_convnext_{name}.pth")
    assert config.extra["dinov3_variant"] == f"convnext_{name}"
    assert config.to_dict() == {
        **DINOv3ConvNextConfig.from_preset(name).to_dict(),
        "architectures": ["DINOv3ConvNextModel"],
        "dinov3_variant": f"convnext_{name}",
    }


def test_wrong_family_is_refused(meta_file, tmp_path):
    torch.save(meta_vit_state_dict("vits16"), tmp_path / "vit.pth")
    with pytest.raises(CheckpointError, match="holds a dinov3_vit model, not dinov3_convnext"):
        DINOv3ConvNextModel.from_pretrained(tmp_path / "vit.pth")
    with pytest.raises(CheckpointError, match="holds a dinov3_convnext model, not dinov3_vit"):
        DINOv3ViTModel.from_pretrained(meta_file[0])


def test_bad_checkpoints_are_explained(meta_file, twins, tmp_path):
    _, state = meta_file
    missing = {k: v for k, v in state.items() if k != "stages.2.1.pwconv1.weight"}
    torch.save(missing, tmp_path / "missing.pth")
    with pytest.raises(CheckpointError, match=r"missing tensors \[stages.2.blocks.1.pwconv1.weight\]"):
        DINOv3ConvNextModel.from_pretrained(tmp_path / "missing.pth")
    extra = {**state, "stages.0.0.grn.gamma": torch.ones(8)}
    torch.save(extra, tmp_path / "extra.pth")
    with pytest.raises(CheckpointError, match=r"unexpected tensors \[stages.0.0.grn.gamma\]"):
        DINOv3ConvNextModel.from_pretrained(tmp_path / "extra.pth")
    torch.save({**state, "stages.1.0.gamma": torch.ones(5)}, tmp_path / "shape.pth")
    with pytest.raises(CheckpointError, match=r"wrong shape \[stages.1.blocks.0.gamma: checkpoint \(5,\) vs model \(16,\)"):
        DINOv3ConvNextModel.from_pretrained(tmp_path / "shape.pth")
    data = meta_file[0].read_bytes()
    (tmp_path / "truncated.pth").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        DINOv3ConvNextModel.from_pretrained(tmp_path / "truncated.pth")
    _, _, folder = twins
    for name in ("config.json", "model.safetensors"):
        (tmp_path / "hf" / name).parent.mkdir(exist_ok=True)
        (tmp_path / "hf" / name).write_bytes((folder / name).read_bytes())
    weights = (tmp_path / "hf" / "model.safetensors").read_bytes()
    (tmp_path / "hf" / "model.safetensors").write_bytes(weights[: len(weights) - 1000])
    with pytest.raises(CheckpointError, match="model.safetensors"):
        DINOv3ConvNextModel.from_pretrained(tmp_path / "hf")


def test_bf16_loading(meta_file):
    path, _ = meta_file
    full = DINOv3ConvNextModel.from_pretrained(path)
    half = DINOv3ConvNextModel.from_pretrained(path, dtype=torch.bfloat16)
    assert half.dtype == torch.bfloat16
    pixels = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert max_diff(half(pixels).pooler_output.float(), full(pixels).pooler_output) < 0.1


# --- training and inputs -----------------------------------------------------------------------


def test_gradients_reach_every_parameter():
    torch.manual_seed(0)
    model = DINOv3ConvNextModel(DINOv3ConvNextConfig(**TINY, drop_path_rate=0.2, layer_scale_init_value=0.5)).train()
    model(torch.randn(4, 3, 64, 64)).last_hidden_state.square().mean().backward()
    for name, param in model.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name


def test_drop_path_is_identity_in_eval_and_random_in_training():
    torch.manual_seed(0)
    model = DINOv3ConvNextModel(DINOv3ConvNextConfig(**TINY, drop_path_rate=0.5, layer_scale_init_value=0.5))
    pixels = torch.randn(4, 3, 64, 64)
    with torch.no_grad():
        model.eval()
        assert max_diff(model(pixels)[0], model(pixels)[0]) == 0
        model.train()
        assert max_diff(model(pixels)[0], model(pixels)[0]) > 1e-3


def test_inference_fast_path_matches_the_autograd_path(twins):
    _, ours, _ = twins
    pixels = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        fast = ours(pixels).last_hidden_state
    assert max_diff(ours(pixels).last_hidden_state.detach(), fast) <= ATOL


def test_gradient_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    model = DINOv3ConvNextModel(DINOv3ConvNextConfig(**TINY, layer_scale_init_value=0.5)).train()
    pixels = torch.randn(2, 3, 64, 64)
    gradients = []
    for enabled in (False, True):
        model.zero_grad()
        model.gradient_checkpointing_enable() if enabled else model.gradient_checkpointing_disable()
        model(pixels).pooler_output.square().sum().backward()
        gradients.append([p.grad.clone() for p in model.parameters()])
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(*gradients))


def test_bad_input_shapes_are_explained(twins):
    _, ours, _ = twins
    with pytest.raises(ValueError, match=r"pixel_values must be \[batch, 3, height, width\]"):
        ours(torch.randn(1, 1, 64, 64))
    with pytest.raises(ValueError, match="smaller than the model's stride of 32 px"):
        ours(torch.randn(1, 3, 64, 20))


# --- the module contract: hooks, adapters, swapped modules; empty batches ---------------------------


def tiny_convnext(cls=DINOv3ConvNextModel, **config):
    from oracles.random_weights import randomize_

    torch.manual_seed(0)
    return randomize_(cls(DINOv3ConvNextConfig(**{**TINY, **config})), seed=0).eval()


@pytest.mark.parametrize("path", ["fp32-inference", "bf16-inference", "train"])
def test_forward_hooks_fire_on_every_linear_and_conv(path):
    model = tiny_convnext()
    calls = {}
    for name, module in model.named_modules():
        if isinstance(module, (torch.nn.Linear, torch.nn.Conv2d)):
            calls[name] = 0
            module.register_forward_hook(lambda *args, name=name: calls.__setitem__(name, calls[name] + 1))
    assert len(calls) == 4 + 3 * sum(TINY["depths"])  # the downsampling convs; dwconv, pwconv1, pwconv2 per block
    pixels = torch.randn(2, 3, 64, 64)
    if path == "train":
        model.train()(pixels).pooler_output.sum().backward()
    else:
        with torch.inference_mode():
            model.to(torch.bfloat16)(pixels.bfloat16()) if path == "bf16-inference" else model(pixels)
    assert set(calls.values()) == {1}, calls


@pytest.mark.parametrize("where", ["pwconv1", "act", "pwconv2"])
def test_a_swapped_module_takes_effect(where):
    model = tiny_convnext()
    pixels = torch.randn(1, 3, 64, 64)
    with torch.inference_mode():
        before = model(pixels).last_hidden_state
        block = model.stages[3].blocks[0]
        inner = getattr(block, where)
        setattr(block, where, torch.nn.Sequential(inner, torch.nn.Hardtanh(-0.1, 0.1)))
        assert max_diff(model(pixels).last_hidden_state, before) > 1e-3


def test_peft_lora_on_pwconv1_changes_outputs_and_trains():
    peft = pytest.importorskip("peft")
    model = tiny_convnext()
    pixels, target = torch.randn(4, 3, 64, 64), torch.randn(4, 32)
    with torch.no_grad():
        before = model(pixels).pooler_output
    config = peft.LoraConfig(r=4, target_modules=["pwconv1"], init_lora_weights=False)
    model = peft.inject_adapter_in_model(config, model)
    adapters = {n: p for n, p in model.named_parameters() if "lora_" in n}
    assert len(adapters) == 2 * sum(TINY["depths"])
    for name, param in model.named_parameters():
        param.requires_grad_(name in adapters)
    with torch.inference_mode():
        assert max_diff(model(pixels).pooler_output, before) > 1e-3
    optimizer = torch.optim.AdamW(adapters.values(), lr=1e-2)
    model.train()
    losses = []
    for _ in range(6):
        loss = (model(pixels).pooler_output - target).square().mean()
        optimizer.zero_grad()
        loss.backward()
        if not losses:
            assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in adapters.values())
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]


@pytest.mark.parametrize("mode", ["inference", "no-grad", "train"])
def test_an_empty_batch_gives_empty_outputs_of_the_right_shapes(mode):
    model = tiny_convnext()
    backbone = tiny_convnext(DINOv3ConvNextBackbone, out_indices=[1, 4])
    empty = torch.randn(0, 3, 64, 96)
    if mode == "train":
        model.train(), backbone.train()
    contexts = {"inference": torch.inference_mode, "no-grad": torch.no_grad, "train": torch.enable_grad}
    with contexts[mode]():
        output = model(empty, output_hidden_states=True)
        layers = model.get_intermediate_layers(empty, n=2, reshape=True, return_class_token=True)
        maps = backbone(empty).feature_maps
    assert output.last_hidden_state.shape == (0, 1 + 2 * 3, 32) and output.pooler_output.shape == (0, 32)
    stages = [(0, 8, 16, 24), (0, 16, 8, 12), (0, 24, 4, 6), (0, 32, 2, 3)]
    assert [tuple(h.shape) for h in output.hidden_states[1:]] == stages
    assert [(p.shape, c.shape) for p, c in layers] == [((0, 24, 4, 6), (0, 24)), ((0, 32, 2, 3), (0, 32))]
    assert [m.shape for m in maps] == [(0, 8, 16, 24), (0, 32, 2, 3)]
