"""jenga.patch on tiny SkyReels-V2 (T2V, I2V, diffusion forcing T2V / I2V / V2V), Wan VACE and Wan
video-to-video pipelines: exact at drop rate 0, exact unpatch, real carving, each family's conditioning."""

from __future__ import annotations

import pytest
import torch
from _tiny import ALL_BLOCKS, CARVING, run
from _tiny_wan_family import frames, inputs, skyreels_pipeline, v2v_pipeline, vace_pipeline, vace_transformer

import jenga
from jenga import selection_stats

ATOL = 1e-4
PIPELINES = {
    "skyreels-t2v": lambda: skyreels_pipeline("t2v"),
    "skyreels-i2v": lambda: skyreels_pipeline("i2v"),
    "skyreels-df": lambda: skyreels_pipeline("df"),
    "skyreels-df-i2v": lambda: skyreels_pipeline("df-i2v"),
    "skyreels-df-v2v": lambda: skyreels_pipeline("df-v2v"),
    "wan-vace": vace_pipeline,
    "wan-v2v": v2v_pipeline,
}
# key blocks (16 tokens each) per forward: 3 x 8 x 8 tokens; the long diffusion-forcing videos run windows of
# 4, 4 and 3 latent frames; VACE carves its 3 main and 2 control blocks, the others their 2 blocks
KEY_BLOCKS = {"skyreels-df": {16, 12}}
LAYERS = {"wan-vace": {0, 1, 2, 3, 4}}
# a stage plan resizing mid-run does not apply to these calls (see the adapters): patching says so
UNSTAGED = ("skyreels-df", "skyreels-df-i2v", "skyreels-df-v2v", "wan-v2v")
TURBO_LIKE = dict(stages=((0.75, 0.5), (1.0, 1.0)), drop_rates=(0.7, 0.7))


def _close(a, b, atol=ATOL):
    return a.shape == b.shape and (a - b).abs().max().item() <= atol


def _hooked(transformer):
    return {m for m in transformer.modules() if "_diffusers_hook" in m.__dict__ or "forward" in m.__dict__}


@pytest.mark.parametrize("name", PIPELINES)
def test_all_blocks_equals_stock_and_unpatch_is_exact(name):
    """Drop rate 0 through the block-sparse path == stock; after unpatch the stock run is bitwise the same."""
    pipe = PIPELINES[name]()
    # one step (the runs are dominated by the VAE encodes); V2V at strength 0.7 keeps int(0.7 * 2) = 1 of 2 steps
    args = inputs(pipe, steps=2 if name == "wan-v2v" else 1, long=name == "skyreels-df")
    stock = run(pipe, args)
    processors = dict(pipe.transformer.attn_processors)
    hooked = _hooked(pipe.transformer)
    jenga.patch(pipe, **ALL_BLOCKS)
    out = run(pipe, args)
    stats = selection_stats(pipe)
    assert stats, "the block-sparse path never ran"
    assert all(bool((s.kv_count == s.key_blocks).all()) for s in stats)
    assert {s.key_blocks for s in stats} == KEY_BLOCKS.get(name, {12})
    assert {s.layer for s in stats} == LAYERS.get(name, {0, 1})
    assert _close(out, stock), (out - stock).abs().max()
    jenga.unpatch(pipe)
    assert all(pipe.transformer.attn_processors[k] is v for k, v in processors.items())
    assert _hooked(pipe.transformer) == hooked
    assert torch.equal(run(pipe, args), stock)


@pytest.mark.parametrize("name", [name for name in PIPELINES if name != "wan-vace"])
def test_carving_batch_two_drops_blocks(name):
    """Real sparsity, CFG, two samples (the second with padded text): blocks dropped, finite output, and each
    sample's selection its own (sample 0 equals a batch-of-one run)."""
    pipe = PIPELINES[name]()
    jenga.patch(pipe, **CARVING)
    single = run(pipe, inputs(pipe, batch=1))
    selection_stats(pipe, clear=True)
    batch_inputs = inputs(pipe, batch=2)
    out = run(pipe, batch_inputs)
    assert out.shape[0] == 2 and torch.isfinite(out).all()
    stats = selection_stats(pipe)
    layers = LAYERS.get(name, {0, 1})
    assert {s.layer for s in stats} == layers and len(stats) >= 2 * len(layers)  # both CFG branches
    assert all(s.kv_count.shape[0] == 2 and bool((s.kv_count >= 1).all()) for s in stats)
    assert any(bool((s.kv_count < s.key_blocks).any()) for s in stats), "nothing was dropped"
    assert _close(out[:1], single), (out[:1] - single).abs().max()


@pytest.mark.parametrize("name", [name for name in PIPELINES if name != "wan-vace"])  # VACE: the test below
def test_progressive_stages_or_clear_error(name):
    """A two-resolution stage plan returns the requested size, or is refused where it does not apply."""
    pipe = PIPELINES[name]()
    args = inputs(pipe)
    if name in UNSTAGED:
        with pytest.raises(ValueError, match="progressive resolution"):
            jenga.patch(pipe, **{**CARVING, **TURBO_LIKE})
        assert not jenga.is_patched(pipe)
        return
    stock = run(pipe, args)
    jenga.patch(pipe, **{**CARVING, **TURBO_LIKE})
    out = run(pipe, args)
    assert out.shape == stock.shape and torch.isfinite(out).all()
    assert {s.key_blocks for s in selection_stats(pipe)} == {12, 7}  # 3 x 6 x 6 = 108 tokens, then 3 x 8 x 8


