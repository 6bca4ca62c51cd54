"""dino.txt model: parity with an independent twin of Meta's DINOTxt on Meta-layout random weights
(image features, text features, patch-text similarities), a mutation check, loading and saving."""

from __future__ import annotations

import json

import pytest
import torch

from dinov3kit import CheckpointError
from dinov3kit.models.dinotxt import DINOv3TextConfig, DINOv3TextModel, swiglu_hidden
from dinov3kit.text import default_tokenizer
from dinov3kit.weights.dinotxt import META_RULES, meta_to_ours
from oracles.dinotxt_twin import DinoTxtTwin, meta_dinotxt_state_dict
from oracles.meta_twin import meta_vit_state_dict, timm_vit_from_meta
from oracles.random_weights import perturbations

ATOL = 1e-5
TEXTS = ["a photo of a cat", "", "a red car " * 40, "emoji 🐱🚗 naïve café", "“quotes” &amp; <b>", "日本語"]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    folder = tmp_path_factory.mktemp("dinotxt")
    backbone = meta_vit_state_dict("vitl16", bf16_periods=False, seed=1)  # ViT-L/16 layout, tiny widths
    head = meta_dinotxt_state_dict(text_dim=128, seed=2)
    torch.save(backbone, folder / "dinov3_vitl16_pretrain_lvd1689m-00000000.pth")
    torch.save(head, folder / "dinov3_vitl16_dinotxt_vision_head_and_text_encoder-00000000.pth")
    return folder, backbone, head


@pytest.fixture(scope="module")
def model(checkpoints) -> DINOv3TextModel:
    folder, _, _ = checkpoints
    return DINOv3TextModel.from_pretrained(
        folder / "dinov3_vitl16_dinotxt_vision_head_and_text_encoder-00000000.pth",
        backbone=folder / "dinov3_vitl16_pretrain_lvd1689m-00000000.pth",
        text_num_attention_heads=2,
    )


@pytest.fixture(scope="module")
def twin(checkpoints) -> DinoTxtTwin:
    _, backbone, head = checkpoints
    timm = timm_vit_from_meta(backbone, num_heads=2)
    return DinoTxtTwin(head, timm.forward_features, vision_heads=2, text_heads=2, prefix=5)


@pytest.fixture(scope="module")
def inputs():
    pixels = torch.randn(2, 3, 64, 80, generator=torch.Generator().manual_seed(3))
    return pixels, default_tokenizer()(TEXTS)


def outputs(model: DINOv3TextModel, pixels, ids) -> dict[str, torch.Tensor]:
    with torch.no_grad():
        return {
            "image": model.get_image_features(pixels),
            "text": model.get_text_features(ids),
            "similarity": model.get_patch_text_similarity(pixels, ids),
        }


def test_parity_with_meta_twin(model, twin, inputs):
    pixels, ids = inputs
    ours = outputs(model, pixels, ids)
    with torch.no_grad():
        image, patches = twin.encode_image_with_patch_tokens(pixels)
        expected = {"image": image, "text": twin.encode_text(ids), "similarity": twin.patch_similarity(pixels, ids)}
        head_patches = model.get_patch_features(pixels)
    assert ours["image"].shape == (2, 128) and ours["text"].shape == (len(TEXTS), 128)
    assert ours["similarity"].shape == (2, len(TEXTS), 4, 5)
    for name in expected:
        assert (ours[name] - expected[name]).abs().max() <= ATOL, name
        assert expected[name].abs().max() > 0.1, name  # the comparison is not between near-zeros
    assert (head_patches.flatten(1, 2) - patches).abs().max() <= ATOL


def test_short_batches_skip_the_padding_exactly(model, twin, inputs):
    """Texts shorter than the context run only up to their last end token; the twin runs all 77 columns."""
    short = inputs[1][[0, 1, 3]]
    with torch.no_grad():
        assert (model.get_text_features(short) - twin.encode_text(short)).abs().max() <= ATOL
        assert (model.get_text_features(short[1:2]) - twin.encode_text(short[1:2])).abs().max() <= ATOL  # ""


