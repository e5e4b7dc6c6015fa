"""Autotuning on request: :func:`tune` sweeps the block-sparse kernel's tiles for chosen shapes and saves the
picks in the user's cache (:mod:`jenga.kernels.tuning` reads them first). Apart from tuning.py so that the
table lookup, which the launcher imports, imports no launcher."""

from __future__ import annotations

import functools
import math
from pathlib import Path

import torch

from ..blocks import dense_to_lists
from .triton_block_sparse import _tma_default, block_sparse_attention_triton, last_tuned_config
from .tuning import record_pick


def tune(
    lengths, head_dims=(128,), dtypes=(torch.bfloat16,), heads: int = 4, density: float = 1.0,
    block_size: int = 128, device: str | torch.device = "cuda",
) -> Path:
    """Autotune the kernel on random inputs at each (length, head dim, dtype), both load paths where tensor
    descriptors work, and save the picks in the user's cache. Returns the cache file. Takes seconds to minutes
    per shape; a generation never calls it unless ``JENGA_AUTOTUNE=1``."""
    device = torch.device(device)
    if not 0.0 < density <= 1.0:
        raise ValueError(f"density must be in (0, 1], got {density}")
    if device.type != "cuda":
        raise ValueError(f"tune needs a CUDA device, got {device}")
    gen = torch.Generator(device=device).manual_seed(0)
    for n in lengths:
        blocks = math.ceil(n / block_size)
        keep = max(1, round(density * blocks))
        scores = torch.rand(1, heads, blocks, blocks, device=device, generator=gen)
        mask = torch.zeros_like(scores, dtype=torch.bool).scatter_(-1, scores.topk(keep, -1).indices, True)
        kv_index, kv_count = dense_to_lists(mask)
        for head_dim in head_dims:
            for dtype in dtypes:
                q, k, v = (torch.randn(1, n, heads, head_dim, device=device, dtype=dtype, generator=gen)
                           for _ in range(3))
                timings = {}
                for use_tma in (False, True) if _tma_default(q, k, v) else (False,):
                    launch = functools.partial(block_sparse_attention_triton, q, k, v, kv_index, kv_count,
                                               block_size, None, n, 0.0, False, use_tma=use_tma, autotune=True)
                    launch()
                    config = last_tuned_config()
                    timings[use_tma] = (_median_ms(launch), config)
                fastest = min(timings, key=lambda t: timings[t][0])
                for use_tma, (_, config) in timings.items():
                    path = record_pick(device, head_dim, dtype, block_size, n, use_tma, config,
                                       best=use_tma == fastest)
    return path


def _median_ms(fn, runs: int = 10) -> float:
    fn()
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(runs)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(runs)]
    for start, end in zip(starts, ends, strict=True):
        start.record()
        fn()
        end.record()
    torch.cuda.synchronize()
    return sorted(a.elapsed_time(b) for a, b in zip(starts, ends, strict=True))[runs // 2]
