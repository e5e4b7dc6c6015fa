"""benchmarks/quality/{train,evaluate}.py run end to end at their CPU sizes (the GPU run depends on them): a few
seconds of training writes loadable weights and a log, and the evaluation writes every section it promises."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import jenga

pytestmark = pytest.mark.long(100)  # scheduled first (tests/conftest.py)

ROOT = Path(__file__).resolve().parents[1]


def _run(script: str, *args: str) -> None:
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "quality" / script), *args],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]


def test_train_then_evaluate_at_tiny_size(tmp_path):
    weights, log, out = tmp_path / "w.safetensors", tmp_path / "train.json", tmp_path / "quality.json"
    _run("train.py", "--tiny", "--seconds", "900", "--steps", "1", "--eval-every", "1", "--eval-repeats", "1",
         "--out", str(weights), "--log", str(log))
    summary = json.loads(log.read_text())
    assert summary["steps"] == 1 and summary["weights_bytes"] == weights.stat().st_size < 16 * 2**20
    assert [e["step"] for e in summary["evaluations"]] == [1]  # the last step is evaluated once, not twice
    evaluation = summary["evaluations"][0]
    assert summary["best"]["step"] == 1 and evaluation["clips"] == 8 and 0 <= evaluation["direction"] <= 100

    _run("evaluate.py", "--tiny", "--weights", str(weights), "--out", str(out), "--repeats", "2")
    result = json.loads(out.read_text())
    generation = result["generation"]
    assert result["repeats"] == 2
    assert generation["rendered-clips"]["task"]["task"]["value"] == 100.0  # the score reads ground truth correctly
    assert {"dense", "carving", "carving-floor", "prores", "full", "full-floor"} <= set(generation)
    for name in ("carving", "carving-floor"):
        entry = generation[name]
        assert entry["psnr_db"] > 0 and 0 < entry["ssim"] <= 1 and entry["block_density"]
        task = entry["task"]["task"]
        assert task["n"] == 4 and task["ci95"][0] <= task["value"] <= task["ci95"][1] and task["se"] >= 0
        assert entry["vs_dense"]["task"]["n"] == 4
    summary = result["attention"]["summary"]
    assert {key.split("@")[0] for key in summary} == {"zorder", "hilbert", "raster"}
    for row in result["attention"]["rows"]:
        assert 0 < row["recall"] <= 1 + 1e-6 and row["rel_l2"] >= 0



def test_train_with_loss_weights_at_tiny_size(tmp_path):
    """--object-weight and --shape-weight run (the rendered coverage's two channels weight the loss) and are
    logged; a negative weight is refused."""
    weights, log = tmp_path / "w.safetensors", tmp_path / "train.json"
    _run("train.py", "--tiny", "--seconds", "900", "--steps", "2", "--object-weight", "2", "--shape-weight", "8",
         "--out", str(weights), "--log", str(log))
    summary = json.loads(log.read_text())
    assert summary["steps"] == 2 and summary["object_weight"] == 2.0 and summary["shape_weight"] == 8.0
    refused = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "quality" / "train.py"), "--tiny",
                              "--shape-weight", "-1", "--out", str(weights)], capture_output=True, text=True,
                             timeout=120)
    assert refused.returncode == 2 and "--shape-weight must be >= 0" in refused.stderr

def test_evaluate_a_calibrated_config_from_stored_clips(tmp_path):
    """Variants generated in separate processes (as on several GPUs) and scored together from their stored clips."""
    calibrated, videos = tmp_path / "calibrated.json", tmp_path / "videos"
    calibrated.write_text(json.dumps(jenga.JengaConfig(block_size=64, drop_rates=0.6, cdf_threshold=0.5).to_dict()))
    common = ["--tiny", "--repeats", "2", "--skip-attention", "--calibrated", str(calibrated), "--videos", str(videos)]
    _run("evaluate.py", *common, "--variants", "dense", "--out", str(tmp_path / "dense.json"))
    _run("evaluate.py", *common, "--variants", "calibrated", "--out", str(tmp_path / "cal.json"))
    alone = json.loads((tmp_path / "cal.json").read_text())["generation"]["calibrated"]
    assert alone["block_density"] and alone["config"]["cdf_threshold"] == 0.5 and "psnr_db" not in alone
    merged = tmp_path / "merged.json"
    _run("evaluate.py", "--tiny", "--repeats", "2", "--from-videos", str(videos), "--out", str(merged))
    scored = json.loads(merged.read_text())["generation"]
    assert {"rendered-clips", "dense", "calibrated"} == set(scored)
    assert scored["calibrated"]["task"] == alone["task"]  # the stored clips score as they did when generated
    assert scored["calibrated"]["psnr_db"] > 0 and 0 < scored["calibrated"]["ssim"] <= 1
    assert scored["calibrated"]["vs_dense"]["task"]["n"] == 4
