"""Checkpoint loading and saving: transformers folders (single, sharded, 4.x/5.x keys), the hub cache,
Meta `.pth` files (against timm's converter), round trips, dtypes and clear errors."""

import json
import shutil
from pathlib import Path

import huggingface_hub
import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import DINOv3ViTModel as HFModel

from dinov3kit import CheckpointError, DINOv3ViTBackbone, DINOv3ViTConfig, DINOv3ViTModel
from dinov3kit.fileio import SameFileError
from dinov3kit.models.rope import rope_periods
from dinov3kit.weights import loading, save_meta_checkpoint
from dinov3kit.weights.files import TensorFile
from dinov3kit.weights.meta import infer_vit_config
from oracles.hf_twin import save_hf_vit
from oracles.meta_twin import LAYOUTS, meta_periods, meta_vit_state_dict, timm_vit_from_meta
from oracles.random_weights import randomize_

ATOL = 1e-5
GATED = dict(use_gated_mlp=True, hidden_act="silu", intermediate_size=192, num_register_tokens=4)


def max_diff(a, b) -> float:
    return (a - b).abs().max().item()


def outputs(model, pixels):
    with torch.no_grad():
        return model(pixels).last_hidden_state


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory):
    return save_hf_vit(tmp_path_factory.mktemp("hf"), **GATED)


# --- transformers folders -----------------------------------------------------------------------


def test_sharded_folder_and_transformers_5_key_names(hf_folder, tmp_path):
    reference, folder = hf_folder
    reference.save_pretrained(tmp_path / "sharded", max_shard_size="40KB")
    assert (tmp_path / "sharded" / "model.safetensors.index.json").exists()
    pixels = torch.randn(1, 3, 48, 64)
    expected = outputs(reference, pixels)
    assert max_diff(outputs(DINOv3ViTModel.from_pretrained(tmp_path / "sharded"), pixels), expected) <= ATOL

    renamed = tmp_path / "v5"
    shutil.copytree(folder, renamed)
    tensors = load_file(renamed / "model.safetensors")
    save_file({k.replace("layer.", "model.layer.", 1) if k.startswith("layer.") else k: v for k, v in tensors.items()},
              renamed / "model.safetensors")  # fmt: skip
    assert max_diff(outputs(DINOv3ViTModel.from_pretrained(renamed), pixels), expected) <= ATOL


def test_save_pretrained_loads_in_transformers(hf_folder, tmp_path):
    reference, folder = hf_folder
    ours = DINOv3ViTModel.from_pretrained(folder)
    ours.save_pretrained(tmp_path / "out")
    reloaded = HFModel.from_pretrained(tmp_path / "out").eval()
    pixels = torch.randn(2, 3, 64, 80)
    assert max_diff(outputs(reloaded, pixels), outputs(ours, pixels)) <= ATOL
    assert json.loads((tmp_path / "out" / "config.json").read_text())["architectures"] == ["DINOv3ViTModel"]


def test_random_model_saved_sharded_loads_in_transformers(tmp_path):
    config = DINOv3ViTConfig(hidden_size=64, num_attention_heads=1, intermediate_size=128, num_hidden_layers=2,
                             query_bias=False, value_bias=False, proj_bias=False, mlp_bias=False)  # fmt: skip
    ours = randomize_(DINOv3ViTModel(config).eval())
    ours.save_pretrained(tmp_path, max_shard_size="30KB")
    assert len(list(tmp_path.glob("model-*.safetensors"))) > 1
    reloaded = HFModel.from_pretrained(tmp_path).eval()
    pixels = torch.randn(1, 3, 32, 48)
    assert max_diff(outputs(reloaded, pixels), outputs(ours, pixels)) <= ATOL
    assert max_diff(outputs(DINOv3ViTModel.from_pretrained(tmp_path), pixels), outputs(ours, pixels)) == 0


