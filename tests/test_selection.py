"""Block selector (torch reference path): invariants of the lists, the ranking rules, pooling, argument checks,
and agreement with the previous implementation. Fresh random inputs every run."""

from __future__ import annotations

import math

import pytest
import torch

from jenga import dense_to_lists, select_blocks
from jenga.selection import pool_blocks


def _seeded() -> torch.Generator:
    return torch.Generator().manual_seed(torch.seed() % 2**31)


def _qk(batch, seq, heads, dim, gen, dtype=torch.float32):
    return (torch.randn(batch, seq, heads, dim, generator=gen).to(dtype) for _ in range(2))


def band_adjacency(blocks: int) -> torch.Tensor:
    """Symmetric, True diagonal, like ``block_adjacency``: each block touches its curve neighbours."""
    ids = torch.arange(blocks)
    return (ids[:, None] - ids[None, :]).abs() <= 1


def check_lists(lists, top_k: int, first_text: int) -> torch.Tensor:
    """Format invariants of :class:`BlockLists`; returns the dense mask."""
    kv_index, kv_count = lists.kv_index, lists.kv_count
    kb = lists.num_key_blocks
    assert kv_index.dtype == kv_count.dtype == torch.int32
    assert kv_index.shape[-1] == kb and kv_index.shape[:3] == kv_count.shape
    valid = torch.arange(kb) < kv_count.unsqueeze(-1)
    assert ((kv_index >= 0) & (kv_index < kb)).all()
    assert (kv_index[~valid] == 0).all(), "padding past the count must be 0"
    steps = kv_index.diff(dim=-1)
    assert (steps[valid[..., 1:]] > 0).all(), "ids must be strictly ascending"
    video_rows = kv_count[:, :, :first_text]
    assert (video_rows >= min(top_k, kb)).all() and (kv_count <= kb).all()
    return lists.to_dense()


def _previous_select(q, k, drop_rate, cdf_threshold, block_size, num_video, adjacency):
    """The selector as it was before the fused kernel (float32 cumulative mass), kept as a regression oracle.

    Also returns which rows are ambiguous: a near-tie at the cut-off, or a mass within rounding of ``p``.
    """
    batch, seq, heads, dim = q.shape
    num_blocks, video_blocks = math.ceil(seq / block_size), math.ceil(num_video / block_size)
    first_text = num_video // block_size if num_video < seq else num_blocks
    pad = video_blocks * block_size - num_video

    def pool(x):
        x = torch.nn.functional.pad(x[:, :num_video].float(), (0, 0, 0, 0, 0, pad))
        counts = torch.full((video_blocks,), float(block_size))
        counts[-1] = block_size - pad
        return (x.view(batch, video_blocks, block_size, heads, dim).sum(2) / counts.view(1, -1, 1, 1)).transpose(1, 2)

    probs = torch.softmax(pool(q) @ pool(k).transpose(-1, -2) / math.sqrt(dim), dim=-1)
    sorted_probs, order = probs.sort(dim=-1, descending=True)
    mass_before = sorted_probs.cumsum(-1) - sorted_probs
    top_k = max(1, math.floor((1.0 - drop_rate) * video_blocks))
    keep_sorted = (mass_before < cdf_threshold) | (torch.arange(video_blocks) < top_k)
    keep_video = torch.zeros_like(keep_sorted).scatter_(-1, order, keep_sorted)
    if adjacency is not None:
        keep_video |= adjacency
    keep = torch.ones(batch, heads, num_blocks, num_blocks, dtype=torch.bool)
    keep[:, :, :first_text, :first_text] = keep_video[:, :, :first_text, :first_text]
    # only the cut-off matters: the last kept rank n - 1 and the first dropped rank n
    n = keep_sorted.sum(-1, keepdim=True)
    last, first_out = sorted_probs.gather(-1, n - 1), sorted_probs.gather(-1, n.clamp(max=video_blocks - 1))
    near_tie = ((last - first_out <= 1e-5 * last) & (n < video_blocks)).squeeze(-1)
    near_p = ((mass_before.gather(-1, torch.cat([n - 1, n.clamp(max=video_blocks - 1)], -1)) - cdf_threshold).abs()
              < 1e-5).any(-1) & (cdf_threshold > 0)
    ambiguous = torch.zeros(batch, heads, num_blocks, dtype=torch.bool)
    ambiguous[:, :, :video_blocks] = near_tie | near_p
    return (*dense_to_lists(keep), ambiguous)


