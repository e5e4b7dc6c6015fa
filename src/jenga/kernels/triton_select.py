"""Triton kernel that turns block probabilities into block lists in one pass (the selector's hot path).

One program handles ``ROWS`` query block rows of one (batch, head). For a video query row it sorts the row's
``Vb`` probabilities, finds how many lead the ranking (``n = max(top_k, n_cdf)``), keeps exactly those
(ties at the cut-off go to the lower block id, as a stable descending sort orders them), adds the
adjacency row, the always-kept blocks and every text key block, and writes the ascending kept ids
with a cumulative sum as write positions. Text query rows are written dense. No host synchronisation.

The probability mass ahead of each block is summed in fixed point (``int64``, probabilities scaled
by ``mass_scale``, a power of two, and truncated): integer sums do not depend on the order of the
additions, so this kernel and the torch reference take the same decision on every row.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .triton_block_sparse import interpreting


@triton.jit
def _select_rows(
    Probs, Adjacency, AlwaysKeep, KvIndex, KvCount,
    video_blocks, num_blocks, first_text_block, top_k, mass_limit,
    ROWS: tl.constexpr, WIDTH: tl.constexpr, MASS_SCALE: tl.constexpr,
    HAS_ADJACENCY: tl.constexpr, HAS_ALWAYS_KEEP: tl.constexpr,
):
    bh = tl.program_id(1).to(tl.int64)
    rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    offs = tl.arange(0, WIDTH)
    cols = offs[None, :]
    video_row = (rows < first_text_block)[:, None]
    video = video_row & (cols < video_blocks)

    # -- rank the row's probabilities, descending; padding (-1) sinks below every probability
    p = tl.load(Probs + (bh * video_blocks + rows[:, None]) * video_blocks + cols, mask=video, other=-1.0)
    ranked = tl.sort(p, descending=True)
    fixed = tl.where(video, (ranked * MASS_SCALE).to(tl.int64), 0)
    mass_before = tl.cumsum(fixed, 1) - fixed
    lead = video & ((mass_before < mass_limit) | (cols < top_k))  # a prefix: mass_before never falls
    n_keep = tl.sum(lead.to(tl.int32), 1)
    cutoff = tl.min(tl.where(lead, ranked, float("inf")), 1)  # the n-th largest probability

    # -- back to block order: every block above the cut-off, then the lowest ids among the ties at it
    above = p > cutoff[:, None]
    tied = video & (p == cutoff[:, None])
    spare = n_keep - tl.sum(above.to(tl.int32), 1)
    keep = above | (tied & (tl.cumsum(tied.to(tl.int32), 1) <= spare[:, None]))
    if HAS_ADJACENCY:
        keep = keep | (tl.load(Adjacency + rows[:, None] * video_blocks + cols, mask=video, other=0) != 0)
    if HAS_ALWAYS_KEEP:
        keep = keep | (tl.load(AlwaysKeep + cols, mask=video, other=0) != 0)
    # text key blocks are always kept; text query rows attend to every block
    keep = (keep | ~video_row | (cols >= first_text_block)) & (cols < num_blocks)

    # -- the list: kept ids at their rank among the kept, then 0 up to the capacity
    flags = keep.to(tl.int32)
    count = tl.sum(flags, 1)
    in_rows = rows < num_blocks
    out = KvIndex + (bh * num_blocks + rows[:, None]) * num_blocks
    tl.store(out + tl.cumsum(flags, 1) - 1, cols + 0 * flags, mask=keep & in_rows[:, None])
    pad = in_rows[:, None] & (cols < num_blocks) & (cols >= count[:, None])
    tl.store(out + cols, 0 * flags, mask=pad)
    tl.store(KvCount + bh * num_blocks + rows, count, mask=in_rows)


def select_lists_triton(
    probs: torch.Tensor,
    adjacency: torch.Tensor | None,
    always_keep: torch.Tensor | None,
    num_blocks: int,
    first_text_block: int,
    top_k: int,
    mass_limit: int,
    mass_scale: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``probs float32[B, H, Vb, Vb]`` (softmax over the video key blocks) -> ``(kv_index, kv_count)``.

    ``kv_index int32[B, H, Kb, Kb]`` and ``kv_count int32[B, H, Kb]`` with ``Kb = num_blocks``; every
    element is written, so both start empty. A video key block is kept by the ranking when its rank is
    below ``top_k`` or the fixed-point mass ranked strictly ahead of it is below ``mass_limit``.
    """
    batch, heads, video_blocks, _ = probs.shape
    probs = probs.contiguous()
    kv_index = torch.empty((batch, heads, num_blocks, num_blocks), device=probs.device, dtype=torch.int32)
    kv_count = torch.empty((batch, heads, num_blocks), device=probs.device, dtype=torch.int32)
    # bool tensors are read as bytes; an absent table is never read, any tensor stands in for it
    adjacency_arg = probs if adjacency is None else adjacency.contiguous().view(torch.uint8)
    always_arg = probs if always_keep is None else always_keep.contiguous().view(torch.uint8)
    width = triton.next_power_of_2(num_blocks)
    rows, warps = _tile(width, num_blocks)
    _select_rows[(triton.cdiv(num_blocks, rows), batch * heads)](
        probs, adjacency_arg, always_arg, kv_index, kv_count,
        video_blocks, num_blocks, first_text_block, top_k, mass_limit,
        ROWS=rows, WIDTH=width, MASS_SCALE=mass_scale, HAS_ADJACENCY=adjacency is not None,
        HAS_ALWAYS_KEEP=always_keep is not None, num_warps=warps,
    )
    return kv_index, kv_count


def _tile(width: int, num_blocks: int) -> tuple[int, int]:
    """(rows per program, warps). The interpreter pays per program, so it takes many rows at once."""
    if interpreting():
        return min(16, triton.next_power_of_2(num_blocks)), 1
    return 1, max(1, min(8, width // 128))
