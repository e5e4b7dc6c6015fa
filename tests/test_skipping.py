"""Step skipping: which steps skip, residual reuse per CFG branch, call counts, stages, diffusers caches."""

from __future__ import annotations

import pytest
import torch
from _tiny import branch_states, hunyuan_inputs, hunyuan_pipeline, run, wan_inputs, wan_pipeline, wan_transformer
from diffusers import FlowMatchEulerDiscreteScheduler

import jenga
from jenga import JengaConfig
from jenga.config import HUNYUAN_23_OF_50

skipped_steps = JengaConfig.skipped_steps  # (config, num_steps) -> frozenset of skipped steps

# dense attention (no token reordering), only skipping changes the computation
DENSE = dict(block_size=16, drop_rates=0.0, backend="torch", stages=((1.0, 1.0),))


def _count(module) -> list[int]:
    """Counts real executions of ``module`` (a submodule inside a block: it never runs on skipped steps)."""
    calls = [0]

    def bump(*_):
        calls[0] += 1

    module.register_forward_pre_hook(bump)
    return calls


def test_reference_schedule_at_50_steps_and_nearest_step_elsewhere():
    cfg = JengaConfig.preset("turbo", model="hunyuan")
    assert sorted(set(range(50)) - skipped_steps(cfg, 50)) == list(HUNYUAN_23_OF_50)
    # 25 steps: a fraction skips the step it lands on; half-way fractions skip nothing
    assert skipped_steps(cfg, 25) == {i for i in range(25) if 2 * i not in HUNYUAN_23_OF_50}
    assert len(skipped_steps(cfg, 100)) == 27  # each fraction skips its nearest step
    assert skipped_steps(cfg, 8) == {1, 5, 7}  # coarse: only steps inside a skipped region (0.125 ~ 0.12)
    # the first step of a stage is always computed, whatever the step count
    two = JengaConfig(stages=((0.5, 0.5), (1.0, 1.0)), skip_steps=(0.26, 0.48))
    assert skipped_steps(two, 4) == {1}  # 0.48 lands on step 2, the start of stage 1: computed
    assert skipped_steps(two, 50) == {13, 24}


def test_wan_skipped_steps_do_not_run_the_blocks():
    pipe = wan_pipeline("t2v")
    forwards, block0, last = _count(pipe.transformer), _count(pipe.transformer.blocks[0].ffn), \
        _count(pipe.transformer.blocks[-1].ffn)
    jenga.patch(pipe, **DENSE, skip_steps=(0.25, 0.5))  # 8 steps: skip steps 2 and 4
    out = run(pipe, wan_inputs(pipe, steps=8))
    assert torch.isfinite(out).all()
    assert forwards[0] == 16  # cond + uncond per step, skipped or not
    assert block0[0] == last[0] == 12  # 6 computed steps x 2 branches
    assert branch_states(pipe.transformer)._state_cache == {}  # residuals cleared at the end of the call


def test_skipped_step_reuses_the_residual_of_its_own_branch():
    """On a skipped step the block stack's output is its input plus the last computed residual of the
    same branch (cond and uncond differ)."""
    pipe = wan_pipeline("t2v")
    t = pipe.transformer
    record: list[tuple[torch.Tensor, torch.Tensor]] = []
    stack_in: list[torch.Tensor] = []
    t.blocks[0].register_forward_pre_hook(lambda m, args: stack_in.append(args[0].clone()))
    t.norm_out.register_forward_pre_hook(lambda m, args: record.append((stack_in[-1], args[0].clone())))
    jenga.patch(pipe, **DENSE, skip_steps=(0.5,))  # 4 steps: step 2 skipped
    run(pipe, wan_inputs(pipe, steps=4))
    residual = [out - inp for inp, out in record]  # forwards: (step, branch) = (0,c),(0,u),(1,c),(1,u),...
    assert torch.allclose(residual[4], residual[2], atol=1e-6)  # step 2 cond == step 1 cond
    assert torch.allclose(residual[5], residual[3], atol=1e-6)  # step 2 uncond == step 1 uncond
    assert not torch.allclose(residual[2], residual[3])
    assert not torch.allclose(residual[6], residual[4])  # step 3 computed again


def test_no_skip_steps_is_exactly_stock_and_skipping_changes_the_output():
    pipe = wan_pipeline("t2v")
    inputs = wan_inputs(pipe, steps=4)
    stock = run(pipe, inputs)
    jenga.patch(pipe, **DENSE, skip_steps=())
    assert torch.equal(run(pipe, inputs), stock)
    jenga.unpatch(pipe)
    jenga.patch(pipe, **DENSE, skip_steps=(0.5,))
    skipped = run(pipe, inputs)
    assert not torch.equal(skipped, stock) and torch.equal(run(pipe, inputs), skipped)
    jenga.unpatch(pipe)
    assert torch.equal(run(pipe, inputs), stock)


