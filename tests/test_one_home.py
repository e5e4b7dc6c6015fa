"""Facts kept in one place: the integer check, where a stage changes (block adjacency of any order:
test_layout.py)."""

from __future__ import annotations

import pytest
import torch

from jenga import Stage, select_blocks, token_layout
from jenga.config import PROGRESS_SLACK, JengaConfig


@pytest.mark.parametrize("make", [
    lambda: token_layout((2, 4, 4), block_size=True),
    lambda: select_blocks(torch.randn(1, 32, 1, 8), torch.randn(1, 32, 1, 8), drop_rate=0.5, cdf_threshold=0.9,
                          block_size=True),
])
def test_true_is_no_block_size(make):
    with pytest.raises(ValueError, match="block_size"):
        make()


def test_stage_continues_only_with_same_scale_and_shift():
    assert Stage(0.5, 0.3, 7.0).continues(Stage(0.5, 0.2, 7.0))
    assert not Stage(0.5, 0.3, 5.0).continues(Stage(0.5, 0.2, 7.0))
    assert not Stage(1.0, 1.0).continues(Stage(0.5, 0.3))
    cfg = JengaConfig(drop_rates=(0.5, 0.6, 0.7), stages=((0.5, 0.3), (0.5, 0.6), (1.0, 1.0)))
    assert cfg.switch_points() == (0.6,) and cfg.switch_steps(10) == {6}
    assert 0 < PROGRESS_SLACK < 1e-6
