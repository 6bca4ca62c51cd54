"""The forward that `export_onnx` traces for a float32 DINOv3 ViT: the model's eval-mode function, written
in the ops ONNX Runtime fuses and runs fast.

The model's own forward is shaped for eager PyTorch (RoPE rotated in place on strided views of the fused
QKV buffer, pooled buffers); traced, those in-place updates become ScatterND and transpose chains that
cost more than the matmuls (ViT-S: 0.4x torch's speed). Here, for each plain block (`plain_block`):

- the block works on the tokens as rows [B * N, D], so each linear and its bias are one Gemm, and its
  exact GELU is written as onnxruntime's Gelu fusion expects it;
- the layer scales are folded into the weights and biases of the projections before them, and q, k, v
  (and a gated MLP's gate and up halves) are separate linears: onnxruntime would copy each part out of one
  product;
- RoPE is computed once per graph from the input size (one file serves every resolution) as tables over
  all tokens (the prefix tokens get the identity rotation), and
- attention is either softmax(q kᵀ · scale) v in MatMul / Softmax ops with RoPE as a swap of halves, two
  products and a sum (any opset), or, with `onnx_ops` (opset >= 23), ONNX's RotaryEmbedding and
  Attention ops on [B, N, D] tensors, with no transposes at all.

Other blocks (hooked or swapped modules) run as they are.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .backend.modules import FastLinear, unobserved
from .models.layers import Attention, Mlp
from .models.rope import rope_cos_sin
from .models.vit import DINOv3ViTModel, fusable

#: The first ONNX opset with RotaryEmbedding and Attention ops.
ONNX_ATTENTION_OPSET = 23


class ExportedViT(nn.Module):
    """`DINOv3ViTModel` in eval mode as a function of `pixel_values`: (last_hidden_state, pooler_output).
    `onnx_ops`: RoPE and attention as ONNX RotaryEmbedding / Attention ops (opset >= 23)."""

    def __init__(self, model: DINOv3ViTModel, *, onnx_ops: bool = False) -> None:
        super().__init__()
        self.model = model
        self.onnx_ops = onnx_ops
        self.blocks = nn.ModuleList(
            ExportedBlock(block, onnx_ops=onnx_ops) if plain_block(block) else BlockAsIs(block)
            for block in model.blocks
        )

    def forward(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        model = self.model
        x = model.embed(pixel_values)
        rope = rope_cos_sin(*model.patch_grid(pixel_values), model.rope_periods)  # [patches, head_dim] each
        prefix = model.config.num_prefix_tokens
        cos, sin = token_tables(*rope, prefix)
        if self.onnx_ops:  # RotaryEmbedding's caches: one angle per pair of channels (i, i + head_dim / 2)
            half = cos.shape[-1] // 2
            tables = cos[:, :half], sin[:, half:], torch.arange(x.shape[1], device=x.device).expand(x.shape[:2])
        else:
            tables = cos, sin
        for block in self.blocks:
            x = block(x, rope, tables, prefix)
        tokens = model.norm(x)
        return tokens, tokens[:, 0]


def plain_block(block: nn.Module) -> bool:
    """Whether `block` is built of the model's own unhooked modules only (then `ExportedBlock` computes it)."""
    attn, mlp = block.attn, block.mlp
    return (
        fusable(block)
        and unobserved(attn, Attention)
        and unobserved(mlp, Mlp)
        and all(unobserved(linear, FastLinear) for linear in (attn.qkv, attn.proj, mlp.fc1, mlp.fc2))
        and not (mlp.act._forward_hooks or mlp.act._forward_pre_hooks)
    )


class BlockAsIs(nn.Module):
    """A block the export does not rewrite: called with its RoPE tables for the patch tokens."""

    def __init__(self, block: nn.Module) -> None:
        super().__init__()
        self.block = block

    def forward(self, x: torch.Tensor, rope: tuple, tables: tuple, prefix: int) -> torch.Tensor:
        return self.block(x, rope, prefix)[0]


