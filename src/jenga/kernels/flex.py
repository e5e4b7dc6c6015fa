"""FlexAttention with the same block lists, for A/B comparisons on the GPU."""

from __future__ import annotations

import functools
import math

import torch

from ..blocks import dense_to_lists, lists_to_dense


@functools.cache
def _compiled_flex():
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention, dynamic=False)


def flex_block_mask(
    kv_index: torch.Tensor,
    kv_count: torch.Tensor,
    batch: int,
    heads: int,
    seq_q: int,
    seq_k: int,
    block_size: int,
    key_lengths: torch.Tensor | None,
):
    """The same block lists as a FlexAttention ``BlockMask``.

    Listed blocks that lie wholly before the key limit go in as "full" blocks (no ``mask_mod`` call);
    the one block that straddles the limit goes in as a partial block. The ``mask_mod`` also encodes the
    block structure, because eager FlexAttention (on the CPU) applies ``mask_mod`` alone.
    """
    from torch.nn.attention.flex_attention import BlockMask

    num_qb = math.ceil(seq_q / block_size)
    num_kb = math.ceil(seq_k / block_size)
    if key_lengths is None:
        key_lengths = torch.full((batch,), seq_k, device=kv_index.device, dtype=torch.int32)
    limits = torch.clamp(key_lengths.to(kv_index.device), max=seq_k)
    listed = lists_to_dense(kv_index, kv_count, num_kb).expand(batch, heads, num_qb, num_kb)
    block_ends = (torch.arange(num_kb, device=kv_index.device) + 1) * block_size
    whole = (block_ends.view(1, -1) <= limits.view(-1, 1)).view(batch, 1, 1, num_kb)
    full_index, full_count = dense_to_lists(listed & whole)
    part_index, part_count = dense_to_lists(listed & ~whole)

    def mask_mod(b, h, q_idx, kv_idx):
        return listed[b, h, q_idx // block_size, kv_idx // block_size] & (kv_idx < limits[b])

    return BlockMask.from_kv_blocks(
        part_count, part_index, full_count, full_index,
        BLOCK_SIZE=block_size, mask_mod=mask_mod, seq_lengths=(seq_q, seq_k),
    )


def block_sparse_attention_flex(
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
    block_mask=None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns ``(out [B, Nq, H, D], lse float32 [B, H, Nq] or empty)``; compiled on CUDA, eager elsewhere.

    ``block_mask`` (from :func:`flex_block_mask`) may be passed to keep its construction out of timings.
    """
    from torch.nn.attention.flex_attention import flex_attention

    batch, seq_q, heads, _ = q.shape
    seq_k = k.shape[1]
    if block_mask is None:
        block_mask = flex_block_mask(kv_index, kv_count, batch, heads, seq_q, seq_k, block_size, key_lengths)
    score_mod = None
    if bias_value != 0.0:
        def score_mod(score, b, h, q_idx, kv_idx):
            return torch.where(kv_idx >= bias_start, score + bias_value, score)

    attend = _compiled_flex() if q.is_cuda else flex_attention
    args = (q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
    try:  # torch >= 2.9 names the LSE request AuxRequest; older releases take return_lse
        from torch.nn.attention.flex_attention import AuxRequest
    except ImportError:
        AuxRequest = None
    if AuxRequest is not None:
        out, aux = attend(*args, score_mod=score_mod, block_mask=block_mask, return_aux=AuxRequest(lse=True))
        lse = aux.lse
    else:
        out, lse = attend(*args, score_mod=score_mod, block_mask=block_mask, return_lse=True)
    lse = lse.float() if return_lse else lse.new_empty((batch, heads, 0), dtype=torch.float32)
    return out.transpose(1, 2), lse
