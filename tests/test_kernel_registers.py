"""The kernel compiled for an H100 (sm_90) on this CPU machine: register and spill report of
``benchmarks/kernel_registers.py``, and why the ``Q_TMA`` configs are offered to the autotuner.

Runs in a subprocess: the test session interprets Triton kernels on the CPU (``TRITON_INTERPRET=1``),
and an interpreted function cannot be compiled for a GPU target.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytest.importorskip("triton")

_SCRIPT = """
import json, os, sys
sys.path.insert(0, {benchmarks!r})
import kernel_registers as kr
if not os.path.exists(kr.cuobjdump()):
    print(json.dumps(None)); sys.exit(0)
tiles = {tiles!r}
print(json.dumps([kr.resource_usage({{**tiles, "Q_TMA": q_tma}}, 128, use_tma=True) for q_tma in (False, True)]))
"""


@pytest.mark.parametrize("tiles", [
    dict(BLOCK_M=128, BLOCK_N=128, num_warps=8, num_stages=2),
    dict(BLOCK_M=128, BLOCK_N=64, num_warps=4, num_stages=2),
])
def test_queries_through_a_descriptor_need_no_more_registers_nor_stack(tiles):
    """Loading q through a tensor descriptor lets the first matmul read it from shared memory, so the kernel
    needs no more registers and spills no more than the register path (8-warp 128x128 tiles and the 4-warp
    128x64 tiles the autotuner picks on an H200)."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    script = _SCRIPT.format(benchmarks=str(ROOT / "benchmarks"), tiles=tiles)
    done = subprocess.run([sys.executable, "-c", script], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    if result is None:
        pytest.skip("this Triton ships no cuobjdump")
    in_registers, through_smem = result
    for usage in (in_registers, through_smem):
        assert 0 < usage["registers"] <= 255 and usage["stack_bytes"] >= 0 and usage["shared_bytes"] > 0
    assert through_smem["registers"] <= in_registers["registers"]
    assert through_smem["stack_bytes"] <= in_registers["stack_bytes"]
