"""jenga.patch on tiny LTX-Video pipelines (T2V, I2V, condition pipeline): batch 2 with per-sample text
padding, CFG, the first-frame image, conditions at other frames (extra tokens)."""

from __future__ import annotations

import pytest
import torch
from _tiny import ALL_BLOCKS, CARVING, run
from _tiny_video import LTX_SIZE, image, ltx_inputs, ltx_pipeline
from diffusers.pipelines.ltx.pipeline_ltx_condition import LTXVideoCondition

import jenga
from jenga import selection_stats
from jenga.adapters.ltx import grid_from_video_coords

ATOL = 1e-4
VIDEO_BLOCKS = 12  # 3 x 8 x 8 tokens in blocks of 16


def _inputs(pipe, kind: str, **extra):
    if kind == "condition-frame4":  # diffusers' conditions do not broadcast over a prompt batch: batch 1 (CFG: 2)
        return ltx_inputs(pipe, batch=1, conditions=[LTXVideoCondition(image=image(LTX_SIZE), frame_index=4)],
                          **extra)
    if kind == "condition":
        return ltx_inputs(pipe, image=image(LTX_SIZE), **extra)  # an image at frame 0, batch 2
    return ltx_inputs(pipe, **extra)


# kind -> key blocks: the video's, plus the 64 extra tokens (4 blocks) of a condition at frame 4
KINDS = {"t2v": 12, "i2v": 12, "condition": 12, "condition-frame4": 16}


@pytest.mark.parametrize("kind", list(KINDS))
def test_stock_equal_unpatch_exact_and_carving(kind):
    pipe = ltx_pipeline("condition" if kind.startswith("condition") else kind)
    inputs = _inputs(pipe, kind, steps=2)
    stock = run(pipe, inputs)
    processors = dict(pipe.transformer.attn_processors)

    jenga.patch(pipe, **ALL_BLOCKS)
    assert pipe.transformer._jenga_patch.runtime.first_frame == (kind != "t2v")
    out = run(pipe, inputs)
    stats = selection_stats(pipe)
    assert {(s.key_blocks, s.video_blocks) for s in stats} == {(KINDS[kind], VIDEO_BLOCKS)}
    assert sorted({(s.step, s.layer) for s in stats}) == [(0, 0), (0, 1), (1, 0), (1, 1)]
    assert (out - stock).abs().max().item() <= ATOL
    jenga.unpatch(pipe)
    assert all(pipe.transformer.attn_processors[k] is v for k, v in processors.items())
    assert torch.equal(run(pipe, inputs), stock)

    jenga.patch(pipe, **CARVING)
    carved = run(pipe, inputs)
    stats = selection_stats(pipe)
    assert torch.isfinite(carved).all() and not torch.equal(carved, stock)
    assert stats and all(bool((s.kv_count < s.key_blocks).any()) for s in stats)
    jenga.unpatch(pipe)


def test_only_self_attention_carves():
    pipe = ltx_pipeline("t2v")
    cross = pipe.transformer.transformer_blocks[0].attn2.processor
    jenga.patch(pipe, **CARVING)
    assert pipe.transformer.transformer_blocks[0].attn2.processor is cross
    carving = [k for k, v in pipe.transformer.attn_processors.items() if "Carving" in type(v).__name__]
    assert carving == ["transformer_blocks.0.attn1.processor", "transformer_blocks.1.attn1.processor"]


def test_conditioning_tokens_always_kept(monkeypatch):
    """I2V: frame 0's blocks are kept by every query; a condition at frame 4 adds extra tokens after the
    video in carved order, kept by every video query and attending densely."""
    import jenga.adapters.base as base

    seen = []
    select = base.select_blocks

    def spy(q, k, **kwargs):
        lists = select(q, k, **kwargs)
        seen.append((lists.to_dense(), kwargs.get("always_keep")))
        return lists

    monkeypatch.setattr(base, "select_blocks", spy)
    settings = {**CARVING, "drop_rates": 0.9, "cdf_threshold": 0.1, "adjacency": False}
    for kind in ("i2v", "condition-frame4"):
        seen.clear()
        pipe = ltx_pipeline("condition" if kind.startswith("condition") else kind)
        jenga.patch(pipe, **settings)
        assert torch.isfinite(run(pipe, _inputs(pipe, kind, steps=2))).all()
        assert seen
        for dense, always in seen:
            assert always is not None and 0 < int(always.sum()) < VIDEO_BLOCKS  # frame 0's blocks
            assert dense[..., :VIDEO_BLOCKS, :VIDEO_BLOCKS][..., always].all()
            assert dense[:, :, VIDEO_BLOCKS:, :].all() and dense[:, :, :VIDEO_BLOCKS, VIDEO_BLOCKS:].all()
            assert not dense[:, :, :VIDEO_BLOCKS, :VIDEO_BLOCKS].all()


def test_grid_from_video_coords():
    pipe = ltx_pipeline("condition")
    ids = pipe._scale_video_ids(pipe._prepare_video_ids(2, 3, 4, 5), 32, 8, frame_index=0).float()
    extra = pipe._scale_video_ids(pipe._prepare_video_ids(2, 1, 4, 5), 32, 8, frame_index=9).float()
    assert grid_from_video_coords(ids) == ((3, 4, 5), 0)
    assert grid_from_video_coords(torch.cat([extra, ids], dim=2)) == ((3, 4, 5), 20)
    assert grid_from_video_coords(torch.cat([ids, ids], dim=2)) is None  # two origins: not a condition layout


def test_progressive_resolution_does_not_apply_and_skipping_does():
    pipe = ltx_pipeline("t2v")
    with pytest.raises(NotImplementedError, match="pack their latents"):
        jenga.patch(pipe, **{**CARVING, "stages": ((0.5, 0.5), (1.0, 1.0)), "drop_rates": 0.7})
    assert not jenga.is_patched(pipe)
    jenga.patch(pipe, "turbo", backend="torch", collect_stats=True, dense_steps=0.0, block_size=16,
                skip_steps=(0.5,))
    assert torch.isfinite(run(pipe, ltx_inputs(pipe, steps=4))).all()
    assert sorted({s.step for s in selection_stats(pipe)}) == [0, 1, 3]
