"""FlashAttention-4's block-sparse forward (``flash-attn-4``, CuTe DSL) behind jenga's block lists, when installed.

Measured on an H200 (benchmarks/RESULTS.md, 2026-12-01, same run) it ran the same lists 1.01-1.18x faster than
our Hopper kernel (the Gluon one), so it is offered as ``backend="fa4"``: opt-in, never chosen by ``"auto"``
(it is an optional install, and takes no key lengths or key bias). Every listed block is full, so the lists go in
as FA4's *full* blocks (no mask evaluated).
"""

from __future__ import annotations

import functools

import torch

__all__ = ["fa4_importable", "block_sparse_attention_fa4"]

FA4_HEAD_DIMS = (64, 96, 128)
FA4_BLOCK_SIZE = 128


@functools.cache
def fa4_importable() -> bool:
    """True when ``flash_attn.cute`` (flash-attn-4) and its block-sparse tensors import."""
    try:
        from flash_attn.cute import flash_attn_func  # noqa: F401
        from flash_attn.cute.block_sparsity import BlockSparseTensorsTorch  # noqa: F401
    except Exception:  # noqa: BLE001 - any import failure means not usable
        return False
    return True


def block_sparse_attention_fa4(q, k, v, kv_index, kv_count, block_size, key_lengths, bias_start, bias_value,
                               return_lse):
    """``(out, lse or None)`` from FA4 on ``[B, N, H, D]`` inputs and jenga's lists (see module docstring)."""
    problems = []
    if block_size != FA4_BLOCK_SIZE:
        problems.append(f"block_size {FA4_BLOCK_SIZE} (got {block_size})")
    if key_lengths is not None:
        problems.append("no key_lengths")
    if bias_value != 0.0 and bias_start < k.shape[1]:
        problems.append("no key_bias")
    if problems:
        raise ValueError("backend='fa4' needs " + ", ".join(problems) + "; use backend='triton' for these inputs")
    from flash_attn.cute import flash_attn_func
    from flash_attn.cute.block_sparsity import BlockSparseTensorsTorch

    batch, _, heads, _ = q.shape
    index = kv_index.expand(batch, heads, -1, -1).contiguous()
    count = kv_count.expand(batch, heads, -1).contiguous()
    lists = BlockSparseTensorsTorch(mask_block_cnt=torch.zeros_like(count), mask_block_idx=torch.zeros_like(index),
                                    full_block_cnt=count, full_block_idx=index,
                                    block_size=(FA4_BLOCK_SIZE, FA4_BLOCK_SIZE))
    result = flash_attn_func(q, k, v, block_sparse_tensors=lists, return_lse=return_lse)
    if return_lse:
        out, lse = result[0], result[1]
        return out, lse.float()
    return (result[0] if isinstance(result, tuple) else result), None
