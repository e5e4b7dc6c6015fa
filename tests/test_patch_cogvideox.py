"""jenga.patch on tiny CogVideoX pipelines (1.0 and 1.5, T2V and I2V): batch 2, CFG, the image condition."""

from __future__ import annotations

import pytest
import torch
from _tiny import ALL_BLOCKS, CARVING, run
from _tiny_video import cogvideox_inputs, cogvideox_pipeline

import jenga
from jenga import selection_stats

ATOL = 1e-4
# kind -> (key blocks, video blocks) of 16 tokens: 192 (1.0) or 128 (1.5) video tokens, then 12 text tokens
BLOCKS = {"t2v": (13, 12), "t2v-1.5": (9, 8), "i2v": (13, 12), "i2v-1.5": (9, 8)}


@pytest.mark.parametrize("kind", list(BLOCKS))
def test_stock_equal_unpatch_exact_and_carving(kind):
    """Drop rate 0 through the carving path equals stock; unpatch is bitwise stock; real carving drops blocks."""
    pipe = cogvideox_pipeline(kind)
    inputs = cogvideox_inputs(pipe, steps=2)
    stock = run(pipe, inputs)
    processors = dict(pipe.transformer.attn_processors)

    jenga.patch(pipe, **ALL_BLOCKS)
    assert pipe.transformer._jenga_patch.runtime.first_frame == kind.startswith("i2v")
    out = run(pipe, inputs)
    stats = selection_stats(pipe)
    assert {(s.key_blocks, s.video_blocks) for s in stats} == {BLOCKS[kind]}
    assert sorted({(s.step, s.layer) for s in stats}) == [(0, 0), (0, 1), (1, 0), (1, 1)]  # DDIM steps counted
    assert all(bool((s.kv_count == s.key_blocks).all()) for s in stats)
    assert (out - stock).abs().max().item() <= ATOL
    jenga.unpatch(pipe)
    assert all(pipe.transformer.attn_processors[k] is v for k, v in processors.items())
    assert torch.equal(run(pipe, inputs), stock)

    jenga.patch(pipe, **CARVING)
    carved = run(pipe, inputs)
    stats = selection_stats(pipe)
    assert torch.isfinite(carved).all() and not torch.equal(carved, stock)
    assert stats and all(bool((s.kv_count < s.key_blocks).any()) for s in stats)  # every layer dropped blocks
    jenga.unpatch(pipe)


def test_dense_layer_in_carved_order_and_sincos_model():
    """A dense layer runs the stock processor on carved tokens with the RoPE tables gathered to match (1.0
    with RoPE); the 2B-style model (sincos positions, no RoPE) equals stock at drop rate 0 too."""
    for kind, dense_layers in (("t2v", (1,)), ("t2v-2b", ())):
        pipe = cogvideox_pipeline(kind)
        inputs = cogvideox_inputs(pipe, steps=1)
        stock = run(pipe, inputs)
        jenga.patch(pipe, **{**ALL_BLOCKS, "dense_layers": dense_layers})
        out = run(pipe, inputs)
        assert {s.layer for s in selection_stats(pipe)} == ({0} if dense_layers else {0, 1})
        assert (out - stock).abs().max().item() <= ATOL


def test_text_blocks_always_kept(monkeypatch):
    """Video queries keep every text key block; text queries attend densely."""
    import jenga.adapters.base as base

    seen = []
    select = base.select_blocks

    def spy(q, k, **kwargs):
        lists = select(q, k, **kwargs)
        seen.append(lists.to_dense())
        return lists

    monkeypatch.setattr(base, "select_blocks", spy)
    pipe = cogvideox_pipeline("t2v")
    jenga.patch(pipe, **{**CARVING, "drop_rates": 0.9, "cdf_threshold": 0.1, "adjacency": False})
    assert torch.isfinite(run(pipe, cogvideox_inputs(pipe, steps=1))).all()
    assert seen
    for dense in seen:  # [B, H, 13, 13]: block 12 holds the 12 text tokens
        assert dense[:, :, :12, 12:].all() and dense[:, :, 12:, :].all()
        assert not dense[:, :, :12, :12].all()


def test_progressive_resolution_does_not_apply_and_skipping_does():
    pipe = cogvideox_pipeline("t2v")
    with pytest.raises(NotImplementedError, match="CogVideoXDDIMScheduler"):
        jenga.patch(pipe, **{**CARVING, "stages": ((0.5, 0.5), (1.0, 1.0)), "drop_rates": 0.7})
    assert not jenga.is_patched(pipe)
    jenga.patch(pipe, "turbo", backend="torch", collect_stats=True, dense_steps=0.0, block_size=16,
                skip_steps=(0.5,))
    inputs = cogvideox_inputs(pipe, steps=4)
    out = run(pipe, inputs)
    assert torch.isfinite(out).all()
    assert sorted({s.step for s in selection_stats(pipe)}) == [0, 1, 3]  # step 2 reused the residual