def test_hunyuan_skipping_with_true_cfg():
    pipe = hunyuan_pipeline("t2v")
    forwards = _count(pipe.transformer)
    dual, single = _count(pipe.transformer.transformer_blocks[0].ff), \
        _count(pipe.transformer.single_transformer_blocks[0].proj_out)
    jenga.patch(pipe, **DENSE, skip_steps=(0.5, 0.75))  # 4 steps: 2 and 3 skipped
    out = run(pipe, hunyuan_inputs(pipe, steps=4))
    assert torch.isfinite(out).all()
    assert forwards[0] == 8 and dual[0] == single[0] == 4


def test_first_step_of_each_stage_is_computed_with_stages():
    pipe = wan_pipeline("t2v")
    forwards, blocks = _count(pipe.transformer), _count(pipe.transformer.blocks[0].ffn)
    # 6 steps in two stages of 3: skip the last step of each stage; steps 0 and 3 start the stages
    jenga.patch(pipe, **{**DENSE, "stages": ((0.5, 0.5, 7.0), (1.0, 1.0, 9.0))}, skip_steps=(2 / 6, 5 / 6))
    run(pipe, wan_inputs(pipe, steps=6))
    assert forwards[0] == 12 and blocks[0] == 8


def test_custom_loop_through_the_bare_transformer():
    transformer = wan_transformer()
    scheduler = FlowMatchEulerDiscreteScheduler(shift=1.0)
    blocks = _count(transformer.blocks[0].ffn)
    jenga.patch(transformer, scheduler=scheduler, **DENSE, skip_steps=(0.5,))
    gen = torch.Generator().manual_seed(0)
    latents = torch.randn(1, 16, 3, 16, 16, generator=gen)
    cond, uncond = torch.randn(1, 12, 32, generator=gen), torch.randn(1, 12, 32, generator=gen)
    scheduler.set_timesteps(4)
    with torch.no_grad():
        for t in scheduler.timesteps:
            timestep = t.expand(1)
            noise = transformer(latents, timestep, cond, return_dict=False)[0]
            noise_uncond = transformer(latents, timestep, uncond, return_dict=False)[0]
            latents = scheduler.step(noise_uncond + 4.0 * (noise - noise_uncond), t, latents, return_dict=False)[0]
    assert torch.isfinite(latents).all()
    assert blocks[0] == 6  # step 2 skipped for both forwards (branches told apart by their order)


def test_first_block_cache_conflicts_with_skip_steps_but_composes_without():
    from diffusers.hooks import FirstBlockCacheConfig, apply_first_block_cache

    pipe = wan_pipeline("t2v")
    apply_first_block_cache(pipe.transformer, FirstBlockCacheConfig(threshold=0.05))
    with pytest.raises(RuntimeError, match="skip_steps"):
        jenga.patch(pipe, **DENSE, skip_steps=(0.5,))
    assert not jenga.is_patched(pipe)
    jenga.patch(pipe, **DENSE)  # carving settings without skipping: the diffusers cache keeps working
    assert torch.isfinite(run(pipe, wan_inputs(pipe))).all()

    late = wan_pipeline("t2v")
    jenga.patch(late, **DENSE, skip_steps=(0.5,))
    apply_first_block_cache(late.transformer, FirstBlockCacheConfig(threshold=0.05))
    with pytest.raises(RuntimeError, match="disable_cache"):
        run(late, wan_inputs(late))


def test_unpatch_removes_the_skip_hooks():
    pipe = wan_pipeline("t2v")
    inputs = wan_inputs(pipe, steps=4)
    stock = run(pipe, inputs)
    jenga.patch(pipe, block_size=16, drop_rates=0.7, cdf_threshold=0.3, backend="torch", skip_steps=(0.5,))
    assert not torch.equal(run(pipe, inputs), stock)
    jenga.unpatch(pipe)
    assert all("_diffusers_hook" not in block.__dict__ and "forward" not in block.__dict__
               for block in pipe.transformer.blocks)
    assert torch.equal(run(pipe, inputs), stock)


def test_stage_driver_resets_branch_state_after_an_exception():
    """A call that raises half-way leaves no cached residual, branch clock or plan for the next call."""
    pipe = wan_pipeline("t2v")
    jenga.patch(pipe, **{**DENSE, "stages": ((0.5, 0.5), (1.0, 1.0))}, skip_steps=(0.25,))

    def boom(pipe, step, timestep, kwargs):
        if step == 2:
            raise KeyboardInterrupt("stop")
        return kwargs

    with pytest.raises(KeyboardInterrupt):
        run(pipe, wan_inputs(pipe, steps=8, callback_on_step_end=boom))
    runtime = pipe.transformer._jenga_patch.runtime
    assert runtime.plan.layout is None and runtime.window is None
    states = branch_states(pipe.transformer)
    assert states._state_cache == {} and states.order == (-1, 0)  # no residual, branch clock or ordinal
    reference = wan_pipeline("t2v")
    jenga.patch(reference, **{**DENSE, "stages": ((0.5, 0.5), (1.0, 1.0))}, skip_steps=(0.25,))
    assert torch.equal(run(pipe, wan_inputs(pipe, steps=8)), run(reference, wan_inputs(reference, steps=8)))
