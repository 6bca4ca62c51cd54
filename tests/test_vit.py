"""DINOv3 ViT model and backbone: parity with transformers on random weights, every parameter used,
training behaviour."""

import pytest
import torch
from transformers import DINOv3ViTBackbone as HFBackbone
from transformers import DINOv3ViTConfig as HFConfig

from dinov3kit import DINOv3ViTBackbone, DINOv3ViTConfig, DINOv3ViTModel
from oracles.hf_twin import save_hf_vit
from oracles.random_weights import perturbations, randomize_

ATOL = 1e-5
CONFIGS = {
    "plain-hd64-0reg": dict(hidden_size=128, num_attention_heads=2, intermediate_size=256),
    "gated-silu-4reg": dict(
        hidden_size=128, num_attention_heads=2, intermediate_size=192, use_gated_mlp=True, hidden_act="silu",
        num_register_tokens=4,
    ),
    "7b-style-no-qv-bias-hd128": dict(
        hidden_size=256, num_attention_heads=2, intermediate_size=256, use_gated_mlp=True, hidden_act="silu",
        query_bias=False, value_bias=False, num_register_tokens=4,
    ),
    "plain-hd128-4reg": dict(hidden_size=256, num_attention_heads=2, intermediate_size=512, num_register_tokens=4),
}  # fmt: skip
SIZES = {"square": (64, 64), "non-square": (48, 80), "non-multiple-of-16": (70, 50)}


def max_diff(a, b) -> float:
    return (a - b).abs().max().item()


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def twins(request, tmp_path_factory):
    folder = tmp_path_factory.mktemp(request.param)
    reference, _ = save_hf_vit(folder, num_hidden_layers=3, **CONFIGS[request.param])
    return reference, DINOv3ViTModel.from_pretrained(folder), folder


@pytest.mark.parametrize("size", sorted(SIZES))
def test_model_matches_transformers(twins, size):
    reference, ours, _ = twins
    pixels = torch.randn(2, 3, *SIZES[size])
    with torch.no_grad():
        expected = reference(pixels, output_hidden_states=True, output_attentions=True)
        got = ours(pixels, output_hidden_states=True, output_attentions=True)
    assert got.last_hidden_state.shape == expected.last_hidden_state.shape
    assert max_diff(got.last_hidden_state, expected.last_hidden_state) <= ATOL
    assert max_diff(got.pooler_output, expected.pooler_output) <= ATOL
    assert len(got.hidden_states) == len(expected.hidden_states) == 4
    for mine, theirs in zip(got.hidden_states, expected.hidden_states):
        assert max_diff(mine, theirs) <= ATOL
    assert len(got.attentions) == len(expected.attentions) == 3
    for mine, theirs in zip(got.attentions, expected.attentions):
        assert max_diff(mine, theirs) <= ATOL


def test_sdpa_and_eager_agree(twins):
    _, ours, _ = twins
    pixels = torch.randn(2, 3, 48, 80)
    with torch.no_grad():
        sdpa = ours(pixels).last_hidden_state
        ours.set_attn_implementation("eager")
        eager = ours(pixels).last_hidden_state
        ours.set_attn_implementation("sdpa")
    assert max_diff(sdpa, eager) <= ATOL


def test_masked_positions_match_transformers(twins):
    reference, ours, _ = twins
    pixels = torch.randn(2, 3, 64, 48)
    masked = torch.rand(2, 12) > 0.5
    with torch.no_grad():
        expected = reference(pixels, bool_masked_pos=masked).last_hidden_state
        got = ours(pixels, bool_masked_pos=masked).last_hidden_state
        unmasked = ours(pixels).last_hidden_state
    assert max_diff(got, expected) <= ATOL
    assert max_diff(got, unmasked) > 1e-3


BACKBONE_OPTIONS = [
    dict(out_indices=[0, 1, 2, 3]),
    dict(out_indices=[1, 3], apply_layernorm=False),
    dict(out_features=["stage2"], reshape_hidden_states=False),
    dict(out_indices=[2, 3], return_class_token=True),
]


