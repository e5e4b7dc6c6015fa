"""Triton kernel for Wan's query/key preparation: RMSNorm across all heads, then interleaved RoPE, in one pass.

Eager diffusers runs this as a chain of kernels per tensor with float32 intermediates (the RMSNorm, then for
the RoPE four full-size float32 products, a subtraction, an addition and strided copies), on each layer's
queries and keys. Under ``torch.compile`` inductor fuses them itself; eager users pay them on every layer.
One program here normalises one token row (all heads) in float32 and rotates its pairs, reading the input
once and writing the result once.

Rounding follows the stock ops: the normalised, weighted row is computed in float32 and rounded once to the
input dtype (``torch.nn.RMSNorm``), then each rotated pair is computed in float32 from the rounded values
and rounded once (Wan's RoPE writes ``x1 * cos - x2 * sin`` into a tensor of the input dtype). Reduction
order and fused multiply-adds differ, so a value may differ from the stock one by a unit in the last place.

Layout: ``x`` ``[B, N, C]``, any strides (a chunk of a fused QKV projection is read in place; a view with a
non-unit last stride is copied first);
``cos`` / ``sin`` ``[1 or B, N, 1, D]`` (``D = C / heads``); the output is a new contiguous ``[B, N, C]``.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

MAX_CHANNELS = 16384  # one row in the registers of at most 16 warps


@triton.jit
def _round_to(x, dtype: tl.constexpr):
    """float32 -> ``dtype``, rounding to nearest even. bfloat16 is rounded on the bits first: Triton's CPU
    interpreter truncates float32 -> bfloat16, and a value already representable converts exactly anywhere."""
    if dtype == tl.bfloat16:
        bits = x.to(tl.int32, bitcast=True)
        bits = (bits + (0x7FFF + ((bits >> 16) & 1))) & -65536
        x = bits.to(tl.float32, bitcast=True)
    return x.to(dtype)


@triton.jit
def _rms_norm_rope(
    X, W, Cos, Sin, Out,
    seq, stride_xb, stride_xn, stride_cb, stride_cn, stride_sb, stride_sn, eps,
    C: tl.constexpr, D: tl.constexpr, BLOCK_P: tl.constexpr,
):
    row = tl.program_id(0)
    b = (row // seq).to(tl.int64)
    n = (row % seq).to(tl.int64)
    pair = tl.arange(0, BLOCK_P)
    valid = pair < C // 2
    even = 2 * pair
    x_row = X + b * stride_xb + n * stride_xn
    x1 = tl.load(x_row + even, mask=valid, other=0.0).to(tl.float32)
    x2 = tl.load(x_row + even + 1, mask=valid, other=0.0).to(tl.float32)
    inv_rms = tl.math.rsqrt(tl.sum(x1 * x1 + x2 * x2, 0) / C + eps)

    dtype = Out.dtype.element_ty
    w1 = tl.load(W + even, mask=valid, other=0.0).to(tl.float32)
    w2 = tl.load(W + even + 1, mask=valid, other=0.0).to(tl.float32)
    y1 = _round_to(x1 * inv_rms * w1, dtype).to(tl.float32)  # the norm layer's output, in the input dtype
    y2 = _round_to(x2 * inv_rms * w2, dtype).to(tl.float32)

    d = even % D  # position of the pair inside its head: cos of the even, sin of the odd channel
    cos = tl.load(Cos + b * stride_cb + n * stride_cn + d, mask=valid, other=0.0).to(tl.float32)
    sin = tl.load(Sin + b * stride_sb + n * stride_sn + d + 1, mask=valid, other=0.0).to(tl.float32)
    out_row = Out + (b * seq + n) * C
    tl.store(out_row + even, _round_to(y1 * cos - y2 * sin, dtype), mask=valid)
    tl.store(out_row + even + 1, _round_to(y1 * sin + y2 * cos, dtype), mask=valid)


def rms_norm_rope_triton(
    x: torch.Tensor, weight: torch.Tensor, eps: float, cos: torch.Tensor, sin: torch.Tensor
) -> torch.Tensor:
    """RMSNorm of each ``[C]`` row of ``x`` ``[B, N, C]`` with ``weight``, then Wan's interleaved RoPE with
    ``cos`` / ``sin`` ``[1 or B, N, 1, D]``. Inputs are validated by the caller."""
    # rows are read with a unit stride in the last dimension: any other view is copied first
    x, weight, cos, sin = (t if t.stride(-1) == 1 else t.contiguous() for t in (x, weight, cos, sin))
    batch, seq, channels = x.shape
    head_dim = cos.shape[-1]
    out = torch.empty((batch, seq, channels), device=x.device, dtype=x.dtype)
    block_p = triton.next_power_of_2(channels // 2)
    warps = max(1, min(16, block_p // 256))
    _rms_norm_rope[(batch * seq,)](
        x, weight, cos, sin, out,
        seq, x.stride(0), x.stride(1),
        cos.stride(0) if cos.shape[0] > 1 else 0, cos.stride(1),
        sin.stride(0) if sin.shape[0] > 1 else 0, sin.stride(1), float(eps),
        C=channels, D=head_dim, BLOCK_P=block_p, num_warps=warps,
    )
    return out
