"""benchmarks/quality/{train,evaluate}.py run end to end at their CPU sizes (the GPU run depends on them): a few
seconds of training writes loadable weights and a log, and the evaluation writes every section it promises."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _run(script: str, *args: str) -> None:
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "quality" / script), *args],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]


def test_train_then_evaluate_at_tiny_size(tmp_path):
    weights, log, out = tmp_path / "w.safetensors", tmp_path / "train.json", tmp_path / "quality.json"
    _run("train.py", "--tiny", "--seconds", "2", "--out", str(weights), "--log", str(log))
    summary = json.loads(log.read_text())
    assert summary["steps"] >= 1 and summary["weights_bytes"] == weights.stat().st_size < 16 * 2**20
    assert all(entry["loss"] > 0 for entry in summary["log"])

    _run("evaluate.py", "--tiny", "--weights", str(weights), "--out", str(out), "--repeats", "2")
    result = json.loads(out.read_text())
    generation = result["generation"]
    assert result["repeats"] == 2
    assert generation["rendered-clips"]["task"]["task"] == 100.0  # the score reads ground truth correctly
    assert {"dense", "carving", "carving-floor", "prores", "full", "full-floor"} <= set(generation)
    for name in ("carving", "carving-floor"):
        entry = generation[name]
        assert entry["psnr_db"] > 0 and 0 < entry["ssim"] <= 1 and entry["block_density"]
    summary = result["attention"]["summary"]
    assert {key.split("@")[0] for key in summary} == {"zorder", "hilbert", "raster"}
    for row in result["attention"]["rows"]:
        assert 0 < row["recall"] <= 1 + 1e-6 and row["rel_l2"] >= 0