@pytest.mark.parametrize("options", BACKBONE_OPTIONS, ids=lambda o: "-".join(f"{k}={v}" for k, v in o.items()))
def test_backbone_matches_transformers(twins, options):
    reference, _, folder = twins
    hf_config = HFConfig.from_pretrained(folder, **options)
    hf_config.return_class_token = options.get("return_class_token", False)  # not a declared field there
    hf_backbone = HFBackbone.from_pretrained(folder, config=hf_config, attn_implementation="eager").eval()
    ours = DINOv3ViTBackbone.from_pretrained(folder, **options)
    pixels = torch.randn(2, 3, 70, 50)
    with torch.no_grad():
        expected, got = hf_backbone(pixels), ours(pixels)
    assert len(got.feature_maps) == len(expected.feature_maps) == len(hf_config.out_features)
    for mine, theirs in zip(got.feature_maps, expected.feature_maps):
        assert mine.shape == theirs.shape
        assert max_diff(mine, theirs) <= ATOL
    if options.get("return_class_token"):
        assert all(max_diff(a, b) <= ATOL for a, b in zip(got.cls_tokens, expected.cls_tokens))
    else:
        assert got.cls_tokens is None


def test_intermediate_layers_match_backbone(twins):
    _, ours, folder = twins
    backbone = DINOv3ViTBackbone.from_pretrained(folder, out_indices=[1, 2, 3])
    pixels = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        maps = ours.get_intermediate_layers(pixels, n=[0, 1, 2], reshape=True)
        last_two = ours.get_intermediate_layers(pixels, n=2, return_class_token=True)
        expected = backbone(pixels).feature_maps
    assert [m.shape for m in maps] == [(1, ours.config.hidden_size, 4, 6)] * 3
    assert all(torch.allclose(a, b, atol=ATOL) for a, b in zip(maps, expected))
    patches, cls = last_two[-1]
    assert torch.allclose(patches, expected[-1].flatten(2).transpose(1, 2), atol=ATOL)
    assert torch.allclose(cls, ours(pixels).pooler_output, atol=ATOL)


def test_output_unpacks_like_a_tuple(twins):
    _, ours, _ = twins
    with torch.no_grad():
        output = ours(torch.randn(1, 3, 32, 32))
        as_tuple = ours(torch.randn(1, 3, 32, 32), return_dict=False)
    last, pooled = output
    assert last is output.last_hidden_state and pooled is output["pooler_output"] and output[1] is pooled
    assert isinstance(as_tuple, tuple) and len(as_tuple) == 2


def test_every_parameter_matters(twins):
    """Perturbing any single tensor changes the output: none is ignored by the forward pass."""
    _, ours, _ = twins
    pixels = torch.randn(1, 3, 48, 64)
    masked = torch.zeros(1, 12, dtype=torch.bool)
    masked[0, 3] = True
    with torch.no_grad():
        baseline = ours(pixels, bool_masked_pos=masked).last_hidden_state
        unchanged = []
        for name, undo in perturbations(ours):
            if max_diff(ours(pixels, bool_masked_pos=masked).last_hidden_state, baseline) < 1e-4:
                unchanged.append(name)
            undo()
    assert not unchanged, f"parameters with no effect: {unchanged}"


def test_full_size_vit_s16_matches_transformers(tmp_path):
    reference, _ = save_hf_vit(
        tmp_path, hidden_size=384, intermediate_size=1536, num_hidden_layers=12, num_attention_heads=6,
        num_register_tokens=4, layerscale_value=1e-5,
    )  # fmt: skip
    ours = DINOv3ViTModel.from_pretrained(tmp_path)
    assert ours.num_parameters() == sum(p.numel() for p in reference.parameters())
    pixels = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        expected, got = reference(pixels), ours(pixels)
    assert max_diff(got.last_hidden_state, expected.last_hidden_state) <= ATOL
    assert max_diff(got.pooler_output, expected.pooler_output) <= ATOL


# --- training -----------------------------------------------------------------------------------


def tiny(**overrides) -> DINOv3ViTModel:
    torch.manual_seed(0)
    config = DINOv3ViTConfig(
        hidden_size=64, num_attention_heads=2, intermediate_size=128, num_hidden_layers=2, num_register_tokens=2,
        **overrides,
    )  # fmt: skip
    return randomize_(DINOv3ViTModel(config))


def test_rope_augmentation_only_in_training():
    model = tiny(pos_embed_shift=0.1, pos_embed_jitter=1.2, pos_embed_rescale=2.0)
    pixels = torch.randn(1, 3, 48, 48)
    with torch.no_grad():
        model.eval()
        first, second = model(pixels).last_hidden_state, model(pixels).last_hidden_state
        model.train()
        augmented = model(pixels).last_hidden_state
    assert torch.equal(first, second)
    assert max_diff(first, augmented) > 1e-3


def test_gradients_reach_every_parameter():
    model = tiny().train()
    pixels = torch.randn(2, 3, 32, 48)
    masked = torch.zeros(2, 6, dtype=torch.bool)
    masked[:, 0] = True
    output = model(pixels, bool_masked_pos=masked)
    (output.last_hidden_state.square().mean() + output.pooler_output.sum()).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing


