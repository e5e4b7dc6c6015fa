"""Plain PyTorch block-sparse attention: the CPU fallback and the test oracle.

Same semantics as the Triton kernel (see :func:`jenga.block_sparse_attention`), computed in float32
(float64 inputs stay float64) one chunk of query blocks at a time so memory stays bounded.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch

from ..blocks import lists_to_dense

# Token-level logits materialised at once, per (batch, head): bounds the reference's memory.
_MAX_LOGITS_PER_CHUNK = 1 << 24


def _token_mask_chunks(
    batch: int, heads: int, seq_q: int, seq_k: int, kv_index: torch.Tensor, kv_count: torch.Tensor,
    block_size: int, key_lengths: torch.Tensor | None, device: torch.device,
) -> Iterator[tuple[int, int, torch.Tensor]]:
    """``(start, stop, bool[B, H, stop - start, seq_k])``: the block lists as a token mask (padded keys off),
    one chunk of query rows at a time so the materialised logits stay bounded."""
    block_mask = lists_to_dense(kv_index, kv_count, math.ceil(seq_k / block_size)).expand(batch, heads, -1, -1)
    if key_lengths is None:
        key_valid = torch.ones(batch, seq_k, dtype=torch.bool, device=device)
    else:
        key_valid = torch.arange(seq_k, device=device).unsqueeze(0) < key_lengths.to(device).view(-1, 1)
    rows_per_chunk = max(block_size, (_MAX_LOGITS_PER_CHUNK // max(seq_k, 1)) // block_size * block_size)
    for start in range(0, seq_q, rows_per_chunk):
        stop = min(seq_q, start + rows_per_chunk)
        blocks = block_mask[:, :, start // block_size : math.ceil(stop / block_size)]
        token_mask = blocks.repeat_interleave(block_size, dim=2)[:, :, : stop - start]
        token_mask = token_mask.repeat_interleave(block_size, dim=3)[..., :seq_k]
        yield start, stop, token_mask & key_valid[:, None, None, :]


def block_sparse_attention_reference(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    kv_index: torch.Tensor,
    kv_count: torch.Tensor,
    block_size: int,
    key_lengths: torch.Tensor | None,
    bias_start: int,
    bias_value: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns ``(out [B, Nq, H, D] in q.dtype, lse float32 [B, H, Nq])`` (natural log)."""
    batch, seq_q, heads, head_dim = q.shape
    seq_k = k.shape[1]
    compute_dtype = torch.float64 if q.dtype == torch.float64 else torch.float32
    key_pos = torch.arange(seq_k, device=q.device)
    key_bias = torch.where(key_pos >= bias_start, bias_value, 0.0).to(compute_dtype)

    qt = q.transpose(1, 2).to(compute_dtype)
    kt = k.transpose(1, 2).to(compute_dtype)
    vt = v.transpose(1, 2).to(compute_dtype)
    out = torch.empty(batch, heads, seq_q, head_dim, dtype=compute_dtype, device=q.device)
    lse = torch.empty(batch, heads, seq_q, dtype=torch.float32, device=q.device)
    scale = 1.0 / math.sqrt(head_dim)

    chunks = _token_mask_chunks(batch, heads, seq_q, seq_k, kv_index, kv_count, block_size, key_lengths, q.device)
    for start, stop, token_mask in chunks:
        logits = torch.matmul(qt[:, :, start:stop], kt.transpose(-1, -2)) * scale + key_bias
        logits = logits.masked_fill(~token_mask, float("-inf"))
        row_max = logits.amax(-1, keepdim=True)
        row_max = torch.where(torch.isfinite(row_max), row_max, torch.zeros_like(row_max))
        probs = torch.exp(logits - row_max)
        denom = probs.sum(-1, keepdim=True)
        out[:, :, start:stop] = torch.matmul(probs, vt) / torch.where(denom > 0, denom, 1.0)
        lse[:, :, start:stop] = (row_max + torch.log(denom)).squeeze(-1).float()
    return out.transpose(1, 2).to(q.dtype), lse


def block_sparse_attention_masked_sdpa(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    kv_index: torch.Tensor,
    kv_count: torch.Tensor,
    block_size: int,
    key_lengths: torch.Tensor | None,
    bias_start: int,
    bias_value: float,
) -> torch.Tensor:
    """The reference's output (no LSE) through PyTorch SDPA with a token mask, chunked over query blocks.

    The CPU path of ``jenga.patch``: SDPA's fused CPU kernel runs the same arithmetic several times faster
    than the explicit float32 reference, which stays the oracle. Rows with no valid key give 0, as the
    reference does (SDPA alone would give NaN there)."""
    batch, seq_q, heads, head_dim = q.shape
    seq_k = k.shape[1]
    key_bias = None
    if bias_value != 0.0 and bias_start < seq_k:
        key_bias = torch.where(torch.arange(seq_k, device=q.device) >= bias_start, bias_value, 0.0).to(q.dtype)

    qt, kt, vt = (t.transpose(1, 2) for t in (q, k, v))
    out = torch.empty(batch, heads, seq_q, head_dim, dtype=q.dtype, device=q.device)
    chunks = _token_mask_chunks(batch, heads, seq_q, seq_k, kv_index, kv_count, block_size, key_lengths, q.device)
    for start, stop, token_mask in chunks:
        mask: torch.Tensor = token_mask
        if key_bias is not None:
            mask = torch.where(token_mask, key_bias, float("-inf")).to(q.dtype)
        chunk = torch.nn.functional.scaled_dot_product_attention(qt[:, :, start:stop], kt, vt, attn_mask=mask)
        out[:, :, start:stop] = torch.where(token_mask.any(-1, keepdim=True), chunk, 0.0)
    return out.transpose(1, 2)
