"""Triton kernel of the block selector's hot path: block probabilities -> block lists, in one pass.

One program handles ``ROWS`` query-block rows of one (batch, head). For a video query row it finds the
cut-off of the ranking by bisection on the probabilities' bit patterns (non-negative floats order like
their bits): the smallest value whose first block, in the stable descending order (ties by block id), is
still kept, i.e. fewer than ``top_k`` blocks rank ahead of it or their mass is below ``p``. Blocks above
the cut-off are kept, and of those tied at it as many as the rule admits, lowest ids first: exactly
``n = max(top_k, n_cdf)`` blocks, the set a stable descending sort keeps. Then it adds the adjacency row,
the always-kept blocks and every text key block (a row with a non-finite probability keeps every block: it
has no ranking), and writes the ascending kept ids with a cumulative sum
as write positions, 0 up to the capacity. Text query rows are written dense. Bisection needs only
reductions (31 rounds) and measured twice as fast as ``tl.sort`` on an H100 at 1024 key blocks.

Mass is summed in fixed point (probabilities times ``mass_scale``, a power of two, truncated to ``int64``):
integer sums do not depend on the order of the additions, so the kernel and the torch reference take the
same decision on every row.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..backends import interpreting

MAX_BLOCKS = 4096  # a row of key blocks stays in the registers of at most 4 warps


# sizes (blocks, the top-k floor) are not specialised on: one binary for every stage and video size
@triton.jit(do_not_specialize=["video_blocks", "num_blocks", "first_text_block", "top_k"])
def _select_rows(
    Probs, Adjacency, AlwaysKeep, KvIndex, KvCount,
    video_blocks, num_blocks, first_text_block, top_k, mass_limit,
    ROWS: tl.constexpr, WIDTH: tl.constexpr, MASS_SCALE: tl.constexpr,
    HAS_ADJACENCY: tl.constexpr, HAS_ALWAYS_KEEP: tl.constexpr,
):
    bh = tl.program_id(1).to(tl.int64)
    rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    cols = tl.arange(0, WIDTH)[None, :]
    video_row = (rows < first_text_block)[:, None]
    video = video_row & (cols < video_blocks)

    p = tl.load(Probs + (bh * video_blocks + rows[:, None]) * video_blocks + cols, mask=video, other=-1.0)
    # a row with a non-finite probability (an inf / nan score: softmax gives nan) has no ranking: kept whole;
    # its values become zeros so that the ranking's arithmetic below stays defined
    no_ranking = tl.max(((p != p) | (tl.abs(p) == float("inf"))).to(tl.int32), 1) > 0
    p = tl.where(no_ranking[:, None] & video, 0.0, p)
    bits = p.to(tl.int32, bitcast=True)  # padding (-1.0) has the sign bit: below every probability
    fixed = tl.where(video, (p * MASS_SCALE).to(tl.int64), 0)

    # -- bisection for the cut-off over [0, +inf bits]: "v passes" = the blocks above v are fewer than
    #    top_k or hold less mass than the limit; harder as v falls, and the row maximum passes (top_k >= 1)
    lo = tl.zeros([ROWS], dtype=tl.int32)
    hi = tl.full([ROWS], 0x7F800000, dtype=tl.int32)
    for _ in range(31):
        mid = lo + (hi - lo) // 2
        above = bits > mid[:, None]
        passes = (tl.sum(above.to(tl.int32), 1) < top_k) | (tl.sum(tl.where(above, fixed, 0), 1) < mass_limit)
        hi = tl.where(passes, mid, hi)
        lo = tl.where(passes, lo, mid + 1)
    cutoff = tl.min(tl.where(bits >= hi[:, None], bits, 0x7FFFFFFF), 1)  # smallest value present >= it

    # -- keep all above the cut-off; of the m tied at it (ranks c + i, mass ahead M + i * f), those with
    #    rank below top_k or mass ahead below the limit, lowest block ids first
    above = bits > cutoff[:, None]
    tied = bits == cutoff[:, None]
    ranked_ahead = tl.sum(above.to(tl.int32), 1)
    room = tl.maximum(mass_limit - tl.sum(tl.where(above, fixed, 0), 1), 0)
    num_tied = tl.sum(tied.to(tl.int32), 1).to(tl.int64)
    unit = tl.max(tl.where(tied, fixed, 0), 1)
    by_mass = tl.where(unit > 0, (room + unit - 1) // tl.maximum(unit, 1), tl.where(room > 0, num_tied, 0))
    take = tl.minimum(num_tied, tl.maximum(top_k - ranked_ahead, by_mass))  # int64: by_mass can be huge
    keep = above | (tied & (tl.cumsum(tied.to(tl.int32), 1) <= take[:, None]))

    keep = keep | no_ranking[:, None]
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
    element is written, so both start empty. A video key block is kept by the ranking when fewer than
    ``top_k`` blocks rank ahead of it or their fixed-point mass is below ``mass_limit``.
    """
    batch, heads, video_blocks, _ = probs.shape
    if num_blocks > MAX_BLOCKS:
        raise ValueError(f"the triton selector handles up to {MAX_BLOCKS} blocks, got {num_blocks}; "
                         "use backend='torch' or a larger block_size")
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
    """(rows per program, warps). One row per single-warp program measured fastest on an H100 at 256 and
    1024 key blocks (reductions stay inside the warp); wider rows get a warp per 1024 entries so the
    32 int64 entries per thread stay in registers. The interpreter pays per program: 16 rows at once."""
    if interpreting():
        return min(16, triton.next_power_of_2(num_blocks)), 1
    return 1, max(1, width // 1024)