def test_backbone_loads_model_weights_with_config_overrides(hf_folder):
    _, folder = hf_folder
    backbone = DINOv3ViTBackbone.from_pretrained(folder, out_indices=[1, 2])
    assert backbone.out_features == ["stage1", "stage2"]
    with torch.no_grad():
        maps = backbone(torch.randn(1, 3, 32, 64)).feature_maps
    assert [m.shape for m in maps] == [(1, 64, 2, 4)] * 2


@pytest.mark.parametrize("dtype", [torch.bfloat16, "float16", "bf16"])
def test_dtype_on_load(hf_folder, dtype):
    model = DINOv3ViTModel.from_pretrained(hf_folder[1], dtype=dtype)
    wanted = torch.float16 if dtype == "float16" else torch.bfloat16
    assert {p.dtype for p in model.parameters()} == {wanted}
    assert model.rope_periods.dtype == torch.float32
    with torch.no_grad():
        assert model(torch.randn(1, 3, 32, 32)).last_hidden_state.dtype == wanted


def test_loading_leaves_the_thread_settings_alone(hf_folder, monkeypatch):
    threads = torch.get_num_threads()

    def refuse(count: int) -> None:
        raise AssertionError(f"loading called torch.set_num_threads({count})")

    monkeypatch.setattr(torch, "set_num_threads", refuse)
    model = DINOv3ViTModel.from_pretrained(hf_folder[1], dtype=torch.bfloat16)
    assert torch.get_num_threads() == threads
    assert model.dtype == torch.bfloat16


def test_auto_dtype_keeps_the_stored_dtype(hf_folder, tmp_path):
    DINOv3ViTModel.from_pretrained(hf_folder[1], dtype=torch.bfloat16).save_pretrained(tmp_path)
    assert DINOv3ViTModel.from_pretrained(tmp_path).dtype == torch.bfloat16
    assert DINOv3ViTModel.from_pretrained(tmp_path, dtype="float32").dtype == torch.float32
    assert json.loads((tmp_path / "config.json").read_text())["dtype"] == "bfloat16"


def test_device_and_attention_options(hf_folder):
    model = DINOv3ViTModel.from_pretrained(hf_folder[1], device_map="auto", attn_implementation="eager")
    assert model.device.type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert model.attn_implementation == "eager" and not model.training
    with pytest.raises(ValueError, match="attn_implementation"):
        DINOv3ViTModel.from_pretrained(hf_folder[1], attn_implementation="flash")


# --- the hub, offline against a cache laid out as huggingface_hub lays it out ---------------------


def fake_hub_cache(cache, repo_id, folder, commit="0123456789abcdef0123456789abcdef01234567"):
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    snapshot = repo / "snapshots" / commit
    blobs = repo / "blobs"
    blobs.mkdir()
    snapshot.mkdir(parents=True)
    for file in folder.iterdir():
        blob = blobs / f"blob-{file.name}"
        shutil.copy(file, blob)
        (snapshot / file.name).symlink_to(blob)
    return cache


@pytest.fixture
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


def test_hub_id_from_cache_offline(hf_folder, tmp_path, offline):
    reference, folder = hf_folder
    cache = fake_hub_cache(tmp_path / "hub", "facebook/dinov3-tiny-test", folder)
    model = DINOv3ViTModel.from_pretrained("facebook/dinov3-tiny-test", cache_dir=cache)
    pixels = torch.randn(1, 3, 32, 32)
    assert max_diff(outputs(model, pixels), outputs(reference, pixels)) <= ATOL


def test_sharded_hub_checkpoint_from_cache_offline(hf_folder, tmp_path, offline):
    reference, _ = hf_folder
    reference.save_pretrained(tmp_path / "sharded", max_shard_size="40KB")
    cache = fake_hub_cache(tmp_path / "hub", "facebook/dinov3-sharded", tmp_path / "sharded")
    model = DINOv3ViTModel.from_pretrained("facebook/dinov3-sharded", cache_dir=cache)
    pixels = torch.randn(1, 3, 32, 32)
    assert max_diff(outputs(model, pixels), outputs(reference, pixels)) <= ATOL


