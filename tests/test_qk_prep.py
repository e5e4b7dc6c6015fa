"""The fused RMSNorm + RoPE kernel for Wan's queries and keys (Triton, interpreted on the CPU) against the
stock ops it replaces, and a patched tiny pipeline that takes it."""

from __future__ import annotations

import pytest
import torch
from _tiny import ALL_BLOCKS, CARVING, run, wan_inputs, wan_pipeline

import jenga
from jenga.adapters import wan as wan_adapter
from jenga.kernels.triton_block_sparse import interpreting

pytestmark = pytest.mark.skipif(not (torch.cuda.is_available() or interpreting()),
                                reason="needs CUDA or the Triton interpreter")
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def _stock(x, norm, cos, sin, heads):
    """What diffusers' WanAttnProcessor computes: the RMSNorm layer, the head split, interleaved RoPE."""
    return wan_adapter._rotate_pairs(norm(x).unflatten(2, (heads, -1)), cos, sin)


def _tables(seq, head_dim, batch=1):
    angles = torch.rand(batch, seq, 1, head_dim, device=DEVICE, dtype=torch.float64) * 6.28
    return angles.cos().float(), angles.sin().float()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("heads, head_dim, seq", [(3, 16, 37), (2, 32, 20)])
def test_matches_the_stock_norm_and_rope(dtype, heads, head_dim, seq):
    """Odd lengths, a channel count whose pairs do not fill a power of two (3 x 16 = 48 -> 24 of 32), and
    an input that is a chunk of a fused QKV projection (row stride 3C)."""
    from jenga.kernels.triton_qk_prep import rms_norm_rope_triton

    torch.manual_seed(torch.seed() % 2**31)
    channels = heads * head_dim
    qkv = torch.randn(2, seq, 3 * channels, device=DEVICE).mul_(3).to(dtype)
    x = qkv.chunk(3, dim=-1)[1]
    norm = torch.nn.RMSNorm(channels, eps=1e-6, elementwise_affine=True).to(DEVICE, dtype)
    with torch.no_grad():
        norm.weight.copy_(torch.rand(channels) + 0.5)
    cos, sin = _tables(seq, head_dim)
    with torch.no_grad():
        ref = _stock(x, norm, cos, sin, heads)
        out = rms_norm_rope_triton(x, norm.weight, 1e-6, cos, sin).unflatten(2, (heads, -1))
    assert out.dtype == dtype and out.shape == ref.shape and torch.isfinite(out).all()
    if dtype == torch.float32:
        torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    else:  # one rounding step apart at most, and most values identical
        ulp = 2.0 ** (-7 if dtype == torch.bfloat16 else -10)
        diff = (out.float() - ref.float()).abs()
        assert (diff <= ulp * ref.float().abs().clamp_min(1.0) * 2).all(), diff.max()
        assert (diff == 0).float().mean() > 0.9


def test_per_sample_tables_and_float64_reference():
    """Batch-sized RoPE tables, checked against the same maths in float64."""
    from jenga.kernels.triton_qk_prep import rms_norm_rope_triton

    torch.manual_seed(torch.seed() % 2**31)
    batch, seq, heads, head_dim = 2, 9, 2, 8
    x = torch.randn(batch, seq, heads * head_dim, device=DEVICE)
    weight = torch.rand(heads * head_dim, device=DEVICE) + 0.5
    cos, sin = _tables(seq, head_dim, batch=batch)
    out = rms_norm_rope_triton(x, weight, 1e-5, cos, sin).double()
    xd = x.double()
    y = xd * torch.rsqrt(xd.pow(2).mean(-1, keepdim=True) + 1e-5) * weight.double()
    y = y.unflatten(2, (heads, head_dim))
    y1, y2 = y[..., 0::2], y[..., 1::2]
    c, s = cos.double()[..., 0::2], sin.double()[..., 1::2]
    ref = torch.stack((y1 * c - y2 * s, y1 * s + y2 * c), dim=-1).flatten(-2).flatten(2)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


