"""Regression tests of issue 15 (no silent wrong result): strided views, non-finite selector scores, clear
errors for a NaN key bias, a string drop rate, and tile shapes that do not fit the GPU's shared memory."""

from __future__ import annotations

import math

import pytest
import torch
from _layouts import in_layout

from jenga import block_sparse_attention, dense_to_lists, select_blocks
from jenga.attention import triton_available
from jenga.kernels import triton_block_sparse as kernel

needs_triton = pytest.mark.skipif(not triton_available(), reason="Triton kernel cannot run here")


def _dense64(q, k, v, mask, block_size):
    """float64 attention with a block mask expanded to tokens (rows without keys give 0)."""
    qd, kd, vd = (t.double().transpose(1, 2) for t in (q, k, v))
    logits = qd @ kd.transpose(-1, -2) / math.sqrt(q.shape[-1])
    full = mask.repeat_interleave(block_size, 2)[:, :, : q.shape[1]].repeat_interleave(block_size, 3)
    logits = logits.masked_fill(~full[..., : k.shape[1]], float("-inf"))
    probs = torch.nan_to_num(torch.softmax(logits, -1), nan=0.0)
    return (probs @ vd).transpose(1, 2)


@needs_triton
@pytest.mark.parametrize("kind", ["last_stride_2", "heads_major", "dim_major"])
def test_triton_kernel_reads_any_layout(kind):
    gen = torch.Generator().manual_seed(0)
    block_size, heads, dim = 16, 2, 16
    q, k, v = (torch.randn(1, n, heads, dim, generator=gen) for n in (40, 48, 48))
    mask = torch.rand(1, heads, 3, 3, generator=gen) < 0.6
    mask[..., 0] = True
    index, count = dense_to_lists(mask)
    expected = _dense64(q, k, v, mask, block_size)
    views = [in_layout(t, kind) for t in (q, k, v)]
    assert kind != "last_stride_2" or views[0].stride(-1) == 2
    out = block_sparse_attention(*views, index, count, block_size=block_size, backend="triton")
    assert (out.double() - expected).abs().max() < 1e-4


@needs_triton
def test_selector_reads_any_layout():
    """A guard (the selector pooled in torch already): strided q/k give the lists of contiguous ones."""
    kind = "last_stride_2"
    gen = torch.Generator().manual_seed(1)
    q, k = (torch.randn(1, 100, 2, 16, generator=gen) for _ in range(2))
    args = dict(drop_rate=0.6, cdf_threshold=0.5, block_size=16)
    for backend in ("torch", "triton"):
        ref = select_blocks(q, k, backend=backend, **args)
        got = select_blocks(in_layout(q, kind), in_layout(k, kind), backend=backend, **args)
        assert torch.equal(ref.kv_index, got.kv_index) and torch.equal(ref.kv_count, got.kv_count)


@needs_triton
def test_qk_prep_reads_a_non_unit_last_stride():
    from jenga.kernels.triton_qk_prep import rms_norm_rope_triton

    gen = torch.Generator().manual_seed(2)
    batch, seq, heads, dim = 1, 12, 2, 16
    x = torch.randn(batch, seq, heads * dim, generator=gen)
    weight = torch.rand(heads * dim, generator=gen) + 0.5
    angles = torch.rand(1, seq, 1, dim, generator=gen, dtype=torch.float64) * 6.28
    cos, sin = angles.cos().float(), angles.sin().float()
    # float64 reference: RMSNorm across heads, then interleaved RoPE
    xd = x.double()
    y = (xd * torch.rsqrt(xd.pow(2).mean(-1, keepdim=True) + 1e-6) * weight.double()).unflatten(2, (heads, dim))
    y1, y2 = y[..., 0::2], y[..., 1::2]
    c, s = cos.double()[..., 0::2], sin.double()[..., 1::2]
    expected = torch.stack((y1 * c - y2 * s, y1 * s + y2 * c), -1).flatten(-2).flatten(2)
    wide = torch.zeros(batch, seq, 2 * heads * dim)
    wide[..., ::2] = x
    out = rms_norm_rope_triton(wide[..., ::2], weight, 1e-6, cos, sin)
    assert (out.double() - expected).abs().max() < 1e-4


