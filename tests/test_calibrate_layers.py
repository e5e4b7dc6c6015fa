"""``jenga.calibrate(..., layer_thresholds=True)``: the allocation against a brute force, and on the shipped toy
model (CPU, small size) a per-layer config that meets the preset's stage-mean recall with no more blocks."""

from __future__ import annotations

import itertools
import json
import random

import pytest
import torch
from _toy import toy_pipeline_and_call

import jenga
from jenga import cli
from jenga.calibration import _allocate, calibrate
from jenga.toy.model import quiet_frame_rounding

BLOCK = 32


def _instance(rng: random.Random, budgets: int) -> tuple[list[list[tuple]], tuple[float, ...]]:
    """Random layers: more p, more blocks and more recall and less error, each layer at its own rates."""
    layers, count = rng.randint(1, 5), rng.randint(1, 5)
    options = []
    for _ in range(layers):
        densities = sorted(rng.random() for _ in range(count))
        qualities = [sorted(rng.random() for _ in range(count)) for _ in range(budgets)]
        options.append([(d, tuple(q[p] for q in qualities), p) for p, d in enumerate(densities)])
    needs = tuple(rng.uniform(0.0, 1.05 * sum(max(o[1][c] for o in layer) for layer in options))
                  for c in range(budgets))
    return options, needs


def _density(options, combo) -> float:
    return sum(options[i][j][0] for i, j in enumerate(combo))


@pytest.mark.parametrize("budgets", [1, 2])
def test_allocation_meets_the_budget_and_is_near_the_brute_force_optimum(budgets):
    rng = random.Random(budgets)
    optimal = feasible = 0

    def meets(options, combo, needs) -> bool:
        return all(sum(options[i][j][1][c] for i, j in enumerate(combo)) >= needs[c] - 1e-12 for c in range(budgets))

    for _ in range(200):
        options, needs = _instance(rng, budgets)
        fits = [combo for combo in itertools.product(*(range(len(o)) for o in options)) if meets(options, combo, needs)]
        picks = _allocate(options, needs)
        if not fits:
            assert picks is None
            continue
        feasible += 1
        if picks is None:  # several budgets: the greedy may miss a narrow feasible set, never a uniform one
            assert not any(len(set(c)) == 1 for c in fits)
            continue
        assert meets(options, picks, needs)
        uniform = [_density(options, [j] * len(options)) for j in range(len(options[0]))
                   if tuple([j] * len(options)) in fits]
        assert not uniform or _density(options, picks) <= min(uniform) + 1e-12  # never worse than one p for all
        optimal += _density(options, picks) <= min(_density(options, c) for c in fits) + 1e-9
    print(f"{budgets} budgets: optimal in {optimal} of {feasible} feasible cases")
    assert optimal >= 0.9 * feasible, (optimal, feasible)  # greedy + local search: the optimum in almost every case


@pytest.fixture(scope="module")
def toy():
    return toy_pipeline_and_call(4)[:2]


@pytest.mark.parametrize("max_error", [None, "base"])
def test_layer_thresholds_meet_the_preset_s_mean_quality_with_no_more_blocks(toy, max_error):
    pipe, call = toy
    torch.set_num_threads(1)
    base = jenga.JengaConfig.preset("base", model="wan", block_size=BLOCK)
    with quiet_frame_rounding():
        report = calibrate(pipe, base=base, min_recall="base", max_error=max_error, layer_thresholds=True, steps=3,
                           layers=(0, 3, 5), heads=1, query_blocks=2, drop_rates=(0.75, 0.85), **call)
    cfg = report.config
    assert report.meets_budget and report.budget["layer_thresholds"] and cfg.dense_layers == ()
    assert jenga.JengaConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    assert [layer for layer, _ in cfg.layer_cdf_thresholds] == [0, 3, 5]
    for row in report.stages:  # the budget the preset is judged by, with no more kept blocks
        assert row["recall"] >= row["min_recall"] - 1e-9 and row["min_recall"] == row["base"]["recall"]
        if max_error == "base":
            assert row["output_error"] <= row["max_error"] + 1e-9 and row["max_error"] == row["base"]["output_error"]
        assert row["density"] <= row["base"]["density"] + 1e-9
        assert row["cdf_thresholds"] == {x: cfg.cdf_threshold_at(x, row["stage"]) for x in (0, 3, 5)}
    for row in report.layers:  # each layer's row is measured at its own p
        for stage in row["stages"]:
            assert stage["cdf_threshold"] == cfg.cdf_threshold_at(row["layer"], stage["stage"])
    assert "a p per layer" in report.table()
    with quiet_frame_rounding(), jenga.patched(pipe, cfg):
        out = pipe(**call, num_inference_steps=2, output_type="latent", generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(out.frames if hasattr(out, "frames") else out[0]).all()


def test_layer_thresholds_reject_bad_input(toy):
    pipe, call = toy
    with pytest.raises(ValueError, match="max_error must be > 0"):
        calibrate(pipe, max_error="preset", layer_thresholds=True, **call)
    with pytest.raises(ValueError, match="min_recall must be in"):
        calibrate(pipe, min_recall=1.5, layer_thresholds=True, **call)
    with pytest.raises(ValueError, match="layer_thresholds must be True or False"):
        calibrate(pipe, layer_thresholds="yes", **call)
    base = jenga.JengaConfig(block_size=BLOCK, layer_cdf_thresholds={0: 0.5})
    with pytest.raises(ValueError, match="base has layer_cdf_thresholds"):
        calibrate(pipe, base=base, **call)


def test_cli_layer_thresholds_writes_a_per_layer_config(tmp_path, capsys):
    out = tmp_path / "cal"
    code = cli.main(["calibrate", "--toy", "--size", "small", "--steps", "2", "--heads", "1", "--query-blocks", "2",
                     "--min-recall", "base", "--layer-thresholds", "--cdf-thresholds", "0.5", "0.9", "0.97",
                     "--device", "cpu", "--threads", "1", "--out-dir", str(out)])
    text = capsys.readouterr().out
    assert code == cli.OK, text
    assert "a p per layer" in text
    cfg = jenga.JengaConfig.from_dict(json.loads((out / "calibrated.json").read_text()))
    assert len(cfg.layer_cdf_thresholds) == 6  # every layer of the toy model measured
    report = json.loads((out / "calibration.json").read_text())
    assert report["budget"]["layer_thresholds"]
    assert {m["cdf_threshold"] for m in report["measurements"]} == {0.5, 0.9, 0.97}
