"""GPU checks of the shipped tile choice and of longest-first scheduling (skipped without CUDA)."""

from __future__ import annotations

import math

import pytest
import torch

if not torch.cuda.is_available():
    pytest.skip("needs a CUDA GPU", allow_module_level=True)

from jenga import block_sparse_attention, dense_to_lists  # noqa: E402
from jenga.kernels import tuning  # noqa: E402
from jenga.kernels.triton_block_sparse import _tma_default, block_sparse_attention_triton  # noqa: E402


def _rel(a, b):
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def _case(dtype=torch.bfloat16, head_dim=128, n=5_000, batch=2, heads=3):
    q, k, v = (torch.randn(batch, n, heads, head_dim, device="cuda", dtype=dtype) for _ in range(3))
    nb = math.ceil(n / 128)
    # counts vary across query blocks and heads, as the selector's do
    mask = torch.rand(batch, heads, nb, nb, device="cuda") < torch.rand(batch, heads, nb, 1, device="cuda")
    mask[0, 0, 2] = False  # an empty list
    kv_index, kv_count = dense_to_lists(mask)
    key_lengths = torch.tensor([n, n - 700], device="cuda", dtype=torch.int32)
    return q, k, v, kv_index, kv_count, key_lengths


@pytest.mark.parametrize("dtype, head_dim", [(torch.bfloat16, 128), (torch.float16, 64), (torch.float32, 64)])
def test_default_path_uses_the_table_and_matches_float64(dtype, head_dim, monkeypatch):
    """No autotuning in the default path; the chosen tiles (package table or default) are correct."""
    monkeypatch.delenv(tuning.AUTOTUNE_ENV, raising=False)
    q, k, v, kv_index, kv_count, key_lengths = _case(dtype, head_dim)
    choice = tuning.choose(q.device, head_dim, dtype, 128, q.shape[1], _tma_default(q, k, v), None)
    print(f"{dtype} d={head_dim}: {choice}")
    out = block_sparse_attention(q, k, v, kv_index, kv_count, key_lengths=key_lengths, key_bias=(4000, 0.4),
                                 backend="triton")
    ref = block_sparse_attention(q.double(), k.double(), v.double(), kv_index, kv_count, backend="torch",
                                 key_lengths=key_lengths, key_bias=(4000, 0.4))
    tol = {torch.float32: 1e-4, torch.float16: 3e-3, torch.bfloat16: 2e-2}[dtype]
    assert torch.isfinite(out).all() and _rel(out, ref) < tol


@pytest.mark.parametrize("config", [None, dict(BLOCK_M=64, BLOCK_N=64, num_warps=4, num_stages=3)])
def test_longest_first_equals_plain_order(config):
    """Same tiles in another order: bitwise the same output and LSE; poisoned buffers fully written."""
    q, k, v, kv_index, kv_count, key_lengths = _case()
    results = []
    for longest_first in (False, True):
        out = torch.full_like(q, float("nan"))
        lse = torch.full((2, 3, q.shape[1]), float("nan"), device="cuda")
        block_sparse_attention_triton(q, k, v, kv_index, kv_count, 128, key_lengths, 4000, 0.4, True, out=out,
                                      lse=lse, config=config, longest_first=longest_first)
        results.append((out, lse))
    (plain, plain_lse), (lpt, lpt_lse) = results
    assert not torch.isnan(lpt).any() and not torch.isnan(lpt_lse).any()
    assert torch.equal(lpt, plain) and torch.equal(lpt_lse, plain_lse)
    ref = block_sparse_attention(q.double(), k.double(), v.double(), kv_index, kv_count, backend="torch",
                                 key_lengths=key_lengths, key_bias=(4000, 0.4))
    assert _rel(lpt, ref) < 2e-2


def test_one_binary_for_every_video_size():
    """Sizes are not specialised on: two progressive-stage lengths (18,018 and 32,760 tokens: 141 and 256
    blocks) reuse the attention and selector binaries compiled for the first (a fresh process compiled each
    twice, 2.1-2.4 s per attention compile on an H200), and both are still right."""
    from jenga import select_blocks
    from jenga.kernels.gluon_block_sparse import _gluon_block_sparse_fwd
    from jenga.kernels.triton_block_sparse import _block_sparse_fwd
    from jenga.kernels.triton_select import _select_rows

    def variants(*kernels):
        return sum(len(cache[0]) for kernel in kernels for cache in kernel.device_caches.values())

    counts = []
    for n in (18_018, 32_760):
        q, k, v = (torch.randn(1, n, 2, 128, device="cuda", dtype=torch.bfloat16) for _ in range(3))
        lists = select_blocks(q, k, drop_rate=0.75, cdf_threshold=0.9, block_size=128, backend="triton")
        out = block_sparse_attention(q, k, v, lists.kv_index, lists.kv_count, backend="triton")
        ref = block_sparse_attention(q.double(), k.double(), v.double(), lists.kv_index, lists.kv_count,
                                     backend="torch")
        assert _rel(out, ref) < 2e-2
        counts.append((variants(_block_sparse_fwd, _gluon_block_sparse_fwd), variants(_select_rows)))
    assert counts[0][0] > 0 and counts[0][1] > 0, counts  # the kernels that ran are the ones counted
    assert counts[1] == counts[0], counts
