"""One state object per CFG branch (clock, cached residual, the step it came from), held by the clock hook's
``BranchStates`` and cleared all at once by a reset: at the end of a call, and after a call that raised."""

from __future__ import annotations

import pytest
import torch
from _tiny import branch_states, run, wan_inputs, wan_pipeline
from diffusers.hooks.hooks import CacheContext

import jenga
from jenga._state import BranchState, BranchStates

# dense attention, one full-resolution stage: only skipping keeps state across forwards
SKIPPING = dict(block_size=16, drop_rates=0.0, backend="torch", stages=((1.0, 1.0),), skip_steps=(0.25,))


def _is_blank(state: BranchState) -> bool:
    return (state.step, state.last_timestep, state.residual, state.residual_step) == (-1, None, None, -1)


def test_reset_clears_every_branch_named_or_not():
    states = BranchStates()
    states.set_context(CacheContext("cond"))
    cond = states.clock()
    cond.tick(999.0)
    assert states.branch(0) == ("cond", cond)
    cond.residual, cond.residual_step = torch.ones(2), 0
    states.set_context(None)  # forwards without a cache context: the k-th forward of a step is branch k
    assert states.clock().tick(999.0) == 0
    first, second = states.branch(0), states.branch(0)
    assert (first[0], second[0]) == (0, 1) and first[1] is states.clock() and states.order == (0, 1)
    second[1].residual, second[1].residual_step = torch.ones(2), 0
    kept = list(states._state_cache.values())
    assert len(kept) == 3

    states.reset()
    assert states._state_cache == {} and states.order == (-1, 0)
    assert all(_is_blank(state) for state in kept)  # also what someone still holds is cleared
    with pytest.raises(ValueError, match="cache context"):
        states.get_state()  # the context went with the reset


def test_a_call_that_raises_leaves_no_state_and_the_next_call_equals_a_fresh_patch():
    """Skipping without stages: the driver wraps the call and resets every branch's state in its ``finally``,
    so the next call does not depend on its step 0 overwriting what the failed call cached."""
    pipe = wan_pipeline("t2v")
    jenga.patch(pipe, **SKIPPING)  # 8 steps: step 2 reuses step 1's residuals
    seen: list[BranchState] = []
    then: list[tuple[bool, int]] = []

    def boom(pipe_, step, timestep, kwargs):
        if step == 2:
            seen.extend(branch_states(pipe_.transformer)._state_cache.values())
            then.extend((s.residual is not None, s.residual_step) for s in seen)
            raise RuntimeError("stop at step 2")
        return kwargs

    with pytest.raises(RuntimeError, match="stop at step 2"):
        run(pipe, wan_inputs(pipe, steps=8, callback_on_step_end=boom))
    assert then == [(True, 1), (True, 1)]  # when it raised: cond and uncond, each holding step 1's residual
    assert all(_is_blank(s) for s in seen)  # the reset clears them in place ...
    states = branch_states(pipe.transformer)
    assert states._state_cache == {} and states.order == (-1, 0)  # ... and drops them
    runtime = pipe.transformer._jenga_patch.runtime
    assert runtime.plan.branch_state is None and runtime.plan.residual is None

    fresh = wan_pipeline("t2v")
    jenga.patch(fresh, **SKIPPING)
    assert torch.equal(run(pipe, wan_inputs(pipe, steps=8)), run(fresh, wan_inputs(fresh, steps=8)))


def test_during_a_call_each_branch_holds_its_residual_and_the_step_it_came_from():
    pipe = wan_pipeline("t2v")
    jenga.patch(pipe, **SKIPPING)
    held: dict[int, dict] = {}

    def look(pipe_, step, timestep, kwargs):
        held[step] = {name: (s.residual is not None, s.residual_step)
                      for name, s in branch_states(pipe_.transformer)._state_cache.items()}
        return kwargs

    run(pipe, wan_inputs(pipe, steps=8, callback_on_step_end=look))
    assert held[1] == {"cond": (True, 1), "uncond": (True, 1)}
    assert held[2] == {"cond": (True, 1), "uncond": (True, 1)}  # step 2 skipped: it reused step 1's
    assert held[3] == {"cond": (True, 3), "uncond": (True, 3)}
    assert branch_states(pipe.transformer)._state_cache == {}
