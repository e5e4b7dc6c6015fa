"""Property-based tests (hypothesis, CPU, small sizes, bounded budgets): block-sparse attention on random
shapes, dtypes, block sizes, layouts, list broadcasting, key lengths and key bias against a float64 reference
written here (independent of ``jenga.kernels.reference``); selector invariants; curve bijection and locality;
config round trips."""

from __future__ import annotations

import json
import math

import torch
from _layouts import LAYOUTS, in_layout
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from jenga import JengaConfig, block_sparse_attention, select_blocks
from jenga.attention import triton_available
from jenga.curves import CURVES, block_adjacency, curve_permutation

BUDGET = dict(deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
TOLERANCE = {torch.float32: 3e-5, torch.float16: 3e-3, torch.bfloat16: 2e-2}
BACKENDS = ["torch", "triton"] if triton_available() else ["torch"]


def float64_attention(q, k, v, listed, block_size, key_lengths=None, key_bias=None):
    """Attention of each query to the keys of its listed blocks, in float64 loops over (batch, head, query
    block); rows without a key are 0."""
    batch, seq_q, heads, dim = q.shape
    seq_k = k.shape[1]
    out = torch.zeros(batch, seq_q, heads, dim, dtype=torch.float64)
    for b in range(batch):
        limit = seq_k if key_lengths is None else min(seq_k, int(key_lengths[b]))
        for h in range(heads):
            for qb in range(math.ceil(seq_q / block_size)):
                rows = slice(qb * block_size, min(seq_q, (qb + 1) * block_size))
                keys = [n for kb in sorted(listed[b][h][qb]) for n in range(kb * block_size, (kb + 1) * block_size)
                        if n < limit]
                if not keys:
                    continue
                kk, vv = k[b, keys, h].double(), v[b, keys, h].double()
                logits = q[b, rows, h].double() @ kk.T / math.sqrt(dim)
                if key_bias is not None:
                    logits = logits + torch.tensor([key_bias[1] if n >= key_bias[0] else 0.0 for n in keys],
                                                   dtype=torch.float64)
                out[b, rows, h] = torch.softmax(logits, -1) @ vv
    return out


@st.composite
def attention_cases(draw):
    block_size = draw(st.sampled_from([16, 32]))
    batch, heads = draw(st.integers(1, 2)), draw(st.integers(1, 2))
    seq_q, seq_k = draw(st.integers(1, 3 * block_size)), draw(st.integers(1, 3 * block_size))
    dim = draw(st.sampled_from([16, 32]))
    dtype = draw(st.sampled_from([torch.float32, torch.bfloat16, torch.float16]))
    qb, kb = math.ceil(seq_q / block_size), math.ceil(seq_k / block_size)
    lb, lh = draw(st.sampled_from([1, batch])), draw(st.sampled_from([1, heads]))
    listed = [[[sorted(draw(st.sets(st.integers(0, kb - 1), max_size=kb))) for _ in range(qb)] for _ in range(lh)]
              for _ in range(lb)]
    key_lengths = draw(st.none() | st.lists(st.integers(0, seq_k + 5), min_size=batch, max_size=batch))
    key_bias = draw(st.none() | st.tuples(st.integers(0, seq_k), st.floats(-4.0, 4.0)))
    layout = draw(st.sampled_from(LAYOUTS))
    seed = draw(st.integers(0, 2**16))
    return block_size, batch, heads, seq_q, seq_k, dim, dtype, listed, key_lengths, key_bias, layout, seed


def _lists(listed, kcap):
    index = torch.zeros(len(listed), len(listed[0]), len(listed[0][0]), max(kcap, 1), dtype=torch.int32)
    count = torch.zeros(index.shape[:3], dtype=torch.int32)
    for b, per_b in enumerate(listed):
        for h, per_h in enumerate(per_b):
            for qb, ids in enumerate(per_h):
                index[b, h, qb, : len(ids)] = torch.tensor(ids, dtype=torch.int32)
                count[b, h, qb] = len(ids)
    return index, count


def _check_attention(case, backend):
    block_size, batch, heads, seq_q, seq_k, dim, dtype, listed, key_lengths, key_bias, layout, seed = case
    gen = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(batch, n, heads, dim, generator=gen).to(dtype) for n in (seq_q, seq_k, seq_k))
    index, count = _lists(listed, math.ceil(seq_k / block_size))
    lengths = None if key_lengths is None else torch.tensor(key_lengths)
    out = block_sparse_attention(*(in_layout(t, layout) for t in (q, k, v)), index, count, block_size=block_size,
                                 key_lengths=lengths, key_bias=key_bias, backend=backend)
    full = [[listed[b if len(listed) > 1 else 0][h if len(listed[0]) > 1 else 0] for h in range(heads)]
            for b in range(batch)]
    expected = float64_attention(q, k, v, full, block_size, lengths, key_bias)
    assert out.dtype == dtype and out.shape == q.shape
    assert torch.isfinite(out).all()
    error = (out.double() - expected).abs().max().item()
    assert error <= TOLERANCE[dtype] * max(1.0, expected.abs().max().item()) * 4, (error, case)


@settings(max_examples=15, **BUDGET)
@given(case=attention_cases())
def test_attention_torch_matches_float64(case):
    _check_attention(case, "torch")


@settings(max_examples=8, **BUDGET)
@given(case=attention_cases())
def test_attention_triton_matches_float64(case):
    assume("triton" in BACKENDS)
    _check_attention(case, "triton")


# -- selector


