"""Opt-in key phases for the block-sparse kernel: the key blocks cut into contiguous ranges, one launch
each, so that the keys and values one head's concurrently running programs touch could stay in L2 (lists
ascend, so each range is a contiguous run of every list). A phase writes its normalised output and
log-sum-exp in float32; the next folds them into its own, the last writes ``out`` (and the LSE).

Off by default: on an H100 (50 MB of L2), random lists over a window of 16 MB of keys + values per head ran
at 552 TFLOP/s, over 61 MB at 444 (benchmarks/kernel_locality.py), but splitting the keys into ranges of
:data:`_PHASE_BYTES` per head did not recover that (HunyuanVideo dense 391 ms in 3 phases against 346 ms in
one launch, H100, benchmarks/RESULTS.md). Kept for experiments until the cause is found.
"""

from __future__ import annotations

import math

import torch
import triton

from ..backends import interpreting
from .triton_block_sparse import _launcher

_PHASE_BYTES = 24 * 2**20


def block_sparse_attention_key_phases(
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
    out: torch.Tensor | None = None,
    lse: torch.Tensor | None = None,
    config: dict[str, int] | None = None,
    use_tma: bool | None = None,
    key_phases: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`~jenga.kernels.triton_block_sparse.block_sparse_attention_triton` with the key blocks split
    into ``key_phases`` contiguous ranges (default 1: one launch, as the plain launcher), merged through a
    float32 partial output."""
    launch, out, lse = _launcher(q, k, v, kv_index, kv_count, block_size, key_lengths, bias_start, bias_value,
                                 return_lse, out, lse, config, use_tma)
    batch, seq_q, heads, head_dim = q.shape
    key_blocks = triton.cdiv(k.shape[1], block_size)
    phases = 1 if key_phases is None else key_phases
    phases = max(1, min(int(phases), key_blocks))
    if phases > 1:
        part = torch.empty((batch, seq_q, heads, head_dim), device=q.device, dtype=torch.float32)
        part_lse = torch.empty((batch, heads, seq_q), device=q.device, dtype=torch.float32)
    else:  # never read nor written: FINAL with no MERGE_IN
        part, part_lse = out, lse
    bounds = [i * key_blocks // phases for i in range(phases + 1)]
    for phase in range(phases):
        # every phase shares one autotuning key; the first (which reads no partial output) tunes it, so the
        # benchmark never repeats a launch that merges in place
        launch(part, part_lse, bounds[phase], bounds[phase + 1], split=phases > 1, merge_in=phase > 0,
               final=phase == phases - 1)
    return out, lse


def key_phases_for(k: torch.Tensor) -> int:
    """Key ranges that keep each range's keys + values per head under :data:`_PHASE_BYTES` (1 on the CPU);
    what ``key_phases`` would be set to for an experiment, not the default."""
    if not k.is_cuda or interpreting():
        return 1
    per_head = 2 * k.shape[1] * k.shape[3] * k.element_size()
    return max(1, math.ceil(per_head / _PHASE_BYTES))
