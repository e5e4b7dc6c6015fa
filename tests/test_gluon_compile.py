"""The Gluon kernel (Hopper's default) compiles for sm_90 with the installed Triton, without a GPU (it cannot run in
the interpreter, so the compile runs in a child process without TRITON_INTERPRET; tests/gpu/test_gluon_gpu.py
runs the kernel on a Hopper GPU)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from jenga.kernels import gluon_block_sparse as gbs

_CHILD = """
import json, re
from jenga.kernels.gluon_block_sparse import SCHEDULES, compile_for_hopper
found = {}
for schedule in SCHEDULES:  # the ping-pong ones without LSE: Triton 3.6 once failed to lower that case
    kernel = compile_for_hopper(head_dim=64, schedule=schedule, write_lse=not schedule.startswith("pingpong"))
    ptx = kernel.asm["ptx"]
    found[schedule] = dict(named_in_ttgir=kernel.asm["ttgir"].count("bar.sync 14"),
                           wgmma=len(re.findall(r"wgmma\\.mma_async", ptx)),
                                tma=len(re.findall(r"cp\\.async\\.bulk\\.tensor", ptx)),
                                setmaxnreg="setmaxnreg" in ptx,
                                wait_one=bool(re.search(r"wgmma\\.wait_group\\.sync\\.aligned 1", ptx)),
                                arrives=len(re.findall(r"mbarrier\\.arrive", ptx)))
ptx = compile_for_hopper(head_dim=128, schedule="pingpong", write_lse=False, has_bias=True, tma_out=True).asm["ptx"]
found["pingpong-key-bias"] = dict(wgmma=len(re.findall(r"wgmma\\.mma_async", ptx)), tma=1,
                                  setmaxnreg="setmaxnreg" in ptx)
for schedule in ("pingpong", "pingpong-named"):  # the TMA store of O (the default at head dim 128)
    ptx = compile_for_hopper(head_dim=128, schedule=schedule, write_lse=False, tma_out=True).asm["ptx"]
    found[schedule + "-tma-out"] = dict(wgmma=len(re.findall(r"wgmma\\.mma_async", ptx)), tma=1,
                                        setmaxnreg="setmaxnreg" in ptx,
                                        tma_store=len(re.findall(r"cp\\.async\\.bulk\\.tensor\\.2d\\.global\\.shared",
                                                                 ptx)))
print(json.dumps(found))
"""


@pytest.mark.skipif(gbs.GLUON_IMPORT_ERROR is not None, reason=f"no Gluon: {gbs.GLUON_IMPORT_ERROR}")
def test_gluon_kernel_compiles_for_hopper():
    try:
        from triton.experimental.gluon._runtime import GluonASTSource  # noqa: F401
    except ImportError:
        pytest.skip("this Triton cannot compile Gluon without a GPU driver")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    done = subprocess.run([sys.executable, "-c", _CHILD], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    found = json.loads(done.stdout.strip().splitlines()[-1])
    for variant in found.values():
        assert variant["wgmma"] > 0, "no warpgroup MMA in the PTX"
        assert variant["tma"] > 0, "no TMA load in the PTX"
        assert variant["setmaxnreg"]  # warp specialisation hands the producer warp fewer registers
    # the pipelined and ping-pong consumers leave one wgmma group (the previous P·V) in flight during the softmax
    assert found["pipelined"]["wait_one"] and found["pingpong"]["wait_one"]
    assert not found["plain"]["wait_one"] and not found["pingpong-plain"]["wait_one"]
    # the partitions' flags arrive as constexprs: only the named-turn schedule carries the named-barrier code (a flag
    # arriving as a value builds both sides of every branch, which cost the first run ~2 s of compile)
    assert found["pingpong-named"]["named_in_ttgir"] > 0
    assert all(found[s]["named_in_ttgir"] == 0 for s in ("plain", "pipelined", "pingpong", "pingpong-plain"))
    # the early-key schedule releases each key buffer on its own barrier: more arrives than the default's
    assert found["pingpong-early-k"]["arrives"] > found["pingpong"]["arrives"]
    assert found["pingpong-tma-out"]["tma_store"] == 2 and found["pingpong-named-tma-out"]["tma_store"] == 2
