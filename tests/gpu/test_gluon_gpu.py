"""GPU checks of Hopper's default Gluon kernel (skipped elsewhere): float64 reference, poisoned
outputs, partial blocks, key lengths, Nq != Nk, per-batch and per-head lists, LSE."""

from __future__ import annotations

import math

import pytest
import torch

if not torch.cuda.is_available():
    pytest.skip("needs a CUDA GPU", allow_module_level=True)

from jenga import block_sparse_attention, dense_to_lists  # noqa: E402
from jenga.kernels.gluon_block_sparse import SCHEDULES, block_sparse_attention_gluon, gluon_applies  # noqa: E402

_probe = torch.empty(1, 128, 1, 128, device="cuda", dtype=torch.bfloat16)
_reason = gluon_applies(_probe, _probe, _probe, 128, 0.0)
pytestmark = pytest.mark.skipif(_reason is not None, reason=f"Gluon kernel does not apply here: {_reason}")


def _rel(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("head_dim", [64, 128])
@pytest.mark.parametrize("seq_q, seq_k, with_lengths", [(1_000, 1_000, False), (1_000, 1_300, True),
                                                        (4_096, 4_096, True)])
def test_gluon_matches_float64(dtype, head_dim, seq_q, seq_k, with_lengths, schedule):
    torch.manual_seed(torch.seed() % 2**31)
    batch, heads = 2, 3
    q = torch.randn(batch, seq_q, heads, head_dim, device="cuda", dtype=dtype)
    k, v = (torch.randn(batch, seq_k, heads, head_dim, device="cuda", dtype=dtype) for _ in range(2))
    qb, kb = math.ceil(seq_q / 128), math.ceil(seq_k / 128)
    mask = torch.rand(batch, heads, qb, kb, device="cuda") < 0.4
    mask[..., -1] = True  # the partial last key block is listed everywhere
    mask[0, 1, 0] = False  # an empty list
    kv_index, kv_count = dense_to_lists(mask)
    key_lengths = torch.tensor([seq_k, seq_k - 333], device="cuda", dtype=torch.int32) if with_lengths else None
    out = torch.full_like(q, float("nan"))
    lse = torch.full((batch, heads, seq_q), float("nan"), device="cuda")
    block_sparse_attention_gluon(q, k, v, kv_index, kv_count, 128, key_lengths, True, out=out, lse=lse,
                                 schedule=schedule)
    ref, ref_lse = block_sparse_attention(q.double(), k.double(), v.double(), kv_index, kv_count, backend="torch",
                                          key_lengths=key_lengths, return_lse=True)
    assert not torch.isnan(out).any() and not torch.isnan(lse).any()
    tol = {torch.float16: 3e-3, torch.bfloat16: 2e-2}[dtype]
    assert _rel(out, ref) < tol
    assert torch.equal(out[0, :128, 1], torch.zeros_like(out[0, :128, 1]))
    finite = torch.isfinite(ref_lse)
    assert torch.equal(torch.isfinite(lse), finite)
    assert torch.allclose(lse.double()[finite], ref_lse.double()[finite], atol=2e-2)


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_gluon_without_lse_matches_float64(schedule):
    """return_lse=False compiles another kernel (the LSE store masked off): the output must not change."""
    torch.manual_seed(torch.seed() % 2**31)
    q, k, v = (torch.randn(1, 1_500, 2, 128, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    mask = torch.rand(1, 2, 12, 12, device="cuda") < 0.5
    mask[..., -1] = True
    kv_index, kv_count = dense_to_lists(mask)
    out = torch.full_like(q, float("nan"))
    block_sparse_attention_gluon(q, k, v, kv_index, kv_count, 128, None, False, out=out, schedule=schedule)
    ref = block_sparse_attention(q.double(), k.double(), v.double(), kv_index, kv_count, backend="torch")
    assert not torch.isnan(out).any() and _rel(out, ref) < 2e-2


def _routing_case():
    """q, k, v of 2,000 tokens, 2 heads, and half the 16 x 16 blocks listed."""
    q, k, v = (torch.randn(1, 2_000, 2, 128, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    return (q, k, v, *dense_to_lists(torch.rand(1, 2, 16, 16, device="cuda") < 0.5))


def test_gluon_is_hoppers_default_and_the_switch_turns_it_off(monkeypatch):
    """Unset JENGA_GLUON: the public call runs the Gluon kernel (same bits as the direct launch);
    JENGA_GLUON=0: the portable Triton kernel (other bits, the same values)."""
    monkeypatch.delenv("JENGA_GLUON", raising=False)
    q, k, v, kv_index, kv_count = _routing_case()
    default = block_sparse_attention(q, k, v, kv_index, kv_count, backend="triton")
    direct, _ = block_sparse_attention_gluon(q, k, v, kv_index, kv_count, 128, None, False)
    assert torch.equal(default, direct)
    monkeypatch.setenv("JENGA_GLUON", "0")
    portable = block_sparse_attention(q, k, v, kv_index, kv_count, backend="triton")
    assert _rel(portable, direct) < 1e-2


def test_gluon_through_the_environment_switch(monkeypatch):
    """JENGA_GLUON=1 (any value but 0) routes the public call to it; the result equals the direct launch."""
    monkeypatch.setenv("JENGA_GLUON", "1")
    q, k, v, kv_index, kv_count = _routing_case()
    out = block_sparse_attention(q, k, v, kv_index, kv_count, backend="triton")
    direct, _ = block_sparse_attention_gluon(q, k, v, kv_index, kv_count, 128, None, False)
    assert torch.equal(out, direct)


@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize("with_lengths", [False, True])
def test_gluon_key_bias_matches_float64(schedule, with_lengths):
    """key_bias (HunyuanVideo's text amplifier): the blocks from the one that holds key 1,000 on take the biased
    softmax (block 7 straddles it); with key lengths (1,010 and 1,050) the cut falls in a biased block, block 7
    itself for the first entry, so the bias and the key-limit mask meet in one block. LSE checked too."""
    torch.manual_seed(torch.seed() % 2**31)
    batch, heads, seq_q, seq_k = 2, 2, 1_100, 1_300
    q = torch.randn(batch, seq_q, heads, 128, device="cuda", dtype=torch.bfloat16)
    k, v = (torch.randn(batch, seq_k, heads, 128, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    mask = torch.rand(batch, heads, math.ceil(seq_q / 128), math.ceil(seq_k / 128), device="cuda") < 0.5
    mask[..., 7] = True
    mask[..., -1] = True
    kv_index, kv_count = dense_to_lists(mask)
    key_lengths = torch.tensor([1_010, 1_050], device="cuda", dtype=torch.int32) if with_lengths else None
    out = torch.full_like(q, float("nan"))
    lse = torch.full((batch, heads, seq_q), float("nan"), device="cuda")
    block_sparse_attention_gluon(q, k, v, kv_index, kv_count, 128, key_lengths, True, out=out, lse=lse,
                                 schedule=schedule, key_bias=(1_000, 1.5))
    ref, ref_lse = block_sparse_attention(q.double(), k.double(), v.double(), kv_index, kv_count, backend="torch",
                                          key_lengths=key_lengths, key_bias=(1_000, 1.5), return_lse=True)
    unbiased = block_sparse_attention(q.double(), k.double(), v.double(), kv_index, kv_count, backend="torch",
                                      key_lengths=key_lengths)
    assert not torch.isnan(out).any() and not torch.isnan(lse).any()
    assert _rel(out, ref) < 2e-2
    if not with_lengths:  # hundreds of biased keys: the bias moves the result well past the tolerance
        assert _rel(unbiased, ref) > 5e-2
    finite = torch.isfinite(ref_lse)
    assert torch.equal(torch.isfinite(lse), finite)
    assert torch.allclose(lse.double()[finite], ref_lse.double()[finite], atol=2e-2)


def test_key_bias_routes_to_gluon(monkeypatch):
    """The public call with key_bias runs the Gluon kernel on Hopper (same bits as the direct launch)."""
    monkeypatch.delenv("JENGA_GLUON", raising=False)
    q, k, v, kv_index, kv_count = _routing_case()
    routed = block_sparse_attention(q, k, v, kv_index, kv_count, backend="triton", key_bias=(1_500, 2.0))
    direct, _ = block_sparse_attention_gluon(q, k, v, kv_index, kv_count, 128, None, False, key_bias=(1_500, 2.0))
    assert torch.equal(routed, direct)


@pytest.mark.parametrize("schedule", ["pingpong", "pingpong-named", "pingpong-persistent"])
@pytest.mark.parametrize("seq_q", [1_000, 1_050])  # last query block: 104 rows (bottom half partial), 26 (top too)
@pytest.mark.parametrize("tma_out", ["1", "0"])
def test_tma_store_of_the_output_matches_float64(monkeypatch, schedule, seq_q, tma_out):
    """The default (JENGA_GLUON_TMA_OUT unset or 1): whole halves go out through the Q buffer and TMA, partial
    ones through masked stores; two batch entries, so a TMA store in the wrong batch's rows would show. 0: masked
    stores only."""
    monkeypatch.setenv("JENGA_GLUON_TMA_OUT", tma_out)
    torch.manual_seed(torch.seed() % 2**31)
    batch, heads, seq_k = 2, 3, 1_300
    q = torch.randn(batch, seq_q, heads, 128, device="cuda", dtype=torch.bfloat16)
    k, v = (torch.randn(batch, seq_k, heads, 128, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    mask = torch.rand(batch, heads, math.ceil(seq_q / 128), math.ceil(seq_k / 128), device="cuda") < 0.4
    mask[..., -1] = True
    mask[0, 1, 0] = False  # an empty list: its rows are zeros
    kv_index, kv_count = dense_to_lists(mask)
    out = torch.full_like(q, float("nan"))
    block_sparse_attention_gluon(q, k, v, kv_index, kv_count, 128, None, False, out=out, schedule=schedule)
    ref = block_sparse_attention(q.double(), k.double(), v.double(), kv_index, kv_count, backend="torch")
    assert not torch.isnan(out).any() and _rel(out, ref) < 2e-2
    assert torch.equal(out[0, :128, 1], torch.zeros_like(out[0, :128, 1]))


@pytest.mark.parametrize("programs", [1, 3, 7])
@pytest.mark.parametrize("tma_out", ["1", "0"])
@pytest.mark.parametrize("with_bias", [False, True])
def test_persistent_programs_walk_many_tiles_correctly(monkeypatch, programs, tma_out, with_bias):
    """The persistent schedule with fewer programs than tiles (here 1-7 programs for 2 x 5 x 8 tiles): the ring,
    the turns and the query buffer run on across tiles of uneven lists (empty ones too), key lengths, LSE, a
    partial last query block and key bias; against float64."""
    import jenga.kernels.gluon_block_sparse as gluon_module

    monkeypatch.setattr(gluon_module, "_multiprocessors", lambda device: programs)
    monkeypatch.setenv("JENGA_GLUON_TMA_OUT", tma_out)
    torch.manual_seed(torch.seed() % 2**31)
    batch, heads, seq_q, seq_k, dim = 2, 5, 1_000, 1_300, 128
    q = torch.randn(batch, seq_q, heads, dim, device="cuda", dtype=torch.bfloat16)
    k, v = (torch.randn(batch, seq_k, heads, dim, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    qb, kb = math.ceil(seq_q / 128), math.ceil(seq_k / 128)
    density = torch.rand(batch, heads, qb, 1, device="cuda")  # lists from empty-ish to full
    mask = torch.rand(batch, heads, qb, kb, device="cuda") < density
    mask[0, 2, 3] = False  # an empty list mid-walk
    mask[1, 4, -1] = False  # and the last tile's
    kv_index, kv_count = dense_to_lists(mask)
    key_lengths = torch.tensor([seq_k - 40, seq_k - 333], device="cuda", dtype=torch.int32)
    bias = (seq_k - 200, 0.7) if with_bias else None
    out = torch.full_like(q, float("nan"))
    lse = torch.full((batch, heads, seq_q), float("nan"), device="cuda")
    block_sparse_attention_gluon(q, k, v, kv_index, kv_count, 128, key_lengths, True, out=out, lse=lse,
                                 schedule="pingpong-persistent", key_bias=bias)
    ref, ref_lse = block_sparse_attention(q.double(), k.double(), v.double(), kv_index, kv_count, backend="torch",
                                          key_lengths=key_lengths, return_lse=True, key_bias=bias)
    assert not torch.isnan(out).any() and not torch.isnan(lse).any()
    assert _rel(out, ref) < 2e-2
    assert torch.equal(out[0, 384:512, 2], torch.zeros_like(out[0, 384:512, 2]))
    finite = torch.isfinite(ref_lse)
    assert torch.equal(torch.isfinite(lse), finite)
    assert torch.allclose(lse.double()[finite], ref_lse.double()[finite], atol=2e-2)
