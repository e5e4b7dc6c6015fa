"""Per-step block selection from block-pooled queries and keys (the "carving" decision).

For each (batch, head, video query block) the selector keeps the union of
1. the ``n = max(top_k, n_cdf)`` highest-scoring video key blocks, where scores are
   ``softmax(mean_q . mean_k / sqrt(D))`` over the video key blocks, ``top_k`` is the floor
   ``floor((1 - drop_rate) * video_blocks)`` and ``n_cdf`` the fewest blocks whose mass reaches ``p``;
2. the 3D adjacency row of the query block (neighbouring regions of the video);
3. always-kept key blocks: every block holding text tokens (joint attention) and, for image-to-video,
   the blocks of the first latent frame.
Query blocks that hold text tokens attend to everything, and so does a query block whose pooled scores are
not all finite (an ``inf`` / ``nan`` in its queries or in the keys): it has no ranking, on any backend.
Everything runs on the device: no
``.item()``, no ``nonzero``, no host synchronisation; equal inputs give equal lists.

Exact rules, shared by the torch reference and the fused Triton kernel (identical lists):
- equal probabilities rank by block id (a stable descending sort), so exactly ``n`` blocks lead;
- the mass ranked ahead of a block is summed in fixed point (units of ``2**-60``, truncated), which is
  exact and independent of summation order; it is compared with ``p`` rounded to float32.
Earlier versions summed the mass in float32 and left ties to the sort; they can differ by one block in
rows where the mass ahead lies within float32 rounding of ``p``, or where probabilities tie at the cut-off.
"""

from __future__ import annotations

import contextlib
import math
from typing import Literal

import numpy as np
import torch

from ._checks import is_int
from .backends import BackendRegistry, Constraint, interpreting, triton_importable
from .blocks import BlockLists, dense_to_lists

SelectBackend = Literal["auto", "triton", "torch"]
SELECT_BACKENDS = ("auto", "triton", "torch")
# name -> ``(probs, adjacency, always_keep, num_blocks, first_text_block, top_k, mass_limit) -> (kv_index,
# kv_count)`` and the constraints on ``q`` and the row length (registered below)
SELECT_REGISTRY = BackendRegistry("selector")
# Probabilities are summed as integers in units of 2**-60: exact and order-free, so the Triton kernel and
# the torch reference agree bit for bit (a softmax row sums to about 2**60, far below the int64 limit).
MASS_SCALE = float(2**60)


def pool_blocks(x: torch.Tensor, block_size: int, num_tokens: int) -> torch.Tensor:
    """Mean of ``x[:, :num_tokens]`` ``[B, N, H, D]`` over blocks -> float32 ``[B, H, nb, D]``.

    The last block is averaged over its valid tokens only. Reads ``x`` once, in its own dtype and strides:
    one float32-accumulating mean over a view of the full blocks, one over the partial last block, written
    straight into the result (no upcast copy, no padded copy). A Triton kernel for this measured no faster
    on an H100 (both about 2 TB/s), so it stays plain torch, shared by both selector backends.
    """
    batch, _, heads, dim = x.shape
    full, rest = divmod(num_tokens, block_size)
    pooled = torch.empty((batch, full + (rest > 0), heads, dim), device=x.device, dtype=torch.float32)
    if full:
        blocks = x[:, : full * block_size].unflatten(1, (full, block_size))
        torch.mean(blocks, 2, dtype=torch.float32, out=pooled[:, :full])
    if rest:
        torch.mean(x[:, full * block_size : num_tokens], 1, keepdim=True, dtype=torch.float32, out=pooled[:, full:])
    return pooled.transpose(1, 2)


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
    backend: SelectBackend = "auto",
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
        backend: ``"triton"`` (one fused kernel ranks, merges and writes the lists), ``"torch"`` (the
            reference) or ``"auto"`` (triton on CUDA, torch elsewhere). Both give identical lists.

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
    run_lists = SELECT_REGISTRY.get(_resolve_backend(backend, q, num_blocks)).fn

    if drop_rate <= 0.0:
        return _all_blocks(batch, heads, num_blocks, q.device)

    # -- importance: pooled scores over the video key blocks (shared by both backends, bit for bit)
    q_pool = pool_blocks(q, block_size, num_video)
    k_pool = pool_blocks(k, block_size, num_video)
    # a row with a non-finite score (an inf / nan query or key, or a float32 overflow) has nan probabilities
    # and no ranking: each backend keeps every block of it
    probs = torch.softmax(torch.matmul(q_pool, k_pool.transpose(-1, -2)).div_(math.sqrt(dim)), dim=-1)
    top_k = max(1, math.floor((1.0 - drop_rate) * video_blocks))
    mass_limit = _mass_limit(cdf_threshold)
    kv_index, kv_count = run_lists(probs, adjacency, always_keep, num_blocks, first_text_block, top_k, mass_limit)
    return BlockLists(kv_index, kv_count, num_key_blocks=num_blocks)


