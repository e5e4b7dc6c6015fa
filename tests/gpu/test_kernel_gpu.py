"""GPU checks of the Triton kernel at the real video shapes (skipped without CUDA).

Run on a GPU machine: ``python -m pytest tests/gpu -q``.
"""

from __future__ import annotations

import math

import pytest
import torch

if not torch.cuda.is_available():
    pytest.skip("needs a CUDA GPU", allow_module_level=True)

from jenga import block_sparse_attention, dense_to_lists  # noqa: E402


def _sdpa(q, k, v):
    out = torch.nn.functional.scaled_dot_product_attention(*(t.transpose(1, 2) for t in (q, k, v)))
    return out.transpose(1, 2)


def _rel(a, b):
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def _full_lists(seq_q, seq_k, block=128):
    return dense_to_lists(torch.ones(1, 1, math.ceil(seq_q / block), math.ceil(seq_k / block), dtype=torch.bool,
                                     device="cuda"))


@pytest.mark.parametrize("name, heads, video, text, valid_text", [
    ("wan1.3b-480p", 12, 32_760, 0, 0),
    ("hunyuan-720p", 24, 118_800, 256, 200),
])
def test_all_blocks_equal_sdpa_at_real_shapes(name, heads, video, text, valid_text):
    """Drop rate 0 (every block listed) equals dense SDPA; padded text keys are masked by length."""
    torch.manual_seed(torch.seed() % 2**31)
    n = video + text
    q, k, v = (torch.randn(1, n, heads, 128, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    kv_index, kv_count = _full_lists(n, n)
    key_lengths = None
    limit = n
    if text:
        limit = video + valid_text
        key_lengths = torch.tensor([limit], device="cuda")
    out = block_sparse_attention(q, k, v, kv_index, kv_count, key_lengths=key_lengths, backend="triton")
    ref = _sdpa(q, k[:, :limit], v[:, :limit])  # masking keys past the limit == dropping them
    assert torch.isfinite(out).all()
    err = _rel(out, ref)
    print(f"{name}: relative L2 error vs SDPA {err:.2e}")
    assert err < 1e-2


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("head_dim", [64, 128])
def test_sparse_matches_float64(dtype, head_dim):
    """Random sparse lists, partial last block, two batch entries with different key lengths, key bias."""
    torch.manual_seed(torch.seed() % 2**31)
    batch, heads, n, block = 2, 4, 5_000, 128
    q, k, v = (torch.randn(batch, n, heads, head_dim, device="cuda", dtype=dtype) for _ in range(3))
    nb = math.ceil(n / block)
    mask = torch.rand(batch, heads, nb, nb, device="cuda") < 0.3
    mask[..., -1] = True
    kv_index, kv_count = dense_to_lists(mask)
    key_lengths = torch.tensor([n, n - 700], device="cuda")
    args = dict(key_lengths=key_lengths, key_bias=(n - 1000, 0.4))
    out = block_sparse_attention(q, k, v, kv_index, kv_count, backend="triton", **args)
    ref = block_sparse_attention(q.double(), k.double(), v.double(), kv_index, kv_count, backend="torch", **args)
    tol = {torch.float32: 1e-4, torch.float16: 3e-3, torch.bfloat16: 2e-2}[dtype]
    assert torch.isfinite(out).all()
    assert _rel(out, ref) < tol


# float32 at head dim 64: exact float32 dots unroll into FMA code, and the three phase variants at head dim
# 128 took minutes to compile on an H200 (the one-launch float32 path is covered at 128 above).
@pytest.mark.parametrize("dtype, head_dim", [(torch.bfloat16, 128), (torch.float32, 64)])
def test_key_phases_on_the_gpu_match_one_launch_and_float64(dtype, head_dim):
    """Key phases (opt-in) on the compiled kernel, with key lengths, a key bias and LSE, against one launch
    and the float64 reference."""
    from jenga.kernels.triton_key_phases import block_sparse_attention_key_phases as block_sparse_attention_triton
    from jenga.kernels.triton_key_phases import key_phases_for

    torch.manual_seed(torch.seed() % 2**31)
    batch, heads, n, block = 2, 3, 6_000, 128
    q, k, v = (torch.randn(batch, n, heads, head_dim, device="cuda", dtype=dtype) for _ in range(3))
    nb = math.ceil(n / block)
    mask = torch.rand(batch, heads, nb, nb, device="cuda") < 0.3
    mask[0, 0, 3] = False  # an empty list
    kv_index, kv_count = dense_to_lists(mask)
    key_lengths = torch.tensor([n, n - 700], device="cuda", dtype=torch.int32)
    bias = (n - 1000, 0.4)
    one, one_lse = block_sparse_attention_triton(q, k, v, kv_index, kv_count, block, key_lengths, *bias, True,
                                                 key_phases=1)
    split, split_lse = block_sparse_attention_triton(q, k, v, kv_index, kv_count, block, key_lengths, *bias, True,
                                                     key_phases=3)
    ref = block_sparse_attention(q.double(), k.double(), v.double(), kv_index, kv_count, backend="torch",
                                 key_lengths=key_lengths, key_bias=bias)
    tol = {torch.float32: 1e-4, torch.bfloat16: 2e-2}[dtype]
    assert torch.isfinite(split).all()
    assert _rel(split, ref) < tol and _rel(split, one) < tol
    assert torch.equal(split[0, 384:512, 0], torch.zeros_like(split[0, 384:512, 0]))
    finite = torch.isfinite(one_lse)
    assert torch.equal(torch.isfinite(split_lse), finite)
    assert torch.allclose(split_lse[finite], one_lse[finite], atol=1e-3)
    # the sizing rule: one range at this length, three at HunyuanVideo 720p's (61 MB of keys + values per head)
    assert key_phases_for(k) == 1
    assert key_phases_for(torch.empty(1, 119_056, 24, 128, device="cuda", dtype=torch.bfloat16)) == 3


@pytest.mark.parametrize("config", [
    dict(BLOCK_M=128, BLOCK_N=128, num_warps=8, num_stages=2, Q_TMA=True),
    dict(BLOCK_M=128, BLOCK_N=64, num_warps=8, num_stages=3, Q_TMA=True),
    dict(BLOCK_M=128, BLOCK_N=64, num_warps=4, num_stages=3, Q_TMA=False),
])
def test_every_tile_config_matches_float64(config):
    """Each config the autotuner may pick, queries through a tensor descriptor or registers, on a partial last
    query tile, key lengths and a key bias."""
    from jenga.kernels.triton_block_sparse import block_sparse_attention_triton

    torch.manual_seed(torch.seed() % 2**31)
    batch, heads, n, block = 2, 3, 5_000, 128
    q, k, v = (torch.randn(batch, n, heads, 128, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    nb = math.ceil(n / block)
    mask = torch.rand(batch, heads, nb, nb, device="cuda") < 0.3
    kv_index, kv_count = dense_to_lists(mask)
    key_lengths = torch.tensor([n, n - 700], device="cuda", dtype=torch.int32)
    out = torch.full_like(q, float("nan"))
    block_sparse_attention_triton(q, k, v, kv_index, kv_count, block, key_lengths, n - 1000, 0.4, False, out=out,
                                  config=config, use_tma=True)
    ref = block_sparse_attention(q.double(), k.double(), v.double(), kv_index, kv_count, backend="torch",
                                 key_lengths=key_lengths, key_bias=(n - 1000, 0.4))
    assert torch.isfinite(out).all()
    assert _rel(out, ref) < 2e-2


def test_sparse_matches_flex():
    torch.manual_seed(torch.seed() % 2**31)
    batch, heads, n, block = 1, 4, 9_000, 128
    q, k, v = (torch.randn(batch, n, heads, 128, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    nb = math.ceil(n / block)
    kv_index, kv_count = dense_to_lists(torch.rand(batch, heads, nb, nb, device="cuda") < 0.25)
    out = block_sparse_attention(q, k, v, kv_index, kv_count, backend="triton")
    flex = block_sparse_attention(q, k, v, kv_index, kv_count, backend="flex")
    assert _rel(out, flex) < 1e-2


def test_custom_op_under_compile_fullgraph():
    q, k, v = (torch.randn(1, 1000, 2, 64, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    kv_index, kv_count = _full_lists(1000, 1000)

    def attend(q, k, v):
        return block_sparse_attention(q, k, v, kv_index, kv_count, backend="triton", check_indices=False) + 1

    compiled = torch.compile(attend, fullgraph=True)
    assert _rel(compiled(q, k, v), attend(q, k, v)) < 1e-3
