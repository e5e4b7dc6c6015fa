"""benchmarks/forward.py's CPU dry run (--tiny): one spec of every family, stock vs carving, in one process."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"

# spec -> (token grid, condition tokens, the preset's p, the drop rate at the family's timestep, layers carved)
EXPECTED = {
    "ltx-2b": ([3, 8, 10], 8, 0.9, 0.75, 2),
    "cogvideox1.5-5b": ([2, 8, 10], 12, 0.9, 0.75, 2),
    "hunyuan15-480p": ([3, 8, 8], 12 + 6 + 16, 0.3, 0.75, 2),
    "skyreels1.3b": ([3, 8, 10], 12, 0.9, 0.85, 3),
    "vace1.3b": ([3, 8, 10], 12, 0.9, 0.85, 3 + 2),  # main and control blocks
}


def test_tiny_forward_benchmark(tmp_path, monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import forward

    out = tmp_path / "forward.json"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny forwards gain nothing from a second thread, and lose much on a shared CPU
    try:
        assert forward.main(["--tiny", "--specs", *EXPECTED, "--repeats", "1", "--warmup", "0",
                             "--out", str(out)]) == 0
    finally:
        torch.set_num_threads(threads)
        for name in ("forward", "_video_specs"):
            sys.modules.pop(name, None)
    report = json.loads(out.read_text())
    assert list(report["models"]) == list(EXPECTED)
    for name, (grid, condition_tokens, p, drop_rate, layers) in EXPECTED.items():
        model = report["models"][name]
        assert model["grid"] == grid and model["condition_tokens"] == condition_tokens, name
        columns = model["columns"]
        assert list(columns) == ["stock", "jenga-floor", "jenga-preset"], name
        assert all(c["finite"] and c["seconds"] > 0 for c in columns.values()), name
        floor, preset = columns["jenga-floor"], columns["jenga-preset"]
        assert floor["cdf_threshold"] == 0.0 and preset["cdf_threshold"] == p, name
        assert floor["drop_rate"] == preset["drop_rate"] == drop_rate, name
        assert floor["density"]["layers"] == preset["density"]["layers"] == layers, name
        # carved, and the floor keeps fewer blocks than the preset's p
        assert 0.0 < floor["density"]["mean"] < preset["density"]["mean"] < 1.0, name
    table = capsys.readouterr().out
    assert all(f"| {name} |" in table for name in EXPECTED)