def test_uncached_hub_id_offline_says_what_to_do(tmp_path, offline):
    with pytest.raises(CheckpointError, match="not in the local cache.*HF_HUB_OFFLINE"):
        DINOv3ViTModel.from_pretrained("facebook/dinov3-vits16-pretrain-lvd1689m", cache_dir=tmp_path)


def test_gated_repository_error_says_how_to_get_access(monkeypatch):
    from huggingface_hub.errors import GatedRepoError

    def refuse(repo_id, filename, **kwargs):
        error = GatedRepoError.__new__(GatedRepoError)  # its constructor wants a live HTTP response
        Exception.__init__(error, "Access to model is restricted")
        raise error

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", refuse)
    with pytest.raises(CheckpointError, match=r"gated.*huggingface\.co/facebook/dinov3-vitb16.*HF_TOKEN"):
        DINOv3ViTModel.from_pretrained("facebook/dinov3-vitb16-pretrain-lvd1689m")


# --- Meta .pth checkpoints ----------------------------------------------------------------------

META_VARIANTS = ["vits16", "vits16plus", "vitb16", "vitl16", "vitl16plus", "vith16plus", "vit7b16"]


@pytest.mark.parametrize("variant", META_VARIANTS)
def test_meta_checkpoint_matches_timm(variant, tmp_path):
    state = meta_vit_state_dict(variant, bf16_periods=False)  # timm recomputes periods in fp32
    path = tmp_path / f"dinov3_{variant}_pretrain_lvd1689m-00000000.pth"
    torch.save(state, path)
    ours = DINOv3ViTModel.from_pretrained(path)
    timm_model = timm_vit_from_meta(state, num_heads=2)
    pixels = torch.randn(2, 3, 48, 80)
    with torch.no_grad():
        expected = timm_model.forward_features(pixels)
    assert max_diff(outputs(ours, pixels), expected) <= ATOL
    assert ours.config.num_attention_heads == 2 and ours.config.key_bias is False
    assert ours.config.query_bias == (variant != "vit7b16")
    assert ours.config.extra["dinov3_pretrain_dataset"] == "lvd1689m"


def test_meta_checkpoint_uses_its_own_bf16_periods(tmp_path):
    state = meta_vit_state_dict("vits16plus", bf16_periods=True)
    assert not torch.equal(state["rope_embed.periods"], meta_periods(32, bf16=False))
    torch.save(state, tmp_path / "bf16.pth")
    exact = {**state, "rope_embed.periods": meta_periods(32, bf16=False)}
    torch.save(exact, tmp_path / "exact.pth")
    ours = DINOv3ViTModel.from_pretrained(tmp_path / "bf16.pth")
    assert torch.equal(ours.rope_periods, state["rope_embed.periods"])
    pixels = torch.randn(1, 3, 64, 64)
    assert max_diff(outputs(ours, pixels), outputs(DINOv3ViTModel.from_pretrained(tmp_path / "exact.pth"), pixels)) > 1e-7

    # A transformers folder written from it keeps the periods for us (transformers recomputes its own).
    ours.save_pretrained(tmp_path / "folder")
    again = DINOv3ViTModel.from_pretrained(tmp_path / "folder")
    assert torch.equal(again.rope_periods, ours.rope_periods)
    assert max_diff(outputs(again, pixels), outputs(ours, pixels)) == 0


