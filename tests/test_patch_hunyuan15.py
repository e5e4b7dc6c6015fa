"""jenga.patch on tiny HunyuanVideo 1.5 pipelines (T2V and I2V; no text encoders: embeddings passed in)."""

from __future__ import annotations

import pytest
import torch
from _tiny_hunyuan15 import HEIGHT, NUM_FRAMES, TEXT_2_LEN, TEXT_LEN, WIDTH, inputs, pipeline, run

import jenga
from jenga import JengaConfig, selection_stats

KINDS = ["t2v", "i2v"]
ATOL = 1e-4
BLOCK = 16
NUM_VIDEO = 192  # 3 x 8 x 8 latent tokens (patch 1)
# condition tokens per sample: T2V 729 zero image tokens (masked) + ByT5 + Qwen; I2V 16 SigLIP tokens + ByT5 + Qwen
CONDITION = {"t2v": 729 + TEXT_2_LEN + TEXT_LEN, "i2v": 16 + TEXT_2_LEN + TEXT_LEN}
VALID = {"t2v": (TEXT_2_LEN + TEXT_LEN, TEXT_2_LEN - 2 + TEXT_LEN - 4),
         "i2v": (16 + TEXT_2_LEN + TEXT_LEN, 16 + TEXT_2_LEN - 2 + TEXT_LEN - 4)}
ALL_BLOCKS = dict(block_size=BLOCK, drop_rates=0.0, dense_threshold=None, dense_steps=0.0, min_video_blocks=1,
                  backend="torch", collect_stats=True, skip_steps=(), stages=((1.0, 1.0),))
CARVING = dict(block_size=BLOCK, drop_rates=0.7, cdf_threshold=0.3, dense_steps=0.0, backend="torch",
               collect_stats=True, skip_steps=(), stages=((1.0, 1.0),))


def _close(a, b, atol=ATOL):
    return (a - b).abs().max().item() <= atol


@pytest.fixture(scope="module", params=KINDS)
def case(request):
    """One pipeline per kind and its stock latents (batch 2, per-sample padding, CFG), shared by the tests."""
    pipe = pipeline(request.param)
    kwargs = inputs(pipe)
    return request.param, pipe, kwargs, run(pipe, kwargs)