@pytest.mark.parametrize("drop_rate", [0.3, 0.7, 0.9])
@pytest.mark.parametrize("cdf_threshold", [0.0, 0.3, 0.9])
@pytest.mark.parametrize("seq, num_video, block", [(600, None, 64), (700, 650, 32), (520, 512, 64)])
def test_matches_previous_implementation(seq, num_video, block, drop_rate, cdf_threshold):
    """Same lists as before on random inputs, except in rows the old rule left to rounding (near-ties at
    the cut-off, a mass within rounding of p), which are rare."""
    q, k = _qk(2, seq, 2, 32, _seeded())
    q = q * 3.0  # scores spread wider than pooled white noise gives
    nv = num_video or seq
    grid_blocks = math.ceil(nv / block)
    adjacency = torch.rand(grid_blocks, grid_blocks) < 0.2
    lists = select_blocks(q, k, drop_rate=drop_rate, cdf_threshold=cdf_threshold, block_size=block,
                          num_video_tokens=num_video, adjacency=adjacency, backend="torch")
    kv_index, kv_count, ambiguous = _previous_select(q, k, drop_rate, cdf_threshold, block, nv, adjacency)
    same = (lists.kv_index == kv_index).all(-1) & (lists.kv_count == kv_count)
    assert same[~ambiguous].all()
    assert ambiguous.float().mean() < 0.05


@pytest.mark.parametrize("drop_rate, cdf_threshold", [(0.5, 0.0), (0.8, 0.5), (0.9, 0.95)])
def test_invariants_with_adjacency_text_and_always_keep(drop_rate, cdf_threshold):
    gen = _seeded()
    nv, block, text = 270, 32, 40  # 9 video blocks, the last one shared with text
    q, k = _qk(2, nv + text, 3, 16, gen, torch.bfloat16)
    vb, nb = math.ceil(nv / block), math.ceil((nv + text) / block)
    adjacency = band_adjacency(vb)
    always = torch.zeros(vb, dtype=torch.bool)
    always[:2] = True  # e.g. the first latent frame
    lists = select_blocks(q, k, drop_rate=drop_rate, cdf_threshold=cdf_threshold, block_size=block,
                          num_video_tokens=nv, adjacency=adjacency, always_keep=always, backend="torch")
    first_text = nv // block
    top_k = max(1, math.floor((1 - drop_rate) * vb))
    dense = check_lists(lists, top_k, first_text)
    assert dense.shape == (2, 3, nb, nb)
    assert dense[:, :, first_text:].all(), "text query rows attend densely"
    assert dense[:, :, :, first_text:].all(), "text key blocks are always kept"
    video = dense[:, :, :first_text, :first_text]
    assert video[:, :, adjacency[:first_text, :first_text]].all(), "adjacent blocks are kept"
    assert video.diagonal(dim1=-2, dim2=-1).all(), "every block keeps itself (adjacency diagonal)"
    assert dense[:, :, :first_text, :2].all(), "always-kept blocks are kept"


def _probs(q, k, block, num_video):
    dim = q.shape[-1]
    return torch.softmax(pool_blocks(q, block, num_video) @ pool_blocks(k, block, num_video).transpose(-1, -2)
                         / math.sqrt(dim), dim=-1)


@pytest.mark.parametrize("drop_rate", [0.5, 0.9])
def test_top_k_keeps_the_highest_scoring_blocks(drop_rate):
    """p = 0, no tables: exactly top_k blocks per row, and no dropped block outscores a kept one."""
    q, k = _qk(2, 640, 2, 32, _seeded())
    lists = select_blocks(q, k, drop_rate=drop_rate, cdf_threshold=0.0, block_size=64, backend="torch")
    top_k = max(1, math.floor((1 - drop_rate) * 10))
    dense = check_lists(lists, top_k, 10)
    assert (lists.kv_count == top_k).all()
    probs = _probs(q, k, 64, 640)
    lowest_kept = probs.masked_fill(~dense, float("inf")).amin(-1)
    highest_dropped = probs.masked_fill(dense, -1.0).amax(-1)
    assert (lowest_kept >= highest_dropped).all()


