"""The README's Python examples run as written, with local random checkpoints standing in for the
gated hub weights."""

import re
from pathlib import Path

import torch

from oracles.hf_twin import save_hf_vit
from oracles.meta_twin import meta_vit_state_dict

README = Path(__file__).parents[1] / "README.md"


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_quick_start_runs(tmp_path):
    _, folder = save_hf_vit(tmp_path / "hf", hidden_size=384, num_attention_heads=6, intermediate_size=1536,
                            num_hidden_layers=12, num_register_tokens=4)  # fmt: skip
    torch.save(meta_vit_state_dict("vits16", dim=384, head_dim=64, hidden=1536, depth=12), tmp_path / "meta.pth")
    blocks = [b for b in python_blocks() if "from_pretrained" in b or "from_preset" in b]
    assert blocks, "README has no Python quick start"
    for block in blocks:
        code = (
            block.replace('"facebook/dinov3-vits16-pretrain-lvd1689m"', repr(str(folder)))
            .replace('"dinov3_vits16_pretrain_lvd1689m-08c60483.pth"', repr(str(tmp_path / "meta.pth")))
            .replace('"path/to/folder"', repr(str(folder)))
            .replace('"out/"', repr(str(tmp_path / "out")))
        )
        namespace: dict = {}
        exec(compile(code, str(README), "exec"), namespace)
    assert (tmp_path / "out" / "model.safetensors").exists()


def test_layout_names_every_module_and_only_existing_ones():
    block = re.search(r"## Layout\n\n```\n(.*?)```", README.read_text(), flags=re.S).group(1)
    package = Path(__file__).parents[1] / "src" / "dinov3kit"
    named = set(re.findall(r"\w+\.py|\b\w+/", block))
    top_level = {p.name for p in package.glob("*.py") if p.name != "__init__.py"}
    subpackages = {f"{p.parent.name}/" for p in package.glob("*/__init__.py")}
    assert not sorted((top_level | subpackages) - named), "README's layout misses these"
    modules = {p.name for p in package.rglob("*.py")}
    assert not sorted(name for name in named if name.endswith(".py") and name not in modules), "no such modules"
