"""GPU fuzz of the Triton kernels (issue 15): random cases at real head dims (64, 128, some 256) and lengths in
the thousands, bf16 / fp16 / fp32, random layouts (views with a last stride of 2, heads-major, token windows),
list broadcasting, key lengths, key bias and Nq != Nk, each against float64 attention; outputs poisoned with NaN
first, so an element the kernel does not write shows up. The selector's Triton kernel is fuzzed against its
torch reference (identical lists), with non-finite scores in some cases.

Cases run until ``JENGA_FUZZ_SECONDS`` (default 75) have passed, at least ``JENGA_FUZZ_MIN_CASES`` (default 12);
each case picks its tiles from the autotuner's candidates (pruned as the launcher prunes them), so the run
compiles one kernel per case instead of autotuning each. With ``JENGA_FUZZ_OUT=path.json`` the counts are
written there. Run: ``JENGA_FUZZ_OUT=$OUT/fuzz.json python -m pytest tests/gpu/test_fuzz_gpu.py -q -s``.
"""

from __future__ import annotations

import json
import math
import os
import random
import time
from collections import Counter
from functools import partial

import pytest
import torch

if not torch.cuda.is_available():
    pytest.skip("needs a CUDA GPU", allow_module_level=True)

from _layouts import in_layout  # noqa: E402

from jenga import block_sparse_attention, select_blocks  # noqa: E402
from jenga.kernels import triton_block_sparse as kernel  # noqa: E402
from jenga.kernels.triton_key_phases import block_sparse_attention_key_phases  # noqa: E402

SECONDS = float(os.environ.get("JENGA_FUZZ_SECONDS", "75"))
MIN_CASES = int(os.environ.get("JENGA_FUZZ_MIN_CASES", "12"))
TOLERANCE = {torch.float32: 2e-4, torch.float16: 4e-3, torch.bfloat16: 3e-2}
DTYPES = (torch.bfloat16, torch.float16, torch.float32)
LAYOUTS = ("contiguous", "last_stride_2", "heads_major", "slice")
COUNTS: dict[str, object] = {}


def _float64_attention(q, k, v, block_mask, block_size, key_lengths, key_bias):
    """Dense float64 attention under the token mask of ``block_mask`` (rows without keys: 0, LSE -inf)."""
    batch, seq_q, heads, dim = q.shape
    seq_k = k.shape[1]
    outs, lses = [], []
    for b in range(batch):  # one sample at a time bounds the float64 logits
        qd, kd, vd = (t[b].double().transpose(0, 1) for t in (q, k, v))
        logits = qd @ kd.transpose(-1, -2) / math.sqrt(dim)
        if key_bias is not None:
            logits[..., key_bias[0]:] += key_bias[1]
        mask = block_mask[min(b, block_mask.shape[0] - 1)].expand(heads, -1, -1)
        mask = mask.repeat_interleave(block_size, 1)[:, :seq_q].repeat_interleave(block_size, 2)[..., :seq_k]
        if key_lengths is not None:
            mask = mask & (torch.arange(seq_k, device=q.device) < key_lengths[b])
        logits = logits.masked_fill(~mask, float("-inf"))
        lse = torch.logsumexp(logits, -1)
        probs = torch.nan_to_num(torch.exp(logits - lse.unsqueeze(-1)), nan=0.0)
        outs.append((probs @ vd).transpose(0, 1))
        lses.append(lse)
    return torch.stack(outs), torch.stack(lses)


def _lists(block_mask: torch.Tensor):
    """Ascending lists with a random spare capacity (padding holds junk ids past the count)."""
    counts = block_mask.sum(-1).to(torch.int32)
    order = torch.sort((~block_mask).to(torch.int8), dim=-1, stable=True).indices.to(torch.int32)
    junk = torch.randint_like(order, 0, 1 << 20)
    valid = torch.arange(order.shape[-1], device=order.device) < counts.unsqueeze(-1)
    return torch.where(valid, order, junk), counts


