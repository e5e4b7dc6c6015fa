"""backend='fa4' (FlashAttention-4's block-sparse forward, opt-in): where it cannot run, the error lists every
unmet need; the config accepts it; 'auto' never picks it."""

from __future__ import annotations

import pytest
import torch

import jenga
from jenga.attention import BACKENDS
from jenga.backends import BackendUnsupported
from jenga.kernels import fa4


def _inputs(dim=128, dtype=torch.float32):
    q, k, v = (torch.randn(1, 256, 2, dim, dtype=dtype) for _ in range(3))
    index, count = jenga.dense_to_lists(torch.ones(1, 1, 2, 2, dtype=torch.bool))
    return q, k, v, index, count


def test_fa4_is_a_listed_backend_and_a_valid_config():
    assert "fa4" in BACKENDS
    assert jenga.JengaConfig(backend="fa4").backend == "fa4"


def test_fa4_off_a_gpu_names_every_unmet_need():
    q, k, v, index, count = _inputs(dim=32)
    with pytest.raises(BackendUnsupported) as err:
        jenga.block_sparse_attention(q, k, v, index, count, backend="fa4")
    message = str(err.value)
    for need in ("CUDA tensors", "head dims (64, 96, 128)", "float16 or bfloat16", "backend='triton'"):
        assert need in message
    assert ("flash-attn-4" in message) == (not fa4.fa4_importable())


def test_fa4_refuses_inputs_it_does_not_take():
    q, k, v, index, count = _inputs()
    with pytest.raises(ValueError, match="block_size 128 .*no key_lengths.*no key_bias"):
        fa4.block_sparse_attention_fa4(q, k, v, index, count, 64, torch.tensor([200]), 10, 0.5, False)


def test_auto_never_picks_fa4():
    q, k, v, index, count = _inputs()
    out = jenga.block_sparse_attention(q, k, v, index, count, backend="auto")
    ref = jenga.block_sparse_attention(q, k, v, index, count, backend="torch")
    torch.testing.assert_close(out, ref)
