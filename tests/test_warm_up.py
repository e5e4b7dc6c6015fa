"""The carved kernels' background warm-up during dense steps (jenga._warm_up): it runs once per stage shape,
on its own thread, before the first carved step, and changes nothing in the output."""

from __future__ import annotations

import threading

import pytest
import torch
from _tiny import CARVING, hunyuan_inputs, hunyuan_pipeline, run, wan_inputs, wan_pipeline

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


@pytest.mark.parametrize("family", ["wan", "hunyuan"])
def test_warm_up_runs_once_before_carving_and_changes_nothing(monkeypatch, family):
    """HunyuanVideo's carved calls join text tokens and pass key lengths (its prompts are padded): the
    attention stand-in does too, so it compiles the variant the carved steps launch."""
    forced = KernelWarmUp.start
    starts = []

    def start(self, *args, **kwargs):  # as on a GPU: the CPU runs Triton through its interpreter
        starts.append((args[0], kwargs["key_lengths"]))
        return forced(self, *args, **{**kwargs, "force": True, "backend": "triton"})

    monkeypatch.setattr(KernelWarmUp, "start", start)
    threads = []
    select = jenga.selection.select_blocks

    def recording_select(*args, **kwargs):
        threads.append(threading.current_thread().name)
        lengths.append(args[0].shape[1])
        return select(*args, **kwargs)

    lengths = []
    monkeypatch.setattr(jenga.selection, "select_blocks", recording_select)
    if family == "wan":
        pipe = wan_pipeline("t2v")
        inputs = wan_inputs(pipe, steps=2)
    else:
        pipe = hunyuan_pipeline("t2v")
        inputs = hunyuan_inputs(pipe, batch=1, steps=2, cfg=False)
    jenga.patch(pipe, **CONFIG)
    warmed = run(pipe, inputs)
    warm_up = _runtime(pipe).kernel_warm_up
    assert warm_up.finished == 2  # both threads (selector, attention) joined by the first carved step, ran through
    assert warm_up.runs == 1  # one stage, one shape: the dense step 0 started it once
    assert threads.count("jenga-kernel-warm-up-selector") == 1
    assert {s.step for s in selection_stats(pipe)} == {1}  # carving unchanged: step 1
    (shape, key_lengths), = set(starts)
    assert set(lengths) == {shape[1]}  # the stand-in's length is the carved calls' (HunyuanVideo: video + text)
    assert key_lengths == (family == "hunyuan")
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



def test_query_like_reads_what_the_projections_allow():
    """The warm-up's stand-in shape comes from the attention module; a module it cannot read skips the warm-up
    (never fails the dense step), and integer (quantised) weights give the activations' dtype."""
    from types import SimpleNamespace

    from jenga.adapters.base import query_like

    hidden = torch.randn(2, 40, 96, dtype=torch.bfloat16)
    plain = SimpleNamespace(heads=4, inner_dim=128, to_q=torch.nn.Linear(96, 128, dtype=torch.float16))
    assert query_like(plain, hidden) == ((2, 40, 4, 32), torch.float16, hidden.device)
    quantised = SimpleNamespace(heads=4, inner_dim=128,
                                to_q=SimpleNamespace(weight=torch.zeros(64, 1, dtype=torch.uint8)))  # packed 4-bit
    assert query_like(quantised, hidden) == ((2, 40, 4, 32), torch.bfloat16, hidden.device)
    fused = SimpleNamespace(heads=4, inner_dim=128)  # fused QKV projection: no to_q
    assert query_like(fused, hidden) == ((2, 40, 4, 32), torch.bfloat16, hidden.device)
    assert query_like(SimpleNamespace(heads=4), hidden) is None
