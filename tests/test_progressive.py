"""Progressive resolution inside ``pipe(...)``: stage grids, call counts, schedules, outputs, callbacks."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch
from _tiny import hunyuan_inputs, hunyuan_pipeline, run, wan_inputs, wan_pipeline, wan_transformer, wan_vae
from diffusers import FlowMatchEulerDiscreteScheduler, UniPCMultistepScheduler, WanPipeline

import jenga
from jenga import JengaConfig
from jenga.progressive import plan_stages, shift_sigmas

# dense attention everywhere (drop rate at the dense threshold): only the stages change the computation
DENSE = dict(block_size=16, drop_rates=0.0, backend="torch", stages=((1.0, 1.0),), skip_steps=())
TURBO = {**DENSE, "stages": ((0.5, 0.5, 7.0), (1.0, 1.0, 9.0))}


def _record_grids(transformer) -> list[tuple[int, ...]]:
    """Latent shapes the transformer sees, one entry per forward."""
    seen: list[tuple[int, ...]] = []
    transformer.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(tuple((args[0] if args else kwargs["hidden_states"]).shape)),
        with_kwargs=True,
    )
    return seen


def test_one_stage_without_shift_is_exactly_stock():
    pipe = wan_pipeline("t2v")
    inputs = wan_inputs(pipe)
    stock = run(pipe, inputs)
    jenga.patch(pipe, **DENSE)
    assert type(pipe) is WanPipeline  # no driver attached
    assert torch.equal(run(pipe, inputs), stock)


@pytest.mark.parametrize("family", ["wan", "hunyuan"])
def test_one_stage_with_the_schedulers_own_shift_runs_the_driver_and_is_exactly_stock(family):
    pipe = wan_pipeline("t2v") if family == "wan" else hunyuan_pipeline("t2v")
    inputs = wan_inputs(pipe) if family == "wan" else hunyuan_inputs(pipe)
    stock = run(pipe, inputs)
    shift = pipe.scheduler.config.shift
    jenga.patch(pipe, **{**DENSE, "stages": ((1.0, 1.0, shift),)})
    assert "_jenga_stock_class" in type(pipe).__dict__
    assert torch.equal(run(pipe, inputs), stock)
    jenga.unpatch(pipe)
    assert "_jenga_stock_class" not in type(pipe).__dict__


def test_wan_stage_grids_in_order_and_call_count():
    pipe = wan_pipeline("t2v")
    original = pipe.scheduler
    seen = _record_grids(pipe.transformer)
    jenga.patch(pipe, **{**DENSE, "stages": ((0.5, 0.3, 5.0), (0.75, 0.5, 7.0), (1.0, 1.0, 9.0))})
    out = run(pipe, wan_inputs(pipe, steps=10))
    assert out.shape == (1, 16, 3, 16, 16) and torch.isfinite(out).all()
    # 3 + 2 + 5 steps, two forwards (cond, uncond) each; latent 16 x 16 scaled to 8 and 12 (even sizes)
    expected = [(1, 16, 3, 8, 8)] * 6 + [(1, 16, 3, 12, 12)] * 4 + [(1, 16, 3, 16, 16)] * 10
    assert seen == expected
    # the user's scheduler is back and untouched (stages ran on copies): still its 1000 training timesteps
    assert pipe.scheduler is original and original.config.shift == 5.0 and len(original.timesteps) == 1000


def test_stages_run_when_the_transformer_is_compiled_after_patching():
    """``pipe.transformer = torch.compile(pipe.transformer)`` after patching keeps every stage."""
    pipe = wan_pipeline("t2v")
    seen = _record_grids(pipe.transformer)
    jenga.patch(pipe, **TURBO)
    pipe.transformer = torch.compile(pipe.transformer, backend="eager")
    out = run(pipe, wan_inputs(pipe, steps=4))
    assert out.shape == (1, 16, 3, 16, 16) and torch.isfinite(out).all()
    assert seen == [(1, 16, 3, 8, 8)] * 4 + [(1, 16, 3, 16, 16)] * 4


def test_hunyuan_stage_grids_call_count_and_sigmas():
    pipe = hunyuan_pipeline("t2v")
    seen = _record_grids(pipe.transformer)
    timesteps: list[float] = []
    jenga.patch(pipe, **TURBO)
    run(pipe, hunyuan_inputs(pipe, steps=4, callback_on_step_end=lambda p, i, t, kw: timesteps.append(float(t))
                             or {}))
    # true CFG: two forwards per step, batch 2
    assert seen == [(2, 4, 3, 8, 8)] * 4 + [(2, 4, 3, 16, 16)] * 4
    grid = 1.0 - np.arange(4) / 4
    expected = np.concatenate([shift_sigmas(grid[:2], 7.0), shift_sigmas(grid[2:], 9.0)]) * 1000
    np.testing.assert_allclose(timesteps, expected, rtol=1e-5)


def test_switch_renoises_the_clean_estimate_with_the_users_generator():
    """The second stage starts from (1 - s) up(x0) + s eps, eps the next draw of the user's generator."""
    pipe = wan_pipeline("t2v")
    starts: list[torch.Tensor] = []
    ends: list[torch.Tensor] = []
    pipe.transformer.register_forward_pre_hook(
        lambda m, args, kwargs: starts.append(kwargs["hidden_states"].clone()), with_kwargs=True)
    jenga.patch(pipe, **TURBO)
    inputs = wan_inputs(pipe, steps=4)

    def keep(p, step, t, tensors):
        ends.append(tensors["latents"].clone())
        return {}

    run(pipe, {**inputs, "callback_on_step_end": keep})
    clean = ends[1]  # after the last step of stage 0 (sigma 0: the clean estimate)
    generator = torch.Generator().manual_seed(inputs["seed"])
    first_noise = torch.randn(clean.shape, generator=generator)
    assert torch.equal(starts[0], first_noise)  # stage 0 starts from the generator's noise, as stock
    sigma = float(shift_sigmas(torch.tensor(0.5, dtype=torch.float64), 9.0))
    up = torch.nn.functional.interpolate(clean, size=(3, 16, 16), mode="trilinear")
    expected = (1 - sigma) * up + sigma * torch.randn(up.shape, generator=generator)
    assert torch.allclose(starts[4], expected, atol=1e-5)  # forward 4 = first forward of stage 1