def test_all_blocks_equals_stock(case):
    """Drop rate 0 through the carving path (every block kept) == stock: batch 2, different padding, CFG."""
    kind, pipe, kwargs, stock = case
    with jenga.patched(pipe, **ALL_BLOCKS):
        out = run(pipe, kwargs)
        stats = selection_stats(pipe)
    key_blocks = -(-(NUM_VIDEO + CONDITION[kind]) // BLOCK)
    assert stats and all(bool((s.kv_count == s.key_blocks).all()) for s in stats)
    assert {(s.key_blocks, s.video_blocks) for s in stats} == {(key_blocks, NUM_VIDEO // BLOCK)}
    assert {s.layer for s in stats} == {0, 1}
    assert {s.branch for s in stats} == {"pred_cond", "pred_uncond"}  # CFG: the guider's two branches
    assert _close(out, stock), (out - stock).abs().max()


def test_carving_then_unpatch_restores_bitwise(case, monkeypatch):
    """Carving: video query blocks drop video key blocks, every condition key block is kept, condition query
    blocks attend densely, padded condition tokens are masked by each sample's key length, I2V keeps frame 0;
    the output is finite. Unpatching gives the stock processors and stock latents back, bit for bit."""
    import jenga.adapters.base as base

    kind, pipe, kwargs, stock = case
    processors = dict(pipe.transformer.attn_processors)
    seen, lengths = [], []
    select, attend = base.select_blocks, base.block_sparse_attention

    def spy_select(q, k, **kw):
        lists = select(q, k, **kw)
        seen.append((lists.to_dense(), kw["always_keep"]))
        return lists

    def spy_attend(q, k, v, kv_index, kv_count, **kw):
        lengths.append(kw["key_lengths"].tolist())
        return attend(q, k, v, kv_index, kv_count, **kw)

    monkeypatch.setattr(base, "select_blocks", spy_select)
    monkeypatch.setattr(base, "block_sparse_attention", spy_attend)
    jenga.patch(pipe, **CARVING)
    carved = run(pipe, kwargs)
    stats = selection_stats(pipe)
    jenga.unpatch(pipe)
    monkeypatch.undo()

    assert torch.isfinite(carved).all() and carved.shape == stock.shape and not torch.equal(carved, stock)
    video_blocks = NUM_VIDEO // BLOCK
    assert len(stats) == 2 * 2 * 2  # 2 steps x 2 CFG branches x 2 layers
    dropped = sum(int((s.kv_count[..., :video_blocks] < s.key_blocks).sum()) for s in stats)
    assert dropped > 0
    assert len(seen) == len(stats)
    for keep, always in seen:
        assert keep[..., :video_blocks, video_blocks:].all()  # condition keys kept by every video query
        assert keep[..., video_blocks:, :].all()  # condition queries dense
        if kind == "i2v":  # frame 0 (64 tokens = 4 blocks, a prefix of the carved order) always kept
            assert always is not None and always[:4].all() and not always[4:].any()
            assert keep[..., :video_blocks, :4].all()
        else:
            assert always is None
    assert {tuple(x) for x in lengths} == {(NUM_VIDEO + VALID[kind][0], NUM_VIDEO + VALID[kind][1])}

    assert all(pipe.transformer.attn_processors[k] is v for k, v in processors.items())
    assert torch.equal(run(pipe, kwargs), stock)


def test_batch_sample_equals_single(case):
    """Per-sample padding with carving: sample 0 of the batch of 2 == the same sample alone."""
    kind, pipe, kwargs, _ = case
    latents = torch.randn(2, 4, 3, 8, 8, generator=torch.Generator().manual_seed(7))
    single = {k: (v[:1] if torch.is_tensor(v) and k != "latents" else v) for k, v in kwargs.items()}
    with jenga.patched(pipe, **CARVING):
        both = run(pipe, {**kwargs, "latents": latents})
        alone = run(pipe, {**single, "latents": latents[:1]})
    assert _close(both[:1], alone), (both[:1] - alone).abs().max()


def test_skip_steps_and_dense_steps_follow_the_step(case):
    """The step clock reads the scheduler through the guider's two branches: step 0 dense, step 2 skipped
    (no block runs: no attention statistics), step 1 carved in both branches."""
    kind, pipe, kwargs, _ = case
    with jenga.patched(pipe, **{**CARVING, "dense_steps": 0.3, "skip_steps": (0.67,)}):
        out = run(pipe, {**kwargs, "num_inference_steps": 3})
        stats = selection_stats(pipe)
    assert torch.isfinite(out).all()
    assert {(s.step, s.branch) for s in stats} == {(1, "pred_cond"), (1, "pred_uncond")}
    assert len(stats) == 2 * 2


def test_progressive_t2v_returns_requested_size():
    """A half-resolution first stage through the pipeline's own call: 4 x 4 then 8 x 8 latents, the requested
    size back; without height/width the pipeline's default size (16:9 bucket of its target size)."""
    pipe = pipeline("t2v", guidance_scale=1.0)
    kwargs = inputs(pipe, batch=1, steps=2, cfg=False)
    grids = []
    pipe.transformer.rope.register_forward_pre_hook(lambda m, args: grids.append(tuple(args[0].shape[-2:])))
    stages = dict(CARVING, stages=((0.5, 0.5), (1.0, 1.0)), min_video_blocks=1, text_amplifier=0.5)
    with jenga.patched(pipe, **stages):
        out = run(pipe, kwargs)
        assert grids == [(4, 4), (8, 8)]
        assert out.shape == (1, 4, (NUM_FRAMES - 1) // 4 + 1, HEIGHT // 16, WIDTH // 16)
        assert torch.isfinite(out).all()
        grids.clear()
        default = run(pipe, {**kwargs, "height": None, "width": None})
    staged_grids = list(grids)
    stock_default = run(pipe, {**kwargs, "height": None, "width": None})
    assert default.shape == stock_default.shape and staged_grids[-1] == tuple(stock_default.shape[-2:])
    assert len(staged_grids) == 2 and staged_grids[0] < staged_grids[1]


def test_turbo_preset_on_t2v_and_its_refusal_on_i2v():
    pipe = pipeline("t2v", guidance_scale=1.0)
    with jenga.patched(pipe, "turbo", block_size=BLOCK, backend="torch"):
        out = run(pipe, inputs(pipe, batch=1, steps=2, cfg=False))
    assert out.shape == (1, 4, 3, 8, 8) and torch.isfinite(out).all()
    i2v = pipeline("i2v")
    with pytest.raises(ValueError, match="takes no height/width"):
        jenga.patch(i2v, "turbo")
    assert not jenga.is_patched(i2v)
    jenga.patch(i2v)  # "base": full resolution, the pipeline's shift
    assert jenga.is_patched(i2v)
    jenga.unpatch(i2v)


def test_presets_are_hunyuan_budget_with_the_pipelines_shift():
    for name in ("base", "turbo", "flash"):
        mine, reference = JengaConfig.preset(name, model="hunyuan15"), JengaConfig.preset(name, model="hunyuan")
        assert mine.drop_rates == reference.drop_rates and mine.cdf_threshold == reference.cdf_threshold
        assert mine.skip_steps == reference.skip_steps and mine.text_amplifier == reference.text_amplifier
        assert [(s.scale, s.until) for s in mine.stages] == [(s.scale, s.until) for s in reference.stages]
        assert all(s.shift is None for s in mine.stages)
    transformer = pipeline("t2v").transformer
    assert jenga.adapters.adapter_for(transformer).preset_model(transformer) == "hunyuan15"
