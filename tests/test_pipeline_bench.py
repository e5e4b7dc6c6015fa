"""Building blocks of benchmarks/pipeline.py that its GPU run depends on: call kinds from the schedule, replay
of repeated kinds, the composed total, and the column configs (the whole script runs in test_cli.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import jenga

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bench():
    import sys

    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import pipeline
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    return pipeline


class Doubler(torch.nn.Module):
    """Counts the calls that really compute."""

    def __init__(self) -> None:
        super().__init__()
        self.runs = 0

    def forward(self, hidden_states: torch.Tensor, timestep: torch.Tensor) -> tuple[torch.Tensor]:
        self.runs += 1
        return (hidden_states * 2 + timestep,)


def _timer(bench, module, cfg, steps=10, branches=2, replay=True, warmup=1, samples=2):
    return bench.CallTimer(module, cfg, steps, branches, replay, warmup, samples, lambda: None, lambda: None)


def test_replay_computes_warmup_plus_samples_per_kind_then_returns_copies(bench):
    module = Doubler()
    x = torch.ones(1, 2, 3, 4, 4)
    with _timer(bench, module, None, steps=5) as timer:
        outs = [module(x, torch.tensor(float(i)))[0] for i in range(10)]
    assert "forward" not in module.__dict__, "the wrapper is removed on exit"
    assert module.runs == 3  # one kind (stock): 1 warm-up + 2 samples computed, 7 replayed
    assert [c.computed for c in timer.calls] == [True] * 3 + [False] * 7
    assert torch.equal(outs[9], outs[2]) and outs[9] is not outs[2]  # a copy of the last computed output
    assert set(timer.kind_medians()) == {((1, 2, 3, 4, 4), "stock")}


def test_full_mode_computes_every_call(bench):
    module = Doubler()
    with _timer(bench, module, None, replay=False) as timer:
        for i in range(6):
            module(torch.ones(1, 4), torch.tensor(float(i)))
    assert module.runs == 6 and all(c.computed for c in timer.calls)


def test_kinds_follow_the_schedule_of_the_config(bench):
    cfg = jenga.JengaConfig(drop_rates=(0.2, 0.8), stages=((0.5, 0.5), (1.0, 1.0)), dense_steps=0.2,
                            skip_steps=(0.7,))
    timer = _timer(bench, Doubler(), cfg, steps=10)
    shape = (1, 16, 3, 8, 8)
    # steps 0-1 dense (dense_steps), 2-4 stage 0 with drop 0.2 <= dense_threshold: dense too, 5+ sparse
    assert timer.kind_of(0, shape) == (shape, "stage0", "dense", "computed")
    assert timer.kind_of(3, shape) == (shape, "stage0", "dense", "computed")
    assert timer.kind_of(6, shape) == (shape, "stage1", "sparse", "computed")
    skipped = (shape, "stage1", "sparse", "skipped")
    assert (timer.kind_of(7, shape) == skipped) == (7 in cfg.skipped_steps(10))  # jenga's own rule


def test_composed_total_is_outside_time_plus_a_median_per_call(bench):
    module = Doubler()
    with _timer(bench, module, None, steps=4, branches=1, warmup=0, samples=1) as timer:
        for i in range(4):
            module(torch.ones(2), torch.tensor(float(i)))
    timer.calls[0].seconds = 2.0  # the one computed call
    for call in timer.calls[1:]:
        call.seconds = 0.0
    spec = bench.TINY_MODELS["hunyuan"]
    result = bench.summarise(timer, wall=3.0, spec=spec, cfg=None, steps=4, replay=True)
    assert result["outside_transformer_s"] == 1.0
    assert result["total_s"] == 1.0 + 4 * 2.0
    assert result["transformer_calls"] == 4 and result["computed_calls"] == 1


@pytest.mark.parametrize("model", ["wan1.3b", "wan14b", "hunyuan"])
def test_columns_are_what_they_say(bench, model):
    spec = bench.MODELS[model]
    configs = {name: bench.column_config(column, spec)[0] for name, column in bench.COLUMNS.items()}
    assert configs["stock-cudnn"] is None and configs["stock-cudnn-compile"] is None
    carving, prores, full = configs["jenga-carving"], configs["jenga-carving-prores"], configs["jenga-full"]
    assert all(s.scale == 1.0 for s in carving.stages) and not carving.skip_steps
    assert any(s.scale < 1.0 for s in prores.stages) and not prores.skip_steps
    assert any(s.scale < 1.0 for s in full.stages) and full.skip_steps
    assert configs["jenga-full-compile"] == full


def test_ratios_use_the_fair_baseline_and_targets(bench):
    results = {
        "stock-cudnn": dict(total_s=100.0, peak_gib=10.0),
        "jenga-full": dict(total_s=10.0, peak_gib=10.5),
        "stock-cudnn-compile": dict(total_s=80.0, peak_gib=10.0),
        "jenga-full-compile": dict(total_s=8.0, peak_gib=12.0),
    }
    bench.add_ratios("hunyuan", results)
    assert results["jenga-full"]["speedup"] == 10.0 and results["jenga-full"]["target_met"] is True
    assert results["jenga-full-compile"]["speedup_vs"] == "stock-cudnn-compile"
    assert results["jenga-full"]["memory_ok"] is True and results["jenga-full-compile"]["memory_ok"] is False


def _skip_calls(bench, timer, skipped_layers, skipped_flag, skipped_seconds):
    """Computed calls of one carved stage: two computed steps (2 carved layers each, 1 s) and two skipped ones."""
    shape = (1, 16, 3, 8, 8)
    steps = sorted(timer.skipped)[:2]
    computed = [s for s in range(5, 10) if s not in timer.skipped][:2]
    calls = [bench.Call(i, s, timer.kind_of(s, shape), shape, True, 1.0, True, False, 2)
             for i, s in enumerate(computed)]
    calls += [bench.Call(2 + i, s, timer.kind_of(s, shape), shape, True, skipped_seconds, True, skipped_flag,
                         skipped_layers) for i, s in enumerate(steps)]
    assert {c.kind[2:] for c in calls} == {("sparse", "computed"), ("sparse", "skipped")}
    return calls


@pytest.mark.parametrize(("layers", "flag", "seconds", "verdict"), [
    (0, True, 0.9, True),  # skipped steps as slow as computed ones (a loaded CPU): still skipped, by the count
    (0, True, 0.01, True),
    (2, True, 0.01, False),  # jenga flagged skip but the block stack still ran its carved layers
    (0, False, 0.01, False),  # jenga never decided to skip: a fast step proves nothing
    (None, True, 0.01, False),  # no carved-layer records: no evidence
])
def test_skipping_verdict_counts_work_not_time(bench, layers, flag, seconds, verdict):
    cfg = jenga.JengaConfig(drop_rates=(0.8,), dense_steps=0.2, skip_steps=(0.6, 0.8))
    timer = _timer(bench, Doubler(), cfg, steps=10, branches=1)
    timer.calls = _skip_calls(bench, timer, layers, flag, seconds)
    effects = bench.check_effects(timer, cfg, bench.TINY_MODELS["wan1.3b"], timer.kind_medians())
    assert effects["skipping"] is verdict, effects["notes"]
    assert effects["carving"] is True
    assert f"skipped/computed step time [{seconds}]" in effects["notes"][-1]  # the time is still reported
