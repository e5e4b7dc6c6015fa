"""Compile the carved path's Triton kernels on a background thread while the dense first steps run.

A fresh process with an empty Triton cache compiles the selector and the block-sparse kernel at the first
carved step (about 2.7 s on an H200, plus their launchers), with the GPU idle meanwhile. The dense steps
before it (``JengaConfig.dense_steps``) keep the GPU busy for seconds with the host mostly waiting, so the
first dense forward of a stage that will carve starts one thread that runs the selector and the kernel once
on small random stand-ins with the same compile-time properties (dtype, head dim, block size, sequence
length, which fixes the tile choice, and the head and batch counts' specialisation classes), on its own CUDA
stream. The first carved forward waits for it. Results are never used, so a stand-in that misses a property
costs only the compile the first carved step would have paid anyway. ``JENGA_WARM_UP=0`` turns it off.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from typing import Any

import torch

from .backends import interpreting

logger = logging.getLogger("jenga")

WARM_UP_ENV = "JENGA_WARM_UP"


def warm_up_enabled() -> bool:
    return os.environ.get(WARM_UP_ENV, "1") != "0"


def _stand_in_count(n: int) -> int:
    """A count Triton specialises like ``n``: 1 stays 1, a multiple of 16 stays one, anything else is 2."""
    return 1 if n == 1 else 16 if n % 16 == 0 else 2


class KernelWarmUp:
    """One per patched transformer: the shapes already warmed and the thread under way, if any."""

    def __init__(self) -> None:
        self._done: set[tuple] = set()
        self._thread: threading.Thread | None = None
        self.runs = 0  # warm-ups started
        self.finished = 0  # of them, those that ran through (a failure is logged at debug level only)

    def start(self, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device, *, drop_rate: float,
              cdf_threshold: float, block_size: int, num_video: int, adjacency: torch.Tensor | None,
              always_keep: torch.Tensor | None, backend: str, force: bool = False) -> None:
        """Warm the kernels a carved forward with queries of ``shape`` ``[B, N, H, D]``, ``dtype`` and ``device``
        will launch, unless done for these. ``force``: also off CUDA (CPU tests run it through the interpreter)."""
        on_gpu = device.type == "cuda" and not interpreting()
        if not (force or on_gpu) or backend not in ("auto", "triton"):
            return
        batch, seq, heads, head_dim = shape
        key = (seq, num_video, head_dim, dtype, device, _stand_in_count(batch), _stand_in_count(heads),
               block_size, adjacency is None, always_keep is None)
        if key in self._done:
            return
        self._done.add(key)
        self.wait()
        stand_in = (_stand_in_count(batch), seq, _stand_in_count(heads), head_dim)
        main = torch.cuda.current_stream(device) if device.type == "cuda" else None
        args = (self, stand_in, dtype, device, main, drop_rate, cdf_threshold, block_size,
                num_video if seq > num_video else None, adjacency, always_keep, backend)
        self._thread = threading.Thread(target=_warm, args=args, name="jenga-kernel-warm-up", daemon=True)
        self.runs += 1
        self._thread.start()

    def wait(self) -> None:
        """Block until the warm-up under way (if any) is done: the carved forward then finds the binaries."""
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join()


def _warm(owner: KernelWarmUp, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device, main: Any,
          drop_rate: float, cdf_threshold: float, block_size: int, num_video: int | None,
          adjacency: torch.Tensor | None, always_keep: torch.Tensor | None, backend: str) -> None:
    from .attention import block_sparse_attention
    from .selection import select_blocks

    try:
        stream = torch.cuda.Stream(device) if main is not None else None
        if stream is not None:
            stream.wait_stream(main)  # adjacency / always_keep come from the main stream's work
        with torch.no_grad(), torch.cuda.stream(stream) if stream is not None else contextlib.nullcontext():
            g = torch.Generator(device=device).manual_seed(0)
            q, k, v = (torch.randn(shape, generator=g, device=device, dtype=dtype) for _ in range(3))
            lists = select_blocks(q, k, drop_rate=drop_rate, cdf_threshold=cdf_threshold, block_size=block_size,
                                  num_video_tokens=num_video, adjacency=adjacency, always_keep=always_keep)
            block_sparse_attention(q, k, v, lists.kv_index, lists.kv_count, block_size=block_size, backend=backend,
                                   check_indices=False)
        if stream is not None:
            stream.synchronize()
        owner.finished += 1
    except Exception as err:  # never fails the user's run: the carved step compiles as it would have
        logger.debug("jenga: kernel warm-up failed (%s); the first carved step compiles instead", err)

