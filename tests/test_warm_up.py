"""The carved kernels' background warm-up during dense steps (jenga._warm_up): it runs once per stage shape,
on its own thread, before the first carved step, and changes nothing in the output."""

from __future__ import annotations

import threading

import pytest
import torch
from _tiny import CARVING, run, wan_inputs, wan_pipeline

import jenga
import jenga.selection
from jenga import selection_stats
from jenga._warm_up import WARM_UP_ENV, KernelWarmUp
from jenga.attention import triton_available

pytestmark = pytest.mark.skipif(not triton_available(), reason="needs Triton (a GPU or TRITON_INTERPRET=1)")
CONFIG = {**CARVING, "dense_steps": 0.5}  # the torch backend carves; the warm-up runs the Triton kernels


def _runtime(pipe):
    return next(m for m in pipe.transformer.modules() if hasattr(m, "processor")
                and hasattr(m.processor, "runtime")).processor.runtime


def test_warm_up_runs_once_before_carving_and_changes_nothing(monkeypatch):
    forced = KernelWarmUp.start
    monkeypatch.setattr(KernelWarmUp, "start",  # as on a GPU: the CPU runs Triton through its interpreter
                        lambda self, *a, **kw: forced(self, *a, **{**kw, "force": True, "backend": "triton"}))
    threads = []
    select = jenga.selection.select_blocks

    def recording_select(*args, **kwargs):
        threads.append(threading.current_thread().name)
        return select(*args, **kwargs)

    monkeypatch.setattr(jenga.selection, "select_blocks", recording_select)
    pipe = wan_pipeline("t2v")
    inputs = wan_inputs(pipe, steps=2)
    jenga.patch(pipe, **CONFIG)
    warmed = run(pipe, inputs)
    warm_up = _runtime(pipe).kernel_warm_up
    assert warm_up.finished == 1  # joined by the first carved step, and it ran through
    assert warm_up.runs == 1  # one stage, one shape: the dense step 0 started it once
    assert threads.count("jenga-kernel-warm-up") == 1
    assert {s.step for s in selection_stats(pipe)} == {1}  # carving unchanged: step 1
    jenga.unpatch(pipe)

    monkeypatch.setenv(WARM_UP_ENV, "0")
    jenga.patch(pipe, **CONFIG)
    plain = run(pipe, inputs)
    assert _runtime(pipe).kernel_warm_up.runs == 0
    assert torch.equal(warmed, plain)


def test_no_warm_up_off_gpu_or_for_other_backends():
    warm_up = KernelWarmUp()
    common = dict(drop_rate=0.7, cdf_threshold=0.3, block_size=16, num_video=192, adjacency=None, always_keep=None)
    warm_up.start((1, 192, 2, 16), torch.float32, torch.device("cpu"), backend="triton", **common)
    warm_up.start((1, 192, 2, 16), torch.float32, torch.device("cpu"), backend="torch", force=True, **common)
    assert warm_up.runs == 0
