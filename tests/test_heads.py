"""Meta's released heads read from Meta's files onto our backbone: the linear ImageNet-1k classifier and the
DPT depth heads (ViT-7B SYNTHMIX, CHMv2), in parity with twins of Meta's head code on random weights at
reduced widths, every parameter matters, `dinov3kit classify` / `depth`, heads of another backbone refused."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dinov3kit.cli import main
from dinov3kit.models.heads import imagenet1k_labels
from dinov3kit.tools.heads import (
    HeadMismatchError,
    classify_images,
    estimate_depth,
    load_depth_estimator,
    load_linear_classifier,
)
from oracles.heads_twin import (
    MetaDeptherTwin,
    MetaDPTHeadTwin,
    MetaLinearClassifierTwin,
    meta_linear_head_state,
    randomize_dpt_state_,
)
from oracles.meta_twin import meta_vit_state_dict, timm_vit_from_meta
from oracles.random_weights import perturbations

PHOTOS = Path(__file__).resolve().parents[1] / "examples" / "photos"


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: see conftest.one_thread


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A tiny ViT-7B-layout backbone (width 64, 4 storage tokens) and a linear head, as Meta's .pth files."""
    root = tmp_path_factory.mktemp("heads")
    backbone = meta_vit_state_dict("vit7b16", bf16_periods=False, seed=1)
    head = meta_linear_head_state(2 * 64, seed=2)
    torch.save(backbone, root / "dinov3_vit7b16_pretrain_lvd1689m-tiny.pth")
    torch.save(head, root / "dinov3_vit7b16_imagenet1k_linear_head-tiny.pth")
    return {"backbone": root / "dinov3_vit7b16_pretrain_lvd1689m-tiny.pth", "head": root / "dinov3_vit7b16_imagenet1k_linear_head-tiny.pth",
            "backbone_state": backbone, "head_state": head, "root": root}


