"""``jenga.calibrate`` and ``jenga calibrate``: the metrics against a direct computation, the pick against its
budget, the config round trip into ``jenga.patch``, and the CLI's files (shipped toy model, CPU, small size)."""

from __future__ import annotations

import json
import math

import pytest
import torch
from _toy import toy_pipeline_and_call

import jenga
from jenga import cli
from jenga.calibration import _candidate_masks, _mass_and_error, calibrate
from jenga.toy.model import quiet_frame_rounding

GRID = (4, 16, 16)  # the demo's "small" size: 4 frames of 32x32 pixels, 1,024 tokens
BLOCK = 32


def _qk(seed: int = 0, heads: int = 2, dim: int = 16) -> tuple[torch.Tensor, ...]:
    """Smooth-ish fields (a random walk along the sequence) so that the pooled scores have structure."""
    g = torch.Generator().manual_seed(seed)
    n = math.prod(GRID)
    return tuple(torch.randn(1, n, heads, dim, generator=g).cumsum(1) / 8 for _ in range(3))


def test_candidate_masks_are_the_selector_s_lists():
    q, k, _ = _qk()
    layout = jenga.token_layout(GRID, block_size=BLOCK)
    candidates = [(0.0, 0.75), (0.5, 0.9), (0.9, 0.5)]
    masks = _candidate_masks(q, k, BLOCK, layout.adjacency, candidates)
    for mask, (p, rate) in zip(masks, candidates, strict=True):
        lists = jenga.select_blocks(q, k, drop_rate=rate, cdf_threshold=p, block_size=BLOCK,
                                    adjacency=layout.adjacency, backend="torch")
        assert torch.equal(mask, lists.to_dense()[0])


def test_recall_and_error_match_a_direct_masked_softmax():
    q, k, v = _qk(1)
    layout = jenga.token_layout(GRID, block_size=BLOCK)
    masks = _candidate_masks(q, k, BLOCK, layout.adjacency, [(0.0, 0.8), (0.3, 0.6)])
    recall, error = _mass_and_error(q, k, v, masks, BLOCK, query_blocks=10**6, generator=torch.Generator())
    qt, kt, vt = (t[0].transpose(0, 1) for t in (q, k, v))
    scores = qt @ kt.transpose(1, 2) / math.sqrt(q.shape[-1])
    probs = scores.softmax(-1)
    dense = probs @ vt
    token_block = torch.arange(q.shape[1]) // BLOCK
    for i, mask in enumerate(masks):
        allowed = mask[:, token_block][:, :, token_block]  # [h, N, N]
        carved = scores.masked_fill(~allowed, float("-inf")).softmax(-1) @ vt
        assert float(recall[i]) == pytest.approx(float((probs * allowed).sum() / probs.sum()), rel=1e-4)
        expected = float((carved - dense).norm() / dense.norm())
        assert float(error[i]) == pytest.approx(expected, rel=1e-3, abs=1e-6)
    assert 0 < float(recall[0]) < 1 and float(error[0]) > 0


@pytest.fixture(scope="module")
def toy():
    return toy_pipeline_and_call(GRID[0])[:2]


