"""Triton forward kernel for block-sparse attention over FlexAttention-style block lists.

One program computes one ``BLOCK_M`` tile of queries (inside one query block) for one (batch, head).
It walks only the key blocks listed for its query block (``kv_index[b, h, qb, :kv_count[b, h, qb]]``),
keeping an online softmax in float32 with ``exp2``. Listed blocks are ascending, so at most the last
block that starts before the key limit (``min(Nk, key_lengths[b])``) is partial: every other block runs
the unmasked loop, that one alone the masked path.

The kernel can also run over one contiguous range of key blocks (``SPLIT``), fold in the normalised output
and log-sum-exp of earlier ranges (``MERGE_IN``) and write a float32 partial instead of ``out`` (not
``FINAL``): the opt-in key phases of :mod:`jenga.kernels.triton_key_phases` (measured slower; off by
default). The launcher here runs one phase over every key block.

Layout: q/k/v/out are ``[B, N, H, D]`` (diffusers' layout, any strides; the launcher copies a view whose last
stride is not 1);
LSE is ``float32[B, H, Nq]`` in natural-log units.
"""

from __future__ import annotations

import logging
import math
import os

import torch
import triton
import triton.language as tl
from triton.runtime.errors import OutOfResources

from ..backends import interpreting, unit_last_stride
from . import tuning
from .triton_autotune_timer import tuning_bench

logger = logging.getLogger("jenga")

_LOG2E = 1.4426950408889634
LN2: tl.constexpr = tl.constexpr(0.6931471805599453)  # the kernel works in log2 units; the LSE is stored in ln
# list entries read per step when counting the blocks before the key limit (and, for key phases, before kb_lo)
LIST_CHUNK: tl.constexpr = tl.constexpr(256)
# stands in for list entries past the count: a block id above every real one (never below any limit)
PAST_EVERY_BLOCK: tl.constexpr = tl.constexpr(0x3FFFFFFF)


def _configs() -> list[triton.Config]:
    shapes = [(128, 64, 4, 3), (128, 64, 4, 2), (128, 64, 4, 4), (128, 128, 8, 2), (128, 128, 8, 3),
              (128, 64, 8, 3), (64, 64, 4, 3)]
    # Q_TMA: queries through a tensor descriptor into shared memory, where the first matmul reads them. Built
    # for sm_90 (Triton 3.9, cuobjdump -res-usage), it takes 128x128/8-warp tiles from 255 registers and a
    # 192-byte spill stack to 221 registers and none; offered to the autotuner beside the register path (only
    # where tensor descriptors are used at all). On an H200 (Triton 3.6) the autotuner still picks the register
    # path's 128x64/4-warp tiles, despite their 1,624-byte spill stack; the same tiles with q through a
    # descriptor (192 bytes) ran 25 % slower (16.43 against 13.19 ms, Wan 1.3B dense), so they are not offered.
    with_q_tma = [(128, 128, 8, 2), (128, 128, 8, 3), (128, 64, 8, 3)]
    return ([triton.Config({"BLOCK_M": m, "BLOCK_N": n, "Q_TMA": False}, num_warps=w, num_stages=s)
             for m, n, w, s in shapes]
            + [triton.Config({"BLOCK_M": m, "BLOCK_N": n, "Q_TMA": True}, num_warps=w, num_stages=s)
               for m, n, w, s in with_q_tma])


# Shared memory per block when the device cannot be asked (the opt-in limit of an H100 / H200).
_DEFAULT_SHARED_MEMORY = 227 * 1024
# Smaller tiles, tried in turn when no tuned config fits (float32 at head dim 256): (BLOCK_M, BLOCK_N, warps, stages)
_FALLBACK_TILES = ((64, 64, 4, 2), (64, 32, 4, 2), (32, 32, 4, 2), (32, 32, 4, 1), (16, 16, 4, 1))


def shared_memory_estimate(block_m: int, block_n: int, num_stages: int, head_dim: int, element_size: int,
                           q_tma: bool = False) -> int:
    """Bytes of shared memory a config needs at least: ``num_stages`` buffers of one key and one value tile
    (the software pipeline's), plus the query tile when it goes through a descriptor. A lower bound (layout
    conversions take more); the launcher still falls back to smaller tiles when Triton reports too little."""
    kv = num_stages * 2 * block_n * head_dim * element_size
    return kv + (block_m * head_dim * element_size if q_tma else 0)


