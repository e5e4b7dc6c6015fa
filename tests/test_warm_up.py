"""The carved kernels' background warm-up during dense steps (jenga._warm_up): it runs once per stage shape,
on its own thread, before the first carved step, and changes nothing in the output."""

from __future__ import annotations

import threading
from types import SimpleNamespace

import pytest
import torch
from _tiny import CARVING, hunyuan_inputs, hunyuan_pipeline, run, wan_inputs, wan_pipeline

import jenga
from jenga import attention as attention_module
from jenga import selection as selection_module
from jenga import selection_stats
from jenga._warm_up import WARM_UP_ENV, KernelWarmUp
from jenga.adapters import base as carving
from jenga.attention import triton_available

pytestmark = pytest.mark.skipif(not triton_available(), reason="needs Triton (a GPU or TRITON_INTERPRET=1)")
CONFIG = {**CARVING, "dense_steps": 0.5}  # the torch backend carves; the warm-up runs the Triton kernels


def _runtime(pipe):
    return next(m for m in pipe.transformer.modules() if hasattr(m, "processor")
                and hasattr(m.processor, "runtime")).processor.runtime


def _recording(calls: list, kind: str, fn):
    """``fn`` recording, per call, this kind (warm-up or carved), the query length and the key-length and
    key-bias presence it was given."""
    def wrapper(q, *args, **kwargs):
        calls.append((kind, q.shape[1], kwargs.get("key_lengths") is not None, kwargs.get("key_bias") is not None))
        return fn(q, *args, **kwargs)
    return wrapper


@pytest.mark.parametrize("family", ["wan", "hunyuan"])
def test_warm_up_runs_once_before_carving_and_changes_nothing(monkeypatch, family):
    """The stand-ins get what the carved calls get: HunyuanVideo's join text tokens and pass key lengths (its
    prompts are padded). The warm-up's calls and the carved forward's are told apart by where they look the
    functions up (the warm-up imports them from their modules, the carving path has its own binding)."""
    forced = KernelWarmUp.start
    monkeypatch.setattr(KernelWarmUp, "start",  # as on a GPU: the CPU runs Triton through its interpreter
                        lambda self, *a, **kw: forced(self, *a, **{**kw, "force": True, "backend": "triton"}))
    selects, attends = [], []
    for module, kind in ((selection_module, "warm-up"), (carving, "carved")):
        monkeypatch.setattr(module, "select_blocks", _recording(selects, kind, module.select_blocks))
    for module, kind in ((attention_module, "warm-up"), (carving, "carved")):
        monkeypatch.setattr(module, "block_sparse_attention", _recording(attends, kind, module.block_sparse_attention))
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
    assert {s.step for s in selection_stats(pipe)} == {1}  # carving unchanged: step 1
    for calls in (selects, attends):
        warm = {c[1:] for c in calls if c[0] == "warm-up"}
        carved = {c[1:] for c in calls if c[0] == "carved"}
        assert len(warm) == 1 and carved == warm, (warm, carved)  # same length, key lengths and key bias
    assert next(iter({c[2] for c in attends})) == (family == "hunyuan")  # HunyuanVideo: padded prompts
    jenga.unpatch(pipe)

    monkeypatch.setenv(WARM_UP_ENV, "0")
    jenga.patch(pipe, **CONFIG)
    plain = run(pipe, inputs)
    assert _runtime(pipe).kernel_warm_up.runs == 0
    assert torch.equal(warmed, plain)


