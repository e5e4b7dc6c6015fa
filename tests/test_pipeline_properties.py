"""Pipeline-level properties on the tiny pipelines (issue 15): the requested size always comes back, whatever
the stage plan and step count; patch then unpatch is bitwise stock; samples of a batch stay independent."""

from __future__ import annotations

import pytest
import torch
from _tiny import CARVING, GRID, run, wan_inputs, wan_pipeline, wan_transformer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import jenga
from jenga import JengaConfig
from jenga.config import PRESETS
from jenga.progressive import plan_stages

FULL_LATENT = (16, 16)  # 128 x 128 pixels through the tiny Wan VAE factor 8
CUSTOM_STAGES = [
    ((0.5, 0.9), (1.0, 1.0)),
    ((0.5, 0.3, 5.0), (0.75, 0.5, 7.0), (1.0, 1.0, 9.0)),
    ((0.5, 0.99), (1.0, 1.0, 3.0)),
    ((0.5, 0.4), (0.5, 0.8, 4.0), (1.0, 0.9), (1.0, 1.0)),
]
ALL_PLANS = [(f"{model}/{name}", JengaConfig.preset(name, model=model).stages)
             for model in PRESETS for name in PRESETS[model]] + [(f"custom{i}", s) for i, s in enumerate(CUSTOM_STAGES)]
SETTINGS = settings(max_examples=3, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


@pytest.mark.parametrize("name, stages", ALL_PLANS, ids=[n for n, _ in ALL_PLANS])
def test_stage_plans_end_at_full_size_with_every_step_count(name, stages):
    cfg = JengaConfig(stages=stages)
    for steps in range(1, 61):
        plans = plan_stages(cfg, steps, FULL_LATENT, 2)
        assert plans[-1].latent_hw == FULL_LATENT and plans[-1].num_steps >= 1, (name, steps)
        assert plans[0].start == 0 and plans[-1].end == steps
        assert all(a.end == b.start for a, b in zip(plans, plans[1:], strict=False))
        assert cfg.stage_of_step(steps - 1, steps) == len(cfg.stages) - 1  # the last step runs the last stage


def _distinct_plans():
    """Presets and the first two custom plans (the others: plan level above, random plans below)."""
    seen, out = set(), []
    for name, stages in ALL_PLANS:
        if name in ("custom2", "custom3"):
            continue
        if stages not in seen:
            seen.add(stages)
            out.append((name, stages))
    return out


@pytest.fixture(scope="module")
def pipe():
    """The tiny Wan pipeline with a one-layer transformer: the stage logic does not depend on depth."""
    pipe = wan_pipeline("t2v")
    pipe.transformer = wan_transformer(num_layers=1)
    return pipe


def _size_of_run(pipe, stages, steps: int) -> tuple[int, ...]:
    with jenga.patched(pipe, stages=stages, block_size=16, drop_rates=0.0, backend="torch", skip_steps=()):
        return tuple(run(pipe, wan_inputs(pipe, steps=steps, guidance_scale=1.0)).shape[-2:])


def _switching(stages) -> bool:
    """Plans that resize or re-noise at least once (the others run one pipeline call at full size)."""
    return len({tuple(s[:1]) + tuple(s[2:]) for s in stages}) > 1


@pytest.mark.parametrize("name, stages", [p for p in _distinct_plans() if _switching(p[1])],
                         ids=[n for n, s in _distinct_plans() if _switching(s)])
def test_requested_size_comes_back_at_one_to_five_steps(pipe, name, stages):
    """``turbo`` at one step returned 12 x 12 latents (96 x 96 pixels) for 128 x 128 before."""
    for steps in range(1, 6):
        assert _size_of_run(pipe, stages, steps) == FULL_LATENT, (name, steps)


@st.composite
def stage_plans(draw):
    count = draw(st.integers(1, 3))
    ends = sorted(draw(st.sets(st.floats(0.05, 0.95), min_size=count - 1, max_size=count - 1))) + [1.0]
    scales = sorted(draw(st.lists(st.sampled_from([0.5, 0.75, 1.0]), min_size=count, max_size=count)))
    scales[-1] = 1.0
    shifts = draw(st.lists(st.sampled_from([None, 3.0, 7.0]), min_size=count, max_size=count))
    return tuple((s, e) if sh is None else (s, e, sh) for s, e, sh in zip(scales, ends, shifts, strict=True))


@SETTINGS
@given(stages=stage_plans(), steps=st.integers(1, 5))
def test_requested_size_for_random_stage_plans(pipe, stages, steps):
    assert _size_of_run(pipe, stages, steps) == FULL_LATENT


def test_patch_then_unpatch_is_bitwise_stock(pipe):
    inputs = wan_inputs(pipe, steps=2)
    stock = run(pipe, inputs)
    jenga.patch(pipe, JengaConfig.preset("turbo", model="wan", **CARVING))
    carved = run(pipe, inputs)
    jenga.unpatch(pipe)
    assert torch.equal(run(pipe, inputs), stock)
    assert not torch.equal(carved, stock)  # the patch did change the computation


def test_samples_of_a_batch_are_independent(pipe):
    """Each sample's lists come from its own queries and keys: sample 0 of a batch of 2 is sample 0 alone."""
    gen = torch.Generator().manual_seed(11)
    latents = torch.randn(2, 16, GRID[0], *FULL_LATENT, generator=gen)
    inputs = wan_inputs(pipe, batch=2, steps=2)
    with jenga.patched(pipe, **CARVING):
        both = run(pipe, {**inputs, "latents": latents})
        alone = run(pipe, {**inputs, "latents": latents[1:],
                           **{k: inputs[k][1:] for k in ("prompt_embeds", "negative_prompt_embeds")}})
        counts = [s.kv_count for s in jenga.selection_stats(pipe)]
    assert any((c < c.shape[-1]).any() for c in counts if c.shape[0] == 2)  # carving really dropped blocks
    torch.testing.assert_close(both[1:], alone, rtol=1e-4, atol=1e-5)