@pytest.mark.parametrize("poison", [float("inf"), float("-inf"), float("nan")])
def test_selector_backends_agree_on_non_finite_scores(poison):
    if not triton_available():
        pytest.skip("Triton kernel cannot run here")
    gen = torch.Generator().manual_seed(3)
    q, k = (torch.randn(1, 128, 2, 16, generator=gen) for _ in range(2))
    q[0, 20, 1, :] = poison  # query block 1 of head 1: an inf with both signs of the keys' means, or a nan
    k[0, 100, 0, 0] = float("nan")  # key block 6 of head 0: every row of head 0
    lists = {b: select_blocks(q, k, drop_rate=0.75, cdf_threshold=0.5, block_size=16, backend=b)
             for b in ("torch", "triton")}
    assert torch.equal(lists["torch"].kv_count, lists["triton"].kv_count)
    assert torch.equal(lists["torch"].kv_index, lists["triton"].kv_index)
    count = lists["torch"].kv_count
    assert (count[0, 0] == 8).all() and count[0, 1, 1] == 8  # the rows with no ranking keep every block
    assert (count[0, 1, [0, *range(2, 8)]] < 8).all()  # the finite rows are still carved


def test_key_bias_must_be_finite():
    q = torch.randn(1, 32, 1, 16)
    index, count = dense_to_lists(torch.ones(1, 1, 2, 2, dtype=torch.bool))
    for bias in ((0, float("nan")), (0, float("inf")), (-1, 1.0), (0.5, 1.0), ("0", 1.0), (0, "1")):
        with pytest.raises(ValueError, match="key_bias"):
            block_sparse_attention(q, q, q, index, count, block_size=16, key_bias=bias, backend="torch")
    out = block_sparse_attention(q, q, q, index, count, block_size=16, key_bias=(16, -3.0), backend="torch")
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", ["drop_rate", "cdf_threshold"])
def test_select_blocks_rejects_non_numbers(name):
    q = torch.randn(1, 64, 1, 16)
    args = dict(drop_rate=0.5, cdf_threshold=0.5, block_size=16, backend="torch")
    for bad in ("0.5", None, [0.5], True):
        with pytest.raises(TypeError, match=name):
            select_blocks(q, q, **{**args, name: bad})


def test_float32_head_dim_256_tiles_fit_shared_memory():
    """What raised Triton's OutOfResources on an H200: every config the launcher keeps fits the budget."""
    q = torch.empty(1, 8, 1, 256, dtype=torch.float32)
    named = dict(Q=q, KV_BLOCK=128, HEAD_DIM=256, IEEE=True, USE_TMA=True)
    kept = kernel._prune_configs(kernel._configs(), named)
    assert kept
    limit = kernel.shared_memory_limit(None)
    for cfg in kept:
        need = kernel.shared_memory_estimate(cfg.kwargs["BLOCK_M"], cfg.kwargs["BLOCK_N"], cfg.num_stages, 256, 4,
                                             cfg.kwargs.get("Q_TMA", False))
        assert need <= limit
    # the half-precision picks at head dim 128 (Wan, HunyuanVideo) are untouched
    half = dict(Q=q.new_empty(1, 8, 1, 128, dtype=torch.bfloat16), KV_BLOCK=128, HEAD_DIM=128, IEEE=False, USE_TMA=True)
    assert len(kernel._prune_configs(kernel._configs(), half)) == len(kernel._configs())


