"""GPU check of the background warm-up's compile children (``jenga._warm_up``), skipped without CUDA.

A fresh process with an empty Triton cache: the warm-up's children compile the selector and the attention
kernel, this process only loads them (every compile it sees is a cache hit), and the carved calls that follow
compile nothing. Run on a GPU machine: ``python -m pytest tests/gpu/test_warm_up_gpu.py -q``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

if not torch.cuda.is_available():
    pytest.skip("needs a CUDA GPU", allow_module_level=True)

SCRIPT = """
import json, torch, triton
from jenga import block_sparse_attention, select_blocks
from jenga._warm_up import KernelWarmUp

seen = []  # every compile this process runs, and whether it was a cache hit
triton.knobs.compilation.listener = lambda **kw: seen.append((kw["src"].name, kw["cache_hit"]))
shape, device = (1, 18_018, 12, 128), torch.device("cuda")  # Wan 1.3B's first progressive stage
warm_up = KernelWarmUp()
warm_up.start(shape, torch.bfloat16, device, drop_rate=0.75, cdf_threshold=0.9, block_size=128,
              num_video=shape[1], adjacency=None, always_keep=None, backend="auto")
warm_up.wait()
after_warm_up = list(seen)
q, k, v = (torch.randn(shape, device=device, dtype=torch.bfloat16) for _ in range(3))
lists = select_blocks(q, k, drop_rate=0.75, cdf_threshold=0.9, block_size=128)
block_sparse_attention(q, k, v, lists.kv_index, lists.kv_count, check_indices=False)
torch.cuda.synchronize()
print(json.dumps(dict(finished=warm_up.finished, children=warm_up.child_compiles, after_warm_up=after_warm_up,
                      carved=seen[len(after_warm_up):])))
"""


def test_children_compile_and_this_process_only_loads(tmp_path):
    env = {**os.environ, "TRITON_CACHE_DIR": str(tmp_path / "cache")}
    env.pop("JENGA_WARM_UP", None)
    done = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["finished"] == 2
    assert report["children"] and all(ok for _, _, ok in report["children"]), report["children"]
    names = {name for name, _ in report["after_warm_up"]}
    assert any("select" in n for n in names) and any("block_sparse" in n for n in names), names
    assert all(hit for _, hit in report["after_warm_up"]), report["after_warm_up"]  # loaded, not compiled here
    assert report["carved"] == [], report["carved"]  # the carved calls find the binaries: nothing compiles