@pytest.mark.parametrize("name", ["skyreels-df", "wan-vace"])
def test_step_skipping_is_refused_where_it_does_not_apply(name):
    pipe = PIPELINES[name]()
    with pytest.raises(ValueError, match="skip_steps"):
        jenga.patch(pipe, **{**CARVING, "skip_steps": (0.5,)})
    assert not jenga.is_patched(pipe)
    processors = pipe.transformer.attn_processors.values()
    assert all(not isinstance(p, jenga.adapters.base.CarvingProcessor) for p in processors)


def test_diffusion_forcing_clock_follows_per_frame_timesteps():
    """The per-frame schedulers never step the pipeline's own: the step comes from the timesteps, each
    window starting again: dense_steps=0.1 keeps the first step of every window dense (noise level 1), the
    second (noise level 0.89 at shift 8, progress 0.11) carves."""
    pipe = skyreels_pipeline("df")
    jenga.patch(pipe, **{**CARVING, "dense_steps": 0.1})
    out = run(pipe, inputs(pipe, steps=2, long=True))
    assert torch.isfinite(out).all()
    stats = selection_stats(pipe)
    assert {s.step for s in stats} == {1}
    # windows of 4, 4 and 3 latent frames, each carving in both branches and layers at its second step
    assert sorted(s.key_blocks for s in stats) == [12] * 4 + [16] * 8


def test_diffusion_forcing_causal_mask_stays_exact():
    """causal_block_size=2: the block-causal token mask follows the carved order; those forwards run dense."""
    pipe = skyreels_pipeline("df")
    args = inputs(pipe, causal_block_size=2, ar_step=1, num_frames=13, overlap_history=None)
    stock = run(pipe, args)
    jenga.patch(pipe, **ALL_BLOCKS)
    out = run(pipe, args)
    assert _close(out, stock), (out - stock).abs().max()
    assert selection_stats(pipe) == []  # masked forwards never carve


def test_vace_reference_image_and_control_video_at_stage_size():
    """VACE with a reference image: carving runs over the extra reference frame; the stage plan resizes the
    control video and mask for the low-resolution stage (a wrong size would fail in the VAE concat)."""
    pipe = vace_pipeline()
    args = inputs(pipe, reference_images=frames(1, seed=9)[0])
    jenga.patch(pipe, **{**CARVING, **TURBO_LIKE})
    out = run(pipe, args)
    assert out.shape[2] == 4 and torch.isfinite(out).all()  # 3 latent frames + the reference frame
    assert {s.key_blocks for s in selection_stats(pipe)} == {16, 9}  # 4 x 6 x 6 = 144 tokens, then 4 x 8 x 8


def test_vace_transformer_batch_two_carves_per_sample():
    """WanVACEPipeline itself generates one video per call ("more than one video is not yet supported"), so
    batch 2 goes through the transformer: control tokens of two samples, the second text padded."""
    transformer = vace_transformer()
    gen = torch.Generator().manual_seed(7)
    latent = torch.randn(2, 16, 3, 16, 16, generator=gen)
    control = torch.randn(2, 96, 3, 16, 16, generator=gen)
    text = torch.randn(2, 12, 32, generator=gen)
    text[1, 9:] = 0
    timestep = torch.tensor([700.0, 700.0])
    jenga.patch(transformer, **CARVING)
    with torch.no_grad():
        both = transformer(latent, timestep, text, control_hidden_states=control, return_dict=False)[0]
        first = transformer(latent[:1], timestep[:1], text[:1], control_hidden_states=control[:1], return_dict=False)[0]
    assert torch.isfinite(both).all() and _close(both[:1], first)
    stats = selection_stats(transformer)
    assert {s.layer for s in stats} == {0, 1, 2, 3, 4}
    assert any(bool((s.kv_count < s.key_blocks).any()) for s in stats), "nothing was dropped"


def test_supported_lists_the_new_families():
    names = jenga.adapters.supported_transformers()
    assert {"SkyReelsV2Transformer3DModel", "WanVACETransformer3DModel"} <= set(names)
    pipe = skyreels_pipeline("t2v")
    jenga.patch(pipe)
    assert pipe.transformer._jenga_patch.config == jenga.JengaConfig.preset("base", model="skyreels-v2")


def test_skyreels_t2v_step_skipping_runs():
    """Plain SkyReels-V2 T2V steps its own scheduler: skip_steps applies (its block registered for skipping)."""
    pipe = skyreels_pipeline("t2v")
    jenga.patch(pipe, **{**CARVING, "skip_steps": (0.5,)})
    out = run(pipe, inputs(pipe, steps=4))
    assert torch.isfinite(out).all()
    assert {s.step for s in selection_stats(pipe)} == {0, 1, 3}  # step 2 reused the residual