@SELECT_REGISTRY.register("torch")
def _select_lists_torch(
    probs: torch.Tensor,
    adjacency: torch.Tensor | None,
    always_keep: torch.Tensor | None,
    num_blocks: int,
    first_text_block: int,
    top_k: int,
    mass_limit: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference for the fused kernel: rank, union and assembly on the dense ``[B, H, Qb, Kb]`` mask."""
    batch, heads, video_blocks, _ = probs.shape
    no_ranking = ~torch.isfinite(probs).all(-1, keepdim=True)  # an inf / nan score: the row keeps every block
    probs = probs.masked_fill(no_ranking, 0.0)
    # stable: equal probabilities rank by block id, the rule the kernel implements
    sorted_probs, order = probs.sort(dim=-1, descending=True, stable=True)
    fixed = (sorted_probs * MASS_SCALE).to(torch.int64)
    mass_before = fixed.cumsum(-1) - fixed  # mass of the blocks ranked ahead, exact in fixed point
    rank = torch.arange(video_blocks, device=probs.device)
    keep_sorted = (mass_before < mass_limit) | (rank < top_k)
    keep_video = torch.zeros_like(keep_sorted).scatter_(-1, order, keep_sorted)

    keep_video |= no_ranking
    if adjacency is not None:
        keep_video |= adjacency
    if always_keep is not None:
        keep_video |= always_keep

    # -- assemble the full [Qb, Kb] mask: text keys kept, text queries dense
    keep = torch.ones(batch, heads, num_blocks, num_blocks, dtype=torch.bool, device=probs.device)
    keep[:, :, :first_text_block, :first_text_block] = keep_video[:, :, :first_text_block, :first_text_block]
    return dense_to_lists(keep)


def _all_blocks(batch: int, heads: int, num_blocks: int, device: torch.device) -> BlockLists:
    """Every block for every query block: what ``dense_to_lists`` gives for an all-True mask, built directly."""
    ids = torch.arange(num_blocks, device=device, dtype=torch.int32)
    kv_index = ids.expand(batch, heads, num_blocks, num_blocks).contiguous()
    kv_count = torch.full((batch, heads, num_blocks), num_blocks, device=device, dtype=torch.int32)
    return BlockLists(kv_index, kv_count, num_key_blocks=num_blocks)


def _mass_limit(cdf_threshold: float) -> int:
    """Fixed-point bound: integer mass ``m`` is below ``float32(p)`` iff ``m < ceil(float32(p) * MASS_SCALE)``.

    ``p`` is rounded to float32 first, as the comparison with a float32 tensor did; the product is exact.
    """
    return math.ceil(float(np.float32(cdf_threshold)) * MASS_SCALE)


def _max_blocks() -> int:
    from .kernels.triton_select import MAX_BLOCKS

    return MAX_BLOCKS


_TRITON_NEEDS = (
    Constraint("the triton package", lambda q, num_blocks: triton_importable()),
    Constraint("CUDA tensors (or TRITON_INTERPRET=1 on the CPU)", lambda q, num_blocks: q.is_cuda or interpreting(),
               lambda q, num_blocks: f"q on {q.device}"),
    Constraint("at most the kernel's blocks per row (or a larger block_size)",
               lambda q, num_blocks: not triton_importable() or num_blocks <= _max_blocks(),
               lambda q, num_blocks: f"{num_blocks}; it handles up to {_max_blocks()} blocks"),
)


def _resolve_backend(backend: str, q: torch.Tensor, num_blocks: int) -> str:
    """The registered backend to run: ``"auto"`` takes Triton on CUDA tensors when it can."""
    if backend not in SELECT_BACKENDS:
        accepted = ", ".join(repr(b) for b in SELECT_BACKENDS)
        raise ValueError(f"unknown selector backend {backend!r}; accepted: {accepted}")
    if backend == "auto":
        return "triton" if triton_importable() and q.is_cuda and num_blocks <= _max_blocks() else "torch"
    if backend == "triton":
        SELECT_REGISTRY.check("triton", q=q, num_blocks=num_blocks, fix="Use backend='torch' or 'auto'")
    return backend


def _select_lists_triton(
    probs: torch.Tensor,
    adjacency: torch.Tensor | None,
    always_keep: torch.Tensor | None,
    num_blocks: int,
    first_text_block: int,
    top_k: int,
    mass_limit: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The kernel launch on the tensors' own GPU (Triton launches on the current device)."""
    from .kernels.triton_select import select_lists_triton

    with torch.cuda.device(probs.device) if probs.is_cuda else contextlib.nullcontext():
        return select_lists_triton(probs, adjacency, always_keep, num_blocks, first_text_block, top_k, mass_limit,
                                   MASS_SCALE)


# Dynamo cannot trace the launcher; as a custom op with a fake (shape-only) implementation it stays in graph.
@torch.library.custom_op("jenga::select_lists", mutates_args=())
def _select_lists_op(
    probs: torch.Tensor,
    adjacency: torch.Tensor | None,
    always_keep: torch.Tensor | None,
    num_blocks: int,
    first_text_block: int,
    top_k: int,
    mass_limit: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    return _select_lists_triton(probs, adjacency, always_keep, num_blocks, first_text_block, top_k, mass_limit)


@_select_lists_op.register_fake
def _(probs, adjacency, always_keep, num_blocks, first_text_block, top_k, mass_limit):
    batch, heads = probs.shape[:2]
    kv_index = probs.new_empty((batch, heads, num_blocks, num_blocks), dtype=torch.int32)
    return kv_index, probs.new_empty((batch, heads, num_blocks), dtype=torch.int32)


@SELECT_REGISTRY.register("triton", _TRITON_NEEDS)
def _select_lists_triton_any(probs, adjacency, always_keep, num_blocks, first_text_block, top_k, mass_limit):
    """The Triton selector; under torch.compile the launch goes through a custom op, so the graph does not break."""
    lists = _select_lists_op if torch.compiler.is_compiling() else _select_lists_triton
    return lists(probs, adjacency, always_keep, num_blocks, first_text_block, top_k, mass_limit)


def _check_selection_args(q, k, drop_rate, cdf_threshold, block_size, num_video_tokens) -> None:
    if q.dim() != 4 or k.shape != q.shape:
        raise ValueError(f"q and k must both be [B, N, H, D] of one shape, got {tuple(q.shape)}, {tuple(k.shape)}")
    for name, value in (("drop_rate", drop_rate), ("cdf_threshold", cdf_threshold)):
        if isinstance(value, bool) or not isinstance(value, (int, float, np.number)):
            raise TypeError(f"{name} must be a float, got {type(value).__name__} {value!r}")
    if not 0.0 <= drop_rate < 1.0:
        raise ValueError(f"drop_rate must be in [0, 1), got {drop_rate!r}")
    if not 0.0 <= cdf_threshold <= 1.0:
        raise ValueError(f"cdf_threshold must be in [0, 1], got {cdf_threshold!r}")
    if not is_int(block_size) or block_size <= 0:
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
