"""Tests for jenga.curves: the permutation contract, curve continuity and locality, block adjacency."""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable

import numpy as np
import pytest
import torch

from jenga.curves import CURVES, block_adjacency, block_bounding_volume, curve_permutation

GRIDS = [(21, 30, 52), (1, 1, 7), (13, 17, 3), (1, 1, 1), (2, 3, 5), (4, 4, 4), (3, 8, 16)]
HILBERT_GRIDS = [(4, 4, 4), (6, 10, 14), (3, 5, 7), (21, 30, 52), (33, 45, 80), (21, 45, 80)]
HILBERT_GRIDS += [(13, 17, 3), (1, 1, 7), (2, 3, 5), (5, 5, 5), (1, 6, 9), (7, 1, 2), (9, 11, 13)]


def _thw(perm: torch.Tensor, grid: tuple[int, int, int]) -> torch.Tensor:
    """``int64[N, 3]`` (t, h, w) of the tokens in curve order."""
    _, h, w = grid
    return torch.stack((perm // (h * w), perm // w % h, perm % w), dim=1)


def _steps(grid: tuple[int, int, int]) -> torch.Tensor:
    """``int64[N-1, 3]`` absolute (t, h, w) moves between consecutive Hilbert tokens."""
    perm, _ = curve_permutation(grid, "hilbert")
    return _thw(perm, grid).diff(dim=0).abs()


@pytest.mark.parametrize("curve", CURVES)
@pytest.mark.parametrize("grid", GRIDS)
def test_bijection(curve: str, grid: tuple[int, int, int]) -> None:
    perm, inverse = curve_permutation(grid, curve)
    n = math.prod(grid)
    arange = torch.arange(n)
    assert perm.dtype == torch.int64 and inverse.dtype == torch.int64
    assert perm.shape == (n,) and inverse.shape == (n,)
    assert torch.equal(perm.sort().values, arange)
    assert torch.equal(perm[inverse], arange)
    assert torch.equal(inverse[perm], arange)


def test_round_trip_contract() -> None:
    grid = (3, 8, 16)
    x = torch.randn(2, math.prod(grid), 4)
    perm, inverse = curve_permutation(grid, "hilbert")
    x_curve = x[:, perm]
    assert torch.equal(x_curve[:, inverse], x)
    assert torch.equal(x_curve[:, 5], x[:, perm[5]])


def test_raster_is_identity() -> None:
    perm, inverse = curve_permutation((3, 5, 7), "raster")
    assert torch.equal(perm, torch.arange(105))
    assert torch.equal(inverse, torch.arange(105))


def test_zorder_corner_cube_first() -> None:
    grid = (4, 4, 4)
    perm, _ = curve_permutation(grid, "zorder")
    first = _thw(perm[:8], grid)
    assert set(map(tuple, first.tolist())) == set(itertools.product(range(2), repeat=3))


def test_zorder_t_is_most_significant() -> None:
    # On 2x2x2 the code t*4 + h*2 + w equals the row-major index.
    perm, _ = curve_permutation((2, 2, 2), "zorder")
    assert torch.equal(perm, torch.arange(8))


@pytest.mark.parametrize("grid", HILBERT_GRIDS)
def test_hilbert_unit_steps(grid: tuple[int, int, int]) -> None:
    # The parity-aware splits make every step a face move, odd sides included: no diagonals at all.
    steps = _steps(grid)
    assert bool((steps.sum(dim=1) == 1).all())


def test_hilbert_unit_steps_all_small_grids() -> None:
    for grid in itertools.product(range(1, 9), repeat=3):
        if math.prod(grid) > 1:
            assert bool((_steps(grid).sum(dim=1) == 1).all()), grid


def test_hilbert_starts_at_origin() -> None:
    perm, _ = curve_permutation((6, 10, 14), "hilbert")
    assert perm[0].item() == 0


def test_cached_same_object() -> None:
    a = curve_permutation((5, 6, 7), "hilbert")
    b = curve_permutation([5, 6, 7], "hilbert")
    assert a[0] is b[0] and a[1] is b[1]
    assert block_adjacency((5, 6, 7), 16, "hilbert") is block_adjacency((5, 6, 7), 16, "hilbert")


def test_locality() -> None:
    # Bounding-box volume is at least block_size (128) per block; raster blocks are dense 1 x 3 x 52
    # slabs (volume ~160) except where they cross a frame, so ~0.5 x raster is near the floor here.
    grid = (21, 30, 52)
    raster = block_bounding_volume(grid, 128, "raster")
    assert block_bounding_volume(grid, 128, "zorder") < 0.6 * raster
    assert block_bounding_volume(grid, 128, "hilbert") < 0.6 * raster
    for grid in ((21, 45, 80), (33, 45, 80)):  # Wan 14B and HunyuanVideo at 720p
        raster = block_bounding_volume(grid, 128, "raster")
        assert block_bounding_volume(grid, 128, "zorder") < 0.5 * raster
        assert block_bounding_volume(grid, 128, "hilbert") < 0.6 * raster


@pytest.mark.parametrize(("block_size", "tile"), [(128, (4, 4, 8)), (64, (4, 4, 4)), (256, (4, 8, 8))])
def test_zorder_blocks_are_tiles_on_aligned_grids(block_size: int, tile: tuple[int, int, int]) -> None:
    """On a grid that is a whole number of tiles, every block is exactly one tile-shaped box."""
    grid = (tile[0] * 2, tile[1] * 3, tile[2] * 2)
    assert block_bounding_volume(grid, block_size, "zorder") == pytest.approx(block_size)


def test_bounding_volume_small() -> None:
    # Raster on a 1x1x7 line with blocks of 3: extents 3, 3, 1.
    assert block_bounding_volume((1, 1, 7), 3, "raster") == pytest.approx(7 / 3)


def _adjacency_reference(grid: tuple[int, int, int], block_size: int, curve: str) -> np.ndarray:
    """Plain numpy: for each of the 26 offsets, mark the block pair of every in-grid neighbour pair."""
    _, inverse = curve_permutation(grid, curve, block_size=block_size)
    block = (inverse.numpy() // block_size).reshape(grid)
    kb = -(-math.prod(grid) // block_size)
    ref = np.eye(kb, dtype=bool)
    t, h, w = np.meshgrid(*(np.arange(s) for s in grid), indexing="ij")
    for dt, dh, dw in itertools.product((-1, 0, 1), repeat=3):
        nt, nh, nw = t + dt, h + dh, w + dw
        ok = (nt >= 0) & (nt < grid[0]) & (nh >= 0) & (nh < grid[1]) & (nw >= 0) & (nw < grid[2])
        ref[block[ok], block[nt[ok], nh[ok], nw[ok]]] = True
    return ref


@pytest.mark.parametrize("curve", CURVES)
@pytest.mark.parametrize(("grid", "block_size"), [((3, 5, 7), 16), ((2, 9, 10), 8), ((1, 1, 7), 3)])
def test_adjacency_matches_reference(curve: str, grid: tuple[int, int, int], block_size: int) -> None:
    adj = block_adjacency(grid, block_size, curve)
    kb = -(-math.prod(grid) // block_size)
    assert adj.dtype == torch.bool and adj.shape == (kb, kb)
    assert torch.equal(adj, adj.T)
    assert bool(adj.diagonal().all())
    assert bool((adj.sum(dim=1) >= 2).all())
    np.testing.assert_array_equal(adj.numpy(), _adjacency_reference(grid, block_size, curve))


def test_adjacency_single_block() -> None:
    adj = block_adjacency((2, 3, 4), 128, "hilbert")
    assert adj.shape == (1, 1) and bool(adj.item())


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: curve_permutation((0, 4, 4)), r"3 positive ints.*\(0, 4, 4\)"),
        (lambda: curve_permutation((4, -1, 4)), r"3 positive ints.*\(4, -1, 4\)"),
        (lambda: curve_permutation((4, 4)), r"3 positive ints.*\(4, 4\)"),
        (lambda: curve_permutation((4, 4, 4, 4)), r"3 positive ints"),
        (lambda: curve_permutation((4, 4.0, 4)), r"3 positive ints.*4\.0"),
        (lambda: curve_permutation((4, True, 4)), r"3 positive ints"),
        (lambda: curve_permutation("444"), r"3 positive ints"),
        (lambda: curve_permutation((4, 4, 4), "peano"), r"unknown curve 'peano'.*'zorder', 'hilbert'"),
        (lambda: block_adjacency((4, 4, 4), 0), r"block_size must be a positive int, got 0"),
        (lambda: block_adjacency((4, 4, 4), 2.5), r"block_size must be a positive int, got 2\.5"),
        (lambda: block_adjacency((4, 4, 4), 8, "snake"), r"unknown curve 'snake'"),
        (lambda: block_bounding_volume((4, 0, 4)), r"3 positive ints"),
    ],
)
def test_bad_input(call: Callable[[], object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        call()


def test_device_cpu() -> None:
    perm, inverse = curve_permutation((3, 4, 5), "zorder", device="cpu")
    assert perm.device.type == "cpu" and inverse.device.type == "cpu"
    assert block_adjacency((3, 4, 5), 8, "zorder", device=torch.device("cpu")).device.type == "cpu"
