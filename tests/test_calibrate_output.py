"""``calibrate(min_psnr=...)`` and ``jenga calibrate --min-psnr``: the output-measured search on the shipped toy
model (CPU, the demo's small size, 2 calibration steps). The pick meets its budget when re-run, keeps fewer blocks
than base only through moves the budget allowed, lowers a layer when the budget is loose, leaves the pipeline
stock (also when a pass fails), and bad input is refused by name before any pass runs."""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import json
import math

import pytest
import torch
from _toy import toy_pipeline_and_call

import jenga
from jenga import cli
from jenga.calibration import calibrate
from jenga.toy.data import Prompt
from jenga.toy.model import quiet_frame_rounding

BLOCK = 32  # the demo's "small" size: 4 frames of 32x32 pixels, blocks of 32
STEPS = 2  # step 0 runs dense (dense_steps 0.1), step 1 carves


@pytest.fixture(scope="module")
def toy():
    return toy_pipeline_and_call(4)


def _base() -> jenga.JengaConfig:
    return jenga.JengaConfig.preset("base", model="wan", block_size=BLOCK)


def _latents(pipe, call: dict, cfg: jenga.JengaConfig | None) -> torch.Tensor:
    """The final latents of a ``STEPS``-step pass, seed 0, dense (``cfg=None``) or patched with ``cfg``."""
    patched = contextlib.nullcontext() if cfg is None else jenga.patched(pipe, cfg)
    with quiet_frame_rounding(), patched, torch.no_grad():
        out = pipe(**call, num_inference_steps=STEPS, output_type="latent", generator=torch.Generator().manual_seed(0))
    return out.frames.float()


def test_loose_budget_lowers_a_layer_and_the_pick_meets_it_when_rerun(toy, tmp_path):
    pipe, call, _ = toy
    torch.set_num_threads(1)
    base = _base()
    hooks = len(pipe.transformer._forward_pre_hooks)
    with quiet_frame_rounding():
        report = calibrate(pipe, base=base, min_psnr=40.0, steps=STEPS, layers=(3, 5), cdf_thresholds=(0.5, 0.0),
                           max_passes=4, **call)
    assert not jenga.is_patched(pipe) and len(pipe.transformer._forward_pre_hooks) == hooks
    passes, cfg = report.passes, report.config
    assert passes[0]["layer"] is None and passes[0]["accepted"] and 2 <= len(passes) <= 4
    # the search lowered at least one searched layer, and changed nothing else of base
    lowered = dict((x, p[0]) for x, p in cfg.layer_cdf_thresholds)
    assert lowered and set(lowered) <= {3, 5} and all(p in (0.5, 0.0) for p in lowered.values())
    assert dataclasses.replace(cfg, layer_cdf_thresholds=()) == base
    # each kept move kept fewer blocks than the config before it and stayed in budget: the pick keeps fewer than base
    kept = [row for row in passes if row["accepted"]]
    assert all(b["density"] < a["density"] for a, b in zip(kept, kept[1:], strict=False)) and len(kept) >= 2
    assert all(row["psnr_db"] >= 40.0 and row["meets_budget"] for row in kept) and report.meets_budget
    assert kept[-1]["layer_cdf_thresholds"] == lowered
    assert all(kept[-1]["kept_density_per_layer"][x] < passes[0]["kept_density_per_layer"][x] for x in lowered)
    # re-run on its own: the pick meets the budget on the calibration clip, at the PSNR the report states
    dense, carved = _latents(pipe, call, None), _latents(pipe, call, cfg)
    psnr = 10 * math.log10(2.0**2 / float((carved - dense).pow(2).mean()))
    assert psnr >= 40.0 and psnr == pytest.approx(kept[-1]["psnr_db"], abs=0.01)
    data = json.loads(json.dumps(report.to_dict()))
    assert jenga.JengaConfig.from_dict(data["config"]) == cfg and len(data["passes"]) == len(passes)
    assert data["budget"]["min_psnr"] == 40.0 and data["timing"]["calibration_share"] > 0
    table = report.table()
    assert "PSNR >= 40.0 dB" in table and "kept" in table
    from PIL import Image

    assert Image.open(report.save_plot(tmp_path / "output.png")).size == (480, 260)


def test_a_budget_the_base_config_misses_returns_base(toy):
    pipe, call, _ = toy
    base = _base()
    with quiet_frame_rounding():
        report = calibrate(pipe, base=base, min_psnr=300.0, steps=STEPS, layers=(5,), **call)
    assert report.config == base and not report.meets_budget
    assert len(report.passes) == 1 and not report.passes[0]["meets_budget"] and report.passes[0]["psnr_db"] < 300
    assert any("misses the budget" in note for note in report.notes)
    assert not jenga.is_patched(pipe)


