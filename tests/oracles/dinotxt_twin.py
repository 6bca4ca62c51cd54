"""dino.txt oracle: random state dicts under the exact key names of Meta's
`dinov3_vitl16_dinotxt_vision_head_and_text_encoder-*.pth` at tiny widths, and an independent twin of
Meta's `DINOTxt` (vision tower head, text tower) written from the structure of Meta's modules in plain,
explicit torch: explicit softmax attention, separate SwiGLU matrices, a written-out causal mask. It reads
the Meta-layout state dict by Meta's names and takes the backbone as a callable returning normed tokens
(a timm Eva from `meta_twin.timm_vit_from_meta`), so no line of it is shared with dinov3kit."""

from __future__ import annotations

import math
import re

import torch
import torch.nn.functional as F

H = "visual_model.head"
T = "text_model.backbone"


def meta_dinotxt_state_dict(
    *,
    vision_dim: int = 64,
    head_layers: int = 2,
    text_dim: int = 64,
    text_layers: int = 2,
    vocab: int = 49408,
    context: int = 77,
    projection_dim: int = 128,
    seed: int = 0,
) -> dict[str, torch.Tensor]:
    """Random, non-trivial tensors for every key of Meta's dino.txt head-and-text checkpoint."""
    d = int(vision_dim * 4 * 2 / 3)
    swiglu = d + (-d % 64)
    shapes: dict[str, tuple[int, ...]] = {}
    for n in range(head_layers):
        b = f"{H}.blocks.{n}"
        shapes |= {
            f"{b}.norm1.weight": (vision_dim,), f"{b}.norm1.bias": (vision_dim,),
            f"{b}.attn.qkv.weight": (3 * vision_dim, vision_dim),
            f"{b}.attn.proj.weight": (vision_dim, vision_dim), f"{b}.attn.proj.bias": (vision_dim,),
            f"{b}.ls1.gamma": (vision_dim,),
            f"{b}.norm2.weight": (vision_dim,), f"{b}.norm2.bias": (vision_dim,),
            f"{b}.mlp.w1.weight": (swiglu, vision_dim), f"{b}.mlp.w1.bias": (swiglu,),
            f"{b}.mlp.w2.weight": (swiglu, vision_dim), f"{b}.mlp.w2.bias": (swiglu,),
            f"{b}.mlp.w3.weight": (vision_dim, swiglu), f"{b}.mlp.w3.bias": (vision_dim,),
            f"{b}.ls2.gamma": (vision_dim,),
        }  # fmt: skip
    if head_layers:
        shapes |= {f"{H}.ln_final.weight": (vision_dim,), f"{H}.ln_final.bias": (vision_dim,)}
    shapes |= {f"{T}.token_embedding.weight": (vocab, text_dim), f"{T}.positional_embedding": (context, text_dim)}
    for n in range(text_layers):
        b = f"{T}.blocks.{n}"
        shapes |= {
            f"{b}.attention_norm.weight": (text_dim,), f"{b}.attention_norm.bias": (text_dim,),
            f"{b}.attention.qkv.weight": (3 * text_dim, text_dim),
            f"{b}.attention.proj.weight": (text_dim, text_dim), f"{b}.attention.proj.bias": (text_dim,),
            f"{b}.ffn_norm.weight": (text_dim,), f"{b}.ffn_norm.bias": (text_dim,),
            f"{b}.feed_forward.fc1.weight": (4 * text_dim, text_dim), f"{b}.feed_forward.fc1.bias": (4 * text_dim,),
            f"{b}.feed_forward.fc2.weight": (text_dim, 4 * text_dim), f"{b}.feed_forward.fc2.bias": (text_dim,),
        }  # fmt: skip
    shapes |= {
        f"{T}.ln_final.weight": (text_dim,), f"{T}.ln_final.bias": (text_dim,),
        "text_model.head.linear_projection.weight": (projection_dim, text_dim),
        "logit_scale": (1,),
    }  # fmt: skip
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in shapes.items():
        noise = torch.randn(shape, generator=generator)
        if key.endswith(("token_embedding.weight", "positional_embedding")):
            value = 0.5 * noise
        elif len(shape) == 2:
            value = noise / math.sqrt(shape[1])
        elif key.endswith("gamma"):
            value = 0.5 + 0.25 * noise
        elif key == "logit_scale":
            value = math.log(1 / 0.07) + 0.3 * noise
        elif re.search(r"(norm\w*|ln_final)\.weight$", key):
            value = 1.0 + 0.2 * noise
        else:
            value = 0.1 * noise
        state[key] = value
    return state