class ExportedBlock(nn.Module):
    """A plain `Block` in export-friendly ops (see the module's docstring); the same function as the block."""

    def __init__(self, block: nn.Module, *, onnx_ops: bool) -> None:
        super().__init__()
        attn, mlp = block.attn, block.mlp
        self.norm1, self.norm2, self.act = block.norm1, block.norm2, mlp.act
        self.num_heads, self.head_dim, self.gated = attn.num_heads, attn.head_dim, mlp.gated
        self.exact_gelu = type(mlp.act) is nn.GELU and mlp.act.approximate == "none"
        self.onnx_ops = onnx_ops
        with torch.no_grad():
            tensors = {
                **split_linear(("q", "k", "v"), attn.qkv.weight, attn.qkv_bias()),
                **dict(zip(("proj_weight", "proj_bias"), scaled(attn.proj, block.ls1.gamma))),
                **fc1_tensors(mlp.fc1, mlp.gated),
                **dict(zip(("fc2_weight", "fc2_bias"), scaled(mlp.fc2, block.ls2.gamma))),
            }
        for name, tensor in tensors.items():
            self.register_buffer(name, None if tensor is None else tensor.detach())

    def forward(self, x: torch.Tensor, rope: tuple, tables: tuple, prefix: int) -> torch.Tensor:
        batch, tokens, dim = x.shape
        x = x.reshape(batch * tokens, dim)
        normed = self.norm1(x)
        q, k, v = (F.linear(normed, getattr(self, f"{t}_weight"), getattr(self, f"{t}_bias")) for t in "qkv")
        out = self.attention(*(t.reshape(batch, tokens, dim) for t in (q, k, v)), tables).reshape(batch * tokens, dim)
        x = x + F.linear(out, self.proj_weight, self.proj_bias)
        normed = self.norm2(x)
        if self.gated:
            gate = F.linear(normed, self.gate_weight, self.gate_bias)
            hidden = self.act(gate) * F.linear(normed, self.up_weight, self.up_bias)
        else:
            hidden = F.linear(normed, self.fc1_weight, self.fc1_bias)
            if self.exact_gelu:  # onnxruntime fuses this form (x * 0.5 first) into one Gelu
                hidden = hidden * 0.5 * (1 + torch.erf(hidden / math.sqrt(2)))
            else:
                hidden = self.act(hidden)
        return (x + F.linear(hidden, self.fc2_weight, self.fc2_bias)).reshape(batch, tokens, dim)

    def attention(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, tables: tuple) -> torch.Tensor:
        """Multi-head attention with RoPE on q and k: [B, N, D] each -> [B, N, D]."""
        batch, tokens, dim = q.shape
        heads, head_dim = self.num_heads, self.head_dim
        if self.onnx_ops:
            q, k = (torch.onnx.ops.rotary_embedding(t, *tables, num_heads=heads) for t in (q, k))
            return torch.onnx.ops.attention(q, k, v, q_num_heads=heads, kv_num_heads=heads, scale=head_dim**-0.5)[0]
        q, k, v = (t.reshape(batch, tokens, heads, head_dim).transpose(1, 2) for t in (q, k, v))  # [B, H, N, d]
        q, k = rotate(q, *tables), rotate(k, *tables)
        weights = (q @ k.transpose(-2, -1) * head_dim**-0.5).softmax(dim=-1)
        return (weights @ v).transpose(1, 2).reshape(batch, tokens, dim)


def fc1_tensors(fc1: nn.Linear, gated: bool) -> dict[str, torch.Tensor | None]:
    """fc1's weight and bias; for a gated MLP, its gate and up halves as two linears."""
    if gated:
        return split_linear(("gate", "up"), fc1.weight, fc1.bias)
    return {"fc1_weight": fc1.weight, "fc1_bias": fc1.bias}


def split_linear(
    names: tuple[str, ...], weight: torch.Tensor, bias: torch.Tensor | None
) -> dict[str, torch.Tensor | None]:
    """A linear whose output rows are the outputs of several, as one linear each: `{name}_weight`,
    `{name}_bias`. Products of the parts cost less than splitting one product (onnxruntime copies each part)."""
    weights = weight.chunk(len(names))
    biases = (None,) * len(names) if bias is None else bias.chunk(len(names))
    tensors = {}
    for name, part_weight, part_bias in zip(names, weights, biases):
        tensors[f"{name}_weight"], tensors[f"{name}_bias"] = part_weight, part_bias
    return tensors


def scaled(linear: nn.Linear, gamma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Weight and bias of `linear` followed by a layer scale: gamma * linear(x) as one linear."""
    weight = linear.weight * gamma[:, None]
    return weight, None if linear.bias is None else linear.bias * gamma


def token_tables(cos: torch.Tensor, sin: torch.Tensor, prefix: int) -> tuple[torch.Tensor, torch.Tensor]:
    """RoPE tables for all tokens [N, head_dim] from the patch tables: prefix tokens are not rotated (cos 1,
    sin 0), and sin takes the sign of rotate-half (negative on the first half), so that a rotation is
    x * cos + swap_halves(x) * sin."""
    half = cos.shape[-1] // 2
    cos = torch.cat([cos.new_ones(prefix, cos.shape[-1]), cos])
    sin = torch.cat([sin.new_zeros(prefix, sin.shape[-1]), torch.cat([-sin[:, :half], sin[:, half:]], dim=-1)])
    return cos, sin


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x * cos + swap_halves(x) * sin, for x [..., N, head_dim] and `token_tables`."""
    half = x.shape[-1] // 2
    return x * cos + torch.cat([x[..., half:], x[..., :half]], dim=-1) * sin
