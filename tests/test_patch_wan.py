"""jenga.patch on tiny Wan pipelines (2.1 T2V and I2V, 2.2 A14B and TI2V) and bare Wan transformers."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from _tiny import (
    ALL_BLOCKS,
    CARVING,
    GRID,
    image,
    lora_state_dict,
    run,
    wan_inputs,
    wan_pipeline,
    wan_transformer,
)
from diffusers import FlowMatchEulerDiscreteScheduler, UniPCMultistepScheduler

import jenga
from jenga import JengaConfig, selection_stats
from jenga._hooks import HOOK_NAMES
from jenga._state import BranchState, BranchStates
from jenga.attention import triton_available

KINDS = ["t2v", "i2v", "a14b", "ti2v"]
ATOL = 1e-4


def _close(a, b, atol=ATOL):
    return (a - b).abs().max().item() <= atol


def _hooked_modules(transformer):
    return [m for m in transformer.modules() if "_diffusers_hook" in m.__dict__ or "forward" in m.__dict__]


@pytest.mark.parametrize("kind", KINDS)
def test_all_blocks_equals_stock(kind):
    """Drop rate 0 through the block-sparse path (carved order, all blocks) == the stock pipeline."""
    pipe = wan_pipeline(kind)
    inputs = wan_inputs(pipe)
    stock = run(pipe, inputs)
    jenga.patch(pipe, **ALL_BLOCKS)
    out = run(pipe, inputs)
    stats = selection_stats(pipe)
    assert stats, "the block-sparse path never ran"
    assert all(bool((s.kv_count == s.key_blocks).all()) for s in stats)
    assert {s.key_blocks for s in stats} == {12}  # 3 x 8 x 8 tokens in blocks of 16
    assert _close(out, stock), (out - stock).abs().max()


@pytest.mark.parametrize("kind", KINDS)
def test_unpatch_restores_bitwise(kind):
    pipe = wan_pipeline(kind)
    reference = run(pipe, wan_inputs(pipe))  # never patched (the run itself adds diffusers' root registry)
    transformers = [t for t in (pipe.transformer, getattr(pipe, "transformer_2", None)) if t is not None]
    processors = [dict(t.attn_processors) for t in transformers]
    before = [set(_hooked_modules(t)) for t in transformers]
    jenga.patch(pipe, **CARVING)
    carved = run(pipe, wan_inputs(pipe))
    assert not torch.equal(carved, reference)
    jenga.unpatch(pipe)
    for t, procs, hooked in zip(transformers, processors, before, strict=True):
        assert all(t.attn_processors[k] is v for k, v in procs.items())
        assert set(_hooked_modules(t)) == hooked
        assert "_jenga_patch" not in t.__dict__
    assert torch.equal(run(pipe, wan_inputs(pipe)), reference)


def test_patch_twice_is_idempotent_and_repatch_works():
    pipe = wan_pipeline("t2v")
    inputs = wan_inputs(pipe)
    jenga.patch(pipe, **CARVING)
    record = pipe.transformer._jenga_patch
    assert jenga.patch(pipe, **CARVING) is pipe and pipe.transformer._jenga_patch is record
    first = run(pipe, inputs)
    with pytest.raises(RuntimeError, match="unpatch"):
        jenga.patch(pipe, **{**CARVING, "drop_rates": 0.5})
    jenga.unpatch(pipe)
    jenga.unpatch(pipe)  # not patched: nothing to do
    jenga.patch(pipe, **CARVING)
    assert torch.equal(run(pipe, inputs), first)


def test_carving_drops_blocks_per_step_and_branch():
    pipe = wan_pipeline("t2v")
    jenga.patch(pipe, **{**CARVING, "dense_steps": 0.5})
    out = run(pipe, wan_inputs(pipe, steps=4))
    assert torch.isfinite(out).all()
    stats = selection_stats(pipe)
    # steps 0-1 dense (half of 4 steps); steps 2-3 carve in both CFG branches, both layers
    assert sorted({(s.step, s.branch, s.layer) for s in stats}) == [
        (step, branch, layer) for step in (2, 3) for branch in ("cond", "uncond") for layer in (0, 1)
    ]
    assert len(stats) == 8
    for s in stats:
        assert s.kv_count.shape == (1, 2, 12)
        assert bool((s.kv_count >= 1).all())
    assert any(bool((s.kv_count < s.key_blocks).any()) for s in stats), "nothing was dropped"
    assert sum(s.density for s in stats) / len(stats) < 1.0


def test_dense_layers_and_grid_too_small_stay_stock():
    pipe = wan_pipeline("t2v")
    jenga.patch(pipe, **{**CARVING, "dense_layers": (1,)})
    run(pipe, wan_inputs(pipe))
    assert {s.layer for s in selection_stats(pipe)} == {0}
    jenga.unpatch(pipe)
    stock = run(pipe, wan_inputs(pipe))
    # 192 tokens are fewer than 4 blocks of 128: no reordering, exact stock output
    jenga.patch(pipe, block_size=128, drop_rates=0.9, dense_steps=0.0, collect_stats=True)
    assert torch.equal(run(pipe, wan_inputs(pipe)), stock)
    assert selection_stats(pipe) == []
    jenga.unpatch(pipe)
    # a drop rate at or below the dense threshold: exact stock output too
    jenga.patch(pipe, block_size=16, drop_rates=0.2, dense_steps=0.0, collect_stats=True)
    assert torch.equal(run(pipe, wan_inputs(pipe)), stock)
    assert selection_stats(pipe) == []


def test_default_config_is_the_family_preset():
    pipe = wan_pipeline("t2v")
    jenga.patch(pipe)
    assert pipe.transformer._jenga_patch.config == JengaConfig.preset("base", model="wan")
    jenga.unpatch(pipe)
    jenga.patch(pipe, "turbo", block_size=64)
    assert pipe.transformer._jenga_patch.config == JengaConfig.preset("turbo", model="wan", block_size=64)
    assert "carving_processors=2/2" in repr(pipe.transformer._jenga_patch)


def test_patch_changes_nothing_until_run():
    pipe = wan_pipeline("t2v")
    params = {name: (p.data_ptr(), p.device, p.dtype) for name, p in pipe.transformer.named_parameters()}
    snapshot = {name: p.detach().clone() for name, p in pipe.transformer.state_dict().items()}
    jenga.patch(pipe, **CARVING)
    assert params == {name: (p.data_ptr(), p.device, p.dtype) for name, p in pipe.transformer.named_parameters()}
    assert all(torch.equal(snapshot[k], v) for k, v in pipe.transformer.state_dict().items())
    assert pipe.transformer._jenga_patch.runtime.plan.layout is None  # no table built before a forward


def test_batch_and_num_videos_per_prompt():
    pipe = wan_pipeline("t2v", text_encoder=True)
    inputs = wan_inputs(pipe, prompt_embeds=None, negative_prompt_embeds=None, num_videos_per_prompt=2,
                        prompt=["a cat runs", "a red dog in snow"], negative_prompt=["blue", "beach"])
    stock = run(pipe, inputs)
    assert stock.shape[0] == 4
    jenga.patch(pipe, **ALL_BLOCKS)
    assert _close(run(pipe, inputs), stock)
    jenga.unpatch(pipe)
    jenga.patch(pipe, **CARVING)
    out = run(pipe, inputs)
    assert out.shape == stock.shape and torch.isfinite(out).all()
    assert {tuple(s.kv_count.shape) for s in selection_stats(pipe)} == {(4, 2, 12)}


def test_i2v_always_keeps_first_frame_blocks(monkeypatch):
    import jenga.adapters.base as base

    seen = []
    select = base.select_blocks

    def spy(q, k, **kwargs):
        lists = select(q, k, **kwargs)
        seen.append((kwargs["always_keep"], lists))
        return lists

    monkeypatch.setattr(base, "select_blocks", spy)
    pipe = wan_pipeline("i2v")
    jenga.patch(pipe, **{**CARVING, "drop_rates": 0.9, "cdf_threshold": 0.0, "adjacency": False})
    runtime = pipe.transformer._jenga_patch.runtime
    assert runtime.first_frame and runtime.first_frame_prefix
    run(pipe, wan_inputs(pipe, steps=2))
    assert seen
    first = (GRID[1] * GRID[2]) // 16  # frame 0 = the first 64 carved tokens = 4 blocks
    for always_keep, lists in seen:
        assert always_keep.nonzero().flatten().tolist() == list(range(first))
        dense = lists.to_dense()
        assert dense[..., :first].all()
        assert not dense[..., first:].all()  # the rest is still carved


def test_i2v_first_frame_switch_off():
    pipe = wan_pipeline("i2v")
    jenga.patch(pipe, **{**CARVING, "first_frame": False})
    runtime = pipe.transformer._jenga_patch.runtime
    assert not runtime.first_frame and not runtime.first_frame_prefix


def test_a14b_patches_both_transformers_and_counts_global_steps():
    pipe = wan_pipeline("a14b")
    jenga.patch(pipe, **CARVING)
    run(pipe, wan_inputs(pipe, steps=4))
    first = {s.step for s in pipe.transformer._jenga_patch.runtime.stats}
    second = {s.step for s in pipe.transformer_2._jenga_patch.runtime.stats}
    assert first and second and first.isdisjoint(second)
    assert first | second == {0, 1, 2, 3}
    assert max(first) < min(second)  # high-noise transformer first, then the boundary switch


def test_ti2v_per_token_timesteps_follow_the_order():
    """Per-token modulation must be reordered with the tokens: equality at drop 0 would fail otherwise.
    Here the timesteps differ per token (as in TI2V image-to-video: frame 0 at t = 0)."""
    transformer = wan_transformer(0, in_channels=48, out_channels=48)
    x = torch.randn(1, 48, *GRID[:1], 16, 16)
    text = torch.randn(1, 12, 32)
    timestep = torch.full((1, 192), 700.0)
    timestep[:, :64] = 0.0
    with torch.no_grad():
        stock = transformer(x, timestep, text, return_dict=False)[0]
        jenga.patch(transformer, first_frame=True, **ALL_BLOCKS)
        out = transformer(x, timestep, text, return_dict=False)[0]
    assert selection_stats(transformer)
    assert _close(out, stock)


def test_unipc_scheduler_and_callback_on_step_end():
    pipe = wan_pipeline("t2v")
    pipe.scheduler = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0)
    steps_seen = []

    def callback(p, step, timestep, tensors):
        record = p.transformer.__dict__.get("_jenga_patch")
        if record is not None:
            steps_seen.append((step, record.runtime.plan.step))
        return {"latents": tensors["latents"]}

    inputs = wan_inputs(pipe, callback_on_step_end=callback)
    stock = run(pipe, inputs)
    jenga.patch(pipe, **ALL_BLOCKS)
    assert _close(run(pipe, inputs), stock)
    assert steps_seen == [(i, i) for i in range(4)]


def test_state_is_fresh_after_an_exception():
    pipe = wan_pipeline("t2v")
    jenga.patch(pipe, **{**CARVING, "dense_steps": 0.5})
    inputs = wan_inputs(pipe)
    expected = run(pipe, inputs)

    def explode(p, step, timestep, tensors):
        if step == 2:
            raise KeyboardInterrupt
        return {}

    with pytest.raises(KeyboardInterrupt):
        run(pipe, {**inputs, "callback_on_step_end": explode})
    assert torch.equal(run(pipe, inputs), expected)


def test_lora_before_and_after_patch():
    pytest.importorskip("peft")
    paths = [f"blocks.{i}.attn1.{name}" for i in range(2) for name in ("to_q", "to_k", "to_v", "to_out.0")]
    plain = wan_pipeline("t2v")
    inputs = wan_inputs(plain)
    base = run(plain, inputs)
    plain.load_lora_weights(lora_state_dict(plain.transformer, paths), adapter_name="tiny")
    reference = run(plain, inputs)
    assert not _close(reference, base, atol=1e-2)  # the LoRA matters

    jenga.patch(plain, **ALL_BLOCKS)  # LoRA loaded before patching
    assert _close(run(plain, inputs), reference)

    late = wan_pipeline("t2v")
    jenga.patch(late, **ALL_BLOCKS)  # LoRA loaded after patching
    late.load_lora_weights(lora_state_dict(late.transformer, paths), adapter_name="tiny")
    assert _close(run(late, inputs), reference)
    jenga.unpatch(late)
    assert torch.equal(run(late, inputs), reference)


def test_model_cpu_offload():
    pytest.importorskip("accelerate")
    pipe = wan_pipeline("t2v")
    pipe.enable_model_cpu_offload(device="cpu")
    inputs = wan_inputs(pipe)
    stock = run(pipe, inputs)
    jenga.patch(pipe, **ALL_BLOCKS)
    assert _close(run(pipe, inputs), stock)
    assert selection_stats(pipe)
    jenga.unpatch(pipe)
    assert hasattr(pipe.transformer, "_hf_hook")  # accelerate's hook on the transformer survives
    assert torch.equal(run(pipe, inputs), stock)


def test_bf16():
    pipe = wan_pipeline("t2v").to(dtype=torch.bfloat16)
    inputs = wan_inputs(pipe)
    stock = run(pipe, inputs)
    jenga.patch(pipe, **ALL_BLOCKS)
    out = run(pipe, inputs)
    assert out.dtype == stock.dtype
    assert _close(out.float(), stock.float(), atol=0.1)
    jenga.unpatch(pipe)
    jenga.patch(pipe, **CARVING)
    assert torch.isfinite(run(pipe, inputs)).all()


def _custom_loop(transformer, scheduler, steps=4, cfg=True):
    """A hand-written denoising loop with classifier-free guidance as two forwards per step."""
    gen = torch.Generator().manual_seed(0)
    latents = torch.randn(1, 16, 3, 16, 16, generator=gen)
    cond, uncond = torch.randn(1, 12, 32, generator=gen), torch.randn(1, 12, 32, generator=gen)
    scheduler.set_timesteps(steps)
    with torch.no_grad():
        for t in scheduler.timesteps:
            timestep = t.expand(1)
            noise = transformer(latents, timestep, cond, return_dict=False)[0]
            if cfg:
                noise_uncond = transformer(latents, timestep, uncond, return_dict=False)[0]
                noise = noise_uncond + 4.0 * (noise - noise_uncond)
            latents = scheduler.step(noise, t, latents, return_dict=False)[0]
    return latents


@pytest.mark.parametrize("attach_scheduler", [True, False])
def test_custom_loop_on_a_bare_transformer(attach_scheduler):
    transformer = wan_transformer()
    scheduler = FlowMatchEulerDiscreteScheduler(shift=1.0)
    stock = _custom_loop(transformer, scheduler)
    jenga.patch(transformer, scheduler=scheduler if attach_scheduler else None, **{**ALL_BLOCKS, "dense_steps": 0.4})
    out = _custom_loop(transformer, scheduler)
    assert _close(out, stock)
    # each step twice (cond, uncond); the first 40% of the run stays dense (without a scheduler the
    # progress comes from the timesteps 1000, 667, 334, 1: the same split at shift 1)
    assert [s.step for s in selection_stats(transformer) if s.layer == 0] == [2, 2, 3, 3]
    # a second run counts from 0 again (the timestep goes back up)
    selection_stats(transformer, clear=True)
    _custom_loop(transformer, scheduler)
    assert [s.step for s in selection_stats(transformer) if s.layer == 0][-2:] == [3, 3]


def test_branch_clock_counts_distinct_timesteps():
    clock = BranchState()
    assert [clock.tick(t) for t in (999.0, 999.0, 750.0, 500.0, 999.0)] == [0, 0, 1, 2, 0]


def test_processor_compiles_without_graph_break():
    transformer = wan_transformer()
    jenga.patch(transformer, **{**CARVING, "collect_stats": False})
    runtime = transformer._jenga_patch.runtime
    latent = torch.randn(1, 16, 3, 16, 16)
    with torch.no_grad():
        rope = transformer.rope(latent)  # hooked: starts the plan and reorders the tables
        runtime.set_step(None, torch.tensor([500.0]), BranchStates())
        assert runtime.plan.sparse
        attn = transformer.blocks[0].attn1
        hidden = torch.randn(1, 192, 64)
        torch._dynamo.reset()
        compiled = torch.compile(lambda h: attn.processor(attn, h, None, None, rope), backend="aot_eager",
                                 fullgraph=True)
        assert torch.equal(compiled(hidden), attn.processor(attn, hidden, None, None, rope))


def test_compiled_transformer_matches_eager():
    transformer = wan_transformer()
    jenga.patch(transformer, **{**CARVING, "collect_stats": False})
    x, text = torch.randn(1, 16, 3, 16, 16), torch.randn(1, 12, 32)
    with torch.no_grad():
        eager = [transformer(x, torch.tensor([t]), text, return_dict=False)[0] for t in (900.0, 500.0)]
        torch._dynamo.reset()
        compiled = torch.compile(transformer, backend="aot_eager")
        outs = [compiled(x, torch.tensor([t]), text, return_dict=False)[0] for t in (900.0, 500.0)]
    for a, b in zip(outs, eager, strict=True):
        assert _close(a, b, atol=1e-5)
    assert not _close(eager[0], eager[1])


@pytest.mark.skipif(not triton_available(), reason="Triton kernel cannot run here")
def test_triton_backend_forward():
    """One forward through the Triton kernel (interpreted on the CPU) equals the stock forward."""
    transformer = wan_transformer(num_layers=1)
    x, text = torch.randn(1, 16, 3, 16, 16), torch.randn(1, 12, 32)
    with torch.no_grad():
        stock = transformer(x, torch.tensor([500.0]), text, return_dict=False)[0]
        jenga.patch(transformer, **{**ALL_BLOCKS, "backend": "triton", "block_size": 64})
        out = transformer(x, torch.tensor([500.0]), text, return_dict=False)[0]
    assert selection_stats(transformer)
    assert _close(out, stock)


def test_hooks_are_named_and_on_submodules_only():
    pipe = wan_pipeline("t2v")
    jenga.patch(pipe, **CARVING)
    t = pipe.transformer
    assert "_diffusers_hook" not in t.__dict__ or not t._diffusers_hook.hooks  # never the root forward
    names = [name for m in t.modules() if "_diffusers_hook" in m.__dict__ for name in m._diffusers_hook.hooks]
    assert sorted(names) == sorted(HOOK_NAMES)
    assert type(t.blocks[0].attn2.processor).__name__ == "WanAttnProcessor"  # cross-attention stays stock


def test_set_attention_backend_reaches_the_stock_processor():
    transformer = wan_transformer()
    jenga.patch(transformer, **CARVING)
    processor = transformer.blocks[0].attn1.processor
    processor._attention_backend = "native"
    assert processor.stock._attention_backend == "native"


def test_unsupported_targets_raise_type_error():
    from diffusers import DDPMPipeline, UNet2DModel

    unet = UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8,), norm_num_groups=4,
                       down_block_types=("DownBlock2D",), up_block_types=("UpBlock2D",), layers_per_block=1)
    supported = "HunyuanVideoTransformer3DModel, .*SkyReelsV2Transformer3DModel, .*WanTransformer3DModel"
    with pytest.raises(TypeError, match=supported):
        jenga.patch(unet)
    with pytest.raises(TypeError, match="no transformer.*WanPipeline"):
        jenga.patch(DDPMPipeline(unet=unet, scheduler=FlowMatchEulerDiscreteScheduler()))
    with pytest.raises(TypeError, match="HunyuanVideoPipeline"):
        jenga.patch("pipe")
    with pytest.raises(TypeError, match="JengaConfig"):
        jenga.patch(wan_transformer(), config=0.5)


def test_bad_config_values_raise_value_error():
    pipe = wan_pipeline("t2v")
    with pytest.raises(ValueError, match="'zorder', 'hilbert', 'raster'"):
        jenga.patch(pipe, curve="peano")
    with pytest.raises(ValueError, match="unknown JengaConfig fields"):
        jenga.patch(pipe, sparsity=0.5)
    with pytest.raises(ValueError, match="'base', 'turbo'"):
        jenga.patch(pipe, "flash")  # a HunyuanVideo preset
    with pytest.raises(ValueError, match="layers 0..1"):
        jenga.patch(pipe, dense_layers=(2,))
    assert not jenga.is_patched(pipe)


def test_patched_context_manager():
    pipe = wan_pipeline("t2v")
    inputs = wan_inputs(pipe)
    stock = run(pipe, inputs)
    with jenga.patched(pipe, **CARVING) as same:
        assert same is pipe and jenga.is_patched(pipe)
        with pytest.raises(RuntimeError, match="already patched"), jenga.patched(pipe):
            pass
    assert not jenga.is_patched(pipe)
    with pytest.raises(ValueError), jenga.patched(pipe, **CARVING):
        raise ValueError("inside")
    assert not jenga.is_patched(pipe)
    assert torch.equal(run(pipe, inputs), stock)


def test_config_object_and_overrides_do_not_mutate():
    cfg = JengaConfig(**{k: v for k, v in CARVING.items()})
    frozen = dataclasses.asdict(cfg)
    pipe = wan_pipeline("t2v")
    jenga.patch(pipe, cfg, curve="hilbert")
    assert dataclasses.asdict(cfg) == frozen
    assert pipe.transformer._jenga_patch.config.curve == "hilbert"
    assert torch.isfinite(run(pipe, wan_inputs(pipe))).all()


def test_partial_last_block_equals_stock():
    pipe = wan_pipeline("t2v")
    inputs = wan_inputs(pipe, height=112, width=112)  # 3 x 7 x 7 = 147 tokens
    stock = run(pipe, inputs)
    jenga.patch(pipe, **{**ALL_BLOCKS, "curve": "hilbert"})
    assert _close(run(pipe, inputs), stock)
    assert {s.key_blocks for s in selection_stats(pipe)} == {10}


def test_fused_qkv_projections():
    pipe = wan_pipeline("t2v")
    pipe.transformer.fuse_qkv_projections()
    assert pipe.transformer.blocks[0].attn1.fused_projections
    inputs = wan_inputs(pipe)
    stock = run(pipe, inputs)
    jenga.patch(pipe, **ALL_BLOCKS)
    assert _close(run(pipe, inputs), stock)
    assert selection_stats(pipe)


def test_unpatch_warns_when_a_later_wrapper_would_be_dropped(caplog):
    transformer = wan_transformer()
    jenga.patch(transformer, **CARVING)
    inner = transformer.rope.forward
    transformer.rope.forward = lambda *args, **kwargs: inner(*args, **kwargs)  # e.g. accelerate's hook
    with caplog.at_level("WARNING", logger="jenga"):
        jenga.unpatch(transformer)
    assert "wrapped again after patching" in caplog.text


def test_patch_does_not_keep_the_pipeline_alive():
    import gc
    import weakref

    pipe = wan_pipeline("t2v")
    transformer = pipe.transformer
    jenga.patch(pipe, **CARVING)
    ref = weakref.ref(pipe)
    del pipe
    gc.collect()
    assert ref() is None
    assert transformer._jenga_patch.runtime.pipeline_object() is None
    jenga.unpatch(transformer)
    assert not jenga.is_patched(transformer)


def test_flf2v_keeps_first_and_last_frame_blocks(monkeypatch):
    """First-and-last-frame conditioning (``last_image=``): the last latent frame is a suffix of the carved
    order and its blocks are kept for every query, like the first frame's (only during that call; plain I2V
    calls keep the first frame alone: test_i2v_always_keeps_first_frame_blocks)."""
    import jenga.adapters.base as base

    seen = []
    select = base.select_blocks

    def spy(q, k, **kwargs):
        seen.append(kwargs["always_keep"])
        return select(q, k, **kwargs)

    monkeypatch.setattr(base, "select_blocks", spy)
    pipe = wan_pipeline("i2v")
    # Wan2.1-FLF2V: the image context of both frames gets a learned position embedding (2 x 17 CLIP tokens here)
    pipe.register_modules(transformer=wan_transformer(0, in_channels=36, image_dim=16, added_kv_proj_dim=64,
                                                      pos_embed_seq_len=34))
    jenga.patch(pipe, **{**CARVING, "drop_rates": 0.9, "cdf_threshold": 0.0, "adjacency": False})
    frame_blocks = (GRID[1] * GRID[2]) // 16
    blocks = GRID[0] * frame_blocks
    out = run(pipe, wan_inputs(pipe, steps=2, last_image=image()))
    assert torch.isfinite(out).all() and seen
    both_ends = list(range(frame_blocks)) + list(range(blocks - frame_blocks, blocks))
    for always_keep in seen:
        assert always_keep.nonzero().flatten().tolist() == both_ends
    assert not pipe.transformer._jenga_patch.runtime.last_frame  # only for the call that had a last frame
    jenga.unpatch(pipe)
    from diffusers import WanImageToVideoPipeline

    assert type(pipe) is WanImageToVideoPipeline  # the call driver is gone with the patch