def shared_memory_limit(device: torch.device | None) -> int:
    """Opt-in shared memory per block of ``device`` (the H100 / H200 figure off CUDA)."""
    if device is None or device.type != "cuda":
        return _DEFAULT_SHARED_MEMORY
    props = torch.cuda.get_device_properties(device)
    return int(getattr(props, "shared_memory_per_block_optin", 0) or _DEFAULT_SHARED_MEMORY)


def _fallback_configs(kv_block: int, head_dim: int, element_size: int, limit: int) -> list[triton.Config]:
    """The fallback tiles that divide the block and fit ``limit`` by :func:`shared_memory_estimate`."""
    out = []
    for m, n, w, stages in _FALLBACK_TILES:
        if kv_block % m or kv_block % n or shared_memory_estimate(m, n, stages, head_dim, element_size) > limit:
            continue
        out.append(triton.Config({"BLOCK_M": m, "BLOCK_N": n, "Q_TMA": False}, num_warps=w, num_stages=stages))
    return out


def _prune_configs(configs, named_args, **kwargs):
    """Query tiles must sit inside one query block and key sub-tiles inside one key block; the tiles' key and
    value buffers must fit the device's shared memory (float32 at head dim 256 needs small tiles)."""
    kv_block = kwargs.get("KV_BLOCK", named_args.get("KV_BLOCK"))
    head_dim = kwargs.get("HEAD_DIM", named_args.get("HEAD_DIM"))
    ieee = kwargs.get("IEEE", named_args.get("IEEE"))
    use_tma = kwargs.get("USE_TMA", named_args.get("USE_TMA"))
    q = named_args.get("Q")
    element_size = q.element_size() if isinstance(q, torch.Tensor) else (4 if ieee else 2)
    limit = shared_memory_limit(q.device if isinstance(q, torch.Tensor) else None)
    kept = []
    for cfg in configs:
        m, n = cfg.kwargs["BLOCK_M"], cfg.kwargs["BLOCK_N"]
        if cfg.kwargs.get("Q_TMA") and not use_tma:
            continue
        if kv_block % m or kv_block % n:
            continue
        if head_dim > 128 and m * n > 128 * 64:  # register pressure at head dim 256
            continue
        if ieee and m * n > 64 * 64:  # exact float32 dots run on FMA units: small tiles, quick compiles
            continue
        if shared_memory_estimate(m, n, cfg.num_stages, head_dim, element_size, cfg.kwargs.get("Q_TMA")) > limit:
            continue
        kept.append(cfg)
    return kept or _fallback_configs(kv_block, head_dim, element_size, limit)[:1]


@triton.jit
def _load_kv_tile(
    k_base, v_base, k_desc, v_desc, b, h, n0, stride_kn, stride_vn, offs_d, key_limit,
    BLOCK_N: tl.constexpr, HEAD_DIM: tl.constexpr, MASKED: tl.constexpr, USE_TMA: tl.constexpr,
    UPCAST: tl.constexpr,
):
    """Keys (transposed, ``[D, BLOCK_N]``) and values (``[BLOCK_N, D]``) of keys ``n0 .. n0+BLOCK_N``.

    TMA loads zero-fill rows past ``Nk``; rows between the key limit and ``Nk`` are masked by the caller.
    """
    if USE_TMA:
        k = tl.trans(k_desc.load([b, n0, h, 0]).reshape(BLOCK_N, HEAD_DIM))
        v = v_desc.load([b, n0, h, 0]).reshape(BLOCK_N, HEAD_DIM)
    else:
        offs_n = n0 + tl.arange(0, BLOCK_N)
        k_ptrs = k_base + offs_n[None, :] * stride_kn + offs_d[:, None]
        v_ptrs = v_base + offs_n[:, None] * stride_vn + offs_d[None, :]
        if MASKED:
            valid = offs_n < key_limit
            k = tl.load(k_ptrs, mask=valid[None, :], other=0.0)
            v = tl.load(v_ptrs, mask=valid[:, None], other=0.0)
        else:
            k = tl.load(k_ptrs)
            v = tl.load(v_ptrs)
    if UPCAST:
        k = k.to(tl.float32)
        v = v.to(tl.float32)
    return k, v