def test_calibrate_picks_a_config_within_its_budget_that_patch_accepts(toy):
    pipe, call = toy
    torch.set_num_threads(1)
    base = jenga.JengaConfig.preset("base", model="wan", block_size=BLOCK)
    hooks_before = len(pipe.transformer._forward_pre_hooks)
    with quiet_frame_rounding():
        report = calibrate(pipe, base=base, min_recall=0.9, steps=3, num_inference_steps=20, layers=(0, 3, 5),
                           heads=1, query_blocks=4, drop_rates=(0.5, 0.75, 0.9), cdf_thresholds=(0.0, 0.9), **call)
    assert len(pipe.transformer._forward_pre_hooks) == hooks_before, "calibrate left a hook behind"
    cfg = report.config
    assert jenga.JengaConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    assert cfg.stages == base.stages and cfg.dense_steps == base.dense_steps
    # every measured layer of every carved stage meets the budget under the picked config
    assert report.meets_budget
    for row in report.layers:
        for stage in row["stages"]:
            assert stage["recall"] >= 0.9 - 1e-9
            if stage["drop_rate"] > 0:
                assert 0 < stage["density"] < 1
    assert {m.layer for m in report.measurements} == {0, 3, 5}
    # the candidates plus base's own drop rates (0.75, 0.85) and p (0.9): 4 rates x 2 thresholds
    assert {(m.drop_rate, m.cdf_threshold) for m in report.measurements} == {
        (r, p) for r in (0.5, 0.75, 0.85, 0.9) for p in (0.0, 0.9)}
    timing = report.timing
    assert timing["generation_picked_s"] <= timing["generation_dense_s"] + 1e-9
    assert timing["calibration_share"] > 0
    assert "budget recall >= 0.9 (per layer)" in report.table()
    with quiet_frame_rounding(), jenga.patched(pipe, cfg):
        out = pipe(**call, num_inference_steps=2, output_type="latent", generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(out.frames if hasattr(out, "frames") else out[0]).all()


def test_calibrate_rejects_bad_input(toy):
    pipe, call = toy
    with pytest.raises(ValueError, match="quality budget"):
        calibrate(pipe, min_recall=None, max_error=None, **call)
    with pytest.raises(ValueError, match="min_recall"):
        calibrate(pipe, min_recall=1.5, **call)
    with pytest.raises(ValueError, match="dense_threshold"):
        calibrate(pipe, drop_rates=(0.1, 0.2), **call)
    with pytest.raises(ValueError, match="layers"):
        calibrate(pipe, layers=(99,), **call)
    with pytest.raises(ValueError, match="output_type"):
        calibrate(pipe, output_type="np", **call)
    with jenga.patched(pipe, jenga.JengaConfig(block_size=BLOCK)), pytest.raises(ValueError, match="unpatch"):
        calibrate(pipe, **call)


def test_cli_calibrate_toy_writes_config_report_and_plot(tmp_path, capsys):
    out = tmp_path / "cal"
    code = cli.main(["calibrate", "--toy", "--size", "small", "--steps", "2", "--heads", "1", "--query-blocks", "2",
                     "--min-recall", "0.9", "--device", "cpu", "--threads", "1", "--out-dir", str(out)])
    text = capsys.readouterr().out
    assert code == cli.OK, text
    assert "layer stage" in text and "calibration took" in text
    cfg = jenga.JengaConfig.from_dict(json.loads((out / "calibrated.json").read_text()))
    assert cfg.block_size == BLOCK
    report = json.loads((out / "calibration.json").read_text())
    assert report["budget"] == {"min_recall": 0.9, "max_error": None, "per_layer": True, "layer_thresholds": False}
    assert report["measurements"]
    from PIL import Image

    assert Image.open(out / "calibration.png").size == (480, 260)


def test_stage_mean_budget_carves_at_least_as_much_as_per_layer(toy):
    pipe, call = toy
    base = jenga.JengaConfig.preset("base", model="wan", block_size=BLOCK)
    kwargs = dict(base=base, min_recall=0.93, steps=3, layers=(0, 5), heads=1, query_blocks=2,
                  drop_rates=(0.5, 0.8), cdf_thresholds=(0.5,), **call)
    with quiet_frame_rounding():
        strict = calibrate(pipe, **kwargs)
        loose = calibrate(pipe, per_layer=False, **kwargs)
    assert loose.config.dense_layers == ()
    assert loose.meets_budget and all(row["recall"] >= 0.93 - 1e-9 for row in loose.stages)
    density = lambda report: sum(row["density"] for row in report.stages)  # noqa: E731
    assert density(loose) <= density(strict) + 1e-9


def test_budget_base_keeps_no_more_blocks_than_the_preset_at_its_own_recall(toy):
    pipe, call = toy
    base = jenga.JengaConfig.preset("base", model="wan", block_size=BLOCK)
    with quiet_frame_rounding():
        report = calibrate(pipe, base=base, min_recall="base", steps=3, layers=(0, 5), heads=1, query_blocks=2,
                           drop_rates=(0.6, 0.9), cdf_thresholds=(0.5,), **call)
    assert report.meets_budget and report.config.dense_layers == ()
    for row in report.stages:
        assert row["recall"] >= row["min_recall"] - 1e-9 and row["min_recall"] == row["base"]["recall"]
        assert row["density"] <= row["base"]["density"] + 1e-9  # base itself is a candidate
        assert row["per_layer_settings"]["density"] <= row["base"]["density"] + 1e-9  # per layer too


def test_cli_calibrate_help_and_usage_errors(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["calibrate", "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for option in ("--model", "--toy", "--prompt", "--size", "--preset", "--min-recall", "--max-error", "--stage-mean",
                   "--steps", "--run-steps", "--heads", "--query-blocks", "--curves", "--out-dir", "--toy-weights",
                   "--layer-thresholds", "--cdf-thresholds"):
        assert option in text, option
    assert "exit codes:" in text
    assert cli.main(["calibrate", "--model", "no/such-model", "--device", "cpu"]) == cli.USAGE
    assert "--model needs --prompt" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["calibrate", "--toy", "--min-recall", "high"])
    assert exit_info.value.code == cli.USAGE
    assert "'base'" in capsys.readouterr().err
