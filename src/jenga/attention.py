"""Public block-sparse attention: input checks, backend choice, and the torch custom op.

The Triton path is registered as the custom op ``jenga::block_sparse_attention`` with a fake
(meta) implementation, so ``torch.compile(fullgraph=True)`` traces through it without a graph break.
"""

from __future__ import annotations

import contextlib
import math
from typing import Literal

import numpy as np
import torch

from .backends import BackendRegistry, Constraint, interpreting, triton_available, triton_importable
from .kernels import reference

Backend = Literal["auto", "triton", "torch", "flex"]
SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
SUPPORTED_BLOCK_SIZES = (16, 32, 64, 128, 256)
TRITON_HEAD_DIMS = (16, 32, 64, 128, 256)

# name -> function ``(q, k, v, kv_index, kv_count, block_size, key_lengths, bias_start, bias_value,
# return_lse) -> (out, lse or None)`` and what it needs of ``q``
ATTENTION_BACKENDS = BackendRegistry("attention")

_TRITON_NEEDS = (
    Constraint("the triton package", lambda q: triton_importable()),
    Constraint("a CUDA device (or TRITON_INTERPRET=1 for CPU tensors)", lambda q: triton_available()),
    Constraint("CUDA tensors (or TRITON_INTERPRET=1 to run it on the CPU)", lambda q: q.is_cuda or interpreting(),
               lambda q: f"{q.device} tensors"),
    Constraint(f"head dims {TRITON_HEAD_DIMS}", lambda q: q.shape[-1] in TRITON_HEAD_DIMS, lambda q: q.shape[-1]),
    Constraint("float16, bfloat16 or float32 (float64: backend='torch')", lambda q: q.dtype in SUPPORTED_DTYPES,
               lambda q: q.dtype),
)


@ATTENTION_BACKENDS.register("triton", _TRITON_NEEDS)
def _attention_triton(q, k, v, kv_index, kv_count, block_size, key_lengths, bias_start, bias_value, return_lse):
    return torch.ops.jenga.block_sparse_attention(
        q, k, v, kv_index, kv_count, block_size, key_lengths, bias_start, bias_value, return_lse
    )


@ATTENTION_BACKENDS.register("torch")
def _attention_torch(q, k, v, kv_index, kv_count, block_size, key_lengths, bias_start, bias_value, return_lse):
    if not return_lse and q.dtype != torch.float64:
        out = reference.block_sparse_attention_masked_sdpa(
            q, k, v, kv_index, kv_count, block_size, key_lengths, bias_start, bias_value
        )
        return out, None
    return reference.block_sparse_attention_reference(
        q, k, v, kv_index, kv_count, block_size, key_lengths, bias_start, bias_value
    )


@ATTENTION_BACKENDS.register("flex")
def _attention_flex(q, k, v, kv_index, kv_count, block_size, key_lengths, bias_start, bias_value, return_lse):
    from .kernels.flex import block_sparse_attention_flex

    return block_sparse_attention_flex(
        q, k, v, kv_index, kv_count, block_size, key_lengths, bias_start, bias_value, return_lse
    )


def _fa4_importable(q) -> bool:
    from .kernels.fa4 import fa4_importable

    return fa4_importable()


_FA4_NEEDS = (
    Constraint("flash-attn-4 (flash_attn.cute) installed", _fa4_importable),
    Constraint("CUDA tensors", lambda q: q.is_cuda, lambda q: f"{q.device} tensors"),
    Constraint("a Hopper or Blackwell GPU (compute capability 9.x or 10.x)",
               lambda q: q.is_cuda and torch.cuda.get_device_capability(q.device)[0] in (9, 10)),
    Constraint("head dims (64, 96, 128)", lambda q: q.shape[-1] in (64, 96, 128), lambda q: q.shape[-1]),
    Constraint("float16 or bfloat16", lambda q: q.dtype in (torch.float16, torch.bfloat16), lambda q: q.dtype),
)


@ATTENTION_BACKENDS.register("fa4", _FA4_NEEDS)
def _attention_fa4(q, k, v, kv_index, kv_count, block_size, key_lengths, bias_start, bias_value, return_lse):
    from .kernels.fa4 import block_sparse_attention_fa4

    return block_sparse_attention_fa4(
        q, k, v, kv_index, kv_count, block_size, key_lengths, bias_start, bias_value, return_lse
    )


BACKENDS = ("auto", *ATTENTION_BACKENDS.names())