def test_optimizer_steps_reduce_a_loss():
    model = tiny(drop_path_rate=0.1).train()
    pixels, target = torch.randn(4, 3, 32, 32), torch.randn(4, 64)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(8):
        loss = (model(pixels).pooler_output - target).square().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] * 0.8


def test_gradient_checkpointing_gives_the_same_gradients():
    def gradients(checkpointing: bool):
        model = tiny(drop_path_rate=0.2).train()
        if checkpointing:
            model.gradient_checkpointing_enable()
        torch.manual_seed(1)
        model(torch.ones(2, 3, 32, 32), bool_masked_pos=torch.eye(2, 4).bool()).last_hidden_state.sum().backward()
        return {n: p.grad.clone() for n, p in model.named_parameters()}

    plain, checkpointed = gradients(False), gradients(True)
    assert all(torch.allclose(plain[n], checkpointed[n], atol=1e-6) for n in plain)


def test_drop_path_is_identity_in_eval_and_random_in_training():
    model = tiny(drop_path_rate=0.5, pos_embed_rescale=None)
    pixels = torch.randn(8, 3, 32, 32)
    with torch.no_grad():
        model.eval()
        assert torch.equal(model(pixels).pooler_output, model(pixels).pooler_output)
        model.train()
        torch.manual_seed(0)
        assert max_diff(model(pixels).pooler_output, model(pixels).pooler_output) > 1e-3


def test_bad_input_shapes_are_explained():
    model = tiny().eval()
    with pytest.raises(ValueError, match="batch, 3, height, width"):
        model(torch.randn(3, 32, 32))
    with pytest.raises(ValueError, match="smaller than one"):
        model(torch.randn(1, 3, 8, 64))


# --- the module contract: hooks, adapters, swapped modules ----------------------------------------


def hooked_calls(model: torch.nn.Module) -> dict[str, int]:
    """A forward hook on every nn.Linear / nn.Conv2d; returns the live {module name: calls} count."""
    calls = {}
    for name, module in model.named_modules():
        if isinstance(module, (torch.nn.Linear, torch.nn.Conv2d)):
            calls[name] = 0
            module.register_forward_hook(lambda *args, name=name: calls.__setitem__(name, calls[name] + 1))
    return calls


@pytest.mark.parametrize("path", ["fp32-inference", "fp32-no-grad", "bf16-inference", "train"])
def test_forward_hooks_fire_on_every_linear_and_conv(path):
    model = tiny().eval()
    expected = model(torch.randn(2, 3, 32, 48)).last_hidden_state.detach()
    calls = hooked_calls(model)
    assert len(calls) == 1 + 4 * 2  # patch_embed.proj, then qkv, proj, fc1, fc2 per block
    pixels = torch.randn(2, 3, 32, 48, generator=torch.Generator().manual_seed(0))
    if path == "train":
        model.train()
        model(pixels).pooler_output.sum().backward()
    elif path == "bf16-inference":
        with torch.inference_mode():
            model.to(torch.bfloat16)(pixels.bfloat16())
    else:
        with torch.inference_mode() if path == "fp32-inference" else torch.no_grad():
            got = model(pixels)
        assert got.last_hidden_state.shape == expected.shape
    assert set(calls.values()) == {1}, calls


def test_a_hooked_module_sees_what_the_model_uses():
    """A forward hook that replaces a module's output changes the model's output (hooks are not bypassed)."""
    model = tiny().eval()
    pixels = torch.randn(1, 3, 32, 32)
    with torch.inference_mode():
        before = model(pixels).last_hidden_state
        model.blocks[1].mlp.fc1.register_forward_hook(lambda module, args, output: output * 0.5)
        after = model(pixels).last_hidden_state
    assert max_diff(before, after) > 1e-3


@pytest.mark.slow
def test_forward_hooks_fire_in_a_compiled_model():
    model = tiny().eval()
    calls = hooked_calls(model)
    model.compile(backend="eager", fullgraph=False)
    with torch.no_grad():
        model(torch.randn(1, 3, 32, 32))
    assert set(calls.values()) == {1}, calls


class Doubled(torch.nn.Module):
    """A module swapped in for another: twice the wrapped module's output."""

    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 2 * self.inner(x)