@st.composite
def selector_cases(draw):
    block_size = draw(st.sampled_from([16, 32]))
    num_video = draw(st.integers(block_size, 6 * block_size))
    num_text = draw(st.sampled_from([0, 0, 5, block_size + 3]))
    return (block_size, num_video, num_text, draw(st.integers(1, 2)), draw(st.floats(0.0, 0.95)),
            draw(st.floats(0.0, 1.0)), draw(st.booleans()), draw(st.booleans()), draw(st.integers(0, 2**16)))


@settings(max_examples=8, **BUDGET)
@given(case=selector_cases())
def test_selector_invariants_and_backends_agree(case):
    block_size, num_video, num_text, heads, drop_rate, p, with_adjacency, with_keep, seed = case
    gen = torch.Generator().manual_seed(seed)
    seq = num_video + num_text
    q, k = (torch.randn(1, seq, heads, 16, generator=gen) for _ in range(2))
    video_blocks, num_blocks = math.ceil(num_video / block_size), math.ceil(seq / block_size)
    adjacency = (torch.rand(video_blocks, video_blocks, generator=gen) < 0.3) if with_adjacency else None
    keep = (torch.rand(video_blocks, generator=gen) < 0.3) if with_keep else None
    args = dict(drop_rate=drop_rate, cdf_threshold=p, block_size=block_size, num_video_tokens=num_video,
                adjacency=adjacency, always_keep=keep)
    lists = {b: select_blocks(q, k, backend=b, **args) for b in BACKENDS}
    ref = lists["torch"]
    for other in lists.values():
        assert torch.equal(other.kv_count, ref.kv_count) and torch.equal(other.kv_index, ref.kv_index)
    first_text = num_video // block_size if num_text else num_blocks
    top_k = max(1, math.floor((1 - drop_rate) * video_blocks))
    for h in range(heads):
        for qb in range(num_blocks):
            ids = ref.kv_index[0, h, qb, : ref.kv_count[0, h, qb]].tolist()
            assert ids == sorted(set(ids)) and all(0 <= i < num_blocks for i in ids)
            if qb >= first_text or drop_rate == 0.0:
                assert ids == list(range(num_blocks))  # text query rows (and drop rate 0) are dense
                continue
            kept = set(ids)
            assert set(range(first_text, num_blocks)) <= kept  # text key blocks always kept
            assert len([i for i in ids if i < video_blocks]) >= min(top_k, video_blocks)
            if adjacency is not None:
                assert {j for j in range(video_blocks) if adjacency[qb, j]} <= kept
            if keep is not None:
                assert {j for j in range(video_blocks) if keep[j]} <= kept


# -- curves


grids = st.tuples(st.integers(1, 6), st.integers(1, 9), st.integers(1, 9))


@settings(max_examples=20, **BUDGET)
@given(grid=grids, curve=st.sampled_from(CURVES), block_size=st.sampled_from([16, 32, 64]))
def test_curve_is_a_bijection_and_adjacency_matches_the_tokens(grid, curve, block_size):
    perm, inverse = curve_permutation(grid, curve, block_size=block_size)
    n = math.prod(grid)
    assert torch.equal(torch.sort(perm).values, torch.arange(n))
    assert torch.equal(perm[inverse], torch.arange(n)) and torch.equal(inverse[perm], torch.arange(n))
    # adjacency from the tokens themselves: blocks i, j touch when some tokens are within one step on each axis
    _, h, w = grid
    thw = torch.stack((perm // (h * w), perm // w % h, perm % w), 1)
    blocks = torch.arange(n) // block_size
    near = ((thw[:, None] - thw[None]).abs() <= 1).all(-1)
    nb = math.ceil(n / block_size)
    expected = torch.zeros(nb, nb, dtype=torch.bool)
    expected[blocks[:, None].expand(n, n)[near], blocks[None].expand(n, n)[near]] = True
    assert torch.equal(block_adjacency(grid, block_size=block_size, curve=curve), expected)


@settings(max_examples=20, **BUDGET)
@given(grid=grids)
def test_hilbert_steps_are_face_neighbours(grid):
    perm, _ = curve_permutation(grid, "hilbert")
    _, h, w = grid
    thw = torch.stack((perm // (h * w), perm // w % h, perm % w), 1)
    assert (thw.diff(dim=0).abs().sum(-1) == 1).all()


# -- config round trips


@st.composite
def configs(draw):
    count = draw(st.integers(1, 3))
    ends = sorted(draw(st.sets(st.floats(0.05, 0.95), min_size=count - 1, max_size=count - 1))) + [1.0]
    scales = sorted(draw(st.lists(st.sampled_from([0.5, 0.75, 1.0]), min_size=count, max_size=count)))
    scales[-1] = 1.0
    stages = tuple((s, e) for s, e in zip(scales, ends, strict=True))
    return JengaConfig(
        stages=stages, drop_rates=tuple(draw(st.floats(0.0, 0.95)) for _ in range(count)),
        cdf_threshold=draw(st.floats(0.0, 1.0)), block_size=draw(st.sampled_from([16, 32, 64, 128, 256])),
        curve=draw(st.sampled_from(CURVES)), dense_steps=draw(st.floats(0.0, 1.0)),
        dense_layers=tuple(draw(st.sets(st.integers(0, 40), max_size=4))),
        text_amplifier=draw(st.floats(0.0, 5.0)), upsample=draw(st.sampled_from(["trilinear", "area"])),
        backend=draw(st.sampled_from(["auto", "torch", "triton", "flex"])),
    )


@settings(max_examples=40, **BUDGET)
@given(cfg=configs())
def test_config_round_trips_through_json(cfg):
    data = json.loads(json.dumps(cfg.to_dict()))
    assert JengaConfig.from_dict(data) == cfg
    for steps in (1, 2, 7, 50):
        spans = cfg.stage_steps(steps)
        assert spans[0][0] == 0 and spans[-1] == (spans[-1][0], steps) and spans[-1][1] > spans[-1][0]