def test_masked_key_bias_is_dropped_and_nan_mask_refused(tmp_path):
    state = meta_vit_state_dict("vits16", bf16_periods=False)
    dim = state["cls_token"].shape[-1]
    for key in [k for k in state if k.endswith("qkv.bias")]:
        state[key][dim : 2 * dim] = 5.0  # garbage under the mask, as in Meta's files
    torch.save(state, tmp_path / "masked.pth")
    ours = DINOv3ViTModel.from_pretrained(tmp_path / "masked.pth")
    timm_model = timm_vit_from_meta(state, num_heads=2)
    pixels = torch.randn(1, 3, 32, 48)
    with torch.no_grad():
        assert max_diff(outputs(ours, pixels), timm_model.forward_features(pixels)) <= ATOL
    state["blocks.0.attn.qkv.bias_mask"] = torch.full_like(state["blocks.0.attn.qkv.bias_mask"], float("nan"))
    torch.save(state, tmp_path / "nan.pth")
    with pytest.raises(CheckpointError, match="NaN"):
        DINOv3ViTModel.from_pretrained(tmp_path / "nan.pth")


def test_training_checkpoint_wrappers_and_heads_are_ignored(tmp_path):
    state = meta_vit_state_dict("vit7b16")
    assert "local_cls_norm.weight" in state
    wrapped = {"teacher": {**{f"backbone.{k}": v for k, v in state.items()}, "dino_head.mlp.0.weight": torch.ones(2)}}
    torch.save(wrapped, tmp_path / "train.pth")
    torch.save(state, tmp_path / "plain.pth")
    pixels = torch.randn(1, 3, 32, 32)
    assert torch.equal(
        outputs(DINOv3ViTModel.from_pretrained(tmp_path / "train.pth"), pixels),
        outputs(DINOv3ViTModel.from_pretrained(tmp_path / "plain.pth"), pixels),
    )


@pytest.mark.parametrize("variant", META_VARIANTS)
def test_variant_inferred_from_full_size_shapes(variant):
    layout = LAYOUTS[f"dinov3_{variant}"]
    depth = layout["repeats"]["blocks"]
    tensors = {}
    for pattern, shape in layout["keys"].items():
        for n in range(depth) if ".N." in pattern else [None]:
            key = pattern.replace(".N.", f".{n}.")
            tensors[key] = torch.empty(shape, device="meta")
    dim = tensors["cls_token"].shape[-1]
    if "blocks.0.attn.qkv.bias_mask" in tensors:
        tensors["blocks.0.attn.qkv.bias_mask"] = torch.cat([torch.ones(dim), torch.zeros(dim), torch.ones(dim)])
    config = infer_vit_config(TensorFile("x", tensors, tensors.__getitem__), f"dinov3_{variant}_pretrain_sat493m.pth")
    preset = DINOv3ViTConfig.from_preset(variant)
    fields = ["hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "use_gated_mlp",
              "query_bias", "key_bias", "value_bias", "num_register_tokens", "hidden_act"]  # fmt: skip
    assert {f: getattr(config, f) for f in fields} == {f: getattr(preset, f) for f in fields}
    assert config.extra["dinov3_variant"] == variant
    assert config.extra["dinov3_pretrain_dataset"] == "sat493m"


def test_meta_round_trip_and_transformers_conversion(tmp_path):
    state = meta_vit_state_dict("vith16plus", bf16_periods=False)
    torch.save(state, tmp_path / "in.pth")
    ours = DINOv3ViTModel.from_pretrained(tmp_path / "in.pth")
    save_meta_checkpoint(ours, tmp_path / "out.pth")
    written = torch.load(tmp_path / "out.pth", weights_only=True)
    assert written.keys() == {k for k in state if not k.startswith("local_cls_norm")}
    assert all(written[k].shape == state[k].shape for k in written)
    assert all(torch.equal(written[k], state[k]) for k in written if not k.endswith("qkv.bias"))
    pixels = torch.randn(1, 3, 48, 48)
    assert torch.equal(outputs(DINOv3ViTModel.from_pretrained(tmp_path / "out.pth"), pixels), outputs(ours, pixels))
    ours.save_pretrained(tmp_path / "hf")
    reference = HFModel.from_pretrained(tmp_path / "hf").eval()
    assert max_diff(outputs(reference, pixels), outputs(ours, pixels)) <= ATOL


