"""Triton kernels behind `backend.kernels` (imported only when a CUDA tensor first needs one).

Each program works on whole rows (tokens), computes in fp32 and rounds once to the tensor's dtype.
"""

import triton
import triton.language as tl


@triton.jit
def rope_qk_kernel(
    qkv_ptr, cos_ptr, sin_ptr, patches, prefix, batch_stride, token_stride, head_dim: tl.constexpr,
    width: tl.constexpr, block: tl.constexpr,
):
    row = tl.program_id(0)  # one patch token of one image: its q and k channels, `width` = 2 * dim
    image, patch = row // patches, row % patches
    base = qkv_ptr + image.to(tl.int64) * batch_stride + (prefix + patch).to(tl.int64) * token_stride
    offsets = tl.arange(0, block)
    mask = offsets < width
    channel = offsets % head_dim
    half = head_dim // 2
    first = channel < half
    partner = tl.where(first, offsets + half, offsets - half)
    x = tl.load(base + offsets, mask=mask).to(tl.float32)
    y = tl.load(base + partner, mask=mask).to(tl.float32)
    cos = tl.load(cos_ptr + patch * head_dim + channel, mask=mask)
    sin = tl.load(sin_ptr + patch * head_dim + channel, mask=mask)
    rotated = x * cos + tl.where(first, -y, y) * sin
    tl.store(base + offsets, rotated.to(qkv_ptr.dtype.element_ty), mask=mask)


@triton.jit
def add_norm_kernel(
    x_ptr, branch_ptr, gamma_ptr, weight_ptr, bias_ptr, out_ptr, normed_ptr, rows, eps, dim: tl.constexpr,
    block_rows: tl.constexpr, block_dim: tl.constexpr,
):
    row = tl.program_id(0) * block_rows + tl.arange(0, block_rows)[:, None]
    column = tl.arange(0, block_dim)[None, :]
    in_row = column < dim
    mask = (row < rows) & in_row
    offsets = row.to(tl.int64) * dim + column
    x = tl.load(x_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
    branch = tl.load(branch_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
    gamma = tl.load(gamma_ptr + column, mask=in_row, other=0.0).to(tl.float32)
    out = (x + branch * gamma).to(out_ptr.dtype.element_ty)  # rounded as the residual stream is stored
    tl.store(out_ptr + offsets, out, mask=mask)
    h = out.to(tl.float32)
    mean = tl.sum(h, axis=1) / dim
    centered = tl.where(mask, h - mean[:, None], 0.0)
    rstd = 1.0 / tl.sqrt(tl.sum(centered * centered, axis=1) / dim + eps)
    weight = tl.load(weight_ptr + column, mask=in_row, other=0.0).to(tl.float32)
    bias = tl.load(bias_ptr + column, mask=in_row, other=0.0).to(tl.float32)
    normed = centered * rstd[:, None] * weight + bias
    tl.store(normed_ptr + offsets, normed.to(normed_ptr.dtype.element_ty), mask=mask)


@triton.jit
def silu_mul_kernel(x_ptr, out_ptr, count, hidden: tl.constexpr, block: tl.constexpr):
    index = tl.program_id(0).to(tl.int64) * block + tl.arange(0, block)
    mask = index < count
    gate_at = (index // hidden) * (2 * hidden) + index % hidden
    gate = tl.load(x_ptr + gate_at, mask=mask).to(tl.float32)
    up = tl.load(x_ptr + gate_at + hidden, mask=mask).to(tl.float32)
    dtype = out_ptr.dtype.element_ty
    activated = (gate / (1.0 + tl.exp(-gate))).to(dtype).to(tl.float32)  # rounded, as torch's silu output
    tl.store(out_ptr + index, (activated * up).to(dtype), mask=mask)
