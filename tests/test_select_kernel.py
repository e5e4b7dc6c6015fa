"""Fused Triton selector (interpreted on the CPU) vs the torch reference: identical block lists, bit for bit,
on fresh random inputs, plus crafted ties, the block limit, and torch.compile through the custom op."""

from __future__ import annotations

import math

import pytest
import torch

from jenga import select_blocks
from jenga.selection import MASS_SCALE, _mass_limit, _select_lists_torch

triton_select = pytest.importorskip("jenga.kernels.triton_select")
from jenga.kernels.triton_block_sparse import interpreting  # noqa: E402

pytestmark = pytest.mark.skipif(not (torch.cuda.is_available() or interpreting()), reason="Triton cannot run here")
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def _seeded() -> torch.Generator:
    return torch.Generator().manual_seed(torch.seed() % 2**31)


def _assert_same(lists, ref):
    assert torch.equal(lists.kv_count, ref.kv_count)
    assert torch.equal(lists.kv_index, ref.kv_index)


def _check_format(lists, top_k: int, first_text: int):
    kv_index, kv_count, kb = lists.kv_index, lists.kv_count, lists.num_key_blocks
    valid = torch.arange(kb, device=kv_index.device) < kv_count.unsqueeze(-1)
    assert (kv_index[~valid] == 0).all(), "padding past the count must be 0"
    assert (kv_index.diff(dim=-1)[valid[..., 1:]] > 0).all(), "ids must be strictly ascending"
    assert (kv_count[:, :, :first_text] >= min(top_k, kb)).all() and (kv_count <= kb).all()


CASES = [
    # seq, num_video (None: all video), block, drop rate, cdf threshold, adjacency, always_keep
    (300, None, 32, 0.3, 0.0, False, False),
    (330, 300, 32, 0.7, 0.3, True, True),   # text tokens, video ends inside block 9 (a mixed block)
    (700, 640, 64, 0.9, 0.9, True, False),  # text starts on a block boundary
    (512, None, 64, 0.7, 0.9, False, True),
    (650, 600, 64, 0.9, 0.0, True, True),
    (450, 420, 32, 0.3, 0.3, True, False),
    (640, None, 32, 0.9, 0.3, True, True),
]


@pytest.mark.parametrize("case", CASES)
def test_triton_lists_equal_torch_lists(case):
    seq, num_video, block, drop, p, with_adjacency, with_always = case
    gen = _seeded()
    q, k = (torch.randn(2, seq, 2, 32, generator=gen) for _ in range(2))
    q = q * 3.0  # sharper rows than pooled white noise
    nv = num_video or seq
    vb = math.ceil(nv / block)
    adjacency = (torch.rand(vb, vb, generator=gen) < 0.15) | torch.eye(vb, dtype=torch.bool) if with_adjacency else None
    always = torch.rand(vb, generator=gen) < 0.1 if with_always else None
    kwargs = dict(drop_rate=drop, cdf_threshold=p, block_size=block, num_video_tokens=num_video,
                  adjacency=adjacency, always_keep=always)
    q, k = q.to(DEVICE), k.to(DEVICE)
    kwargs = {key: value.to(DEVICE) if isinstance(value, torch.Tensor) else value for key, value in kwargs.items()}
    ours = select_blocks(q, k, backend="triton", **kwargs)
    ref = select_blocks(q, k, backend="torch", **kwargs)
    _assert_same(ours, ref)
    first_text = nv // block if num_video else math.ceil(seq / block)
    _check_format(ours, max(1, math.floor((1 - drop) * vb)), first_text)


def test_drop_rate_zero_returns_every_block():
    q = torch.randn(1, 200, 2, 16, device=DEVICE)
    ours = select_blocks(q, q, drop_rate=0.0, cdf_threshold=0.5, block_size=64, backend="triton")
    _assert_same(ours, select_blocks(q, q, drop_rate=0.0, cdf_threshold=0.5, block_size=64, backend="torch"))
    assert (ours.kv_count == 4).all()


@pytest.mark.parametrize("top_k", [1, 3, 7])
@pytest.mark.parametrize("p", [0.0, 0.3, 0.5, 1.0])
def test_ties_at_the_cut_off_go_to_the_lower_block_id(top_k, p):
    """Logits from a few integers tie often; exact zeros (underflow) tie too. The kernel keeps the blocks a
    stable descending sort keeps, the rule of the torch reference."""
    gen = _seeded()
    vb = 20
    logits = torch.randint(0, 3, (1, 2, vb, vb), generator=gen).float()
    logits[torch.rand(logits.shape, generator=gen) < 0.3] = -200.0  # probability exactly 0
    probs = torch.softmax(logits, -1).to(DEVICE)
    adjacency = (torch.rand(vb, vb, generator=gen) < 0.1).to(DEVICE)
    for num_blocks, first_text in ((vb, vb), (vb + 2, vb - 1)):
        args = (probs, adjacency, None, num_blocks, first_text, top_k, _mass_limit(p))
        ours = triton_select.select_lists_triton(*args, MASS_SCALE)
        ref = _select_lists_torch(*args)
        assert torch.equal(ours[1], ref[1]) and torch.equal(ours[0], ref[0])


def test_too_many_blocks_for_the_kernel_raise():
    q = torch.randn(1, triton_select.MAX_BLOCKS + 1, 1, 4, device=DEVICE)
    with pytest.raises(ValueError, match="handles up to 4096 blocks"):
        select_blocks(q, q, drop_rate=0.5, cdf_threshold=0.0, block_size=1, backend="triton")


def test_compile_fullgraph_through_custom_op():
    """Under torch.compile the Triton launch goes through a custom op: no graph break, same lists."""
    gen = _seeded()
    q, k = (torch.randn(1, 200, 2, 16, generator=gen).to(DEVICE) for _ in range(2))

    def select(q, k):
        lists = select_blocks(q, k, drop_rate=0.5, cdf_threshold=0.3, block_size=32, num_video_tokens=180,
                              backend="triton")
        return lists.kv_index, lists.kv_count

    compiled = torch.compile(select, fullgraph=True, backend="aot_eager")
    kv_index, kv_count = compiled(q, k)
    ref = select_blocks(q, k, drop_rate=0.5, cdf_threshold=0.3, block_size=32, num_video_tokens=180, backend="torch")
    assert torch.equal(kv_count, ref.kv_count) and torch.equal(kv_index, ref.kv_index)