def block_sparse_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    kv_index: torch.Tensor,
    kv_count: torch.Tensor,
    *,
    block_size: int = 128,
    key_lengths: torch.Tensor | None = None,
    key_bias: tuple[int, float] | None = None,
    return_lse: bool = False,
    backend: Backend = "auto",
    check_indices: bool = True,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Attention where each query block attends only to its listed key blocks.

    Args:
        q: ``[B, Nq, H, D]`` queries (diffusers' layout; no transpose needed).
        k, v: ``[B, Nk, H, D]`` keys and values; ``Nk`` may differ from ``Nq``.
        kv_index, kv_count: block lists (:mod:`jenga.blocks`): ``int32[B|1, H|1, ceil(Nq/bs), Kcap]``
            ascending key block ids and ``int32[B|1, H|1, ceil(Nq/bs)]`` counts.
        block_size: tokens per query block and per key block.
        key_lengths: optional ``int[B]``; keys at or past ``key_lengths[b]`` are masked (padded text).
        key_bias: optional ``(start, value)``: ``value`` is added to the logits of keys ``>= start``.
        return_lse: also return the natural-log log-sum-exp, ``float32[B, H, Nq]``.
        backend: ``"triton"`` (our kernel), ``"torch"`` (PyTorch: SDPA with a token mask, or the explicit
            float32 reference when the LSE is asked for or inputs are float64), ``"flex"`` (FlexAttention) or
            ``"auto"`` (triton on CUDA, torch elsewhere).
        check_indices: verify list contents (range, order); costs one host synchronisation. With False the
            lists are trusted. Bad lists then give, on ``"triton"``: out-of-bounds reads for ids outside
            ``[0, key blocks)`` or counts above the capacity (garbage, or an illegal memory access), the key
            limit masked only on the last entry of an unordered list, repeated ids attended twice (silently
            wrong); on ``"torch"`` / ``"flex"``: a block set (order and repeats ignored, counts clamped to
            ``[0, Kcap]``, the id equal to the key block count dropped, other out-of-range ids an indexing
            error). Keep it on for lists not built by :func:`~jenga.select_blocks` / ``dense_to_lists``.

    Rows with no valid key give 0 (and LSE ``-inf``), never NaN. Forward only (inference).
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    _check_inputs(q, k, v, kv_index, kv_count, block_size, key_lengths, key_bias)
    if backend == "auto":
        backend = "triton" if q.is_cuda and triton_available() else "torch"
    if backend == "triton":
        ATTENTION_BACKENDS.check("triton", q=q, fix="Use backend='torch' or 'flex'")
    if backend == "fa4":
        ATTENTION_BACKENDS.check("fa4", q=q, fix="Use backend='triton' (or install flash-attn-4 on a Hopper GPU)")
    if check_indices:
        _check_list_contents(kv_index, kv_count, math.ceil(k.shape[1] / block_size))
    if key_lengths is not None:
        key_lengths = key_lengths.to(device=q.device, dtype=torch.int32).contiguous()
    bias_start, bias_value = (k.shape[1], 0.0) if key_bias is None else (int(key_bias[0]), float(key_bias[1]))
    kv_index = kv_index.to(torch.int32).contiguous()
    kv_count = kv_count.to(torch.int32).contiguous()

    out, lse = ATTENTION_BACKENDS.get(backend).fn(
        q, k, v, kv_index, kv_count, block_size, key_lengths, bias_start, bias_value, return_lse
    )
    return (out, lse) if return_lse else out


# ----------------------------------------------------------------------------------------------
# the custom op around the Triton launcher


@torch.library.custom_op("jenga::block_sparse_attention", mutates_args=())
def _block_sparse_attention_op(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    kv_index: torch.Tensor,
    kv_count: torch.Tensor,
    block_size: int,
    key_lengths: torch.Tensor | None,
    bias_start: int,
    bias_value: float,
    return_lse: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    from .kernels.triton_block_sparse import block_sparse_attention_triton

    with torch.cuda.device(q.device) if q.is_cuda else contextlib.nullcontext():
        return block_sparse_attention_triton(
            q, k, v, kv_index, kv_count, block_size, key_lengths, bias_start, bias_value, return_lse
        )


@_block_sparse_attention_op.register_fake
def _(q, k, v, kv_index, kv_count, block_size, key_lengths, bias_start, bias_value, return_lse):
    batch, seq_q, heads, _ = q.shape
    lse = q.new_empty((batch, heads, seq_q if return_lse else 0), dtype=torch.float32)
    return torch.empty_like(q if q.stride(-1) == 1 else q.contiguous()), lse  # as the launcher allocates


# ----------------------------------------------------------------------------------------------
# input checks: each names what is wrong and what is accepted


def _check_inputs(q, k, v, kv_index, kv_count, block_size, key_lengths, key_bias) -> None:
    for name, t in (("q", q), ("k", k), ("v", v), ("kv_index", kv_index), ("kv_count", kv_count)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    for name, t in (("q", q), ("k", k), ("v", v)):
        if t.dim() != 4:
            raise ValueError(f"{name} must be [batch, tokens, heads, head_dim] (4-D), got shape {tuple(t.shape)}")
        if t.dtype not in SUPPORTED_DTYPES and t.dtype != torch.float64:
            raise TypeError(f"{name} has dtype {t.dtype}; supported: float16, bfloat16, float32 "
                            "(float64 with backend='torch')")
    if not (q.dtype == k.dtype == v.dtype):
        raise TypeError(f"q, k, v must share one dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if not (q.device == k.device == v.device):
        raise ValueError(f"q, k, v must be on one device, got {q.device}, {k.device}, {v.device}")
    batch, seq_q, heads, head_dim = q.shape
    if k.shape != v.shape:
        raise ValueError(f"k and v must have the same shape, got {tuple(k.shape)} and {tuple(v.shape)}")
    if (k.shape[0], k.shape[2], k.shape[3]) != (batch, heads, head_dim):
        raise ValueError(
            f"k/v must match q in batch, heads and head_dim: q {tuple(q.shape)}, k {tuple(k.shape)}"
        )
    if seq_q == 0 or k.shape[1] == 0:
        raise ValueError(f"q and k need at least one token, got Nq={seq_q}, Nk={k.shape[1]}")
    if block_size not in SUPPORTED_BLOCK_SIZES:
        raise ValueError(f"block_size must be one of {SUPPORTED_BLOCK_SIZES}, got {block_size!r}")
    num_qb = math.ceil(seq_q / block_size)
    if kv_index.dim() != 4 or kv_count.dim() != 3:
        raise ValueError(
            f"kv_index must be [B, H, Qb, Kcap] and kv_count [B, H, Qb]; got {tuple(kv_index.shape)} "
            f"and {tuple(kv_count.shape)}"
        )
    if kv_index.dtype not in (torch.int32, torch.int64) or kv_count.dtype not in (torch.int32, torch.int64):
        raise TypeError(f"kv_index/kv_count must be int32 (or int64), got {kv_index.dtype}/{kv_count.dtype}")
    if kv_index.device != q.device or kv_count.device != q.device:
        raise ValueError(f"block lists must be on {q.device}, got {kv_index.device}/{kv_count.device}")
    lb, lh, lq = kv_count.shape
    if kv_index.shape[:3] != kv_count.shape:
        raise ValueError(f"kv_index {tuple(kv_index.shape)} and kv_count {tuple(kv_count.shape)} disagree")
    if lb not in (1, batch) or lh not in (1, heads) or lq != num_qb:
        raise ValueError(
            f"block lists must be [B or 1, H or 1, ceil(Nq/block_size)={num_qb}, ...] for q of shape "
            f"{tuple(q.shape)} and block_size {block_size}; got kv_count {tuple(kv_count.shape)}"
        )
    if key_lengths is not None:
        if not isinstance(key_lengths, torch.Tensor) or key_lengths.shape != (batch,):
            got = tuple(key_lengths.shape) if isinstance(key_lengths, torch.Tensor) else type(key_lengths)
            raise ValueError(f"key_lengths must be an integer tensor of shape ({batch},), got {got}")
        if key_lengths.is_floating_point() or key_lengths.is_complex():
            raise TypeError(f"key_lengths must be integer, got {key_lengths.dtype}")
    if key_bias is not None:
        if not isinstance(key_bias, (tuple, list)) or len(key_bias) != 2:
            raise ValueError(f"key_bias must be a (start, value) pair, got {key_bias!r}")
        start, value = key_bias
        if isinstance(start, bool) or not isinstance(start, (int, np.integer)) or start < 0:
            raise ValueError(f"key_bias start must be an int >= 0 (the first biased key), got {start!r}")
        if isinstance(value, bool) or not isinstance(value, (int, float, np.number)) or not math.isfinite(value):
            raise ValueError(f"key_bias value must be a finite float (added to the logits), got {value!r}")


def _check_list_contents(kv_index: torch.Tensor, kv_count: torch.Tensor, num_kb: int) -> None:
    kcap = kv_index.shape[-1]
    valid = torch.arange(kcap, device=kv_index.device) < kv_count.unsqueeze(-1)
    bad_count = ((kv_count < 0) | (kv_count > min(kcap, num_kb))).any()
    bad_range = (valid & ((kv_index < 0) | (kv_index >= num_kb))).any()
    steps = kv_index[..., 1:] - kv_index[..., :-1]
    bad_order = (valid[..., 1:] & (steps <= 0)).any()
    flags = torch.stack([bad_count, bad_range, bad_order]).tolist()
    if flags[0]:
        raise ValueError(f"kv_count entries must lie in [0, min(Kcap={kcap}, key blocks={num_kb})]")
    if flags[1]:
        raise ValueError(f"kv_index holds key block ids outside [0, {num_kb}) (keys have {num_kb} blocks)")
    if flags[2]:
        raise ValueError("kv_index rows must be strictly ascending within their counts")