def _attention(x: torch.Tensor, qkv_w: torch.Tensor, proj_w, proj_b, heads: int, causal: bool) -> torch.Tensor:
    b, n, c = x.shape
    q, k, v = (x @ qkv_w.T).split(c, dim=-1)
    q, k, v = (t.reshape(b, n, heads, c // heads).transpose(1, 2) for t in (q, k, v))
    scores = q @ k.transpose(-1, -2) / math.sqrt(c // heads)
    if causal:
        scores = scores.masked_fill(torch.ones(n, n, dtype=torch.bool).triu(1), float("-inf"))
    out = scores.softmax(-1) @ v
    return out.transpose(1, 2).reshape(b, n, c) @ proj_w.T + proj_b


class DinoTxtTwin:
    """Meta's DINOTxt forward for the released config (class + mean patch tokens, argmax text pooling)."""

    def __init__(self, state: dict[str, torch.Tensor], backbone, *, vision_heads: int, text_heads: int, prefix: int):
        self.s = state
        self.backbone = backbone  # pixels -> normed tokens [B, 1 + registers + patches, D]
        self.vision_heads, self.text_heads, self.prefix = vision_heads, text_heads, prefix
        self.head_layers = len({k.split(".")[3] for k in state if k.startswith(f"{H}.blocks.")})
        self.text_layers = len({k.split(".")[3] for k in state if k.startswith(f"{T}.blocks.")})

    def _ln(self, x, name):
        return F.layer_norm(x, x.shape[-1:], self.s[f"{name}.weight"], self.s[f"{name}.bias"], 1e-5)

    def head_tokens(self, pixels: torch.Tensor) -> torch.Tensor:
        s, x = self.s, self.backbone(pixels)
        for n in range(self.head_layers):
            p = f"{H}.blocks.{n}"
            a = _attention(self._ln(x, f"{p}.norm1"), s[f"{p}.attn.qkv.weight"], s[f"{p}.attn.proj.weight"],
                           s[f"{p}.attn.proj.bias"], self.vision_heads, causal=False)  # fmt: skip
            x = x + a * s[f"{p}.ls1.gamma"]
            h = self._ln(x, f"{p}.norm2")
            w1 = h @ s[f"{p}.mlp.w1.weight"].T + s[f"{p}.mlp.w1.bias"]
            w2 = h @ s[f"{p}.mlp.w2.weight"].T + s[f"{p}.mlp.w2.bias"]
            m = (w1 * torch.sigmoid(w1) * w2) @ s[f"{p}.mlp.w3.weight"].T + s[f"{p}.mlp.w3.bias"]
            x = x + m * s[f"{p}.ls2.gamma"]
        return self._ln(x, f"{H}.ln_final") if self.head_layers else x

    def encode_image_with_patch_tokens(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        tokens = self.head_tokens(pixels)
        patches = tokens[:, self.prefix :]
        return torch.cat([tokens[:, 0], patches.mean(1)], dim=-1), patches

    def encode_text(self, ids: torch.Tensor) -> torch.Tensor:
        s = self.s
        x = s[f"{T}.token_embedding.weight"][ids] + s[f"{T}.positional_embedding"][: ids.shape[1]]
        for n in range(self.text_layers):
            p = f"{T}.blocks.{n}"
            x = x + _attention(self._ln(x, f"{p}.attention_norm"), s[f"{p}.attention.qkv.weight"],
                               s[f"{p}.attention.proj.weight"], s[f"{p}.attention.proj.bias"], self.text_heads, causal=True)  # fmt: skip
            h = self._ln(x, f"{p}.ffn_norm") @ s[f"{p}.feed_forward.fc1.weight"].T + s[f"{p}.feed_forward.fc1.bias"]
            h = 0.5 * h * (1 + torch.erf(h / math.sqrt(2)))
            x = x + h @ s[f"{p}.feed_forward.fc2.weight"].T + s[f"{p}.feed_forward.fc2.bias"]
        x = self._ln(x, f"{T}.ln_final")
        pooled = x.gather(1, ids.argmax(-1)[:, None, None].expand(-1, 1, x.shape[-1]))[:, 0]
        return pooled @ s["text_model.head.linear_projection.weight"].T

    def patch_similarity(self, pixels: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """[B, T, h, w] cosine between head patches and the second half of the text embedding (Meta's notebook)."""
        _, patches = self.encode_image_with_patch_tokens(pixels)
        b, n, c = patches.shape
        side_h, side_w = pixels.shape[-2] // 16, pixels.shape[-1] // 16
        grid = F.normalize(patches, dim=-1).reshape(b, side_h, side_w, c)
        text = self.encode_text(ids)
        text = F.normalize(text[:, text.shape[1] // 2 :], dim=-1)
        return torch.einsum("bhwc,tc->bthw", grid, text)
