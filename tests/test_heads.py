"""Meta's linear ImageNet-1k classifier read from Meta's files onto our backbone: parity with a twin of
Meta's head code on random weights (a ViT-7B layout at tiny width), every parameter matters, the labels,
`dinov3kit classify`, and heads of another backbone refused."""

from pathlib import Path

import pytest
import torch

from dinov3kit.cli import main
from dinov3kit.models.heads import imagenet1k_labels
from dinov3kit.tools.heads import HeadMismatchError, classify_images, load_linear_classifier
from oracles.heads_twin import MetaLinearClassifierTwin, meta_linear_head_state
from oracles.meta_twin import meta_vit_state_dict, timm_vit_from_meta
from oracles.random_weights import perturbations

PHOTOS = Path(__file__).resolve().parents[1] / "examples" / "photos"


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models run faster on one thread than on two cores shared with other test processes."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


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