def _attention_case(rng: random.Random, case: int) -> dict:
    dtype = DTYPES[case % 3]
    dim = rng.choice((64, 128)) if case % 8 else 256
    block_size = rng.choice((128, 128, 64))
    batch, heads = rng.randint(1, 2), rng.randint(1, 3)
    seq_q = rng.randint(1, 4096)
    seq_k = seq_q if rng.random() < 0.5 else rng.randint(1, 4096)
    qb, kb = math.ceil(seq_q / block_size), math.ceil(seq_k / block_size)
    density = rng.choice((0.0, 0.1, 0.3, 0.7, 1.0))
    lb, lh = rng.choice((1, batch)), rng.choice((1, heads))
    block_mask = torch.rand(lb, lh, qb, kb, device="cuda") < density
    key_lengths = None
    if rng.random() < 0.4:
        key_lengths = torch.tensor([rng.randint(0, seq_k + 50) for _ in range(batch)], device="cuda",
                                   dtype=torch.int32)
    key_bias = (rng.randint(0, seq_k), rng.uniform(-3.0, 3.0)) if rng.random() < 0.3 else None
    return dict(dtype=dtype, dim=dim, block_size=block_size, batch=batch, heads=heads, seq_q=seq_q, seq_k=seq_k,
                block_mask=block_mask, key_lengths=key_lengths, key_bias=key_bias, layout=rng.choice(LAYOUTS),
                lse=rng.random() < 0.5, phases=rng.choice((1, 1, 1, 2, 3)))


def _tiles(rng: random.Random, c: dict, use_tma: bool) -> dict:
    q = torch.empty(1, 1, 1, c["dim"], dtype=c["dtype"], device="cuda")
    named = dict(Q=q, KV_BLOCK=c["block_size"], HEAD_DIM=c["dim"], IEEE=c["dtype"] == torch.float32,
                 USE_TMA=use_tma)
    cfg = rng.choice(kernel._prune_configs(kernel._configs(), named))
    return {**cfg.kwargs, "num_warps": cfg.num_warps, "num_stages": cfg.num_stages}


def _run_attention(rng: random.Random, c: dict) -> str | None:
    """None when the case passes, else what went wrong."""
    gen_shape = [(c["batch"], n, c["heads"], c["dim"]) for n in (c["seq_q"], c["seq_k"], c["seq_k"])]
    q, k, v = (torch.randn(s, device="cuda").to(c["dtype"]) for s in gen_shape)
    qv, kv_, vv = (in_layout(t, c["layout"]) for t in (q, k, v))
    index, count = _lists(c["block_mask"])
    bias = c["key_bias"]
    expected, expected_lse = _float64_attention(q, k, v, c["block_mask"], c["block_size"], c["key_lengths"], bias)
    scale = max(1.0, expected.abs().max().item())
    if c["dim"] == 256:  # the public path, autotuned (float32 at head dim 256 used to need too much shared memory)
        out = block_sparse_attention(qv, kv_, vv, index, count, block_size=c["block_size"],
                                     key_lengths=c["key_lengths"], key_bias=bias, backend="triton")
        lse = None
    else:
        out = torch.full(q.shape, float("nan"), dtype=c["dtype"], device="cuda")
        lse = torch.full((c["batch"], c["heads"], c["seq_q"] if c["lse"] else 0), float("nan"), device="cuda")
        use_tma = kernel._tma_default(*(kernel.unit_last_stride(t) for t in (qv, kv_, vv)))
        bias_start, bias_value = (c["seq_k"], 0.0) if bias is None else bias
        # the plain launcher for one phase, the opt-in key-phase launcher (same kernel, merged ranges) for more
        launch = kernel.block_sparse_attention_triton if c["phases"] == 1 else partial(
            block_sparse_attention_key_phases, key_phases=c["phases"])
        launch(qv, kv_, vv, index, count, c["block_size"], c["key_lengths"], bias_start, bias_value, c["lse"],
               out=out, lse=lse, config=_tiles(rng, c, use_tma))
    torch.cuda.synchronize()
    if not torch.isfinite(out).all():
        return "non-finite output (an unwritten or NaN element)"
    error = (out.double() - expected).abs().max().item() / scale
    if error > TOLERANCE[c["dtype"]]:
        return f"error {error:.3g} > {TOLERANCE[c['dtype']]}"
    if lse is not None and lse.numel():
        finite = torch.isfinite(expected_lse)
        if not torch.equal(torch.isfinite(lse), finite) or torch.isnan(lse).any():
            return "LSE finite where the reference is -inf (or NaN)"
        if finite.any() and (lse[finite].double() - expected_lse[finite]).abs().max().item() > 1e-2:
            return "LSE off"
    return None