def test_early_warm_up_starts_at_the_rope_before_the_first_attention(monkeypatch):
    """Wan, as on a GPU: the first forward's RoPE starts the selector and attention stand-ins (the same call the
    first dense attention would make, which then finds them done) and the fused RMSNorm + RoPE, which the first
    attention waits for instead of compiling it itself; the output is unchanged."""
    from jenga import _warm_up
    from jenga.adapters import wan as wan_adapter

    forced = KernelWarmUp.start
    monkeypatch.setattr(KernelWarmUp, "start",
                        lambda self, *a, **kw: forced(self, *a, **{**kw, "force": True, "backend": "triton"}))
    monkeypatch.setattr(_warm_up, "early_start_applies", lambda device: True)
    monkeypatch.setenv("JENGA_FUSED_QK_PREP", "1")  # the fused prep in the interpreter, as on a GPU

    class InlineThread(threading.Thread):  # Triton's interpreter is not thread-safe: each job runs at its start
        def start(self) -> None:
            self.run()

        def join(self, timeout: float | None = None) -> None:
            pass

    monkeypatch.setattr(_warm_up, "threading", SimpleNamespace(Thread=InlineThread, Lock=threading.Lock))
    events = []
    started, job = KernelWarmUp.start, KernelWarmUp.start_job
    monkeypatch.setattr(KernelWarmUp, "start", lambda self, *a, **kw: (events.append("start"), started(self, *a, **kw)))
    monkeypatch.setattr(KernelWarmUp, "start_job", lambda self, name, *a: (events.append(name), job(self, name, *a)))
    waits = KernelWarmUp.wait_job
    monkeypatch.setattr(KernelWarmUp, "wait_job", lambda self, name: (
        events.append(f"wait {name}") if name in self._jobs else None, waits(self, name)))
    call = wan_adapter.WanCarvingProcessor.__call__
    monkeypatch.setattr(wan_adapter.WanCarvingProcessor, "__call__",
                        lambda self, *a, **kw: (events.append("attention"), call(self, *a, **kw))[1])
    pipe = wan_pipeline("t2v")
    inputs = wan_inputs(pipe, steps=2)
    jenga.patch(pipe, **CONFIG)
    warmed = run(pipe, inputs)
    warm_up = _runtime(pipe).kernel_warm_up
    assert events[:4] == ["start", "qk-prep", "attention", "wait qk-prep"], events[:6]  # the wait opens the call
    assert events.count("start") >= 2 and warm_up.runs == 1  # the dense forwards' own starts found the key done
    assert warm_up.finished == 3  # selector, attention, fused prep
    jenga.unpatch(pipe)
    monkeypatch.setenv(WARM_UP_ENV, "0")
    jenga.patch(pipe, **CONFIG)
    plain = run(pipe, inputs)
    assert _runtime(pipe).kernel_warm_up.runs == 0 and torch.equal(warmed, plain)


def test_no_warm_up_off_gpu_or_for_other_backends():
    warm_up = KernelWarmUp()
    common = dict(drop_rate=0.7, cdf_threshold=0.3, block_size=16, num_video=192, adjacency=None, always_keep=None)
    warm_up.start((1, 192, 2, 16), torch.float32, torch.device("cpu"), backend="triton", **common)
    warm_up.start((1, 192, 2, 16), torch.float32, torch.device("cpu"), backend="torch", force=True, **common)
    assert warm_up.runs == 0



def test_query_like_reads_what_the_projections_allow():
    """The warm-up's stand-in shape comes from the attention module; a module it cannot read skips the warm-up
    (never fails the dense step), and integer (quantised) weights give the activations' dtype."""
    from jenga.adapters.base import query_like

    hidden = torch.randn(2, 40, 96, dtype=torch.bfloat16)
    plain = SimpleNamespace(heads=4, inner_dim=128, to_q=torch.nn.Linear(96, 128, dtype=torch.float16))
    assert query_like(plain, hidden) == ((2, 40, 4, 32), torch.float16, hidden.device)
    quantised = SimpleNamespace(heads=4, inner_dim=128,
                                to_q=SimpleNamespace(weight=torch.zeros(64, 1, dtype=torch.uint8)))  # packed 4-bit
    assert query_like(quantised, hidden) == ((2, 40, 4, 32), torch.bfloat16, hidden.device)
    float8 = SimpleNamespace(heads=4, inner_dim=128,  # diffusers' layerwise casting stores weights so
                             to_q=SimpleNamespace(weight=torch.zeros(128, 96, dtype=torch.float8_e4m3fn)))
    assert query_like(float8, hidden) == ((2, 40, 4, 32), torch.bfloat16, hidden.device)
    fused = SimpleNamespace(heads=4, inner_dim=128)  # fused QKV projection: no to_q
    assert query_like(fused, hidden) == ((2, 40, 4, 32), torch.bfloat16, hidden.device)
    assert query_like(SimpleNamespace(heads=4), hidden) is None