@pytest.fixture
def one_thread():
    """Tiny forwards in a loop: one thread avoids OpenMP hand-offs that dominate them on a loaded box."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_every_parameter_matters(model, inputs, one_thread):
    """Perturbing any one tensor of the vision head, the text encoder or the logit scale changes the CLIP
    logits (the backbone's own tensors are checked in test_vit / test_weights)."""
    pixels, ids = inputs[0][:1], inputs[1][:2]
    with torch.no_grad():
        reference = model(ids, pixels).logits_per_image
    dead = []
    for name, undo in perturbations(model, seed=4):
        if not name.startswith("backbone."):
            with torch.no_grad():
                if torch.allclose(model(ids, pixels).logits_per_image, reference, atol=1e-6):
                    dead.append(name)
        undo()
    assert not dead, f"outputs ignore {dead}"


def test_clip_logits(model, inputs):
    pixels, ids = inputs
    with torch.no_grad():
        out = model(input_ids=ids, pixel_values=pixels)
        image = model.get_image_features(pixels, normalize=True)
        text = model.get_text_features(ids, normalize=True)
    assert torch.allclose(out.logits_per_image, model.logit_scale.exp() * image @ text.T, atol=1e-5)
    assert torch.equal(out.logits_per_text, out.logits_per_image.T)
    assert torch.allclose(out.image_embeds.norm(dim=-1), torch.ones(2))


def test_backbone_patch_source(model, inputs):
    pixels, _ = inputs
    with torch.no_grad():
        backbone = model.get_patch_features(pixels, source="backbone")
        expected = model.backbone(pixels).last_hidden_state[:, 5:].unflatten(1, (4, 5))
    assert torch.equal(backbone, expected)
    with pytest.raises(ValueError, match="source"):
        model.get_patch_features(pixels, source="cls")


def test_save_and_reload(model, inputs, tmp_path):
    pixels, ids = inputs
    model.save_pretrained(tmp_path / "saved")
    config = json.loads((tmp_path / "saved" / "config.json").read_text())
    assert config["model_type"] == "dinov3_dinotxt" and config["vision_config"]["hidden_size"] == 64
    reloaded = DINOv3TextModel.from_pretrained(tmp_path / "saved")
    assert reloaded.config.text_num_attention_heads == 2
    for name, value in outputs(model, pixels, ids).items():
        assert torch.equal(value, outputs(reloaded, pixels, ids)[name]), name
    half = DINOv3TextModel.from_pretrained(tmp_path / "saved", dtype="bfloat16")
    assert half.dtype == torch.bfloat16


def test_meta_checkpoint_needs_backbone(checkpoints):
    folder, _, _ = checkpoints
    with pytest.raises(ValueError, match="pass backbone="):
        DINOv3TextModel.from_pretrained(folder / "dinov3_vitl16_dinotxt_vision_head_and_text_encoder-00000000.pth")


def test_meta_key_table_rejects_strangers_and_gaps(checkpoints):
    _, _, head = checkpoints
    ours = meta_to_ours(head, "x.pth")
    assert len(ours) == len(head) - 2 * 2  # w1 and w2 of each head block fuse into fc1 (weight and bias)
    with pytest.raises(CheckpointError, match="unexpected tensors"):
        meta_to_ours({**head, "surprise.weight": torch.zeros(1)}, "x.pth")
    gap = {k: v for k, v in head.items() if k != "visual_model.head.blocks.1.mlp.w2.bias"}
    with pytest.raises(CheckpointError, match="missing"):
        meta_to_ours(gap, "x.pth")
    assert all("{n}" in ours_key or "{n}" not in theirs[0] for ours_key, theirs in META_RULES)


def test_text_input_checks(model):
    with pytest.raises(ValueError, match="at most 77"):
        model.get_text_features(torch.zeros(1, 78, dtype=torch.long))
    with pytest.raises(ValueError, match="texts, length"):
        model.get_text_features(torch.zeros(77, dtype=torch.long))


def test_released_configuration():
    """The defaults are Meta's `dinov3_vitl16_dinotxt_tet1280d20h24l` (built on the meta device: no memory)."""
    config = DINOv3TextConfig()
    with torch.device("meta"):
        model = DINOv3TextModel(config)
    assert swiglu_hidden(1024, 4.0) == 2752
    assert model.vision_head.blocks[0].mlp.fc1.weight.shape == (2 * 2752, 1024)
    assert model.vision_projection is None and len(model.vision_head.blocks) == 2
    assert model.text_model.token_embedding.weight.shape == (49408, 1280)
    assert model.text_model.position_embedding.shape == (77, 1280) and len(model.text_model.blocks) == 24
    assert model.text_projection.weight.shape == (2048, 1280)
    assert config.patch_dim == 1024
    with pytest.raises(ValueError, match="class token, the patch tokens"):
        DINOv3TextConfig(vision_use_class_token=False, vision_use_patch_tokens=False)
