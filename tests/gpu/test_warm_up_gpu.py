"""GPU check of the background warm-up (``jenga._warm_up``), skipped without CUDA.

A fresh process with an empty Triton cache: the warm-up compiles the selector and the attention kernel, and
the carved calls that follow compile nothing, for Wan's self-attention and for HunyuanVideo's joint attention
(video then text tokens, padded prompts as key lengths). A stand-in that missed a compile-time property would
leave the carved call a compile. Run on a GPU machine: ``python -m pytest tests/gpu/test_warm_up_gpu.py -q``.
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
import json, sys, torch, triton
from jenga import block_sparse_attention, select_blocks
from jenga._warm_up import KernelWarmUp

seen = []  # every compile this process runs: (kernel, cache hit)
triton.knobs.compilation.listener = lambda **kw: seen.append((kw["src"].name, kw["cache_hit"]))
video, text, heads = (18_018, 0, 12) if sys.argv[1] == "wan" else (28_800, 256, 24)
seq, device = video + text, torch.device("cuda")
warm_up = KernelWarmUp()
warm_up.start((1, seq, heads, 128), torch.bfloat16, device, drop_rate=0.75, cdf_threshold=0.9, block_size=128,
              num_video=video, adjacency=None, always_keep=None, backend="auto", key_lengths=text > 0)
warm_up.wait()
after_warm_up = list(seen)
q, k, v = (torch.randn(1, seq, heads, 128, device=device, dtype=torch.bfloat16) for _ in range(3))
lists = select_blocks(q, k, drop_rate=0.75, cdf_threshold=0.9, block_size=128,
                      num_video_tokens=video if text else None)
lengths = torch.tensor([video + 200], device=device) if text else None  # 200 of 256 text tokens are real
block_sparse_attention(q, k, v, lists.kv_index, lists.kv_count, key_lengths=lengths, check_indices=False)
torch.cuda.synchronize()
print(json.dumps(dict(finished=warm_up.finished, after_warm_up=after_warm_up, carved=seen[len(after_warm_up):])))
"""


@pytest.mark.parametrize("family", ["wan", "hunyuan"])
def test_carved_calls_after_the_warm_up_compile_nothing(tmp_path, family):
    env = {**os.environ, "TRITON_CACHE_DIR": str(tmp_path / "cache")}
    env.pop("JENGA_WARM_UP", None)
    done = subprocess.run([sys.executable, "-c", SCRIPT, family], env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["finished"] == 2
    names = {name for name, _ in report["after_warm_up"]}
    assert any("select" in n for n in names) and any("block_sparse" in n for n in names), names
    assert report["carved"] == [], report["carved"]  # the carved calls find the warm-up's binaries
