"""Which kernel the Triton backend's launcher runs (checked on the CPU with the Gluon kernel stubbed: the real
one needs a Hopper GPU, tests/gpu/test_gluon_gpu.py): Hopper's Gluon kernel by default, the portable kernel
whenever the caller asks for something only it has (tiles, TMA or not, autotuning, longest-first order), and the
portable kernel again, with one warning, where the installed Triton cannot compile the Gluon one."""

from __future__ import annotations

import logging

import pytest
import torch
from test_attention import needs_triton, random_case

from jenga import dense_to_lists
from jenga.kernels import gluon_block_sparse, triton_block_sparse


class CompilationError(Exception):
    """Named as Triton's compile error (the launcher tells compile failures by name)."""


@pytest.fixture
def case():
    gen = torch.Generator().manual_seed(3)
    q, k, v, mask = random_case(1, 96, 96, 2, 16, torch.float32, 32, 0.5, gen)
    mask[..., 0] = True
    return q, k, v, *dense_to_lists(mask)


@pytest.fixture
def stub(monkeypatch):
    """The Gluon kernel replaced by a recorder; ``stub.error`` makes it raise instead."""
    class Stub:
        calls = 0
        error: Exception | None = None

        def __call__(self, q, *args, **kwargs):
            self.calls += 1
            if self.error is not None:
                raise self.error
            return torch.full_like(q, 7.0), torch.empty(0)

    recorder = Stub()
    monkeypatch.setattr(triton_block_sparse, "_gluon_wanted", lambda *a: True)
    monkeypatch.setattr(gluon_block_sparse, "launch_prechecked", recorder)
    monkeypatch.setattr(triton_block_sparse, "_gluon_broken", set())
    return recorder


@needs_triton
def test_default_call_runs_the_gluon_kernel(case, stub):
    q, k, v, kv_index, kv_count = case
    out, _ = triton_block_sparse.block_sparse_attention_triton(q, k, v, kv_index, kv_count, 32, None, 96, 0.0,
                                                               False)
    assert stub.calls == 1 and torch.all(out == 7.0)


@needs_triton
@pytest.mark.parametrize("asked", [dict(autotune=True), dict(use_tma=False), dict(longest_first=True),
                                   dict(config=dict(BLOCK_M=32, BLOCK_N=32, num_warps=4, num_stages=1))])
def test_asking_for_the_portable_kernels_own_options_runs_it(case, stub, asked):
    q, k, v, kv_index, kv_count = case
    out, _ = triton_block_sparse.block_sparse_attention_triton(q, k, v, kv_index, kv_count, 32, None, 96, 0.0,
                                                               False, **asked)
    assert stub.calls == 0 and not torch.all(out == 7.0) and torch.isfinite(out).all()


@needs_triton
def test_a_gluon_compile_failure_falls_back_once_with_a_warning(case, stub, caplog):
    q, k, v, kv_index, kv_count = case
    stub.error = CompilationError("PassManager::run failed")
    portable, _ = triton_block_sparse.block_sparse_attention_triton(q, k, v, kv_index, kv_count, 32, None, 96,
                                                                    0.0, False, use_tma=False)
    with caplog.at_level(logging.WARNING, logger="jenga"):
        for _ in range(2):
            out, _ = triton_block_sparse.block_sparse_attention_triton(q, k, v, kv_index, kv_count, 32, None, 96,
                                                                       0.0, False)
            assert torch.equal(out, portable)
    warnings = [r for r in caplog.records if "failed to compile" in r.getMessage()]
    assert len(warnings) == 1 and "JENGA_GLUON=0" in warnings[0].getMessage()
    assert (q.dtype, q.shape[-1], q.device) in triton_block_sparse._gluon_broken


@needs_triton
def test_other_gluon_errors_are_not_swallowed(case, stub):
    q, k, v, kv_index, kv_count = case
    stub.error = RuntimeError("CUDA error: an illegal memory access was encountered")
    with pytest.raises(RuntimeError, match="illegal memory access"):
        triton_block_sparse.block_sparse_attention_triton(q, k, v, kv_index, kv_count, 32, None, 96, 0.0, False)


def test_gluon_is_never_wanted_off_cuda_or_when_switched_off(monkeypatch):
    q = torch.zeros(1, 128, 1, 64)
    monkeypatch.delenv("JENGA_GLUON", raising=False)
    assert not triton_block_sparse._gluon_wanted(q, q, q, 128, 0.0)  # a CPU tensor
    monkeypatch.setenv("JENGA_GLUON", "0")
    assert not triton_block_sparse._gluon_wanted(q, q, q, 128, 0.0)


@needs_triton
def test_key_bias_reaches_the_gluon_kernel(case, stub, monkeypatch):
    """The text amplifier's key bias goes to the Gluon kernel (it takes key bias now) as ``(start, value)``."""
    seen = {}

    def recorder(q, *args, key_bias=None, **kwargs):
        seen["key_bias"] = key_bias
        return torch.full_like(q, 7.0), torch.empty(0)

    monkeypatch.setattr(gluon_block_sparse, "launch_prechecked", recorder)
    q, k, v, kv_index, kv_count = case
    out, _ = triton_block_sparse.block_sparse_attention_triton(q, k, v, kv_index, kv_count, 32, None, 64, 1.5,
                                                               False)
    assert seen["key_bias"] == (64, 1.5) and torch.all(out == 7.0)