def test_a_batch_is_judged_by_the_mean_of_its_clips_psnr(toy):
    """Two clips: each clip's PSNR against its dense twin, and the budget on their mean (what the held-out check and
    a preset are judged by), not on the pooled error that the worse clip alone would set."""
    pipe, call, encoder = toy
    with torch.no_grad():
        pair = dict(call, prompt_embeds=encoder([Prompt.parse("red disc right"), Prompt.parse("blue square up")]),
                    negative_prompt_embeds=encoder([None, None]))
    with quiet_frame_rounding():
        report = calibrate(pipe, base=_base(), min_psnr=40.0, steps=STEPS, max_passes=1, **pair)
    row = report.passes[0]
    dense, carved = _latents(pipe, pair, None), _latents(pipe, pair, _base())
    per_clip = [10 * math.log10(4.0 / float((c - d).pow(2).mean())) for c, d in zip(carved, dense, strict=True)]
    assert row["psnr_db_per_clip"] == pytest.approx(per_clip, abs=1e-3)
    assert row["psnr_db"] == pytest.approx(sum(per_clip) / 2, abs=1e-3) and row["meets_budget"]


def test_a_pass_that_fails_leaves_the_pipeline_stock(toy):
    pipe, call, _ = toy

    def fail_when_patched(pipeline, step, timestep, kwargs):
        if jenga.is_patched(pipeline):
            raise RuntimeError("stop inside a patched pass")
        return kwargs

    with quiet_frame_rounding(), pytest.raises(RuntimeError, match="patched pass"):
        calibrate(pipe, base=_base(), min_psnr=30.0, steps=STEPS, callback_on_step_end=fail_when_patched, **call)
    assert not jenga.is_patched(pipe)


@pytest.mark.parametrize("kwargs, name", [
    (dict(min_psnr="35"), "min_psnr"), (dict(min_psnr=float("nan")), "min_psnr"), (dict(min_psnr=True), "min_psnr"),
    (dict(min_psnr=35, psnr_peak=0.0), "psnr_peak"), (dict(min_psnr=35, max_passes=0), "max_passes"),
    (dict(min_psnr=35, min_recall=0.95), "min_recall"), (dict(min_psnr=35, max_error=0.1), "max_error"),
    (dict(min_psnr=35, layer_thresholds=True), "layer_thresholds"), (dict(min_psnr=35, curves=("zorder",)), "curves"),
    (dict(min_psnr=35, per_layer=False), "per_layer"), (dict(min_psnr=35, heads=4), "heads"),
    (dict(min_psnr=35, cdf_thresholds=(0.95,)), "cdf_thresholds"),
    (dict(min_psnr=35, cdf_thresholds=(1.5,)), "cdf_thresholds"),
    (dict(min_psnr=35, layers=(99,)), "layers"), (dict(min_psnr=35, steps=0), "steps"),
    (dict(min_psnr=35, raise_thresholds=(0.8,)), "raise_thresholds"),
    (dict(min_psnr=35, raise_thresholds=(1.2,)), "raise_thresholds"),
    (dict(min_psnr=35, raise_thresholds="0.95"), "raise_thresholds"),
    (dict(min_psnr="base"), "raise_thresholds"), (dict(min_psnr="best"), "min_psnr"),
    (dict(raise_thresholds=(0.95,)), "min_psnr"),
])
def test_bad_output_budget_input_is_refused_by_name(toy, kwargs, name):
    pipe, call, _ = toy
    with pytest.raises(ValueError, match=name):
        calibrate(pipe, base=_base(), **kwargs, **call)
    assert not jenga.is_patched(pipe)


def test_min_recall_default_reads_as_0_95():
    default = inspect.signature(calibrate).parameters["min_recall"].default
    assert default == 0.95 and repr(default) == "0.95"


def test_cli_calibrate_min_psnr_writes_the_passes(tmp_path, capsys):
    out = tmp_path / "cal"
    code = cli.main(["calibrate", "--toy", "--size", "small", "--steps", str(STEPS), "--min-psnr", "40",
                     "--max-passes", "2", "--cdf-thresholds", "0.5", "--device", "cpu", "--threads", "1",
                     "--out-dir", str(out)])
    text = capsys.readouterr().out
    assert code == cli.OK, text
    assert "PSNR >= 40.0 dB" in text and "calibration took" in text
    report = json.loads((out / "calibration.json").read_text())
    assert report["budget"] == {"min_psnr": 40.0, "psnr_peak": 2.0, "cdf_ladder": [0.5], "max_passes": 2}
    passes = report["passes"]
    assert len(passes) == 2  # the base config, then layer 0's move: the pass budget ends the first round
    # a move measured against the config as it stands is taken when the passes run out, if it is in budget and saves
    assert passes[1]["accepted"] == (passes[1]["meets_budget"] and passes[1]["saves_blocks"])
    cfg = jenga.JengaConfig.from_dict(json.loads((out / "calibrated.json").read_text()))
    kept = [row for row in passes if row["accepted"]][-1]["layer_cdf_thresholds"]
    assert {x: p[0] for x, p in cfg.layer_cdf_thresholds} == {int(x): p for x, p in kept.items()}
    assert cfg.block_size == BLOCK and (out / "calibration.png").exists()


