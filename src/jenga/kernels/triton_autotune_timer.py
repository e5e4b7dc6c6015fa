"""Autotuner timing for the block-sparse kernel (``do_bench`` of its ``triton.autotune``).

Triton's default times 100 ms of repetitions after a 5-run estimate, so a launch of 100 ms or more
(HunyuanVideo 720p) is judged on one timed run, and configs a few % apart swap places from one process
to the next. This times every config at least ``_MIN_RUNS`` times (about as many launches in all),
clearing L2 before each run as Triton does, and ranks by the median.
"""

from __future__ import annotations

import torch

_MIN_RUNS, _MAX_RUNS, _BENCH_MS = 5, 200, 100.0
_L2_FLUSH_BYTES = 256 * 2**20


def _timed_runs(estimate_ms: float, budget_ms: float = _BENCH_MS) -> int:
    """Timed runs for a launch of about ``estimate_ms``: ``budget_ms`` (100) of them, at least 5, at most 200."""
    return max(_MIN_RUNS, min(_MAX_RUNS, int(budget_ms / max(estimate_ms, 1e-6))))


def _summarize(times_ms: list[float], quantiles) -> list[float] | float:
    """What the autotuner expects back: the requested quantiles (median first), or the median."""
    times = torch.tensor(times_ms, dtype=torch.float64)
    if quantiles is None:
        return float(times.median())
    return torch.quantile(times, torch.tensor(quantiles, dtype=torch.float64)).tolist()


def tuning_bench(kernel_call, quantiles=None, budget_ms: float = _BENCH_MS):
    """Time ``kernel_call`` as the autotuner's ``do_bench``: one compile run, one estimate, then the runs
    (about ``budget_ms`` of them; ``benchmarks/tune_kernel.py`` times with it too)."""
    kernel_call()  # compiles; not timed
    torch.cuda.synchronize()
    flush = torch.empty(_L2_FLUSH_BYTES, dtype=torch.int8, device="cuda")
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    flush.zero_()
    start.record()
    kernel_call()
    end.record()
    end.synchronize()
    runs = _timed_runs(start.elapsed_time(end), budget_ms)
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(runs)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(runs)]
    for first, last in zip(starts, ends, strict=True):
        flush.zero_()
        first.record()
        kernel_call()
        last.record()
    torch.cuda.synchronize()
    return _summarize([a.elapsed_time(b) for a, b in zip(starts, ends, strict=True)], quantiles)
