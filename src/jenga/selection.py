"""Per-step block selection from block-pooled queries and keys (the "carving" decision).

For each (batch, head, video query block) the selector keeps the union of
1. the ``n = max(top_k, n_cdf)`` highest-scoring video key blocks, where scores are
   ``softmax(mean_q . mean_k / sqrt(D))`` over the video key blocks, ``top_k`` is the floor
   ``floor((1 - drop_rate) * video_blocks)`` and ``n_cdf`` the fewest blocks whose mass reaches ``p``;
2. the 3D adjacency row of the query block (neighbouring regions of the video);
3. always-kept key blocks: every block holding text tokens (joint attention) and, for image-to-video,
   the blocks of the first latent frame.
Query blocks that hold text tokens attend to everything. Everything runs on the device: no
``.item()``, no ``nonzero``, no host synchronisation; equal inputs give equal lists.
"""

from __future__ import annotations

import math

import torch

from .blocks import BlockLists, dense_to_lists


def pool_blocks(x: torch.Tensor, block_size: int, num_tokens: int) -> torch.Tensor:
    """Mean of ``x[:, :num_tokens]`` ``[B, N, H, D]`` over blocks -> float32 ``[B, H, nb, D]``.

    The last block is averaged over its valid tokens only.
    """
    batch, _, heads, dim = x.shape
    num_blocks = math.ceil(num_tokens / block_size)
    pad = num_blocks * block_size - num_tokens
    x = x[:, :num_tokens].float()
    if pad:
        x = torch.nn.functional.pad(x, (0, 0, 0, 0, 0, pad))
    sums = x.view(batch, num_blocks, block_size, heads, dim).sum(2)
    counts = torch.full((num_blocks,), float(block_size), device=x.device)
    counts[-1] = block_size - pad
    return (sums / counts.view(1, num_blocks, 1, 1)).transpose(1, 2)


def select_blocks(
    q: torch.Tensor,
    k: torch.Tensor,
    *,
    drop_rate: float,
    cdf_threshold: float,
    block_size: int = 128,
    num_video_tokens: int | None = None,
    adjacency: torch.Tensor | None = None,
    always_keep: torch.Tensor | None = None,
) -> BlockLists:
    """Block lists for self-attention over ``[video tokens; optional text tokens]``.

    Args:
        q, k: post-RoPE ``[B, N, H, D]``, video tokens first (in curve order), then text tokens.
        drop_rate: share of video key blocks to drop at most (0 keeps every block).
        cdf_threshold: probability mass ``p`` the kept blocks must reach at least.
        block_size: tokens per block.
        num_video_tokens: how many leading tokens are video (default: all).
        adjacency: optional ``bool[Vb, Vb]`` video-block adjacency (``Vb = ceil(Nv / block_size)``).
        always_keep: optional ``bool[Vb]``: video key blocks every query keeps (first frame in I2V).

    Returns:
        :class:`~jenga.blocks.BlockLists` with ``kv_index int32[B, H, Qb, Kb]``, ``kv_count int32[B, H, Qb]``.
    """
    _check_selection_args(q, k, drop_rate, cdf_threshold, block_size, num_video_tokens)
    batch, seq, heads, dim = q.shape
    num_video = seq if num_video_tokens is None else num_video_tokens
    num_blocks = math.ceil(seq / block_size)
    video_blocks = math.ceil(num_video / block_size)
    # a block that holds any text token is a "text block": always kept, and attends densely
    first_text_block = num_video // block_size if num_video < seq else num_blocks
    _check_tables(adjacency, always_keep, video_blocks, q.device)

    if drop_rate <= 0.0:
        keep = torch.ones(batch, heads, num_blocks, num_blocks, dtype=torch.bool, device=q.device)
        return BlockLists(*dense_to_lists(keep), num_key_blocks=num_blocks)

    # -- importance: pooled scores over the video key blocks
    q_pool = pool_blocks(q, block_size, num_video)
    k_pool = pool_blocks(k, block_size, num_video)
    probs = torch.softmax(q_pool @ k_pool.transpose(-1, -2) / math.sqrt(dim), dim=-1)  # [B,H,Vb,Vb]
    sorted_probs, order = probs.sort(dim=-1, descending=True)
    mass_before = sorted_probs.cumsum(-1) - sorted_probs  # mass of the blocks ranked ahead
    top_k = max(1, math.floor((1.0 - drop_rate) * video_blocks))
    rank = torch.arange(video_blocks, device=q.device)
    keep_sorted = (mass_before < cdf_threshold) | (rank < top_k)
    keep_video = torch.zeros_like(keep_sorted).scatter_(-1, order, keep_sorted)

    if adjacency is not None:
        keep_video |= adjacency
    if always_keep is not None:
        keep_video |= always_keep

    # -- assemble the full [Qb, Kb] mask: text keys kept, text queries dense
    keep = torch.ones(batch, heads, num_blocks, num_blocks, dtype=torch.bool, device=q.device)
    keep[:, :, :first_text_block, :first_text_block] = keep_video[:, :, :first_text_block, :first_text_block]
    return BlockLists(*dense_to_lists(keep), num_key_blocks=num_blocks)


def _check_selection_args(q, k, drop_rate, cdf_threshold, block_size, num_video_tokens) -> None:
    if q.dim() != 4 or k.shape != q.shape:
        raise ValueError(f"q and k must both be [B, N, H, D] of one shape, got {tuple(q.shape)}, {tuple(k.shape)}")
    if not 0.0 <= drop_rate < 1.0:
        raise ValueError(f"drop_rate must be in [0, 1), got {drop_rate}")
    if not 0.0 <= cdf_threshold <= 1.0:
        raise ValueError(f"cdf_threshold must be in [0, 1], got {cdf_threshold}")
    if not isinstance(block_size, int) or block_size <= 0:
        raise ValueError(f"block_size must be a positive int, got {block_size!r}")
    if num_video_tokens is not None and not 0 < num_video_tokens <= q.shape[1]:
        raise ValueError(f"num_video_tokens must be in [1, {q.shape[1]}], got {num_video_tokens}")


def _check_tables(adjacency, always_keep, video_blocks: int, device) -> None:
    if adjacency is not None and (adjacency.shape != (video_blocks, video_blocks) or adjacency.dtype != torch.bool):
        raise ValueError(
            f"adjacency must be bool[{video_blocks}, {video_blocks}] (one row per video block), got "
            f"{adjacency.dtype}{list(adjacency.shape)}"
        )
    if always_keep is not None and (always_keep.shape != (video_blocks,) or always_keep.dtype != torch.bool):
        raise ValueError(f"always_keep must be bool[{video_blocks}], got {always_keep.dtype}{list(always_keep.shape)}")
    for name, t in (("adjacency", adjacency), ("always_keep", always_keep)):
        if t is not None and t.device != device:
            raise ValueError(f"{name} is on {t.device}, expected {device}")
