"""dino.txt on the CPU: dinov3kit against Meta's own code on the same random weights.

    .venv/bin/python benchmarks/bench_dinotxt.py --meta-repo /path/to/facebookresearch/dinov3
        [--threads 2] [--repeats 5] [--text-width 512 --text-layers 6] [--vision-width 384 --vision-depth 4]
        [--texts 80] [--images 4] [--size 224]

Meta's repository is not a package: give the folder that holds its `dinov3/` (a clone), and this script
imports `dinov3.eval.text` and `dinov3.models.vision_transformer` from it; nothing of it is copied here.
Without --meta-repo only dinov3kit is timed. Widths default to reduced sizes (the released model is a
ViT-L/16 with a 1280-wide, 24-layer text encoder: ~45 s per 80 prompts on a 2-core CPU); the architecture
is the released one (vision head of 2 SwiGLU blocks, causal text blocks, end-token pooling).

Rows: the tokenizer (texts/s, one text at a time, BPE caches warm as after the first label), the text encoder (texts/s on a
batch of `--texts` tokenized prompts, the 80 templates of one label by default) and image features
(images/s on a `--images` x 3 x `--size`^2 batch). Each row checks that both give the same numbers first.
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
from pathlib import Path

import common
import torch
from tests.oracles.dinotxt_twin import meta_dinotxt_state_dict
from tests.oracles.meta_twin import meta_vit_state_dict


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--meta-repo", type=Path, help="folder holding Meta's dinov3/ package (a clone of facebookresearch/dinov3)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--text-width", type=int, default=512)
    parser.add_argument("--text-layers", type=int, default=6)
    parser.add_argument("--vision-width", type=int, default=384)
    parser.add_argument("--vision-depth", type=int, default=4)
    parser.add_argument("--texts", type=int, default=80)
    parser.add_argument("--images", type=int, default=4)
    parser.add_argument("--size", type=int, default=224)
    return parser.parse_args()


def build_ours(folder: Path, text_heads: int):
    from dinov3kit import DINOv3TextModel

    return DINOv3TextModel.from_pretrained(folder / "head.pth", backbone=folder / "backbone.pth", text_num_attention_heads=text_heads).eval()


def build_meta(repo: Path, backbone_state: dict, head_state: dict, args, vision_heads: int, text_heads: int):
    """Meta's DINOTxt as its hub builds the released model (`dinov3/hub/dinotxt.py`), at the given widths."""
    sys.path.insert(0, str(repo))
    from dinov3.eval.text.dinotxt_model import DINOTxt, DINOTxtConfig
    from dinov3.eval.text.text_transformer import TextTransformer
    from dinov3.models.vision_transformer import DinoVisionTransformer

    backbone = DinoVisionTransformer(
        img_size=224, patch_size=16, pos_embed_rope_base=100, pos_embed_rope_normalize_coords="separate",
        pos_embed_rope_rescale_coords=2, pos_embed_rope_dtype="fp32", embed_dim=args.vision_width,
        depth=args.vision_depth, num_heads=vision_heads, ffn_ratio=4, qkv_bias=True, layerscale_init=1e-5,
        norm_layer="layernormbf16", ffn_layer="mlp", ffn_bias=True, proj_bias=True, n_storage_tokens=4, mask_k_bias=True,
    )  # fmt: skip
    backbone.init_weights()
    config = DINOTxtConfig(
        embed_dim=2 * args.vision_width, vision_model_use_class_token=True, vision_model_use_patch_tokens=True,
        vision_model_num_head_blocks=2, vision_model_use_linear_projection=False, vision_model_patch_tokens_pooler_type="mean",
        text_model_num_head_blocks=0, text_model_tokens_pooler_type="argmax", text_model_use_linear_projection=True,
    )  # fmt: skip
    text = TextTransformer(
        context_length=77, vocab_size=49408, dim=args.text_width, num_heads=text_heads, num_layers=args.text_layers,
        ffn_ratio=4, is_causal=True, ls_init_value=None, dropout_prob=0.0,
    )  # fmt: skip
    model = DINOTxt(model_config=config, vision_backbone=backbone, text_backbone=text)
    model.init_weights()
    model.visual_model.backbone = backbone
    backbone.load_state_dict(backbone_state, strict=True)
    missing, unexpected = model.load_state_dict(head_state, strict=False)
    assert not unexpected and all(k.startswith("visual_model.backbone") for k in missing), (missing, unexpected)
    return model.eval()


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    if 4 * args.vision_width in (1024, 3072, 4096):  # the tiny-layout builder maps ViT-L's own sizes
        raise SystemExit(f"--vision-width {args.vision_width}: choose a width whose MLP (4x) is not 1024, 3072 or 4096")
    vision_heads = max(args.vision_width // 64, 1)
    text_heads = max(args.text_width // 64, 1)
    backbone_state = meta_vit_state_dict(
        "vitl16", dim=args.vision_width, head_dim=args.vision_width // vision_heads, hidden=4 * args.vision_width,
        depth=args.vision_depth, bf16_periods=False,
    )  # fmt: skip
    head_state = meta_dinotxt_state_dict(
        vision_dim=args.vision_width, text_dim=args.text_width, text_layers=args.text_layers, projection_dim=2 * args.vision_width
    )
    folder = Path(tempfile.mkdtemp(prefix="bench_dinotxt_"))
    torch.save(backbone_state, folder / "backbone.pth")
    torch.save(head_state, folder / "head.pth")
    ours = build_ours(folder, text_heads)
    meta = build_meta(args.meta_repo, backbone_state, head_state, args, vision_heads, text_heads) if args.meta_repo else None

    from dinov3kit.text import TextTokenizer
    from dinov3kit.tools.text import PROMPT_TEMPLATES

    vocab = Path(common.ROOT / "src" / "dinov3kit" / "text" / "bpe_simple_vocab_16e6.txt.gz")
    prompts = [PROMPT_TEMPLATES[i % len(PROMPT_TEMPLATES)].format(f"label {i // len(PROMPT_TEMPLATES)}") for i in range(args.texts)]
    tokenizers = {"dinov3kit": TextTokenizer()}
    if meta is not None:
        from dinov3.eval.text.tokenizer import get_tokenizer

        tokenizers["Meta"] = get_tokenizer(str(vocab))
    ids = tokenizers["dinov3kit"](prompts)
    pixels = torch.randn(args.images, 3, args.size, args.size, generator=torch.Generator().manual_seed(1))

    rows = []
    contenders = {"tokenizer": {name: (lambda t=t: [t.tokenize(p) for p in prompts]) for name, t in tokenizers.items()}}
    contenders["text encoder"] = {"dinov3kit": lambda: ours.get_text_features(ids)}
    contenders["image features"] = {"dinov3kit": lambda: ours.get_image_features(pixels)}
    if meta is not None:
        contenders["text encoder"]["Meta"] = lambda: meta.encode_text(ids)
        contenders["image features"]["Meta"] = lambda: meta.encode_image(pixels)
    units = {"tokenizer": ("texts/s", args.texts), "text encoder": ("texts/s", args.texts), "image features": ("img/s", args.images)}
    with torch.inference_mode():
        for row, functions in contenders.items():
            outputs = {name: fn() for name, fn in functions.items()}
            if row == "tokenizer":
                same = "identical ids" if all(torch.equal(torch.cat(o), torch.cat(outputs["dinov3kit"])) for o in outputs.values()) else "IDS DIFFER"
            else:
                diff = max((o - outputs["dinov3kit"]).abs().max().item() for o in outputs.values())
                same = f"max |diff| {diff:.1e}"
            stats = common.interleaved(functions, repeats=args.repeats)
            unit, count = units[row]
            speed = {name: count / s.median for name, s in stats.items()}
            ratio = f"{speed['dinov3kit'] / speed['Meta']:.2f}x" if "Meta" in speed else "-"
            meta_cell = f"{speed['Meta']:.1f} {stats['Meta'].spread_text()}" if "Meta" in speed else "-"
            rows.append([f"{row} ({unit})", f"{speed['dinov3kit']:.1f} {stats['dinov3kit'].spread_text()}", meta_cell, ratio, same])
    common.print_table(
        f"dino.txt, CPU fp32, {args.threads} threads: text {args.text_width}d x {args.text_layers} layers "
        f"({args.texts} prompts), ViT {args.vision_width}d x {args.vision_depth} + 2 head blocks ({args.images} x {args.size}px)",
        ["", "dinov3kit", "Meta", "ours/Meta", "check"],
        rows,
    )
    print(common.machine())
    print(f"parameters: dinov3kit {sum(p.numel() for p in ours.parameters()) / 1e6:.1f} M; text heads {text_heads}, "
          f"vision heads {vision_heads}; log(1/0.07) logit scale init {math.log(1 / 0.07):.3f}")


if __name__ == "__main__":
    main()