def test_same_seed_same_video_other_seed_other_video():
    pipe = wan_pipeline("t2v")
    jenga.patch(pipe, **TURBO)
    inputs = wan_inputs(pipe)
    first = run(pipe, inputs)
    assert torch.equal(run(pipe, inputs), first)
    assert not torch.equal(run(pipe, {**inputs, "seed": 1}), first)


@pytest.mark.parametrize("output_type", ["np", "pt", "pil", "latent"])
def test_every_output_type_and_return_dict(output_type):
    pipe = WanPipeline(tokenizer=None, text_encoder=None, vae=wan_vae(), scheduler=FlowMatchEulerDiscreteScheduler(
        shift=5.0), transformer=wan_transformer())
    pipe.set_progress_bar_config(disable=True)
    jenga.patch(pipe, **TURBO)
    inputs = wan_inputs(pipe, output_type=output_type, steps=2)
    gen = torch.Generator().manual_seed(inputs.pop("seed"))
    with torch.no_grad():
        frames = pipe(**inputs, generator=gen).frames
        tupled = pipe(**inputs, generator=torch.Generator().manual_seed(0), return_dict=False)
    assert isinstance(tupled, tuple)
    if output_type == "latent":
        assert frames.shape == (1, 16, 3, 16, 16)
    elif output_type == "np":
        assert frames.shape == (1, 9, 128, 128, 3)
    elif output_type == "pt":
        assert frames.shape == (1, 9, 3, 128, 128)
    else:
        assert len(frames[0]) == 9 and frames[0][0].size == (128, 128)


def test_callback_gets_global_steps_and_can_replace_latents():
    pipe = wan_pipeline("t2v")
    jenga.patch(pipe, **TURBO)
    inputs = wan_inputs(pipe, steps=6)
    plain = run(pipe, inputs)
    seen: list[tuple[int, tuple[int, ...]]] = []

    def identity(p, step, t, tensors):
        seen.append((step, tuple(tensors["latents"].shape)))
        return {"latents": tensors["latents"].clone()}

    assert torch.equal(run(pipe, {**inputs, "callback_on_step_end": identity}), plain)
    assert [s for s, _ in seen] == list(range(6))
    assert [shape[-1] for _, shape in seen] == [8, 8, 8, 16, 16, 16]

    def damp(p, step, t, tensors):
        return {"latents": tensors["latents"] * 0.5} if step == 1 else {}

    damped = run(pipe, {**inputs, "callback_on_step_end": damp})
    assert torch.isfinite(damped).all() and not torch.allclose(damped, plain)


