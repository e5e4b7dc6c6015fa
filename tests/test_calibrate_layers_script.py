"""benchmarks/quality/calibrate_layers.py, layer_probe.py and calibrate_output.py run end to end at the toy's small
size and write every figure the RESULTS tables quote (calibration against the preset, and the generation check)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.long(21)
def test_calibrate_layers_script_writes_calibration_and_generation_figures(tmp_path):
    out = tmp_path / "layers.json"
    args = ["--size", "small", "--clips", "1", "--heads", "1", "--query-blocks", "2", "--threads", "1",
            "--cdf-thresholds", "0.5", "0.9", "0.97", "--out", str(out)]
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "quality" / "calibrate_layers.py"), *args],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    data = json.loads(out.read_text())
    assert data["device"] == "cpu" and data["size"]["block_size"] == 32 and len(data["clips"]) == 1
    for row in data["calibration"]["layers"]["stages"]:  # the pick meets the preset's mean recall, no more blocks
        assert row["recall"] >= row["min_recall"] - 1e-9 and row["density"] <= row["preset"]["density"] + 1e-9
        assert len(row["cdf_thresholds"]) == 6
    generation = data["generation"]
    assert set(generation) == {"preset", "calibrated-layers"}
    for entry in generation.values():
        assert 0 < entry["kept_density"] < 1 and entry["psnr_db"]["mean"] > 0 and 0 < entry["ssim"]["mean"] <= 1
        assert entry["sparse_layer_forwards"] > 0
    assert generation["calibrated-layers"]["config"]["layer_cdf_thresholds"]


@pytest.mark.long(8)
def test_layer_probe_script_lowers_one_layer_and_measures_the_clips(tmp_path):
    """benchmarks/quality/layer_probe.py: the preset and one layer at a lower p, on the same clips; the lowered
    layer keeps fewer blocks than under the preset (the others see other inputs after the first step)."""
    out = tmp_path / "probe.json"
    args = ["--size", "small", "--clips", "1", "--layers", "5", "--p", "0", "--out", str(out)]
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "quality" / "layer_probe.py"), *args],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    rows = json.loads(out.read_text())["rows"]
    assert set(rows) == {"preset", "layer5-p0.0"}
    preset, lowered = rows["preset"]["kept_density_per_layer"], rows["layer5-p0.0"]["kept_density_per_layer"]
    assert lowered["5"] < preset["5"]
    for row in rows.values():
        assert row["psnr_db"]["mean"] > 0 and 0 < row["ssim"]["mean"] <= 1


@pytest.mark.long(20)
def test_calibrate_output_script_judges_the_pick_on_held_out_clips(tmp_path):
    """benchmarks/quality/calibrate_output.py: the min_psnr pick on one clip, then the preset and the pick on held-out
    clips of another seed; the pick keeps no more blocks than the preset on the calibration clip."""
    out = tmp_path / "output.json"
    args = ["--size", "small", "--clips", "1", "--min-psnr", "40", "--max-passes", "2", "--calibration-steps", "2",
            "--cdf-thresholds", "0.5", "--threads", "1", "--out", str(out)]
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "quality" / "calibrate_output.py"), *args],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    data = json.loads(out.read_text())
    assert data["held_out_seed"] != data["calibration_seed"]
    assert not set(data["calibration_prompts"]) & set(data["held_out_clips"])
    calibration = data["calibration"]["calibrated-40dB"]
    passes = calibration["passes"]
    assert len(passes) == 2 and calibration["meets_budget"] and calibration["share_of_one_generation"] > 0
    kept = [row for row in passes if row["accepted"]]
    assert kept[-1]["density"] <= passes[0]["density"] and all(row["psnr_db"] >= 40 for row in kept)
    assert set(data["held_out"]) == {"preset", "calibrated-40dB"}
    for entry in data["held_out"].values():
        assert 0 < entry["kept_density"] < 1 and entry["psnr_db"]["mean"] > 0 and 0 < entry["ssim"]["mean"] <= 1


@pytest.mark.parametrize("clips", [4, 10, 12, 24, 48])
def test_spread_prompts_cover_every_direction_shape_and_colour_evenly(clips):
    """The held-out clips of the calibration scripts: distinct, and each direction, shape and colour as often as
    the count allows (evenly spaced picks of the 48 alone all moved up at 12 clips)."""
    sys.path.insert(0, str(ROOT / "benchmarks" / "quality"))
    from calibrate_layers import spread_prompts

    from jenga.toy.data import COLOURS, DIRECTIONS, SHAPES

    objects = [prompt.objects[0] for prompt in spread_prompts(clips)]
    assert len(set(objects)) == clips
    for values, factor in ((DIRECTIONS, "direction"), (SHAPES, "shape")):
        counts = [sum(getattr(o, factor) == v for o in objects) for v in values]
        assert max(counts) - min(counts) <= 1, (factor, counts)
    colours = [sum(o.colour == c for o in objects) for c in COLOURS]  # 4 clips: two colours twice, at most
    assert max(colours) <= -(-clips // len(COLOURS)) + 1, colours