@triton.jit
def _attend_tile(
    acc, l_i, m_i, q, k, v, n0, key_limit, qk_scale, bias_start, bias_log2,
    BLOCK_N: tl.constexpr, MASKED: tl.constexpr, HAS_BIAS: tl.constexpr, IEEE: tl.constexpr,
):
    """One ``BLOCK_N`` tile of keys folded into the running softmax state (log2 domain)."""
    if IEEE:
        qk = tl.dot(q, k, input_precision="ieee")
    else:
        qk = tl.dot(q, k)
    if MASKED or HAS_BIAS:
        offs_n = n0 + tl.arange(0, BLOCK_N)
        qk = qk * qk_scale
        if HAS_BIAS:
            qk += tl.where(offs_n >= bias_start, bias_log2, 0.0)[None, :]
        if MASKED:
            qk = tl.where((offs_n < key_limit)[None, :], qk, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(qk, 1))
        m_ref = tl.where(m_new == float("-inf"), 0.0, m_new)  # rows with no valid key yet: no NaN
        p = tl.math.exp2(qk - m_ref[:, None])
    else:
        # scale folded into one fused multiply-add per logit
        m_new = tl.maximum(m_i, tl.max(qk, 1) * qk_scale)
        m_ref = m_new
        p = tl.math.exp2(qk * qk_scale - m_ref[:, None])
    alpha = tl.math.exp2(m_i - m_ref)
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None]
    if IEEE:
        acc = tl.dot(p.to(v.dtype), v, acc, input_precision="ieee")
    else:
        acc = tl.dot(p.to(v.dtype), v, acc)
    return acc, l_i, m_new


# Integer arguments that follow the video's size (lengths, the list and LSE strides) are not specialised on
# (Triton would otherwise compile a variant per divisibility by 16): every progressive stage, resolution and
# frame count runs one binary, so a first generation compiles the kernel once (issue 18; measured on an H200,
# each compile of this kernel takes 2.1-2.4 s). q/k/v/out strides stay specialised: their alignment lets the
# loads vectorise, and it does not change with the size.
_SIZE_ARGUMENTS = ["seq_q", "seq_k", "bias_start", "len_bucket", "kb_lo", "kb_hi", "stride_lb", "stride_lh",
                   "stride_ib", "stride_ih", "stride_iq", "stride_cb", "stride_ch", "stride_plb", "stride_plh"]