def test_linear_classifier_matches_metas_head_code(files):
    ours = load_linear_classifier(files["backbone"], files["head"])
    twin = MetaLinearClassifierTwin(timm_vit_from_meta(files["backbone_state"], num_heads=2), files["head_state"]).eval()
    pixels = torch.randn(2, 3, 48, 80, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = twin(pixels)
        logits = ours(pixels).logits
        assert logits.shape == (2, 1000)
        assert (logits - expected).abs().max() <= 1e-5
        for name, undo in perturbations(ours, seed=3):  # the head's parameters and the norm it reads change the logits
            if not name.startswith(("classifier.", "backbone.norm.", "backbone.blocks.1.")):
                undo()  # the rest of the backbone is covered by tests/test_weights.py (mask_token is unused here)
                continue
            assert (ours(pixels).logits - expected).abs().max() > 1e-4, f"{name} is ignored"
            undo()
        assert (ours(pixels).logits - expected).abs().max() <= 1e-5


def test_imagenet_labels_and_classify_command(files, capsys):
    labels = imagenet1k_labels()
    assert len(labels) == 1000 and labels[0] == ("n01440764", "tench, Tinca tinca") and labels[999][1].startswith("toilet tissue")
    classifier = load_linear_classifier(files["backbone"], files["head"])
    assert classifier.id2label[0] == "tench"
    results = classify_images(classifier, [PHOTOS / "cat.jpg", PHOTOS / "coffee.jpg"], top_k=3, resolution=64)
    assert [len(r.top) for r in results] == [3, 3] and results[0].top[0][2] >= results[0].top[1][2]
    assert 0 < sum(p for _, _, p in results[0].top) <= 1.0
    assert main(["classify", str(PHOTOS / "cat.jpg"), "--head", str(files["head"]), "--model", str(files["backbone"]),
                 "-k", "2", "--resolution", "64", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "cat.jpg" in out and results[0].top[0][1] in out


def test_head_of_another_backbone_is_refused(files, tmp_path, capsys):
    wide = meta_linear_head_state(2 * 96, seed=4)
    torch.save(wide, tmp_path / "wide.pth")
    with pytest.raises(HeadMismatchError, match=r"width-96 backbone \(another model\), but the model has width 64"):
        load_linear_classifier(files["backbone"], tmp_path / "wide.pth")
    torch.save({"weight": torch.zeros(1000, 2 * 4096), "bias": torch.zeros(1000)}, tmp_path / "7b.pth")
    with pytest.raises(HeadMismatchError, match=r"dinov3_vit7b16.*goes with dinov3_vit7b16"):
        load_linear_classifier(files["backbone"], tmp_path / "7b.pth")
    torch.save({"decoder.weight": torch.zeros(3, 3)}, tmp_path / "other.pth")
    with pytest.raises(HeadMismatchError, match="unexpected tensor 'decoder.weight'"):
        load_linear_classifier(files["backbone"], tmp_path / "other.pth")
    assert main(["classify", str(PHOTOS / "cat.jpg"), "--head", str(tmp_path / "wide.pth"), "--model", str(files["backbone"])]) == 2
    assert "dinov3kit classify: error:" in capsys.readouterr().err


# --- DPT depth heads ------------------------------------------------------------------------------

DPT_CASES = {
    # Meta's settings of each released head, at reduced widths: (backbone layout, twin arguments, depth decoding)
    "dinov3_vit7b16_dd": ("vit7b16", dict(channels=16, post_process_channels=[24, 24, 24, 24], readout_type="ignore",
                                          n_output_channels=12, n_hidden_channels=8, use_batchnorm=True, use_bias=False,
                                          projection_after_fusion=True), (0.001, 100.0, "linear", "linear")),
    "dinov3_vitl16_chmv2": ("vitl16", dict(channels=16, post_process_channels=[8, 12, 16, 20], readout_type="project",
                                           n_output_channels=12, n_hidden_channels=8, use_batchnorm=False, use_bias=True,
                                           projection_after_fusion=False), (0.001, 96.0, "chmv2_mixlog", "chmv2_mixlog")),
}


def dpt_files(root: Path, preset: str, seed: int = 0):
    layout, arguments, depth_args = DPT_CASES[preset]
    backbone = meta_vit_state_dict(layout, depth=4, bf16_periods=False, seed=seed)
    head = MetaDPTHeadTwin(in_channels=[64] * 4, **arguments)
    state = randomize_dpt_state_(head.state_dict(), seed=seed + 1)
    torch.save(backbone, root / f"{preset}_backbone.pth")
    torch.save(state, root / f"{preset}_head.pth")
    head.load_state_dict(state, strict=True)
    twin = MetaDeptherTwin(timm_vit_from_meta(backbone, num_heads=2), head.eval(), (0, 1, 2, 3), *depth_args).eval()
    return root / f"{preset}_backbone.pth", root / f"{preset}_head.pth", twin


@pytest.mark.parametrize("preset", sorted(DPT_CASES))
def test_dpt_depth_heads_match_metas_head_code(preset, tmp_path):
    backbone, head, twin = dpt_files(tmp_path, preset)
    ours = load_depth_estimator(backbone, head, out_layers=(0, 1, 2, 3))
    assert ours.config.bins_strategy == DPT_CASES[preset][2][2]  # the preset was recognised from the file
    pixels = torch.randn(2, 3, 64, 96, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = twin(pixels)[:, 0]
        depth = ours(pixels).predicted_depth
        assert depth.shape == (2, 64, 96)
        scale = expected.abs().max()  # depths reach ~100 m: compared relative to the largest
        assert (depth - expected).abs().max() <= 1e-5 * scale
        layers = ours.backbone.get_intermediate_layers(pixels, n=[0, 1, 2, 3], reshape=True, return_class_token=True)
        assert (ours.decoder(list(layers)) - twin.decoder(list(layers))).abs().max() <= 1e-5  # the head's logits
        for name, undo in perturbations(ours.decoder, seed=5):  # every head parameter changes the depth
            assert (ours(pixels).predicted_depth - expected).abs().max() > 1e-4 * scale, f"{name} is ignored"
            undo()


def test_depth_of_any_size_and_the_depth_command(tmp_path, capsys):
    backbone, head, _ = dpt_files(tmp_path, "dinov3_vitl16_chmv2")
    estimator = load_depth_estimator(backbone, head, out_layers=(0, 1, 2, 3))
    odd = torch.randn(1, 3, 50, 70)
    with torch.no_grad():
        assert estimator(odd).predicted_depth.shape == (1, 50, 70)  # centred padding cropped back
        depth = estimate_depth(estimator, PHOTOS / "cat.jpg", resolution=64)
    assert depth.shape == (Image.open(PHOTOS / "cat.jpg").height, Image.open(PHOTOS / "cat.jpg").width) and bool((depth > 0).all())
    small = Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 56, 3), dtype=np.uint8))
    with torch.no_grad():  # CHMv2 as Meta's notebook: the image's own size, the notebook's normalisation
        native = estimate_depth(estimator, small)
        mean, std = torch.tensor([0.420, 0.411, 0.296]), torch.tensor([0.213, 0.156, 0.143])
        pixels = (torch.from_numpy(np.asarray(small)).permute(2, 0, 1).float() / 255 - mean[:, None, None]) / std[:, None, None]
        torch.testing.assert_close(native, estimator(pixels[None]).predicted_depth[0], rtol=1e-5, atol=1e-4)
    out = tmp_path / "depth.png"
    assert main(["depth", str(PHOTOS / "cat.jpg"), "--head", str(head), "--model", str(backbone), "-o", str(out),
                 "--resolution", "64", "--out-layers", "0,1,2,3", "--device", "cpu", "--save-raw"]) == 0
    picture = Image.open(out)
    assert picture.size == Image.open(PHOTOS / "cat.jpg").size and picture.mode == "RGB"
    assert len(np.unique(np.asarray(picture).reshape(-1, 3), axis=0)) > 20  # a colour map, not a constant
    raw = np.load(tmp_path / "depth.npy")
    assert raw.shape == depth.shape[:2]


def test_dpt_head_of_another_backbone_is_refused(tmp_path, capsys):
    backbone, head, _ = dpt_files(tmp_path, "dinov3_vit7b16_dd")
    with pytest.raises(HeadMismatchError, match=r"reads blocks \[9, 19, 29, 39\]\), but the model has width 64 and 4 blocks"):
        load_depth_estimator(backbone, head)
    other = meta_vit_state_dict("vitl16", dim=96, head_dim=48, depth=4, bf16_periods=False)
    torch.save(other, tmp_path / "wide.pth")
    with pytest.raises(HeadMismatchError, match=r"width 64, reads .*but the model has width 96"):
        load_depth_estimator(tmp_path / "wide.pth", head, out_layers=(0, 1, 2, 3))
    assert main(["depth", str(PHOTOS / "cat.jpg"), "--head", str(head), "--model", str(backbone), "-o", str(tmp_path / "d.png")]) == 2
    assert "dinov3kit depth: error:" in capsys.readouterr().err and not (tmp_path / "d.png").exists()