def _run_selector(rng: random.Random) -> str | None:
    block_size = rng.choice((64, 128))
    num_video = rng.randint(block_size * 4, 6000)
    num_text = rng.choice((0, 0, 100, 300))
    heads, dim = rng.randint(1, 4), rng.choice((64, 128))
    dtype = rng.choice(DTYPES)
    q, k = (torch.randn(1, num_video + num_text, heads, dim, device="cuda").to(dtype) for _ in range(2))
    if rng.random() < 0.3:
        q[0, rng.randrange(num_video), rng.randrange(heads)] = rng.choice((float("inf"), float("-inf"), float("nan")))
    vb = math.ceil(num_video / block_size)
    adjacency = torch.rand(vb, vb, device="cuda") < 0.1 if rng.random() < 0.5 else None
    args = dict(drop_rate=rng.uniform(0.0, 0.95), cdf_threshold=rng.uniform(0.0, 1.0), block_size=block_size,
                num_video_tokens=num_video, adjacency=adjacency)
    a = select_blocks(in_layout(q, rng.choice(LAYOUTS)), k, backend="triton", **args)
    b = select_blocks(q, k, backend="torch", **args)
    if not (torch.equal(a.kv_index, b.kv_index) and torch.equal(a.kv_count, b.kv_count)):
        return f"selector lists differ ({args['drop_rate']:.2f}, p {args['cdf_threshold']:.2f})"
    return None


def _write_counts() -> None:
    """Write the counts so far to ``JENGA_FUZZ_OUT`` (after every case: a run stopped by a timeout keeps them)."""
    path = os.environ.get("JENGA_FUZZ_OUT")
    if path:
        with open(path, "w") as f:
            json.dump(COUNTS, f, indent=2, default=str)


def test_fuzz_attention_and_selector():
    rng = random.Random(int(os.environ.get("JENGA_FUZZ_SEED", "15")))
    torch.manual_seed(15)
    start = time.perf_counter()
    cases: Counter = Counter()
    failures: list[str] = []
    case = 0
    while case < MIN_CASES or time.perf_counter() - start < SECONDS:
        c = _attention_case(rng, case)
        tag = f"{str(c['dtype']).removeprefix('torch.')}/d{c['dim']}"
        try:
            problem = _run_attention(rng, c)
        except Exception as err:  # noqa: BLE001 - counted and reported
            problem = f"raised {type(err).__name__}: {str(err)[:200]}"
        cases[tag] += 1
        if problem:
            failures.append(f"case {case} {tag} Nq={c['seq_q']} Nk={c['seq_k']} bs={c['block_size']} "
                            f"layout={c['layout']} lengths={c['key_lengths'] is not None} bias={c['key_bias']} "
                            f"phases={c['phases']}: {problem}")
        if case % 3 == 2:
            cases["selector"] += 1
            try:
                problem = _run_selector(rng)
            except Exception as err:  # noqa: BLE001
                problem = f"selector raised {type(err).__name__}: {str(err)[:200]}"
            if problem:
                failures.append(f"case {case}: {problem}")
        case += 1
        COUNTS.update(cases=dict(cases), attention_cases=case, failures=failures,
                      seconds=time.perf_counter() - start, device=torch.cuda.get_device_name(),
                      torch=torch.__version__, finished=False)
        _write_counts()
    COUNTS["finished"] = True
    _write_counts()
    print(json.dumps(COUNTS, indent=2, default=str))
    assert not failures, "\n".join(failures)
