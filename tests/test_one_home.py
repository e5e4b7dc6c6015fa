"""Facts kept in one place: the integer check, the block adjacency of any order, where a stage changes."""

from __future__ import annotations

import pytest
import torch

from jenga import Stage, block_adjacency, curve_permutation, select_blocks, token_layout
from jenga.config import PROGRESS_SLACK, JengaConfig
from jenga.curves import adjacency_of_order


@pytest.mark.parametrize("make", [
    lambda: token_layout((2, 4, 4), block_size=True),
    lambda: select_blocks(torch.randn(1, 32, 1, 8), torch.randn(1, 32, 1, 8), drop_rate=0.5, cdf_threshold=0.9,
                          block_size=True),
])
def test_true_is_no_block_size(make):
    with pytest.raises(ValueError, match="block_size"):
        make()


def test_adjacency_of_the_curve_order_is_block_adjacency():
    grid = (3, 6, 5)
    _, inverse = curve_permutation(grid, "hilbert", block_size=16)
    assert torch.equal(adjacency_of_order(grid, inverse, 16), block_adjacency(grid, 16, "hilbert"))


def test_prefix_layout_adjacency_is_symmetric_with_diagonal():
    layout = token_layout((3, 4, 4), block_size=16, first_frame_prefix=True)
    adjacency = layout.adjacency
    assert torch.equal(adjacency, adjacency.T) and adjacency.diagonal().all()


def test_stage_continues_only_with_same_scale_and_shift():
    assert Stage(0.5, 0.3, 7.0).continues(Stage(0.5, 0.2, 7.0))
    assert not Stage(0.5, 0.3, 5.0).continues(Stage(0.5, 0.2, 7.0))
    assert not Stage(1.0, 1.0).continues(Stage(0.5, 0.3))
    cfg = JengaConfig(drop_rates=(0.5, 0.6, 0.7), stages=((0.5, 0.3), (0.5, 0.6), (1.0, 1.0)))
    assert cfg.switch_points() == (0.6,) and cfg.switch_steps(10) == {6}
    assert 0 < PROGRESS_SLACK < 1e-6