@triton.jit(do_not_specialize=_SIZE_ARGUMENTS)
def _block_sparse_fwd(
    Q, K, V, Out, Lse, KvIndex, KvCount, KeyLengths, Part, PartLse, Order,
    stride_qb, stride_qn, stride_qh,
    stride_kb, stride_kn, stride_kh,
    stride_vb, stride_vn, stride_vh,
    stride_ob, stride_on, stride_oh,
    stride_lb, stride_lh,
    stride_ib, stride_ih, stride_iq,
    stride_cb, stride_ch,
    stride_pb, stride_pn, stride_ph,
    stride_plb, stride_plh,
    batch, num_heads, seq_q, seq_k, qk_scale, bias_start, bias_log2, len_bucket, kb_lo, kb_hi,
    HEAD_DIM: tl.constexpr, KV_BLOCK: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    HAS_KEY_LENGTHS: tl.constexpr, HAS_BIAS: tl.constexpr, WRITE_LSE: tl.constexpr,
    UPCAST: tl.constexpr, IEEE: tl.constexpr, USE_TMA: tl.constexpr, Q_TMA: tl.constexpr,
    SPLIT: tl.constexpr, MERGE_IN: tl.constexpr, FINAL: tl.constexpr, LONGEST_FIRST: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    if LONGEST_FIRST:
        # programs start in launch order: the n-th takes a tile of the n-th longest list, Order holding the
        # flat (b, h, query block) indices sorted by descending kv_count (tiles past Nq get an empty list)
        pos = pid_bh * tl.num_programs(0) + pid_m
        flat = tl.load(Order + pos // (KV_BLOCK // BLOCK_M))
        num_qb = tl.cdiv(seq_q, KV_BLOCK)
        qb = flat % num_qb
        b = (flat // num_qb) // num_heads
        h = (flat // num_qb) % num_heads
        q_start = qb * KV_BLOCK + (pos % (KV_BLOCK // BLOCK_M)) * BLOCK_M
    else:
        b = pid_bh // num_heads
        h = pid_bh % num_heads
        q_start = pid_m * BLOCK_M
        qb = q_start // KV_BLOCK
    b64 = b.to(tl.int64)
    h64 = h.to(tl.int64)

    # -- this program's query tile, inside query block `qb`
    offs_m = q_start + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    if Q_TMA:  # through shared memory: the first matmul reads q there instead of from registers
        q_desc = tl.make_tensor_descriptor(Q, shape=[batch, seq_q, num_heads, HEAD_DIM],
                                           strides=[stride_qb, stride_qn, stride_qh, 1],
                                           block_shape=[1, BLOCK_M, 1, HEAD_DIM])
        q = q_desc.load([b, q_start, h, 0]).reshape(BLOCK_M, HEAD_DIM)
    else:
        q_rows = offs_m[:, None].to(tl.int64) * stride_qn
        q = tl.load(Q + b64 * stride_qb + h64 * stride_qh + q_rows + offs_d[None, :], mask=offs_m[:, None] < seq_q,
                    other=0.0)
    if UPCAST:
        q = q.to(tl.float32)

    k_base = K + b64 * stride_kb + h64 * stride_kh
    v_base = V + b64 * stride_vb + h64 * stride_vh
    k_desc = None
    v_desc = None
    if USE_TMA:
        k_desc = tl.make_tensor_descriptor(K, shape=[batch, seq_k, num_heads, HEAD_DIM],
                                           strides=[stride_kb, stride_kn, stride_kh, 1],
                                           block_shape=[1, BLOCK_N, 1, HEAD_DIM])
        v_desc = tl.make_tensor_descriptor(V, shape=[batch, seq_k, num_heads, HEAD_DIM],
                                           strides=[stride_vb, stride_vn, stride_vh, 1],
                                           block_shape=[1, BLOCK_N, 1, HEAD_DIM])
    idx_base = KvIndex + b64 * stride_ib + h64 * stride_ih + qb * stride_iq
    count = tl.load(KvCount + b64 * stride_cb + h64 * stride_ch + qb)
    if LONGEST_FIRST:
        count = tl.where(q_start < seq_q, count, 0)

    # -- this launch's entries of the list: [first, n_valid). Lists ascend, so the blocks that start before
    # the key limit form a prefix, and a key phase [kb_lo, kb_hi) is a contiguous run of entries.
    key_limit = seq_k
    first = 0
    n_valid = count
    if HAS_KEY_LENGTHS:
        key_limit = tl.minimum(seq_k, tl.load(KeyLengths + b))
    if HAS_KEY_LENGTHS or SPLIT:
        upper = tl.cdiv(key_limit, KV_BLOCK)
        if SPLIT:
            upper = tl.minimum(upper, kb_hi)
        n_valid = 0
        for c in range(0, count, LIST_CHUNK):
            offs_c = c + tl.arange(0, LIST_CHUNK)
            ids = tl.load(idx_base + offs_c, mask=offs_c < count, other=PAST_EVERY_BLOCK)
            n_valid += tl.sum((ids < upper).to(tl.int32))
            if SPLIT:
                first += tl.sum((ids < kb_lo).to(tl.int32))
        n_valid = tl.maximum(n_valid, first)
    # at most the last of them straddles the limit: it alone takes the masked path
    last_kb = tl.load(idx_base + tl.maximum(n_valid - 1, 0))
    straddles = (n_valid > first) & ((last_kb + 1) * KV_BLOCK > key_limit)
    n_full = n_valid - straddles.to(tl.int32)

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)

    # -- full blocks: one flat loop over (listed block, key sub-tile) so Triton can pipeline it
    SUB: tl.constexpr = KV_BLOCK // BLOCK_N
    for it in range(first * SUB, n_full * SUB):
        kb = tl.load(idx_base + it // SUB)
        n0 = kb * KV_BLOCK + (it % SUB) * BLOCK_N
        k, v = _load_kv_tile(k_base, v_base, k_desc, v_desc, b, h, n0, stride_kn, stride_vn, offs_d, key_limit,
                             BLOCK_N, HEAD_DIM, False, USE_TMA, UPCAST)
        acc, l_i, m_i = _attend_tile(acc, l_i, m_i, q, k, v, n0, key_limit, qk_scale, bias_start, bias_log2,
                                     BLOCK_N, False, HAS_BIAS, IEEE)

    # -- the one block that may straddle the key limit
    if straddles:
        for sub in tl.static_range(SUB):
            n0 = last_kb * KV_BLOCK + sub * BLOCK_N
            k, v = _load_kv_tile(k_base, v_base, k_desc, v_desc, b, h, n0, stride_kn, stride_vn, offs_d,
                                 key_limit, BLOCK_N, HEAD_DIM, True, USE_TMA, UPCAST)
            acc, l_i, m_i = _attend_tile(acc, l_i, m_i, q, k, v, n0, key_limit, qk_scale, bias_start, bias_log2,
                                         BLOCK_N, True, HAS_BIAS, IEEE)

    # -- epilogue: rows that saw no valid key get 0 and LSE = -inf (log2 units until stored as LSE)
    has_key = l_i > 0.0
    out = acc / tl.where(has_key, l_i, 1.0)[:, None]
    lse2 = tl.where(has_key, m_i + tl.math.log2(tl.where(has_key, l_i, 1.0)), float("-inf"))
    row_ok = offs_m < seq_q
    p_ptrs = Part + b64 * stride_pb + h64 * stride_ph + offs_m[:, None].to(tl.int64) * stride_pn + offs_d[None, :]
    pl_ptrs = PartLse + b64 * stride_plb + h64 * stride_plh + offs_m
    if MERGE_IN:  # fold in the earlier key phases' normalised output and log-sum-exp
        prev = tl.load(p_ptrs, mask=row_ok[:, None], other=0.0)
        prev_lse2 = tl.load(pl_ptrs, mask=row_ok, other=float("-inf"))
        top = tl.maximum(prev_lse2, lse2)
        top = tl.where(top == float("-inf"), 0.0, top)
        w_prev = tl.math.exp2(prev_lse2 - top)
        w_cur = tl.math.exp2(lse2 - top)
        total = w_prev + w_cur
        has_key = total > 0.0
        out = (prev * w_prev[:, None] + out * w_cur[:, None]) / tl.where(has_key, total, 1.0)[:, None]
        lse2 = tl.where(has_key, top + tl.math.log2(tl.where(has_key, total, 1.0)), float("-inf"))
    if FINAL:
        o_rows = offs_m[:, None].to(tl.int64) * stride_on
        tl.store(Out + b64 * stride_ob + h64 * stride_oh + o_rows + offs_d[None, :], out.to(Out.dtype.element_ty),
                 mask=row_ok[:, None])
        if WRITE_LSE:
            tl.store(Lse + b64 * stride_lb + h64 * stride_lh + offs_m, lse2 * LN2, mask=row_ok)
    else:
        tl.store(p_ptrs, out, mask=row_ok[:, None])
        tl.store(pl_ptrs, lse2, mask=row_ok)


# Tuned per head dim, block size and length bucket -- never per list contents, so one tuning serves
# every step. The interpreter cannot benchmark, so it calls the plain kernel with one small tile.
_block_sparse_fwd_tuned = triton.autotune(
    configs=_configs(), key=["HEAD_DIM", "KV_BLOCK", "len_bucket", "IEEE", "USE_TMA"],
    prune_configs_by={"early_config_prune": _prune_configs}, do_bench=tuning_bench,
)(_block_sparse_fwd)


def block_sparse_attention_triton(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    kv_index: torch.Tensor,
    kv_count: torch.Tensor,
    block_size: int,
    key_lengths: torch.Tensor | None,
    bias_start: int,
    bias_value: float,
    return_lse: bool,
    out: torch.Tensor | None = None,
    lse: torch.Tensor | None = None,
    config: dict[str, int] | None = None,
    use_tma: bool | None = None,
    autotune: bool | None = None,
    longest_first: bool | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Launch the kernel on validated inputs; returns ``(out, lse)`` (lse empty unless asked).

    ``out`` / ``lse`` may be given as preallocated buffers (tests poison them to catch unwritten elements).
    ``config`` (``BLOCK_M``, ``BLOCK_N``, ``num_warps``, ``num_stages``, optional ``Q_TMA``) bypasses the
    autotuner (benchmarks). ``use_tma`` loads keys and values (and, where the config says so, queries) through
    tensor descriptors (default: on Hopper and newer when the layout of q, k and v allows it). The opt-in
    key-phase launcher is :mod:`jenga.kernels.triton_key_phases`. Without ``config`` the tiles come from the
    shipped tuning table (:mod:`jenga.kernels.tuning`); ``autotune`` (default: ``JENGA_AUTOTUNE=1``) sweeps
    them instead and saves the pick in the user's cache. ``longest_first`` (default: ``JENGA_LONGEST_FIRST=1``,
    off otherwise) starts the query tiles of the longest lists first, over all heads, in an order sorted on the
    device (no host synchronisation): fewer idle multiprocessors at the end when counts vary.
    """
    # Hopper's Gluon kernel unless the caller asks for something of this kernel's own: tiles, TMA or not, an
    # autotuning sweep (jenga.kernels.tune), the longest-first order (JENGA_GLUON=0 turns it off altogether)
    portable_asked = config is not None or use_tma is not None or autotune or longest_first
    if not portable_asked and _gluon_wanted(q, k, v, block_size, bias_value):
        from .gluon_block_sparse import launch_prechecked

        try:
            return launch_prechecked(q, k, v, kv_index, kv_count, key_lengths, return_lse, out, lse,
                                     key_bias=(bias_start, bias_value))
        except Exception as err:  # noqa: BLE001 - a compile the installed Triton cannot do: the portable kernel
            if not _gluon_failed(q, err):
                raise
    launch, out, lse = _launcher(q, k, v, kv_index, kv_count, block_size, key_lengths, bias_start, bias_value,
                                 return_lse, out, lse, config, use_tma, autotune=autotune,
                                 longest_first=longest_first)
    # one phase over every key block: the partial output is never read nor written (FINAL with no MERGE_IN)
    launch(out, lse, 0, triton.cdiv(k.shape[1], block_size), split=False, merge_in=False, final=True)
    return out, lse


def _launcher(q, k, v, kv_index, kv_count, block_size, key_lengths, bias_start, bias_value, return_lse,
              out, lse, config, use_tma, *, autotune: bool | None = None, longest_first: bool | None = None):
    """``(launch, out, lse)``: ``launch(part, part_lse, kb_lo, kb_hi, *, split, merge_in, final)`` runs the
    kernel once over key blocks ``[kb_lo, kb_hi)`` with everything else fixed here."""
    # the kernel reads rows with a unit stride in the last dimension; any other view is copied (once)
    q, k, v = (unit_last_stride(t) for t in (q, k, v))
    batch, seq_q, heads, head_dim = q.shape
    seq_k = k.shape[1]
    if out is None:
        out = torch.empty_like(q)
    if lse is None:
        lse = torch.empty((batch, heads, seq_q if return_lse else 0), device=q.device, dtype=torch.float32)
    kv_index = kv_index.expand(batch, heads, -1, -1)
    kv_count = kv_count.expand(batch, heads, -1)
    has_key_lengths = key_lengths is not None
    key_lengths_arg = key_lengths if has_key_lengths else kv_count  # any int32 tensor, never read
    has_bias = bias_value != 0.0 and bias_start < seq_k
    upcast = interpreting() and q.dtype in (torch.bfloat16, torch.float16)
    user_config = config  # a caller's tiles are used as given; the table's fall back when they do not fit
    if autotune is None:
        autotune = tuning.autotune_requested()
    if config is None and not autotune and not interpreting():  # the shipped table: no sweep in a user's run
        choice = tuning.choose(q.device, head_dim, q.dtype, block_size, seq_k, _tma_default(q, k, v), use_tma)
        config, use_tma = choice.config, choice.use_tma
    if use_tma is None:
        use_tma = _tma_default(q, k, v)
    if use_tma:
        _ensure_descriptor_allocator()

    if longest_first is None:
        longest_first = os.environ.get("JENGA_LONGEST_FIRST", "0") == "1"
    num_qb = triton.cdiv(seq_q, block_size)
    if longest_first:  # flat (b, h, query block) indices, longest list first; ties keep launch order
        order = torch.argsort(kv_count.reshape(-1), descending=True, stable=True).to(torch.int32)
    else:
        order = kv_count  # never read

    def grid(meta):
        if longest_first:  # every query block gets KV_BLOCK // BLOCK_M tiles, the last one's past Nq idle
            return (num_qb * (block_size // meta["BLOCK_M"]), batch * heads)
        return (triton.cdiv(seq_q, meta["BLOCK_M"]), batch * heads)

    if config is not None:
        kernel, tiles = _block_sparse_fwd, {"Q_TMA": False, **config}
        tiles["Q_TMA"] = bool(tiles["Q_TMA"]) and use_tma
    elif interpreting():
        tile = min(32, block_size)
        kernel, tiles = _block_sparse_fwd, {"BLOCK_M": tile, "BLOCK_N": tile, "Q_TMA": use_tma}
    else:
        kernel, tiles = _block_sparse_fwd_tuned, {}

    fallback_key = (head_dim, block_size, q.dtype, q.device)
    if user_config is None and fallback_key in _FALLBACK_PICKS:
        kernel, tiles = _block_sparse_fwd, _FALLBACK_PICKS[fallback_key]

    def run(kernel, tiles, part, part_lse, kb_lo: int, kb_hi: int, split: bool, merge_in: bool,
            final: bool) -> None:
        kernel[grid](
            q, k, v, out, lse, kv_index, kv_count, key_lengths_arg, part, part_lse, order,
            q.stride(0), q.stride(1), q.stride(2),
            k.stride(0), k.stride(1), k.stride(2),
            v.stride(0), v.stride(1), v.stride(2),
            out.stride(0), out.stride(1), out.stride(2),
            lse.stride(0), lse.stride(1),
            kv_index.stride(0), kv_index.stride(1), kv_index.stride(2),
            kv_count.stride(0), kv_count.stride(1),
            part.stride(0), part.stride(1), part.stride(2),
            part_lse.stride(0), part_lse.stride(1),
            batch, heads, seq_q, seq_k, _LOG2E / math.sqrt(head_dim), bias_start, bias_value * _LOG2E,
            triton.next_power_of_2(seq_k), kb_lo, kb_hi,
            HEAD_DIM=head_dim, KV_BLOCK=block_size,
            HAS_KEY_LENGTHS=has_key_lengths, HAS_BIAS=has_bias, WRITE_LSE=return_lse, UPCAST=upcast,
            IEEE=q.dtype == torch.float32, USE_TMA=use_tma,
            SPLIT=split, MERGE_IN=merge_in, FINAL=final, LONGEST_FIRST=longest_first, **tiles,
        )
        if kernel is _block_sparse_fwd_tuned:
            _save_autotuned_pick(q, block_size, seq_k, use_tma)

    def launch(part, part_lse, kb_lo: int, kb_hi: int, *, split: bool, merge_in: bool, final: bool) -> None:
        nonlocal kernel, tiles
        phase = (part, part_lse, kb_lo, kb_hi, split, merge_in, final)
        try:
            run(kernel, tiles, *phase)
        except OutOfResources as err:  # raised when the binary is loaded, before anything is written
            if user_config is not None:
                raise ValueError(f"config {config} needs more GPU resources than there are ({err}); pass smaller "
                                 "tiles or no config (the launcher then picks tiles that fit)") from err
            for cand in _fallback_configs(block_size, head_dim, q.element_size(), 1 << 62):
                cand_tiles = {**cand.kwargs, "num_warps": cand.num_warps, "num_stages": cand.num_stages}
                try:
                    run(_block_sparse_fwd, cand_tiles, *phase)
                except OutOfResources:
                    continue
                kernel, tiles = _block_sparse_fwd, cand_tiles
                _FALLBACK_PICKS[fallback_key] = cand_tiles
                logger.info("jenga: kernel tiles %s for head dim %d, %s (the tuned ones exceed the GPU's "
                            "resources)", cand_tiles, head_dim, q.dtype)
                break
            else:
                raise ValueError(f"the triton kernel has no tile shape that fits this GPU at head dim {head_dim} "
                                 f"in {q.dtype} ({err}); use bfloat16 / float16, or backend='torch' or 'flex'"
                                 ) from err

    return launch, out, lse


# (head dim, block size, dtype, device) -> the fallback tiles that ran where the tuned configs did not fit
_FALLBACK_PICKS: dict[tuple, dict] = {}


def _gluon_wanted(q, k, v, block_size: int, bias_value: float) -> bool:
    """The Gluon kernel runs where it applies (Hopper; see ``gluon_applies``) unless ``JENGA_GLUON=0``: its
    ping-pong schedule runs each block at 0.83-1.10 of cuDNN's dense rate, 1.05-1.29x this kernel (H200,
    benchmarks/RESULTS.md)."""
    if os.environ.get("JENGA_GLUON", "") == "0" or not q.is_cuda or (q.dtype, q.shape[-1], q.device) in _gluon_broken:
        return False
    from .gluon_block_sparse import gluon_applies

    reason = gluon_applies(q, k, v, block_size, bias_value)
    if reason is not None:
        _log_gluon_fallback(reason)
    return reason is None


_gluon_fallbacks: set[str] = set()
_gluon_broken: set[tuple] = set()  # (dtype, head dim, device) whose Gluon compile failed in this process


def _gluon_failed(q: torch.Tensor, err: Exception) -> bool:
    """True (and a warning, once) when the Gluon kernel failed to compile for this kind of input: the portable
    kernel runs instead from then on. False for anything else (a launch error, bad inputs): re-raised."""
    compile_error = type(err).__name__ in ("CompilationError", "PTXASError") or "PassManager" in str(err)
    if not compile_error:
        return False
    key = (q.dtype, q.shape[-1], q.device)
    if key not in _gluon_broken:
        _gluon_broken.add(key)
        logger.warning("jenga: the Gluon attention kernel failed to compile here (%s: %s); the portable Triton "
                       "kernel runs instead (JENGA_GLUON=0 skips the attempt)", type(err).__name__, str(err)[:300])
    return True


def _log_gluon_fallback(reason: str) -> None:
    """Once per reason and process: why the portable kernel runs instead of the Gluon one (debug level on
    GPUs that are not Hopper, where that is expected; info on Hopper, where it costs speed)."""
    if reason in _gluon_fallbacks:
        return
    _gluon_fallbacks.add(reason)
    level = logging.DEBUG if reason.startswith(("needs a Hopper", "triton.experimental", "Gluon does not")) \
        else logging.INFO
    logger.log(level, "jenga: the portable Triton attention kernel runs (Gluon kernel: %s)", reason)


_saved_picks: set[tuple] = set()


def _save_autotuned_pick(q: torch.Tensor, block_size: int, seq_k: int, use_tma: bool) -> None:
    """Once per process and autotuning key: the autotuner's pick into the user's cache."""
    key = (q.device.index, q.shape[3], q.dtype, block_size, tuning.length_bucket(seq_k), use_tma)
    config = last_tuned_config()
    if key in _saved_picks or config is None:
        return
    _saved_picks.add(key)
    try:
        tuning.record_pick(q.device, q.shape[3], q.dtype, block_size, seq_k, use_tma, config)
    except OSError as err:  # a read-only home must not fail the attention call
        logger.warning("jenga: could not save the kernel tuning (%s)", err)


def last_tuned_config() -> dict[str, int] | None:
    """Tiles, warps and stages the autotuner used for the latest tuned launch (None before any): the pick is
    made once per process and key, so benchmarks record it beside their timings."""
    config = getattr(_block_sparse_fwd_tuned, "best_config", None)
    if config is None:
        return None
    return {**config.kwargs, "num_warps": config.num_warps, "num_stages": config.num_stages}


def _tma_default(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> bool:
    """Tensor descriptors need Hopper (sm_90) or newer, 16-byte aligned bases and non-unit strides."""
    if not k.is_cuda or torch.cuda.get_device_capability(k.device)[0] < 9:
        return False
    return all(_tma_compatible(t) for t in (q, k, v))


def _tma_compatible(t: torch.Tensor) -> bool:
    """16-byte aligned base and strides, unit last stride, no broadcast (zero) stride."""
    size = t.element_size()
    return (t.data_ptr() % 16 == 0 and t.stride(-1) == 1
            and all(s > 0 and (s * size) % 16 == 0 for s in t.stride()[:3]))


def _descriptor_scratch(size: int, alignment: int, stream) -> torch.Tensor:
    device = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.empty(size, dtype=torch.int8, device=device)


def _ensure_descriptor_allocator() -> None:
    """Device-side tensor descriptors need a little global scratch memory, taken from torch's allocator.

    Triton keeps the allocator in a ``ContextVar``: a thread starts without the one another thread set, so it
    is set on every launch that uses descriptors (a context-variable write), not once per process -- a
    pipeline run from a worker thread (a web UI's, a thread pool's) would otherwise fail at its first launch.
    """
    triton.set_allocator(_descriptor_scratch)