@pytest.mark.parametrize("argv, message", [
    (["--min-psnr", "35", "--min-recall", "0.9"], "--min-recall"),
    (["--min-psnr", "35", "--layer-thresholds"], "--layer-thresholds"),
    (["--max-passes", "3"], "--min-psnr"),
    (["--raise-p", "0.95"], "--min-psnr"),
    (["--min-psnr", "base"], "raise_thresholds"),
])
def test_cli_min_psnr_usage_errors(argv, message, capsys):
    assert cli.main(["calibrate", "--toy", "--device", "cpu", *argv]) == cli.USAGE
    assert message in capsys.readouterr().err


def test_cli_calibrate_help_lists_the_output_budget(capsys):
    with pytest.raises(SystemExit):
        cli.main(["calibrate", "--help"])
    text = capsys.readouterr().out
    for option in ("--min-psnr", "--psnr-peak", "--max-passes", "--raise-p"):
        assert option in text, option


def test_the_base_budget_with_rises_keeps_at_most_base_blocks_at_base_psnr(toy):
    """``min_psnr="base"``: the budget is the preset's own PSNR; lowering moves alone cannot keep it, so the search
    pairs a rise with a failed lowering move whose missing dB it buys. A layer is only lowered or only raised, the
    pick is the in-budget accepted config of fewest blocks (here fewer than base, with one layer raised and one
    lowered), and it meets the budget when re-run."""
    pipe, call, _ = toy
    torch.set_num_threads(1)
    base = _base()
    with quiet_frame_rounding():
        report = calibrate(pipe, base=base, min_psnr="base", raise_thresholds=(0.97,), steps=STEPS, layers=(0, 3, 5),
                           cdf_thresholds=(0.0,), max_passes=9, **call)
    passes, budget = report.passes, report.budget
    assert budget["min_psnr"] == passes[0]["psnr_db"] and budget["min_psnr_from"] == "base"
    assert budget["raise_ladder"] == [0.97] and len(passes) <= 9 and report.meets_budget
    assert all(row["cdf_threshold"] in (0.97, 0.0) for row in passes[1:])
    assert any(row["cdf_threshold"] > 0.9 for row in passes[1:]), "no rise was measured"
    moved = {}
    for row in passes[1:]:
        if row["accepted"]:  # a layer is only ever lowered or only ever raised
            raised = row["cdf_threshold"] > 0.9
            assert moved.setdefault(row["layer"], raised) == raised
    accepted = [row for row in passes if row["accepted"] and row["meets_budget"]]
    pick = min(accepted, key=lambda row: row["density"])
    assert dict((x, p[0]) for x, p in report.config.layer_cdf_thresholds) == pick["layer_cdf_thresholds"]
    # here the exchange pays: layer 5 raised buys what layer 0 at p 0 lacked, fewer blocks than base at its PSNR
    assert pick["density"] < passes[0]["density"] and pick["psnr_db"] >= budget["min_psnr"]
    assert any(p > 0.9 for p in pick["layer_cdf_thresholds"].values())
    assert any(p < 0.9 for p in pick["layer_cdf_thresholds"].values())
    dense, carved = _latents(pipe, call, None), _latents(pipe, call, report.config)
    psnr = 10 * math.log10(2.0**2 / float((carved - dense).pow(2).mean()))
    assert psnr == pytest.approx(pick["psnr_db"], abs=0.01) and psnr >= budget["min_psnr"] - 1e-3


def test_a_budget_base_misses_is_sought_by_raising_first(toy):
    """With rises, a budget the base config misses starts with an exchange round (every lowering would miss it
    too); base is returned with a note when no accepted config reaches it."""
    pipe, call, _ = toy
    with quiet_frame_rounding():
        report = calibrate(pipe, base=_base(), min_psnr=300.0, raise_thresholds=(0.95, 0.99), steps=STEPS,
                           layers=(4, 5), max_passes=4, **call)
    passes = report.passes
    assert all(row["cdf_threshold"] in (0.95, 0.99) for row in passes[1:]) and len(passes) >= 3
    assert report.config == _base() and not report.meets_budget
    assert any("no config the search accepted meets" in note for note in report.notes)
