"""Token layouts: round trips, the first-frame prefix order, and its block tables."""

from __future__ import annotations

import math

import pytest
import torch

from jenga import block_adjacency, curve_permutation, token_layout
from jenga.curves import adjacency_of_order as _adjacency_of_order


@pytest.mark.parametrize("prefix", [False, True])
@pytest.mark.parametrize("grid", [(3, 8, 8), (5, 6, 10), (1, 4, 6), (21, 6, 4)])
def test_perm_and_inverse_round_trip(grid, prefix):
    layout = token_layout(grid, block_size=16, curve="zorder", first_frame_prefix=prefix)
    n = math.prod(grid)
    x = torch.randn(2, n, 3)
    assert torch.equal(layout.to_rowmajor(layout.to_carved(x)), x)
    assert torch.equal(torch.sort(layout.perm).values, torch.arange(n))
    assert layout.adjacency.shape == (layout.num_blocks, layout.num_blocks)
    assert torch.equal(layout.adjacency, layout.adjacency.T) and layout.adjacency.diagonal().all()


@pytest.mark.parametrize("curve", ["zorder", "hilbert", "raster"])
def test_prefix_keeps_frame_zero_first(curve):
    t, h, w = 4, 6, 10
    layout = token_layout((t, h, w), block_size=16, curve=curve, first_frame_prefix=True)
    head = layout.perm[: h * w]
    assert torch.equal(torch.sort(head).values, torch.arange(h * w))  # the first H*W carved tokens: frame 0
    # frame 0 fills exactly its ceil(H*W / block) leading blocks (the last may also hold frame-1 tokens)
    expected = torch.zeros(layout.num_blocks, dtype=torch.bool)
    expected[: math.ceil(h * w / 16)] = True
    assert torch.equal(layout.first_frame, expected)


def test_prefix_order_keeps_fewer_first_frame_blocks():
    """Why image-to-video uses the prefix order: a whole-grid Z-order block spans 4 frames."""
    grid = (16, 16, 16)
    spread = token_layout(grid, block_size=128, curve="zorder").first_frame.sum().item()
    prefix = token_layout(grid, block_size=128, curve="zorder", first_frame_prefix=True).first_frame.sum().item()
    assert prefix == 2 and spread == 8


@pytest.mark.parametrize("curve", ["zorder", "hilbert"])
@pytest.mark.parametrize("grid, block", [((3, 8, 8), 16), ((5, 6, 10), 32), ((4, 7, 9), 16)])
def test_adjacency_of_any_order_matches_the_curve_tables(grid, block, curve):
    _, inverse = curve_permutation(grid, curve, block_size=block)
    assert torch.equal(_adjacency_of_order(grid, inverse, block), block_adjacency(grid, block, curve))
    layout = token_layout(grid, block_size=block, curve=curve)
    assert torch.equal(layout.adjacency, block_adjacency(grid, block, curve))
    assert torch.equal(layout.perm, curve_permutation(grid, curve, block_size=block)[0])


def test_prefix_adjacency_is_token_level():
    """Brute force: blocks i, j adjacent iff some tokens in them are 26-neighbours."""
    grid = (3, 5, 6)
    layout = token_layout(grid, block_size=16, curve="hilbert", first_frame_prefix=True)
    coords = torch.stack(torch.meshgrid(*(torch.arange(s) for s in grid), indexing="ij"), -1).view(-1, 3)
    block_of = layout.inverse // 16
    near = (coords[:, None, :] - coords[None, :, :]).abs().amax(-1) <= 1
    expected = torch.zeros_like(layout.adjacency)
    i, j = near.nonzero(as_tuple=True)
    expected[block_of[i], block_of[j]] = True
    assert torch.equal(layout.adjacency, expected)


def test_layouts_are_cached_per_device():
    a = token_layout((3, 8, 8), block_size=16, curve="zorder", device="cpu")
    b = token_layout([3, 8, 8], block_size=16, curve="zorder")
    assert a is b
    with pytest.raises(ValueError, match="grid"):
        token_layout((3, 8), block_size=16)


@pytest.mark.parametrize("curve", ["zorder", "hilbert", "raster"])
@pytest.mark.parametrize("grid", [(5, 8, 8), (6, 6, 10), (3, 4, 4), (2, 4, 4)])
def test_last_frame_suffix_keeps_both_ends_apart(curve, grid):
    """First-and-last-frame order: frame 0 leads, frame T-1 trails, each along its own curve; the block
    tables still describe the order (adjacency as recomputed from scratch)."""
    t, h, w = grid
    layout = token_layout(grid, block_size=16, curve=curve, first_frame_prefix=True, last_frame_suffix=True)
    n, plane = math.prod(grid), h * w
    assert torch.equal(torch.sort(layout.perm).values, torch.arange(n))
    assert torch.equal(torch.sort(layout.perm[:plane]).values, torch.arange(plane))
    assert torch.equal(torch.sort(layout.perm[n - plane:]).values, torch.arange(n - plane, n))
    expected = torch.zeros(layout.num_blocks, dtype=torch.bool)
    expected[(n - plane) // 16:] = True
    assert torch.equal(layout.last_frame, expected)
    assert torch.equal(layout.adjacency, _adjacency_of_order(grid, layout.inverse, 16))
    x = torch.randn(1, n, 2)
    assert torch.equal(layout.to_rowmajor(layout.to_carved(x)), x)


def test_last_frame_suffix_needs_the_prefix():
    with pytest.raises(ValueError, match="first_frame_prefix"):
        token_layout((3, 4, 4), block_size=16, last_frame_suffix=True)