@pytest.mark.parametrize(
    "where", ["patch_embed.proj", "blocks.0.attn.qkv", "blocks.0.attn.proj", "blocks.1.mlp.fc1",
              "blocks.1.mlp.fc2", "blocks.0.mlp.act", "blocks.0.ls1", "blocks.1.ls2", "blocks.1.norm1"],
)  # fmt: skip
@pytest.mark.parametrize("mode", ["inference", "train"])
def test_a_swapped_module_takes_effect(where, mode):
    model = tiny()
    pixels = torch.randn(1, 3, 32, 32)

    def run() -> torch.Tensor:
        torch.manual_seed(0)  # the same RoPE augmentation in training
        if mode == "train":
            return model.train()(pixels).last_hidden_state.detach()
        with torch.inference_mode():
            return model.eval()(pixels).last_hidden_state

    before = run()
    parent, name = model.get_submodule(where.rpartition(".")[0]), where.rpartition(".")[2]
    setattr(parent, name, Doubled(getattr(parent, name)))
    assert max_diff(before, run()) > 1e-3, where


def test_a_plain_nn_linear_in_place_of_ours_gives_the_same_output():
    model = tiny().eval()
    pixels = torch.randn(2, 3, 32, 32)
    with torch.inference_mode():
        expected = model(pixels).last_hidden_state
    for block in model.blocks:
        for parent, name in ((block.attn, "qkv"), (block.attn, "proj"), (block.mlp, "fc1"), (block.mlp, "fc2")):
            ours = getattr(parent, name)
            plain = torch.nn.Linear(ours.in_features, ours.out_features, bias=ours.bias is not None)
            plain.load_state_dict(ours.state_dict())
            setattr(parent, name, plain)
    with torch.inference_mode():
        assert max_diff(model(pixels).last_hidden_state, expected) <= 1e-5


def test_peft_lora_on_qkv_and_fc1_changes_outputs_and_trains():
    peft = pytest.importorskip("peft")
    model = tiny().eval()
    pixels, target = torch.randn(4, 3, 32, 32), torch.randn(4, 64)
    with torch.no_grad():
        before = model(pixels).pooler_output
    config = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["qkv", "fc1"], init_lora_weights=False)
    model = peft.inject_adapter_in_model(config, model)
    adapters = {n: p for n, p in model.named_parameters() if "lora_" in n}
    assert len(adapters) == 2 * 2 * 2  # (A, B) x (qkv, fc1) x 2 blocks
    for name, param in model.named_parameters():
        param.requires_grad_(name in adapters)
    with torch.no_grad():
        assert max_diff(model(pixels).pooler_output, before) > 1e-3  # the adapters are used
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
    with torch.inference_mode():  # the inference fast paths use the adapters too
        model.eval()
        assert max_diff(model(pixels).pooler_output, before) > 1e-3


# --- empty batches ------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["inference", "no-grad", "train", "bf16"])
def test_an_empty_batch_gives_empty_outputs_of_the_right_shapes(mode):
    model = tiny().eval()
    empty = torch.randn(0, 3, 48, 32)
    contexts = {"inference": torch.inference_mode, "no-grad": torch.no_grad, "train": torch.enable_grad}
    if mode == "train":
        model.train()
    if mode == "bf16":
        model, empty = model.to(torch.bfloat16), empty.bfloat16()
    with contexts.get(mode, torch.inference_mode)():
        output = model(empty, output_hidden_states=True)
        layers = model.get_intermediate_layers(empty, n=[0, 1], reshape=True, return_class_token=True)
    assert output.last_hidden_state.shape == (0, 1 + 2 + 6, 64) and output.pooler_output.shape == (0, 64)
    assert [h.shape for h in output.hidden_states] == [(0, 9, 64)] * 3
    assert [(p.shape, c.shape) for p, c in layers] == [((0, 64, 3, 2), (0, 64))] * 2
    if mode == "train":
        output.last_hidden_state.sum().backward()


def test_an_empty_batch_through_the_backbone_and_packed_products():
    from dinov3kit.backend import packing

    torch.manual_seed(0)
    config = DINOv3ViTConfig(hidden_size=64, num_attention_heads=2, intermediate_size=128, num_hidden_layers=3,
                             num_register_tokens=1, out_indices=[1, 3], return_class_token=True)  # fmt: skip
    backbone = randomize_(DINOv3ViTBackbone(config)).eval()
    with torch.inference_mode():
        backbone(torch.randn(1, 3, 32, 32))  # one-row packs exist: the empty batch must not reuse them
        output = backbone(torch.randn(0, 3, 32, 32))
    assert [m.shape for m in output.feature_maps] == [(0, 64, 2, 2)] * 2
    assert [c.shape for c in output.cls_tokens] == [(0, 64)] * 2
    linears = [m for m in backbone.modules() if isinstance(m, torch.nn.Linear)]
    assert all(0 not in packing.packed_weights.row_counts(m.weight) for m in linears)
