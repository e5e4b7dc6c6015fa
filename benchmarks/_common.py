"""Shared pieces of the GPU benchmarks: the real video shapes, timing, and run metadata."""

from __future__ import annotations

import json
import math
import os
import subprocess
from dataclasses import dataclass

import torch

BLOCK = 128


@dataclass(frozen=True)
class Shape:
    """One attention problem of a real model: heads and the latent token grid (plus text tokens)."""

    name: str
    heads: int
    grid: tuple[int, int, int]
    text_tokens: int = 0
    valid_text: int = 0

    @property
    def video_tokens(self) -> int:
        return math.prod(self.grid)

    @property
    def tokens(self) -> int:
        return self.video_tokens + self.text_tokens


SHAPES = {
    "wan1.3b": Shape("wan1.3b", 12, (21, 30, 52)),
    "wan14b": Shape("wan14b", 40, (21, 45, 80)),
    "hunyuan": Shape("hunyuan", 24, (33, 45, 80), text_tokens=256, valid_text=200),
}


def bench(fn, budget_ms: float) -> float:
    """Median milliseconds of ``fn`` after warm-up (CUDA events through ``triton.testing.do_bench``)."""
    import triton

    fn()
    torch.cuda.synchronize()
    return triton.testing.do_bench(fn, warmup=max(25.0, budget_ms / 4), rep=budget_ms, return_mode="median")


def card_name() -> str:
    return torch.cuda.get_device_name().replace(" ", "-")


def git_commit() -> str:
    """The measured commit: ``JENGA_COMMIT`` (the GPU machine gets the tree without .git), else git."""
    if os.environ.get("JENGA_COMMIT"):
        return os.environ["JENGA_COMMIT"]
    try:
        return subprocess.check_output(["git", "rev-parse", "--short", "HEAD"], text=True,
                                       stderr=subprocess.DEVNULL).strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def append_row(record: dict, row: dict, out: str) -> None:
    """One measured row: printed as a JSON line (floats to 4 places), added to ``record["rows"]`` and the whole
    record rewritten to ``out``, so a call stopped by its time limit keeps every finished row."""
    print(json.dumps({key: round(val, 4) if isinstance(val, float) else val for key, val in row.items()}), flush=True)
    record["rows"].append(row)
    with open(out, "w") as handle:
        json.dump(record, handle, indent=1)