def test_transformers_default_periods_equal_ours():
    assert torch.equal(DINOv3ViTModel(DINOv3ViTConfig(num_hidden_layers=1)).rope_periods, rope_periods(64, 100.0))


# --- bad checkpoints: one exception type, naming the file and tensors ----------------------------


def test_truncated_safetensors(hf_folder, tmp_path):
    folder = tmp_path / "truncated"
    shutil.copytree(hf_folder[1], folder)
    data = (folder / "model.safetensors").read_bytes()
    for cut in (len(data) // 2, 20):
        (folder / "model.safetensors").write_bytes(data[:cut])
        with pytest.raises(CheckpointError, match="model.safetensors"):
            DINOv3ViTModel.from_pretrained(folder)


def test_missing_and_misshaped_tensors_are_named(hf_folder, tmp_path):
    folder = tmp_path / "edited"
    shutil.copytree(hf_folder[1], folder)
    tensors = load_file(folder / "model.safetensors")
    del tensors["layer.1.norm2.bias"]
    tensors["layer.0.attention.o_proj.bias"] = torch.zeros(7)
    tensors["extra.weight"] = torch.zeros(1)
    save_file(tensors, folder / "model.safetensors")
    with pytest.raises(CheckpointError) as error:
        DINOv3ViTModel.from_pretrained(folder)
    message = str(error.value)
    assert str(folder) in message
    assert "blocks.1.norm2.bias" in message and "blocks.0.attn.proj.bias" in message and "extra.weight" in message


def test_wrong_architecture_for_the_tensors(hf_folder):
    with pytest.raises(CheckpointError, match="wrong shape"):
        DINOv3ViTModel.from_pretrained(hf_folder[1], hidden_size=128, num_attention_heads=2)


@pytest.mark.parametrize("content", [b"", b"not a checkpoint at all", b"\x89PNG\r\n\x1a\n" + bytes(100)])
def test_files_that_are_not_checkpoints(tmp_path, content):
    (tmp_path / "weights.pth").write_bytes(content)
    with pytest.raises(CheckpointError, match="weights.pth"):
        DINOv3ViTModel.from_pretrained(tmp_path / "weights.pth")
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "dinov3_vit"}))
    (folder / "model.safetensors").write_bytes(content)
    with pytest.raises(CheckpointError, match="model.safetensors"):
        DINOv3ViTModel.from_pretrained(folder)


def test_pickle_of_something_else_and_missing_paths(tmp_path):
    torch.save({"weights": [1, 2, 3]}, tmp_path / "list.pth")
    with pytest.raises(CheckpointError, match="state dict of tensors"):
        DINOv3ViTModel.from_pretrained(tmp_path / "list.pth")
    torch.save({"fc.weight": torch.zeros(2, 2)}, tmp_path / "other.pth")
    with pytest.raises(CheckpointError, match="not a DINOv3 checkpoint"):
        DINOv3ViTModel.from_pretrained(tmp_path / "other.pth")
    with pytest.raises(CheckpointError, match="no such file"):
        DINOv3ViTModel.from_pretrained(tmp_path / "absent.pth")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="config.json"):
        DINOv3ViTModel.from_pretrained(tmp_path / "empty")


def test_config_of_another_model_type(tmp_path, hf_folder):
    folder = tmp_path / "other"
    shutil.copytree(hf_folder[1], folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "model_type": "vit"}))
    with pytest.raises(CheckpointError, match="model_type"):
        DINOv3ViTModel.from_pretrained(folder)


def test_local_checkpoint_errors_give_no_hub_advice(tmp_path):
    """The "gated, request access" advice is for hub ids; a local file's error says what is wrong with it."""
    (tmp_path / "weights.pth").write_bytes(b"not a checkpoint")
    for source in (tmp_path / "weights.pth", tmp_path / "absent.pth", tmp_path):
        with pytest.raises(CheckpointError) as error:
            DINOv3ViTModel.from_pretrained(source)
        assert "gated" not in str(error.value) and "huggingface.co" not in str(error.value)


