"""benchmarks/forward_hunyuan15.py --tiny on a CPU: the GPU benchmark's code path (build, inputs, columns)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def test_tiny_forward_benchmark(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import forward_hunyuan15

    out = tmp_path / "forward.json"
    assert forward_hunyuan15.main(["--tiny", "--specs", "hunyuan15-480p", "--repeats", "1", "--warmup", "0",
                                   "--out", str(out)]) == 0
    result = json.loads(out.read_text())["models"]["hunyuan15-480p"]
    assert result["grid"] == [3, 8, 8] and result["condition_tokens"] == 12 + 6 + 16
    columns = result["columns"]
    assert set(columns) == {"stock", "jenga-floor", "jenga-preset"}
    floor, preset = columns["jenga-floor"]["density"], columns["jenga-preset"]["density"]
    assert floor["layers"] == preset["layers"] == 2
    assert 0 < floor["mean"] <= preset["mean"] < 1  # carved: the floor keeps no more than the preset's p
    assert columns["jenga-floor"]["drop_rate"] == 0.75
    sys.modules.pop("forward_hunyuan15", None)