def test_one_progress_bar_over_all_stages():
    pipe = wan_pipeline("t2v")
    stream = io.StringIO()
    pipe.set_progress_bar_config(file=stream, disable=False, ascii=True)
    jenga.patch(pipe, **TURBO)
    run(pipe, wan_inputs(pipe, steps=6))
    text = stream.getvalue()
    assert "6/6" in text and "3/3" not in text


def test_unipc_stages_reset_the_solver_and_restore_the_scheduler():
    pipe = wan_pipeline("t2v")
    pipe.scheduler = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0)
    original = pipe.scheduler
    seen = _record_grids(pipe.transformer)
    jenga.patch(pipe, **TURBO)
    inputs = wan_inputs(pipe, steps=6)
    out = run(pipe, inputs)
    assert torch.isfinite(out).all() and torch.equal(run(pipe, inputs), out)
    assert [s[-1] for s in seen] == ([8] * 6 + [16] * 6) * 2
    # the stages ran on fresh copies: the user's scheduler kept its training schedule and empty history
    assert pipe.scheduler is original and len(original.timesteps) == 1000 and original.model_outputs[0] is None
    assert pipe.scheduler.config.flow_shift == 3.0
    pipe.scheduler = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=False)
    with pytest.raises(NotImplementedError, match="use_flow_sigmas"):
        run(pipe, inputs)
    pipe.scheduler = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True,
                                             final_sigmas_type="sigma_min")
    with pytest.raises(NotImplementedError, match="final_sigmas_type='zero'"):
        run(pipe, inputs)


def test_wan_i2v_rebuilds_the_image_condition_per_stage():
    pipe = wan_pipeline("i2v")
    seen = _record_grids(pipe.transformer)
    jenga.patch(pipe, **TURBO)
    out = run(pipe, wan_inputs(pipe, steps=2))
    assert torch.isfinite(out).all()
    assert seen == [(1, 36, 3, 8, 8)] * 2 + [(1, 36, 3, 16, 16)] * 2  # 16 latent + 20 condition channels


def test_wan22_expert_switch_keeps_working():
    pipe = wan_pipeline("a14b")
    high, low = _record_grids(pipe.transformer), _record_grids(pipe.transformer_2)
    jenga.patch(pipe, **{**DENSE, "stages": ((0.5, 0.5), (1.0, 1.0))})  # the scheduler's shift 5 throughout
    run(pipe, wan_inputs(pipe, steps=6))
    # boundary 0.6 * 1000: steps at t >= 600 run the first expert, the others the second
    timesteps = shift_sigmas(1 - np.arange(6) / 6, 5.0) * 1000
    high_steps = int((timesteps >= 600).sum())
    assert 3 < high_steps < 6
    assert len(high) == 2 * high_steps and len(low) == 2 * (6 - high_steps)
    assert [s[-1] for s in high] == [8] * 6 + [16] * (len(high) - 6) and {s[-1] for s in low} == {16}


def test_hunyuan_i2v_runs_every_stage():
    pipe = hunyuan_pipeline("i2v")
    seen = _record_grids(pipe.transformer)
    jenga.patch(pipe, **TURBO)
    out = run(pipe, hunyuan_inputs(pipe, steps=2, cfg=False))
    assert torch.isfinite(out).all() and out.shape[-1] == 16
    assert [s[-1] for s in seen] == [8, 16]


def test_text_amplifier_biases_text_keys_in_the_first_stage_only(monkeypatch):
    import jenga.adapters.base as base

    biases: list[object] = []
    attention = base.block_sparse_attention

    def spy(*args, **kwargs):
        biases.append(kwargs.get("key_bias"))
        return attention(*args, **kwargs)

    monkeypatch.setattr(base, "block_sparse_attention", spy)
    pipe = hunyuan_pipeline("t2v")
    jenga.patch(pipe, **TURBO, text_amplifier=0.5)
    run(pipe, hunyuan_inputs(pipe, steps=2, cfg=False))
    beta = 0.5 * math.log(4.0)  # 16 x 16 latent vs 8 x 8 in stage 0
    # stage 0: both layers (dual- and single-stream) through the biased dense path; stage 1: stock processor
    assert len(biases) == 2 and all(b[0] == 48 and b[1] == pytest.approx(beta) for b in biases)
    assert pipe.transformer._jenga_patch.runtime.text_bias == 0.0