# --- writing: atomic, never over the source -------------------------------------------------------


def test_saving_over_the_loaded_checkpoint_is_refused(hf_folder, tmp_path):
    import os

    model = DINOv3ViTModel(DINOv3ViTConfig(**{**GATED, "hidden_size": 64, "num_attention_heads": 2, "num_hidden_layers": 2}))
    save_meta_checkpoint(randomize_(model, seed=1), tmp_path / "m.pth")
    original = (tmp_path / "m.pth").read_bytes()
    loaded = DINOv3ViTModel.from_pretrained(tmp_path / "m.pth")
    (tmp_path / "link.pth").symlink_to(tmp_path / "m.pth")
    os.link(tmp_path / "m.pth", tmp_path / "hard.pth")
    for same in ("m.pth", "link.pth", "hard.pth"):
        with pytest.raises(SameFileError, match=r"refusing to write over the input"):
            save_meta_checkpoint(loaded, tmp_path / same)
    assert (tmp_path / "m.pth").read_bytes() == original  # nothing was written
    save_meta_checkpoint(loaded, tmp_path / "copy.pth")  # elsewhere is fine
    assert torch.equal(DINOv3ViTModel.from_pretrained(tmp_path / "copy.pth").cls_token, loaded.cls_token)

    _, folder = hf_folder
    copy = tmp_path / "hf"
    shutil.copytree(folder, copy)
    from_folder = DINOv3ViTModel.from_pretrained(copy)
    before = (copy / "model.safetensors").read_bytes()
    with pytest.raises(SameFileError, match=r"model\.safetensors"):
        from_folder.save_pretrained(copy)
    assert (copy / "model.safetensors").read_bytes() == before


def test_a_failed_write_leaves_the_old_file(tmp_path, monkeypatch):
    model = randomize_(DINOv3ViTModel(DINOv3ViTConfig(hidden_size=64, num_attention_heads=2, num_hidden_layers=2)), seed=2)
    save_meta_checkpoint(model, tmp_path / "m.pth")
    model.save_pretrained(tmp_path / "hf")
    before = {path.name: path.read_bytes() for path in [tmp_path / "m.pth", *(tmp_path / "hf").iterdir()]}

    def crash(obj, destination, *args, **kwargs):
        Path(destination).write_bytes(b"half a checkpoint")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(OSError, match="No space left"):
        save_meta_checkpoint(model, tmp_path / "m.pth")
    monkeypatch.setattr(loading, "save_file", lambda tensors, destination, **kw: crash(tensors, destination))
    with pytest.raises(OSError, match="No space left"):
        model.save_pretrained(tmp_path / "hf")
    after = {path.name: path.read_bytes() for path in [tmp_path / "m.pth", *(tmp_path / "hf").iterdir()]}
    assert after == before  # no half file, no temporary left behind


def test_saving_a_sharded_folder_over_a_single_file_one_removes_the_stale_files(hf_folder, tmp_path):
    reference, _ = hf_folder
    model = DINOv3ViTModel.from_pretrained(hf_folder[1])
    model.save_pretrained(tmp_path / "out")
    model.save_pretrained(tmp_path / "out", max_shard_size="40KB")
    names = sorted(path.name for path in (tmp_path / "out").iterdir())
    assert "model.safetensors" not in names and "model.safetensors.index.json" in names
    model.save_pretrained(tmp_path / "out")
    assert sorted(path.name for path in (tmp_path / "out").iterdir()) == ["config.json", "model.safetensors"]
    pixels = torch.randn(1, 3, 32, 32)
    assert max_diff(outputs(DINOv3ViTModel.from_pretrained(tmp_path / "out"), pixels), outputs(reference, pixels)) <= ATOL
