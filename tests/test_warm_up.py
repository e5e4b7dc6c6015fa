"""The carved kernels' background warm-up during dense steps (jenga._warm_up): it runs once per stage shape,
on its own thread, before the first carved step, and changes nothing in the output."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

import pytest
import torch
from _tiny import CARVING, hunyuan_inputs, hunyuan_pipeline, run, wan_inputs, wan_pipeline

import jenga
import jenga.selection
from jenga import selection_stats
from jenga._warm_up import WARM_UP_ENV, KernelWarmUp, _ChildCompiles, compile_in_child
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


needs_fork = pytest.mark.skipif(not hasattr(os, "fork"), reason="the compile child is forked")


CHILD_COMPILE_SCRIPT = """
import os, sys
import triton
import triton.language as tl
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from jenga._warm_up import compile_in_child

@triton.jit
def copy(x, y, n, BLOCK: tl.constexpr):
    i = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    tl.store(y + i, tl.load(x + i, mask=i < n), mask=i < n)

def source(block):
    return ASTSource(copy, signature={"x": "*fp32", "y": "*fp32", "n": "i32", "BLOCK": "constexpr"},
                     constexprs={"BLOCK": block})

target = GPUTarget("cuda", 90, 32)  # an H100/H200: compiling needs no GPU
hits = []
triton.knobs.compilation.listener = lambda **kw: hits.append(kw["cache_hit"])
assert compile_in_child(lambda: triton.compile(source(64), target=target)), "the child did not compile"
assert hits == [], hits  # the child's compile is not seen here
assert os.listdir(os.environ["TRITON_CACHE_DIR"]), "the child wrote no cache"
assert "cubin" in triton.compile(source(64), target=target).asm
triton.compile(source(128), target=target)
assert hits == [True, False], hits  # the child's binary is a hit here, one it never built is not
print("ok")
"""


@needs_fork
def test_a_child_compile_fills_the_cache_this_process_then_loads(tmp_path):
    """A real Triton compile for an H100/H200 target, in a fresh process (this one runs Triton's interpreter,
    which patches the language for its own use): the child writes the on-disk cache, the same compile here is
    then a cache hit, and a compile the child never did is not."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.update(TRITON_CACHE_DIR=str(tmp_path / "cache"), TRITON_DEFAULT_FP_FUSION="1")
    script = tmp_path / "child_compile.py"  # Triton reads a kernel's source from its file
    script.write_text(CHILD_COMPILE_SCRIPT)
    done = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stderr[-2000:]


@needs_fork
def test_a_failing_or_hanging_child_is_reported_not_waited_for(tmp_path):
    marker = tmp_path / "ran"
    assert compile_in_child(lambda: marker.write_text("child"))
    assert marker.read_text() == "child"  # it ran in the child: the parent never called it

    def fails():
        raise RuntimeError("compile error")

    assert not compile_in_child(fails)
    started = time.monotonic()
    assert not compile_in_child(lambda: time.sleep(30), timeout_s=0.3)
    assert time.monotonic() - started < 10


@needs_fork
def test_child_compiles_run_the_job_here_too_and_pass_its_result_or_error(tmp_path):
    record: list = []
    executor = _ChildCompiles("attention", record)
    calls = tmp_path / "calls"
    calls.write_text("")

    def job(value):
        with calls.open("a") as f:
            f.write(f"{os.getpid()}\n")
        return value

    assert executor.submit(job, 7).result() == 7
    pids = calls.read_text().split()
    assert len(pids) == 2 and pids[1] == str(os.getpid()) and pids[0] != pids[1]  # the child first, then here
    assert [(name, ok) for name, _, ok in record] == [("attention", True)]

    def broken():
        raise ValueError("bad kernel")

    with pytest.raises(ValueError, match="bad kernel"):
        executor.submit(broken).result()
    assert record[-1][2] is False
