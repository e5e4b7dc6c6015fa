"""Compile the carved path's Triton kernels in the background while the dense first steps run.

A fresh process with an empty Triton cache compiles the selector and the block-sparse kernel at the first
carved step (about 2.7 s on an H200, plus their launchers), with the GPU idle meanwhile. The dense steps
before it (``JengaConfig.dense_steps``) keep the GPU busy for seconds with the host mostly waiting, so the
first dense forward of a stage that will carve starts two threads, one running the selector and one the
kernel, once each, on small random stand-ins with the same compile-time properties (dtype, head dim, block
size, sequence length, which fixes the tile choice, the head and batch counts' specialisation classes, and
the carved call's key lengths and text-key bias where it passes them), on their own CUDA stream. The first
carved forward waits for them. Results are never used, so a stand-in that misses a property costs only the
compile the first carved step would have paid anyway.

Two threads, so that the two kernels compile in parallel (Triton runs ``ptxas`` as a separate process).
On Wan the first forward's RoPE starts them instead (:meth:`CarvingRuntime.early_warm_up`, before the patch
embedding's and condition embedder's first calls), with a third for the fused RMSNorm + RoPE
(:meth:`KernelWarmUp.start_job`), which the first attention joins instead of compiling it on the main thread:
a fresh process's first Wan 1.3B turbo run went from 1.10-1.19x to 1.10-1.13x its warm time on an H200.
``JENGA_WARM_UP=0`` turns the warm-up off.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Any

import torch

from .backends import interpreting

logger = logging.getLogger("jenga")

WARM_UP_ENV = "JENGA_WARM_UP"


def warm_up_enabled() -> bool:
    return os.environ.get(WARM_UP_ENV, "1") != "0"


def early_start_applies(device: torch.device) -> bool:
    """Whether a forward's RoPE starts the warm-up (:meth:`CarvingRuntime.early_warm_up`): on a GPU, not the
    interpreter (the CPU tests force it)."""
    return device.type == "cuda" and not interpreting()


def _stand_in_count(n: int) -> int:
    """A count Triton specialises like ``n``: 1 stays 1, a multiple of 16 stays one, anything else is 2."""
    return 1 if n == 1 else 16 if n % 16 == 0 else 2


class KernelWarmUp:
    """One per patched transformer: the shapes already warmed and the threads under way, if any."""

    def __init__(self) -> None:
        self._done: set[tuple] = set()
        self._threads: list[threading.Thread] = []
        self._jobs: dict[str, threading.Thread] = {}  # named single kernels (start_job), joined by wait_job
        self._count = threading.Lock()  # the threads count themselves in ``finished``
        self.runs = 0  # warm-ups started
        self.finished = 0  # of their threads, those that ran through (a failure is logged at debug level only)
        self.waited_s = 0.0  # what the first carved steps spent waiting for the threads

    def start(self, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device, *, drop_rate: float,
              cdf_threshold: float, block_size: int, num_video: int, adjacency: torch.Tensor | None,
              always_keep: torch.Tensor | None, backend: str, key_lengths: bool = False,
              key_bias: tuple[int, float] | None = None, force: bool = False) -> None:
        """Warm the kernels a carved forward with queries of ``shape`` ``[B, N, H, D]``, ``dtype`` and ``device``
        will launch, unless done for these. ``force``: also off CUDA (CPU tests run it through the interpreter)."""
        on_gpu = device.type == "cuda" and not interpreting()
        if not (force or on_gpu) or backend not in ("auto", "triton"):
            return
        batch, seq, heads, head_dim = shape
        key = (seq, num_video, head_dim, dtype, device, _stand_in_count(batch), _stand_in_count(heads),
               block_size, adjacency is None, always_keep is None, key_lengths, key_bias)
        if key in self._done:
            return
        self._done.add(key)
        stand_in = (_stand_in_count(batch), seq, _stand_in_count(heads), head_dim)
        main = torch.cuda.current_stream(device) if device.type == "cuda" else None
        selector = dict(drop_rate=drop_rate, cdf_threshold=cdf_threshold, block_size=block_size,
                        num_video_tokens=num_video if seq > num_video else None, adjacency=adjacency,
                        always_keep=always_keep)
        attention = dict(block_size=block_size, backend=backend, key_lengths=key_lengths, key_bias=key_bias)
        jobs = (("selector", _run_selector, selector), ("attention", _run_attention, attention))
        self.runs += 1
        for name, job, kwargs in jobs:  # two threads: the kernels compile in parallel
            run = functools.partial(_on_stand_ins, job, stand_in, dtype, device, kwargs)
            thread = threading.Thread(target=self._warm, args=(name, run, device, main),
                                      name=f"jenga-kernel-warm-up-{name}", daemon=True)
            self._threads.append(thread)
            thread.start()

    def start_job(self, name: str, key: tuple, job: Callable[[], Any], device: torch.device) -> None:
        """Run ``job`` (a stand-in call that compiles a kernel) once per ``key`` on a thread of its own, on its
        own CUDA stream; :meth:`wait_job` ``(name)`` joins it before the first real call of that kernel."""
        if key in self._done:
            return
        self._done.add(key)
        main = torch.cuda.current_stream(device) if device.type == "cuda" else None
        thread = threading.Thread(target=self._warm, args=(name, job, device, main),
                                  name=f"jenga-kernel-warm-up-{name}", daemon=True)
        self._jobs[name] = thread
        thread.start()

    def wait_job(self, name: str) -> None:
        """Block until the job ``name`` (if any is under way) is done."""
        thread = self._jobs.pop(name, None)
        if thread is not None:
            started = time.perf_counter()
            thread.join()
            self.waited_s += time.perf_counter() - started

    def wait(self) -> None:
        """Block until the warm-up under way (if any) is done: the carved forward then finds the binaries."""
        threads, self._threads = self._threads + list(self._jobs.values()), []
        self._jobs.clear()
        if threads:
            started = time.perf_counter()
            for thread in threads:
                thread.join()
            self.waited_s += time.perf_counter() - started

    def _warm(self, name: str, job: Callable[[], Any], device: torch.device, main: Any) -> None:
        try:
            stream = torch.cuda.Stream(device) if main is not None else None
            if stream is not None:
                stream.wait_stream(main)  # adjacency / always_keep come from the main stream's work
            with torch.no_grad(), torch.cuda.stream(stream) if stream is not None else contextlib.nullcontext():
                job()
            if stream is not None:
                stream.synchronize()
            with self._count:
                self.finished += 1
        except Exception as err:  # never fails the user's run: the carved step compiles as it would have
            logger.debug("jenga: kernel warm-up (%s) failed (%s); the first carved step compiles instead", name, err)


def _on_stand_ins(job: Callable[..., Any], shape: tuple[int, ...], dtype: torch.dtype, device: torch.device,
                  kwargs: dict[str, Any]) -> None:
    """``job(q, k, v, **kwargs)`` on random stand-ins of ``shape`` (made on the calling thread's stream)."""
    g = torch.Generator(device=device).manual_seed(0)
    q, k, v = (torch.randn(shape, generator=g, device=device, dtype=dtype) for _ in range(3))
    job(q, k, v, **kwargs)


def _run_selector(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, **kwargs: Any) -> None:
    from .selection import select_blocks

    select_blocks(q, k, **kwargs)


def _run_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, block_size: int, backend: str,
                   key_lengths: bool, key_bias: tuple[int, float] | None) -> None:
    from .attention import block_sparse_attention
    from .blocks import dense_to_lists

    batch, seq, heads, _ = q.shape
    blocks = -(-seq // block_size)
    g = torch.Generator(device=q.device).manual_seed(1)
    mask = torch.rand(batch, heads, blocks, blocks, generator=g, device=q.device) < 0.25
    mask[..., 0] = True  # at least one block per row
    kv_index, kv_count = dense_to_lists(mask)
    lengths = torch.full((batch,), seq, dtype=torch.int64, device=q.device) if key_lengths else None
    block_sparse_attention(q, k, v, kv_index, kv_count, block_size=block_size, key_lengths=lengths,
                           key_bias=key_bias, backend=backend, check_indices=False)
