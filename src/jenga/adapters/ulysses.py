"""Carving under Ulysses: diffusers' all-to-all around :func:`jenga.adapters.base.carve_attention`.

After the all-to-all every rank holds the full carved sequence for ``H / degree`` heads, so selection and
the kernel see what one GPU sees (design: :mod:`jenga.parallel`).
"""

from __future__ import annotations

from typing import Any

import torch

from .._parallel_state import video_then_text
from .base import carve_attention

__all__ = ["carve_attention_ulysses"]


def carve_attention_ulysses(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    runtime: Any,
    *,
    owner: Any,
    attention_mask: torch.Tensor | None = None,
    dense: bool = False,
) -> torch.Tensor:
    """Local ``[B, S_local, H, D]`` (this rank's carved video shard, then its text shard if any) in,
    local out; in between, diffusers' Ulysses all-to-all and :func:`jenga.adapters.base.carve_attention`
    on the full sequence for ``H / degree`` heads. ``attention_mask``: a bool key mask ``[B, 1, 1, S_local]``
    (valid prefix of the full text, HunyuanVideo)."""
    from diffusers.models.attention_dispatch import _templated_context_parallel_attention

    state = runtime.parallel
    num_video = runtime.plan.num_tokens
    local_video = state.local_length(num_video)
    local_text = query.shape[1] - local_video

    def forward_op(ctx, q, k, v, attn_mask, dropout_p, is_causal, scale, enable_gqa, return_lse,
                   _save_ctx=True, _parallel_config=None):
        if return_lse:
            raise NotImplementedError("jenga's Ulysses carving returns no LSE")
        order = video_then_text(state, num_video, q.shape[1], local_text, q.device)
        if order is not None:
            q, k, v = (x.index_select(1, order) for x in (q, k, v))
            if attn_mask is not None:
                attn_mask = attn_mask.index_select(-1, order)
        key_lengths = None
        if attn_mask is not None:
            key_lengths = attn_mask.reshape(attn_mask.shape[0], -1).sum(-1)
        out = carve_attention(q, k, v, runtime, owner=owner, key_lengths=key_lengths, dense=dense)
        if order is not None:
            out = out.index_select(1, torch.argsort(order))
        return out

    if state.world == 1:  # diffusers' dispatch runs no context-parallel op on one rank either
        return forward_op(None, query, key, value, attention_mask, 0.0, False, None, False, False)
    return _templated_context_parallel_attention(
        query, key, value, attention_mask, 0.0, False, None, False, False,
        forward_op=forward_op, backward_op=None, _parallel_config=state.config,
    )
