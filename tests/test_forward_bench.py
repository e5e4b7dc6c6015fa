"""benchmarks/forward.py's CPU dry run (--tiny): one LTX and one CogVideoX 1.5 forward, stock vs carving."""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_tiny_forward_benchmark(tmp_path, capsys):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import forward
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    out = tmp_path / "forward.json"
    assert forward.main(["--tiny", "--models", "ltx-2b", "cogvideox1.5-5b", "--repeats", "1", "--warmup", "0",
                         "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    for name, grid in (("ltx-2b", [3, 8, 10]), ("cogvideox1.5-5b", [2, 8, 10])):
        model = report["models"][name]
        assert model["grid"] == grid
        floor, preset = model["columns"]["jenga-floor"], model["columns"]["jenga-preset"]
        assert floor["cdf_threshold"] == 0.0 and preset["cdf_threshold"] == 0.9
        assert 0.0 < floor["density"]["mean"] < preset["density"]["mean"] <= 1.0  # the floor keeps fewer blocks
        assert floor["density"]["layers"] == 2
    assert "| ltx-2b |" in capsys.readouterr().out