@pytest.mark.parametrize("cdf_threshold", [0.3, 0.6, 0.95])
def test_cdf_rule_reaches_the_mass_with_the_fewest_blocks(cdf_threshold):
    """With top_k = 1 the kept ranking is the shortest prefix whose mass reaches p."""
    q, k = _qk(1, 1024, 2, 16, _seeded())
    q = q * 4.0  # peakier rows, so the rule has something to do
    lists = select_blocks(q, k, drop_rate=0.99, cdf_threshold=cdf_threshold, block_size=64, backend="torch")
    dense = check_lists(lists, 1, 16)
    probs = _probs(q, k, 64, 1024).double()
    kept_mass = (probs * dense).sum(-1)
    smallest_kept = probs.masked_fill(~dense, float("inf")).amin(-1)
    assert (kept_mass >= cdf_threshold - 1e-6).all()
    assert (kept_mass - smallest_kept < cdf_threshold + 1e-6).all(), "one block fewer would not reach p"


def test_drop_rate_zero_keeps_every_block():
    q, k = _qk(2, 300, 2, 16, _seeded())
    lists = select_blocks(q, k, drop_rate=0.0, cdf_threshold=0.5, block_size=64, num_video_tokens=250)
    full = dense_to_lists(torch.ones(2, 2, 5, 5, dtype=torch.bool))
    assert torch.equal(lists.kv_index, full[0]) and torch.equal(lists.kv_count, full[1])


def test_two_calls_give_identical_lists():
    q, k = _qk(2, 500, 2, 32, _seeded())
    first, second = (select_blocks(q, k, drop_rate=0.7, cdf_threshold=0.5, block_size=32, num_video_tokens=470,
                                   backend="torch") for _ in range(2))
    assert torch.equal(first.kv_index, second.kv_index) and torch.equal(first.kv_count, second.kv_count)


def test_equal_scores_rank_by_block_id():
    """Identical key blocks tie; the lower block id ranks first (a stable descending sort)."""
    gen = _seeded()
    q = torch.randn(1, 256, 1, 16, generator=gen)
    k = torch.randn(1, 64, 1, 16, generator=gen).repeat(1, 4, 1, 1)  # 4 identical key blocks of 64 tokens
    lists = select_blocks(q, k, drop_rate=0.5, cdf_threshold=0.0, block_size=64, backend="torch")
    assert (lists.kv_count == 2).all()
    assert (lists.kv_index[..., :2] == torch.tensor([0, 1], dtype=torch.int32)).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("seq, num_tokens, block", [(256, 256, 64), (300, 290, 64), (100, 37, 32)])
def test_pool_blocks_means(seq, num_tokens, block, dtype):
    gen = _seeded()
    x = torch.randn(2, seq, 3, 8, generator=gen).to(dtype)
    nb = math.ceil(num_tokens / block)
    ref = torch.stack([x[:, i * block:min((i + 1) * block, num_tokens)].double().mean(1) for i in range(nb)], 1)
    pooled = pool_blocks(x, block, num_tokens)
    assert pooled.dtype == torch.float32 and pooled.shape == (2, 3, nb, 8)
    assert torch.allclose(pooled.double(), ref.transpose(1, 2), atol=1e-6)
    strided = x.transpose(1, 2).contiguous().transpose(1, 2)  # [B, N, H, D] view of a [B, H, N, D] tensor
    assert torch.equal(pool_blocks(strided, block, num_tokens), pooled)


@pytest.mark.parametrize("kwargs, message", [
    (dict(backend="cuda"), "accepted: 'auto', 'triton', 'torch'"),
    (dict(drop_rate=1.0), "drop_rate must be in [0, 1)"),
    (dict(cdf_threshold=1.5), "cdf_threshold must be in [0, 1]"),
    (dict(block_size=0), "block_size must be a positive int"),
    (dict(num_video_tokens=0), "num_video_tokens must be in [1, 200]"),
    (dict(adjacency=torch.ones(3, 3, dtype=torch.bool)), "adjacency must be bool[4, 4]"),
    (dict(adjacency=torch.ones(4, 4)), "adjacency must be bool[4, 4]"),
    (dict(always_keep=torch.ones(4, dtype=torch.uint8)), "always_keep must be bool[4]"),
])
def test_bad_arguments_raise_with_a_helpful_message(kwargs, message):
    q, k = _qk(1, 200, 1, 8, _seeded())
    args = dict(drop_rate=0.5, cdf_threshold=0.5, block_size=64) | kwargs
    with pytest.raises(ValueError) as err:
        select_blocks(q, k, **args)
    assert message in str(err.value)


def test_mismatched_q_k_raise():
    q, _ = _qk(1, 200, 1, 8, _seeded())
    with pytest.raises(ValueError, match="q and k must both be"):
        select_blocks(q, q[:, :100], drop_rate=0.5, cdf_threshold=0.5, block_size=64)