def test_plan_rounds_sizes_and_rejects_zero():
    cfg = JengaConfig(stages=((0.3, 0.25, 7), (0.75, 0.5, 9), (1.0, 1.0, 11)))
    plans = plan_stages(cfg, 8, (60, 104), 2)
    assert [p.latent_hw for p in plans] == [(18, 32), (46, 78), (60, 104)]
    assert [(p.start, p.end) for p in plans] == [(0, 2), (2, 4), (4, 8)]
    np.testing.assert_allclose(np.concatenate([p.t for p in plans]), 1 - np.arange(8) / 8)
    with pytest.raises(ValueError, match="below 2"):
        plan_stages(JengaConfig(stages=((0.05, 0.5), (1.0, 1.0))), 8, (16, 16), 2)
    pipe = wan_pipeline("t2v")
    jenga.patch(pipe, **{**DENSE, "stages": ((0.05, 0.5), (1.0, 1.0))})
    with pytest.raises(ValueError, match="rounds|below"):
        run(pipe, wan_inputs(pipe))


def test_same_scale_stages_with_equal_shift_merge():
    cfg = JengaConfig(stages=((1.0, 0.5, 8.0), (1.0, 1.0, 8.0)), drop_rates=(0.5, 0.6))
    assert len(plan_stages(cfg, 10, (16, 16), 2)) == 1


def test_bad_calls_and_configs_raise():
    pipe = wan_pipeline("t2v")
    jenga.patch(pipe, **TURBO)
    hunyuan = hunyuan_pipeline("t2v")
    jenga.patch(hunyuan, **TURBO)
    with pytest.raises(ValueError, match="stages define the schedule"):
        run(hunyuan, hunyuan_inputs(hunyuan, sigmas=[1.0, 0.5, 0.25, 0.1]))
    with pytest.raises(ValueError, match="first stage's latent size"):
        run(pipe, wan_inputs(pipe, latents=torch.randn(1, 16, 3, 16, 16)))
    with pytest.raises(ValueError, match="must not decrease"):
        JengaConfig(stages=((0.75, 0.5), (0.5, 0.8), (1.0, 1.0)))
    with pytest.raises(ValueError, match="finish at 1.0"):
        JengaConfig(stages=((0.5, 0.5), (1.0, 0.9)))
    with pytest.raises(ValueError, match="first step of a stage"):
        JengaConfig(stages=((0.5, 0.5), (1.0, 1.0)), skip_steps=(0.25, 0.5))


def test_interrupt_in_an_early_stage_returns_the_reached_latents_at_full_size():
    pipe = wan_pipeline("t2v")
    seen = _record_grids(pipe.transformer)
    jenga.patch(pipe, **TURBO)
    reached: list[torch.Tensor] = []

    def stop(p, step, t, tensors):
        if step == 1:
            reached.append(tensors["latents"].clone())
            p._interrupt = True
        return {}

    out = run(pipe, {**wan_inputs(pipe, steps=6), "callback_on_step_end": stop})
    assert len(seen) == 4  # steps 0 and 1 of stage 0 (cond + uncond); nothing after the interrupt
    expected = torch.nn.functional.interpolate(reached[0], size=(3, 16, 16), mode="trilinear")
    assert torch.allclose(out, expected, atol=1e-6)
    assert pipe.interrupt is False  # the driver's flag is gone after the call
    assert torch.isfinite(run(pipe, wan_inputs(pipe, steps=6))).all() and len(seen) == 16


def test_stage_sizes_keep_pixel_sizes_divisible_by_16_for_a_pixel_space_vae():
    """WanPipeline.check_inputs wants height and width divisible by 16. With a pixel-space "VAE" (scale 1, the
    toy model) a 0.75 stage of 32 px would be 24 px: stages round to latent multiples of 16 instead."""
    from jenga.toy.model import PromptEncoder, build_pipeline, build_transformer, quiet_frame_rounding

    transformer = build_transformer(seed=0).eval()
    pipe = build_pipeline(transformer)
    pipe.set_progress_bar_config(disable=True)
    seen = []
    transformer.register_forward_pre_hook(lambda m, a, k: seen.append(tuple(k["hidden_states"].shape[-2:])),
                                          with_kwargs=True)
    prompts = PromptEncoder()
    jenga.patch(pipe, jenga.JengaConfig.preset("turbo", model="wan", block_size=32, backend="torch"))
    try:
        for side, stage_side in ((64, 48), (32, 32)):
            seen.clear()
            with torch.no_grad(), quiet_frame_rounding():
                out = pipe(prompt_embeds=prompts([None]), height=side, width=side, num_frames=1,
                           num_inference_steps=2, guidance_scale=1.0, output_type="latent", return_dict=False)[0]
            assert out.shape[-2:] == (side, side)
            assert seen[0] == (stage_side, stage_side) and all(s % 16 == 0 for hw in seen for s in hw)
    finally:
        jenga.unpatch(pipe)