def _count_fused_calls(monkeypatch):
    from jenga.kernels import triton_qk_prep

    calls = []
    real = triton_qk_prep.rms_norm_rope_triton

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(triton_qk_prep, "rms_norm_rope_triton", counting)
    return calls


@pytest.mark.skipif(not interpreting(), reason="the tiny pipelines run on the CPU; on a GPU machine "
                    "tests/gpu/test_wan_full_size.py runs the fused path at full size")
@pytest.mark.long(6)
@pytest.mark.parametrize("fused_qkv", [False, True])
def test_patched_pipeline_takes_the_fused_path(monkeypatch, fused_qkv):
    """With the kernel forced on (the CPU needs ``JENGA_FUSED_QK_PREP=1``), a patched run through every block
    equals stock; off (``0``), the kernel is never called."""
    pipe = wan_pipeline("t2v")
    if fused_qkv:
        pipe.transformer.fuse_qkv_projections()
    inputs = wan_inputs(pipe, steps=2, height=64, width=64)  # 48 tokens: the interpreter runs the kernel row by row
    stock = run(pipe, inputs)
    calls = _count_fused_calls(monkeypatch)
    monkeypatch.setenv("JENGA_FUSED_QK_PREP", "1")
    jenga.patch(pipe, **ALL_BLOCKS)
    out = run(pipe, inputs)
    assert calls, "the fused kernel never ran"
    assert (out - stock).abs().max().item() <= 1e-4
    calls.clear()
    monkeypatch.setenv("JENGA_FUSED_QK_PREP", "0")
    assert (run(pipe, inputs) - out).abs().max().item() <= 1e-4
    assert not calls


@pytest.mark.skipif(not interpreting(), reason="the tiny pipelines run on the CPU")
@pytest.mark.long(13)
def test_dense_steps_take_the_fused_path_too(monkeypatch):
    """Dense steps (here the first half) run the stock processor's dense attention on the fused queries and
    keys: as many kernel calls as when every step carves, and the stock result."""
    pipe = wan_pipeline("t2v")
    inputs = wan_inputs(pipe, steps=2, height=64, width=64)  # 48 tokens: the interpreter runs the kernel row by row
    stock = run(pipe, inputs)
    calls = _count_fused_calls(monkeypatch)
    monkeypatch.setenv("JENGA_FUSED_QK_PREP", "1")
    with jenga.patched(pipe, **ALL_BLOCKS):
        run(pipe, inputs)
    every_step = len(calls)
    calls.clear()
    with jenga.patched(pipe, **{**ALL_BLOCKS, "dense_steps": 0.5}):
        out = run(pipe, inputs)
    assert every_step and len(calls) == every_step
    assert (out - stock).abs().max().item() <= 1e-4


def test_not_taken_for_custom_norms_or_under_grad(monkeypatch):
    """A norm layer that is not ``torch.nn.RMSNorm`` (a user's replacement) and autograd keep the stock ops."""
    monkeypatch.setenv("JENGA_FUSED_QK_PREP", "1" if interpreting() else "auto")
    pipe = wan_pipeline("t2v")
    attn = pipe.transformer.blocks[0].attn1.to(DEVICE)
    x = torch.randn(1, 8, attn.norm_q.normalized_shape[0], device=DEVICE)
    cos, sin = _tables(8, x.shape[-1] // attn.heads)
    with torch.no_grad():  # as pipelines run
        assert wan_adapter._fused_prep_applies(attn, x, x, (cos, sin))
        assert not wan_adapter._fused_prep_applies(attn, x, x, None)
    assert not wan_adapter._fused_prep_applies(attn, x, x, (cos, sin))  # the norm weights need gradients
    with torch.no_grad():
        attn.norm_q = torch.nn.LayerNorm(x.shape[-1], device=DEVICE)
        assert not wan_adapter._fused_prep_applies(attn, x, x, (cos, sin))
    pipe = wan_pipeline("t2v")
    jenga.patch(pipe, **CARVING)
    assert torch.isfinite(run(pipe, wan_inputs(pipe, steps=1, height=64, width=64))).all()
