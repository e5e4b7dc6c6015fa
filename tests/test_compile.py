"""``torch.compile(pipe.transformer)`` over a whole patched run: every preset feature at once (two
resolutions, dense then sparse steps, skipped steps, two CFG branches, statistics) must compile a bounded
number of graphs and give what the uncompiled patch gives.

Per-step Python values (the step, the CFG branch key, the residual cache) are read only in jenga's eager
hooks; if traced code read them, dynamo would specialise on each value, recompile every step, hit its
recompile limit and silently fall back to eager (which is what made compiled runs slow before).
"""

from __future__ import annotations

import pytest
import torch
from _tiny import (
    branch_states,
    hunyuan_inputs,
    hunyuan_pipeline,
    hunyuan_transformer,
    run,
    run_regionally_compiled,
    wan_inputs,
    wan_pipeline,
    wan_transformer,
)

import jenga
from jenga.config import HUNYUAN_23_OF_50

# progressive resolution, a dense first step, carving and the 23-of-50 skip schedule on the tiny models
FULL = dict(block_size=16, drop_rates=(0.6, 0.7), cdf_threshold=0.3, min_video_blocks=2, dense_steps=0.1,
            stages=((0.5, 0.5, 5.0), (1.0, 1.0, 7.0)), backend="torch", collect_stats=True)
SKIP_FRACTIONS = tuple(i / 50 for i in range(50) if i not in HUNYUAN_23_OF_50)


def _run_compiled(pipe, inputs):
    pipe.transformer = torch.compile(pipe.transformer, backend="eager", dynamic=False)
    torch._dynamo.reset()
    try:
        with torch._dynamo.config.patch(recompile_limit=8, fail_on_recompile_limit_hit=True):
            return run(pipe, inputs)
    finally:
        pipe.transformer = pipe.transformer._orig_mod
        torch._dynamo.reset()


@pytest.mark.long(25)
@pytest.mark.parametrize("family", ["wan", "hunyuan"])
def test_full_preset_run_compiles_within_the_recompile_limit_and_matches_eager(family):
    steps = 12
    make = wan_pipeline if family == "wan" else hunyuan_pipeline
    inputs_for = wan_inputs if family == "wan" else hunyuan_inputs
    pipe = make("t2v")
    jenga.patch(pipe, **FULL, skip_steps=SKIP_FRACTIONS)
    inputs = inputs_for(pipe, steps=steps)
    eager = run(pipe, inputs)
    eager_stats = [(s.step, s.layer, s.branch, s.kv_count) for s in jenga.selection_stats(pipe, clear=True)]

    compiled = _run_compiled(pipe, inputs)
    compiled_stats = [(s.step, s.layer, s.branch, s.kv_count) for s in jenga.selection_stats(pipe, clear=True)]

    assert torch.allclose(compiled, eager, atol=1e-5, rtol=1e-5)
    # the statistics carry each forward's own step even though the traced code never reads it
    assert [s[:3] for s in compiled_stats] == [s[:3] for s in eager_stats]
    assert all(torch.equal(a[3], b[3]) for a, b in zip(compiled_stats, eager_stats, strict=True))
    assert len({s[0] for s in eager_stats}) > 3  # several sparse steps were recorded
    runtime = pipe.transformer._jenga_patch.runtime
    assert branch_states(pipe.transformer)._state_cache == {}  # cached residuals cleared with the branch states
    assert all(p.pending_stats is None for _, p in runtime.processors)


@pytest.mark.parametrize("family", ["wan", "hunyuan"])
def test_regional_compilation_shares_one_graph_across_blocks_and_matches_eager(family):
    """``compile_repeated_blocks`` (diffusers' regional compilation): every block of the stack reuses the same
    graphs, so nothing a block's traced code reads may differ per layer (its id, the statistics gathered so
    far in this forward)."""
    make = wan_pipeline if family == "wan" else hunyuan_pipeline
    inputs_for = wan_inputs if family == "wan" else hunyuan_inputs
    pipe = make("t2v")
    # more blocks than dynamo's recompile limit: one graph per block would fail loudly below
    if family == "wan":
        pipe.transformer = wan_transformer(num_layers=10)
    else:
        pipe.transformer = hunyuan_transformer(num_layers=3, num_single_layers=7)
    jenga.patch(pipe, **FULL, skip_steps=())
    inputs = inputs_for(pipe, steps=6)
    eager = run(pipe, inputs)
    eager_stats = [(s.step, s.layer, s.branch) for s in jenga.selection_stats(pipe, clear=True)]
    compiled = run_regionally_compiled(pipe, inputs)
    assert torch.allclose(compiled, eager, atol=1e-5, rtol=1e-5)
    assert [(s.step, s.layer, s.branch) for s in jenga.selection_stats(pipe, clear=True)] == eager_stats
    assert len({s[1] for s in eager_stats}) > 1  # several layers recorded, each with its own id


def test_regional_compilation_with_step_skipping_warns_once(caplog):
    pipe = wan_pipeline("t2v")
    jenga.patch(pipe, **FULL, skip_steps=SKIP_FRACTIONS)
    for block in pipe.transformer.blocks:
        block._compiled_call_impl = block._call_impl  # what compile_repeated_blocks leaves on each block
    with caplog.at_level("WARNING", logger="jenga"):
        run(pipe, wan_inputs(pipe, steps=3))
    warnings = [r for r in caplog.records if "compile_repeated_blocks" in r.getMessage()]
    assert len(warnings) == 1 and "skip_steps=()" in warnings[0].getMessage()