def test_launcher_falls_back_to_smaller_tiles_on_out_of_resources(monkeypatch):
    """A launch that Triton refuses for shared memory retries with smaller tiles; none fitting is a clear error."""
    from triton.runtime.errors import OutOfResources

    calls = []

    class FakeKernel:
        def __init__(self, fits):
            self.fits = fits

        def __getitem__(self, grid):
            def run(*args, **kwargs):
                calls.append(kwargs.get("BLOCK_N"))
                if not self.fits(kwargs):
                    raise OutOfResources(300000, 232448, "shared memory")
            return run

    monkeypatch.setattr(kernel, "interpreting", lambda: False)
    monkeypatch.setattr(kernel, "_block_sparse_fwd_tuned", FakeKernel(lambda kw: False))
    monkeypatch.setattr(kernel, "_block_sparse_fwd", FakeKernel(lambda kw: kw["BLOCK_N"] <= 32))
    monkeypatch.setattr(kernel, "_FALLBACK_PICKS", {})
    monkeypatch.setattr(kernel.tuning, "autotune_requested", lambda: True)  # the autotuner's configs first
    q = torch.empty(1, 128, 1, 256)
    index, count = dense_to_lists(torch.ones(1, 1, 1, 1, dtype=torch.bool))
    args = (q, q, q, index.int(), count.int(), 128, None, 128, 0.0, False)
    kernel.block_sparse_attention_triton(*args, use_tma=False)
    assert calls[0] is None and calls[-1] == 32  # tuned (no tiles given), then fallbacks down to 32-wide tiles
    calls.clear()
    kernel.block_sparse_attention_triton(*args, use_tma=False)
    assert calls == [32]  # the working fallback is remembered
    # the shipped table's (or the default) tiles fall back the same way: only a caller's own config raises
    monkeypatch.setattr(kernel.tuning, "autotune_requested", lambda: False)
    table_tiles = {"BLOCK_M": 64, "BLOCK_N": 64, "num_warps": 4, "num_stages": 2, "Q_TMA": False}
    table = kernel.tuning.TileChoice(table_tiles, False, "package")
    monkeypatch.setattr(kernel.tuning, "choose", lambda *a, **k: table)
    monkeypatch.setattr(kernel, "_FALLBACK_PICKS", {})
    calls.clear()
    kernel.block_sparse_attention_triton(*args, use_tma=False)
    assert calls[0] == 64 and calls[-1] == 32
    with pytest.raises(ValueError, match="needs more GPU resources"):
        kernel.block_sparse_attention_triton(*args, use_tma=False, config=table_tiles)
    monkeypatch.setattr(kernel, "_block_sparse_fwd", FakeKernel(lambda kw: False))
    monkeypatch.setattr(kernel, "_FALLBACK_PICKS", {})
    with pytest.raises(ValueError, match="head dim 256"):
        kernel.block_sparse_attention_triton(*args, use_tma=False)


def test_unchecked_bad_lists_behave_as_documented():
    """``check_indices=False`` (README): the torch backend sees a block set; the Triton kernel trusts every entry."""
    gen = torch.Generator().manual_seed(4)
    q, k, v = (torch.randn(1, 48, 1, 16, generator=gen) for _ in range(3))
    run = lambda index, count, backend="torch": block_sparse_attention(  # noqa: E731
        q, k, v, torch.tensor(index, dtype=torch.int32).view(1, 1, 3, -1),
        torch.tensor(count, dtype=torch.int32).view(1, 1, 3), block_size=16, backend=backend, check_indices=False)
    good = run([[0, 1], [0, 1], [0, 1]], [2, 2, 2])
    # order and repeats ignored, the id equal to the block count (3) dropped, counts clamped to [0, capacity]
    assert torch.equal(run([[1, 0, 1], [0, 1, 3], [0, 1, 2]], [3, 3, 2]), run([[0, 1, 0]] * 3, [2, 2, 2]))
    assert torch.equal(run([[0, 1], [0, 1], [0, 1]], [5, 2, 2]), good)
    assert (run([[0, 1], [0, 1], [0, 1]], [-1, 2, 2])[:, :16] == 0).all()
    with pytest.raises((IndexError, RuntimeError)):
        run([[0, 4], [0, 1], [0, 1]], [2, 2, 2])
    with pytest.raises(ValueError, match="ascending"):  # the check, on by default, names the problem
        block_sparse_attention(q, k, v, torch.tensor([[1, 0]] * 3, dtype=torch.int32).view(1, 1, 3, 2),
                               torch.full((1, 1, 3), 2, dtype=torch.int32), block_size=16, backend="torch")
    if triton_available():  # a repeated id is attended twice by the kernel: its weight doubled
        doubled = run([[0, 1, 1]] * 3, [3, 3, 3], backend="triton")
        assert not torch.allclose(doubled, run([[0, 1, 1]] * 3, [3, 3, 3]), atol=1e-3)
