"""Hopper's block-sparse attention forward in Gluon: FlashAttention-3's schedule for jenga's block lists.

Hopper's default (:func:`jenga.block_sparse_attention` with the Triton backend routes here where
:func:`gluon_applies` says it can; ``JENGA_GLUON=0`` turns it off). Everywhere else (other GPUs, the CPU
interpreter, explicit tiles or autotuning) the portable Triton kernel (:mod:`.triton_block_sparse`) runs.
Gluon does not run in the CPU interpreter: ``tests/test_gluon_compile.py`` compiles it for sm_90 on the CPU,
``tests/gpu/test_gluon_gpu.py`` checks it on an H200 against a float64 reference.

Structure (the default schedule, ``"pingpong"``):

- one program per 128-query block and (batch, head); three partitions: two consumer warpgroups (64 query
  rows each) and one producer warp;
- the producer walks the block list and TMA-loads each listed key and value block into a ring of
  ``NUM_STAGES`` shared-memory buffers (``k_ready`` / ``v_ready`` mbarriers); both consumers release a
  buffer through ``kv_empty`` once their P·V has read it;
- the consumers take turns issuing their ``wgmma`` (a token passed through two mbarriers), so one's softmax
  (float32, ``exp2``, scale and log2(e) folded into one FMA per score) runs while the other's products occupy the
  tensor cores; within each, block i+1's Q·Kᵀ and block i's P·V are issued together and block i+1's
  softmax runs while that P·V is in flight; each writes its own rows of the output and LSE;
- the block that straddles the key limit (key lengths, or Nk not a multiple of 128) is the only one masked.

Measured on an H200 (benchmarks/RESULTS.md, same run as FlexAttention, FlashAttention-4 and cuDNN): each computed
block at 0.93-1.12 of cuDNN's dense rate, 1.42-1.52x FlexAttention, 0.85-0.99x FlashAttention-4's block-sparse
forward (``backend="fa4"``), and 1.05-1.29x the portable Triton kernel (an earlier run). Kept for A/B
runs (``schedule=``): ``"pingpong-plain"`` (the turns without the overlap) and the single 8-warp consumer,
``"plain"`` and ``"pipelined"``, which ran no faster than the Triton kernel.
``"pingpong-named"``: the ping-pong turns passed through two hardware named barriers, as FlashAttention-3 and -4
do, instead of mbarriers, whose single-thread arrive costs a warpgroup ``bar.sync`` each (an A/B option).
The ping-pong halves store O through their own half of the Q buffer and TMA, as FlashAttention-4 does, where
head dim is 128 and ``out`` is contiguous and of q's dtype (``JENGA_GLUON_TMA_OUT=0``: masked stores): 4 % faster
overall, 9-17 % at density 0.10, where the epilogue weighs more (two same-run A/B runs on an H200).
Key bias (HunyuanVideo's text amplifier): the blocks that hold biased keys, a suffix of each ascending list
found by one scan, take a biased softmax step. ``"pingpong-persistent"`` (an A/B option): one program per SM walks
the query tiles, the ring, turns and query buffer running on across tiles; correct, but 0.96x the per-tile kernel on
an H200 (geometric mean of 15 rows, bdbc2e5). ``"pingpong-early-k"`` (an A/B option): each key buffer released
through a barrier of its own once its Q·Kᵀ has completed, not with its value buffer after the P·V; 0.975x the
default (15 rows, same run, 382d7e7): the refill was not the wait, and each extra arrive costs a warpgroup sync.
Not done: per-thread partial row sums.

Semantics kept: key lengths, LSE, partial blocks, Nq != Nk, per-batch and per-head lists. Inputs are
viewed as ``[B*N, H*D]`` rows for the TMA descriptors (non-contiguous or misaligned ones are copied first):
rows of another batch entry that a tile may overlap are masked by the key limit, query rows past Nq are never
stored.
"""

from __future__ import annotations

import functools
import inspect
import math
import os
from typing import Any

import torch

from ..backends import interpreting, unit_last_stride

try:  # Gluon ships with Triton >= 3.5 on CUDA builds; absent elsewhere
    import triton
    from triton.experimental import gluon
    from triton.experimental.gluon import language as gl
    from triton.experimental.gluon.language.nvidia import hopper as _hopper
    from triton.experimental.gluon.language.nvidia.hopper import (
        fence_async_shared,
        mbarrier,
        tma,
        warpgroup_mma,
        warpgroup_mma_wait,
    )
    from triton.experimental.gluon.nvidia.hopper import TensorDescriptor

    GLUON_IMPORT_ERROR: str | None = None
except ImportError as err:  # pragma: no cover - depends on the Triton build
    GLUON_IMPORT_ERROR = f"{type(err).__name__}: {err}"

_LOG2E = 1.4426950408889634
# the consumer's schedules (the launcher's ``schedule``)
SCHEDULES = ("plain", "pipelined", "pingpong", "pingpong-plain", "pingpong-named", "pingpong-persistent",
             "pingpong-early-k")
BLOCK = 128  # query and key block; one program per query block


def gluon_applies(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, block_size: int, bias_value: float) -> str | None:
    """None when the Gluon kernel can run these inputs, else the reason it cannot (callers fall back)."""
    if GLUON_IMPORT_ERROR is not None:
        return f"triton.experimental.gluon unavailable ({GLUON_IMPORT_ERROR})"
    if not q.is_cuda or torch.cuda.get_device_capability(q.device)[0] != 9:
        return "needs a Hopper GPU (compute capability 9.x)"
    if interpreting():
        return "Gluon does not run in the Triton interpreter"
    if q.dtype not in (torch.bfloat16, torch.float16):
        return f"dtype {q.dtype} (bfloat16 and float16 only)"
    if q.shape[3] not in (64, 128):
        return f"head dim {q.shape[3]} (64 and 128 only)"
    if block_size != BLOCK:
        return f"block size {block_size} (128 only)"
    if not _new_warp_specialize_api():
        return "this Triton's Gluon has the older warp_specialize signature (the ping-pong schedule needs the newer)"
    return None


@functools.cache
def _new_warp_specialize_api() -> bool:
    """True where Gluon's ``warp_specialize`` takes a list of (fn, args) pairs, the form the kernel is written in
    (older releases took default args, default fn, worker args, worker fns, warps, regs: not applied there)."""
    params = list(inspect.signature(gl.warp_specialize).parameters)
    return params[0] == "functions_and_args"


if GLUON_IMPORT_ERROR is None:

    TILE = gl.constexpr(BLOCK)  # the block size inside the kernels
    CONSUMER_WARPS = gl.constexpr(8)  # the default partition: two warpgroups, 64 query rows each
    # the TMA load was tma.async_copy_global_to_shared in older Gluon, tma.async_load in newer
    _tma_load = getattr(tma, "async_load", None) or tma.async_copy_global_to_shared
    _tma_store = getattr(tma, "async_store", None) or tma.async_copy_shared_to_global

    @gluon.jit
    def _same(value):
        return value

    # an async wgmma's result before its wait: a distinct type in newer Gluon (warpgroup_mma_init makes one
    # from a tensor), a plain tensor in older releases
    _mma_init = getattr(_hopper, "warpgroup_mma_init", None) or _same

    # Python run at trace time: gl.constexpr_function in older Gluon, triton.constexpr_function in newer
    _constexpr_function = getattr(gl, "constexpr_function", None) or triton.constexpr_function

    @_constexpr_function
    def _wgmma_layout(warps, n):
        """Accumulator layout of an [M, n] wgmma over ``warps`` warps stacked along M (16-bit operands)."""
        return gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[int(warps), 1],
                                         instr_shape=[16, int(n), 16])

    @gluon.jit
    def _producer(EARLY_K: gl.constexpr, k_desc, v_desc, k_smem, v_smem, k_ready, v_ready, k_empty, kv_empty,
                  idx_base, n_valid, k_row0, col0):
        """One warp: TMA loads of the listed key and value blocks into the ring, ``n_valid`` of them. A stage is
        refilled once ``kv_empty`` says so; with ``EARLY_K`` (``"pingpong-early-k"``) its key buffer already once
        ``k_empty`` does, its value buffer after ``kv_empty``."""
        NUM_STAGES: gl.constexpr = k_smem.shape[0]
        for i in range(n_valid):
            stage = i % NUM_STAGES
            phase = (i // NUM_STAGES) & 1
            if EARLY_K:  # a fresh barrier passes parity 1 at once
                mbarrier.wait(k_empty.index(stage), phase ^ 1)
            else:
                mbarrier.wait(kv_empty.index(stage), phase ^ 1)
            kb = gl.load(idx_base + i)
            row = k_row0 + kb * TILE
            mbarrier.expect(k_ready.index(stage), k_desc.block_type.nbytes)
            _tma_load(k_desc, [row, col0], k_ready.index(stage), k_smem.index(stage))
            if EARLY_K:
                mbarrier.wait(kv_empty.index(stage), phase ^ 1)
            mbarrier.expect(v_ready.index(stage), v_desc.block_type.nbytes)
            _tma_load(v_desc, [row, col0], v_ready.index(stage), v_smem.index(stage))

    @gluon.jit
    def _straddling_block(idx_base, n_valid, key_limit):
        """Where the key limit cuts a listed block: its position in the list (-1 if none) and its valid keys.
        Listed blocks ascend, so only the last one can straddle; its index is read once, before the loop, which
        keeps a dependent global load out of every iteration's softmax."""
        last = gl.load(idx_base + gl.maximum(n_valid - 1, 0), mask=n_valid > 0, other=0)
        valid_keys = key_limit - last * TILE
        at = -1
        if valid_keys < TILE:
            at = n_valid - 1
        return at, valid_keys

    @gluon.jit
    def _softmax_step(s, masked, valid_keys, qk_scale, m_i, l_i, offs_block):
        """One block's online-softmax update in log2 units: the probabilities, the new max and sums, and the
        factor the running output must be rescaled by. Only the block that straddles the key limit is masked
        (``masked``, its first ``valid_keys`` keys kept). The max is taken on the raw scores and only it is
        scaled, so each score costs one fused multiply-add before its ``exp2`` (FlashAttention-3's form), not a
        multiply and a subtraction."""
        if masked:
            s = gl.where(gl.expand_dims(offs_block < valid_keys, 0), s, float("-inf"))
        m_new = gl.maximum(m_i, gl.max(s, 1) * qk_scale)
        p = gl.exp2(s * qk_scale - gl.expand_dims(m_new, 1))
        alpha = gl.exp2(m_i - m_new)
        return p, m_new, l_i * alpha + gl.sum(p, 1), alpha

    @gluon.jit
    def _finished_rows(acc, m_i, l_i, row_o: gl.constexpr):
        """The normalised output rows and their LSE (natural log) from the running state; rows with no valid key
        get 0 and LSE = -inf."""
        has_key = l_i > 0.0
        l_safe = gl.where(has_key, l_i, 1.0)
        out = acc / gl.expand_dims(gl.convert_layout(l_safe, row_o), 1)
        return out, gl.where(has_key, (m_i + gl.log2(l_safe)) * 0.6931471805599453, float("-inf"))

    @gluon.jit
    def _biased_softmax_step(s, masked, valid_keys, bias_col, bias_log2, qk_scale, m_i, l_i, offs_block):
        """:func:`_softmax_step` for a block that holds biased keys (``key_bias``: ``bias_log2`` added to the
        scaled scores of its keys from column ``bias_col`` on)."""
        t = s * qk_scale + gl.expand_dims(gl.where(offs_block >= bias_col, bias_log2, 0.0), 0)
        if masked:
            t = gl.where(gl.expand_dims(offs_block < valid_keys, 0), t, float("-inf"))
        m_new = gl.maximum(m_i, gl.max(t, 1))
        p = gl.exp2(t - gl.expand_dims(m_new, 1))
        alpha = gl.exp2(m_i - m_new)
        return p, m_new, l_i * alpha + gl.sum(p, 1), alpha

    @gluon.jit
    def _step(s, i, mask_at, valid_keys, idx_base, bias_from, bias_start, bias_log2, qk_scale, m_i, l_i, offs_block,
              HAS_BIAS: gl.constexpr):
        """Block ``i``'s softmax update; with ``HAS_BIAS`` the blocks from list position ``bias_from`` on (lists
        ascend, so those reaching ``bias_start`` are a suffix) take the biased form, their index read then."""
        if HAS_BIAS:
            if i >= bias_from:
                bias_col = bias_start - gl.load(idx_base + i) * TILE
                p, m_new, l_new, alpha = _biased_softmax_step(s, i == mask_at, valid_keys, bias_col, bias_log2,
                                                              qk_scale, m_i, l_i, offs_block)
            else:
                p, m_new, l_new, alpha = _softmax_step(s, i == mask_at, valid_keys, qk_scale, m_i, l_i, offs_block)
        else:
            p, m_new, l_new, alpha = _softmax_step(s, i == mask_at, valid_keys, qk_scale, m_i, l_i, offs_block)
        return p, m_new, l_new, alpha

    @gluon.jit
    def _rescale_and_pv(acc, alpha, p, v_buf, v_bar, phase, empty_bar, p_layout: gl.constexpr,
                        row_o: gl.constexpr):
        """The running output rescaled by ``alpha``, then P·V added once the value block has landed; its buffer
        is released after (the schedules without the overlap)."""
        acc = acc * gl.expand_dims(gl.convert_layout(alpha, row_o), 1)
        p_op = gl.convert_layout(p.to(v_buf.dtype), p_layout)
        mbarrier.wait(v_bar, phase)
        acc = warpgroup_mma(p_op, v_buf, acc, is_async=True)
        acc = warpgroup_mma_wait(num_outstanding=0, deps=(acc,))
        mbarrier.arrive(empty_bar, count=1)
        return acc

    # FlashAttention-3 passes the ping-pong turn through two hardware named barriers (ids clear of those Triton's
    # warp specialisation uses: 0-2 in this kernel's SASS): a warpgroup syncs on its own id with 256 threads, which
    # completes once the other warpgroup's 128 have arrived there after issuing their wgmma
    @gluon.jit
    def _named_barrier(ASM: gl.constexpr, dummy):
        gl.inline_asm_elementwise(ASM, "=r,r", [dummy], dtype=gl.int32, is_pure=False, pack=1)

    @gluon.jit
    def _named_sync(HALF: gl.constexpr, dummy):
        """Wait on this warpgroup's own turn barrier."""
        _named_barrier("bar.sync 14, 256;" if HALF == 0 else "bar.sync 15, 256;", dummy)

    @gluon.jit
    def _named_arrive(HALF: gl.constexpr, dummy):
        """Arrive on the *other* warpgroup's turn barrier."""
        _named_barrier("bar.arrive 15, 256;" if HALF == 0 else "bar.arrive 14, 256;", dummy)

    @gluon.jit
    def _turn_wait(turn, HALF: gl.constexpr, i, NAMED: gl.constexpr):
        if NAMED:
            _named_sync(HALF, i)
        else:
            mbarrier.wait(turn.index(HALF), i & 1)

    @gluon.jit
    def _turn_pass(turn, HALF: gl.constexpr, i, NAMED: gl.constexpr):
        if NAMED:
            _named_arrive(HALF, i)
        else:
            mbarrier.arrive(turn.index(1 - HALF), count=1)

    @gluon.jit
    def _consumer(HAS_BIAS: gl.constexpr, q_smem, k_smem, v_smem, q_bar, k_ready, v_ready, kv_empty, idx_base, n_valid,
                  key_limit, qk_scale, bias_from, bias_start, bias_log2):
        """Two warpgroups: S = Q·Kᵀ and O += P·V with ``wgmma``, online softmax in registers. Returns the
        unnormalised output, the running max (log2 units) and the row sums; constexprs come from the shapes of
        the buffers (partition arguments arrive as values)."""
        HEAD_DIM: gl.constexpr = q_smem.shape[1]
        NUM_STAGES: gl.constexpr = k_smem.shape[0]
        s_layout: gl.constexpr = _wgmma_layout(CONSUMER_WARPS, TILE)
        o_layout: gl.constexpr = _wgmma_layout(CONSUMER_WARPS, HEAD_DIM)
        p_layout: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=o_layout, k_width=2)
        row_o: gl.constexpr = gl.SliceLayout(1, o_layout)

        m_i = gl.full([TILE], float("-inf"), gl.float32, layout=gl.SliceLayout(1, s_layout))
        l_i = gl.zeros([TILE], gl.float32, layout=gl.SliceLayout(1, s_layout))
        acc = gl.zeros([TILE, HEAD_DIM], gl.float32, layout=o_layout)
        s_zero = gl.zeros([TILE, TILE], gl.float32, layout=s_layout)
        offs_block = gl.arange(0, TILE, layout=gl.SliceLayout(0, s_layout))

        mask_at, valid_keys = _straddling_block(idx_base, n_valid, key_limit)
        mbarrier.wait(q_bar, 0)
        for i in range(n_valid):
            stage = i % NUM_STAGES
            phase = (i // NUM_STAGES) & 1
            mbarrier.wait(k_ready.index(stage), phase)
            s = warpgroup_mma(q_smem, k_smem.index(stage).permute((1, 0)), s_zero, use_acc=False, is_async=True)
            s = warpgroup_mma_wait(num_outstanding=0, deps=(s,))
            p, m_i, l_i, alpha = _step(s, i, mask_at, valid_keys, idx_base, bias_from, bias_start, bias_log2, qk_scale,
                                        m_i, l_i, offs_block, HAS_BIAS)
            acc = _rescale_and_pv(acc, alpha, p, v_smem.index(stage), v_ready.index(stage), phase,
                                  kv_empty.index(stage), p_layout, row_o)
        return acc, m_i, l_i

    @gluon.jit
    def _consumer_pipelined(HAS_BIAS: gl.constexpr, q_smem, k_smem, v_smem, q_bar, k_ready, v_ready, kv_empty, idx_base,
                            n_valid, key_limit, qk_scale, bias_from, bias_start, bias_log2):
        """As :func:`_consumer`, software-pipelined as FlashAttention-3 does within a warpgroup: block i's
        softmax runs while block i-1's P·V is still on the tensor cores, and block i+1's Q·Kᵀ is issued before
        block i's P·V (wgmma groups complete in issue order, so waiting for all but one leaves P·V in flight).
        A key/value buffer is released once the P·V that read it has completed, one iteration later."""
        HEAD_DIM: gl.constexpr = q_smem.shape[1]
        NUM_STAGES: gl.constexpr = k_smem.shape[0]
        s_layout: gl.constexpr = _wgmma_layout(CONSUMER_WARPS, TILE)
        o_layout: gl.constexpr = _wgmma_layout(CONSUMER_WARPS, HEAD_DIM)
        p_layout: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=o_layout, k_width=2)
        row_o: gl.constexpr = gl.SliceLayout(1, o_layout)

        m_i = gl.full([TILE], float("-inf"), gl.float32, layout=gl.SliceLayout(1, s_layout))
        l_i = gl.zeros([TILE], gl.float32, layout=gl.SliceLayout(1, s_layout))
        acc = gl.zeros([TILE, HEAD_DIM], gl.float32, layout=o_layout)
        s_zero = gl.zeros([TILE, TILE], gl.float32, layout=s_layout)
        offs_block = gl.arange(0, TILE, layout=gl.SliceLayout(0, s_layout))

        mask_at, valid_keys = _straddling_block(idx_base, n_valid, key_limit)
        mbarrier.wait(q_bar, 0)
        # in-flight results are loop-carried: as wgmma accumulators where Gluon has that type
        acc = _mma_init(acc)
        s_next = _mma_init(s_zero)
        if n_valid > 0:
            mbarrier.wait(k_ready.index(0), 0)
            s_next = warpgroup_mma(q_smem, k_smem.index(0).permute((1, 0)), s_zero, use_acc=False, is_async=True)
        for i in range(n_valid):
            stage = i % NUM_STAGES
            phase = (i // NUM_STAGES) & 1
            if i == 0:
                s = warpgroup_mma_wait(num_outstanding=0, deps=(s_next,))
            else:  # S_i done; block i-1's P·V, issued after it, may still run
                s = warpgroup_mma_wait(num_outstanding=1, deps=(s_next,))
            p, m_i, l_i, alpha = _step(s, i, mask_at, valid_keys, idx_base, bias_from, bias_start, bias_log2, qk_scale,
                                        m_i, l_i, offs_block, HAS_BIAS)
            p_op = gl.convert_layout(p.to(q_smem.dtype), p_layout)
            acc = warpgroup_mma_wait(num_outstanding=0, deps=(acc,))  # P·V of block i-1 done
            if i > 0:
                mbarrier.arrive(kv_empty.index((i - 1) % NUM_STAGES), count=1)
            acc = acc * gl.expand_dims(gl.convert_layout(alpha, row_o), 1)
            if i + 1 < n_valid:  # the next block's Q·Kᵀ goes ahead of this block's P·V
                next_stage = (i + 1) % NUM_STAGES
                mbarrier.wait(k_ready.index(next_stage), ((i + 1) // NUM_STAGES) & 1)
                s_next = warpgroup_mma(q_smem, k_smem.index(next_stage).permute((1, 0)), s_zero, use_acc=False,
                                       is_async=True)
            mbarrier.wait(v_ready.index(stage), phase)
            acc = warpgroup_mma(p_op, v_smem.index(stage), acc, is_async=True)
        acc = warpgroup_mma_wait(num_outstanding=0, deps=(acc,))
        return acc, m_i, l_i

    @gluon.jit
    def _overlapped_blocks(HALF: gl.constexpr, HAS_BIAS: gl.constexpr, NAMED: gl.constexpr, EARLY_K: gl.constexpr,
                           q_half, k_smem, v_smem, k_ready, v_ready, k_empty, kv_empty, turn, idx_base, n_valid, it0,
                           mask_at, valid_keys, qk_scale, bias_from, bias_start, bias_log2, m_i, l_i, acc, s_zero,
                           offs_block, p_layout: gl.constexpr, row_o: gl.constexpr):
        """One warpgroup's pass over a block list, ping-pong turns and the intra-warpgroup overlap: block i+1's
        Q·Kᵀ and block i's P·V are issued together, block i+1's softmax runs while that P·V is in flight.
        ``it0``: how many blocks the ring (and the turns) went through before this list (a persistent
        program's earlier tiles; 0 otherwise). ``EARLY_K``: a key buffer is released through ``k_empty`` as soon as
        its Q·Kᵀ has completed, not with its value buffer after the P·V. Returns the running output, max and sums."""
        NUM_STAGES: gl.constexpr = k_smem.shape[0]
        if NAMED and HALF == 1:
            _named_arrive(1, n_valid)  # the top half issues first
        p_op = gl.zeros(s_zero.shape, q_half.dtype, layout=p_layout)  # the previous block's P, loop-carried
        if n_valid > 0:  # turn 0: block 0's Q·Kᵀ alone
            mbarrier.wait(k_ready.index(it0 % NUM_STAGES), (it0 // NUM_STAGES) & 1)
            _turn_wait(turn, HALF, it0, NAMED)
            s = warpgroup_mma(q_half, k_smem.index(it0 % NUM_STAGES).permute((1, 0)), s_zero, use_acc=False,
                              is_async=True)
            _turn_pass(turn, HALF, it0, NAMED)
            s = warpgroup_mma_wait(num_outstanding=0, deps=(s,))
            if EARLY_K:
                mbarrier.arrive(k_empty.index(it0 % NUM_STAGES), count=1)
            p, m_i, l_i, alpha = _step(s, 0, mask_at, valid_keys, idx_base, bias_from, bias_start, bias_log2,
                                        qk_scale, m_i, l_i, offs_block, HAS_BIAS)
            p_op = gl.convert_layout(p.to(q_half.dtype), p_layout)
        for i in range(1, n_valid):  # loop-carried values are plain tensors: every wgmma is waited for within
            g = it0 + i
            stage = g % NUM_STAGES
            prev = (g - 1) % NUM_STAGES
            mbarrier.wait(k_ready.index(stage), (g // NUM_STAGES) & 1)
            mbarrier.wait(v_ready.index(prev), ((g - 1) // NUM_STAGES) & 1)
            _turn_wait(turn, HALF, g, NAMED)
            s = warpgroup_mma(q_half, k_smem.index(stage).permute((1, 0)), s_zero, use_acc=False, is_async=True)
            acc = warpgroup_mma(p_op, v_smem.index(prev), acc, is_async=True)
            _turn_pass(turn, HALF, g, NAMED)
            s = warpgroup_mma_wait(num_outstanding=1, deps=(s,))  # S_i done; P·V of block i-1 may still run
            if EARLY_K:
                mbarrier.arrive(k_empty.index(stage), count=1)
            p, m_i, l_i, alpha = _step(s, i, mask_at, valid_keys, idx_base, bias_from, bias_start, bias_log2,
                                       qk_scale, m_i, l_i, offs_block, HAS_BIAS)
            acc = warpgroup_mma_wait(num_outstanding=0, deps=(acc,))
            mbarrier.arrive(kv_empty.index(prev), count=1)
            acc = acc * gl.expand_dims(gl.convert_layout(alpha, row_o), 1)
            p_op = gl.convert_layout(p.to(q_half.dtype), p_layout)
        if n_valid > 0:  # the last block's P·V
            last = it0 + n_valid - 1
            mbarrier.wait(v_ready.index(last % NUM_STAGES), (last // NUM_STAGES) & 1)
            acc = warpgroup_mma(p_op, v_smem.index(last % NUM_STAGES), acc, is_async=True)
            acc = warpgroup_mma_wait(num_outstanding=0, deps=(acc,))
            mbarrier.arrive(kv_empty.index(last % NUM_STAGES), count=1)
        if NAMED and HALF == 0:
            _named_sync(0, n_valid)  # the bottom half's last arrive (one more than the top's syncs)
        return acc, m_i, l_i

    @gluon.jit
    def _store_half(HALF: gl.constexpr, WRITE_LSE: gl.constexpr, TMA_OUT: gl.constexpr, acc, m_i, l_i, q_half, Out,
                    Lse, out_row0, lse_row0, stride_on, rows_left, out_desc, tma_row, col0, row_s: gl.constexpr):
        """A ping-pong half's finished rows of O (and LSE): through its half of the Q buffer and a TMA store
        (``TMA_OUT``, whole halves; its last Q·Kᵀ has completed, so the rows are free), else masked stores."""
        ROWS: gl.constexpr = acc.shape[0]
        HEAD_DIM: gl.constexpr = acc.shape[1]
        o_layout: gl.constexpr = _wgmma_layout(4, HEAD_DIM)
        row_o: gl.constexpr = gl.SliceLayout(1, o_layout)
        out, lse = _finished_rows(acc, m_i, l_i, row_o)
        rows_o = HALF * ROWS + gl.arange(0, ROWS, layout=row_o)  # within the query block
        offs_d = gl.arange(0, HEAD_DIM, layout=gl.SliceLayout(0, o_layout))
        o_ptrs = (Out + out_row0 + gl.expand_dims(rows_o.to(gl.int64) * stride_on, 1) + gl.expand_dims(offs_d, 0))
        if TMA_OUT:
            if rows_left >= (HALF + 1) * ROWS:  # a whole half: through this half's Q buffer and TMA
                q_half.store(out.to(q_half.dtype))
                fence_async_shared()
                _tma_store(out_desc, [tma_row + HALF * ROWS, col0], q_half)
                tma.store_wait(0)
            else:  # a partial last block (rows past Nq would land in the next batch entry's rows)
                gl.store(o_ptrs, out.to(Out.dtype.element_ty), mask=gl.expand_dims(rows_o < rows_left, 1))
        else:
            gl.store(o_ptrs, out.to(Out.dtype.element_ty), mask=gl.expand_dims(rows_o < rows_left, 1))
        # without WRITE_LSE the store is masked off entirely (Lse is empty then), not left out: Triton 3.6 fails
        # to lower a warp-specialised partition with an unused pointer argument
        rows_s = HALF * ROWS + gl.arange(0, ROWS, layout=row_s)
        gl.store(Lse + lse_row0 + rows_s, lse, mask=(rows_s < rows_left) & WRITE_LSE)

    @gluon.jit
    def _pingpong_half(HALF: gl.constexpr, WRITE_LSE: gl.constexpr, OVERLAP: gl.constexpr, HAS_BIAS: gl.constexpr,
                       NAMED: gl.constexpr, EARLY_K: gl.constexpr, TMA_OUT: gl.constexpr, q_smem, k_smem, v_smem,
                       q_bar, k_ready, v_ready, k_empty, kv_empty, turn, idx_base, n_valid, key_limit, qk_scale,
                       bias_from, bias_start, bias_log2, Out, Lse, out_row0, lse_row0, stride_on, rows_left, out_desc,
                       tma_row, col0):
        """One warpgroup's 64 query rows of the block (``HALF`` 0: the top rows, 1: the bottom rows), as
        FlashAttention-3 schedules them: the two warpgroups take turns issuing their ``wgmma`` (``turn``
        mbarriers pass the token), so one's softmax runs while the other's products occupy the tensor cores;
        within a warpgroup block i+1's Q·Kᵀ and block i's P·V are issued together and block i+1's softmax
        runs while that P·V is in flight. Writes its rows of the output (and LSE) itself."""
        HEAD_DIM: gl.constexpr = q_smem.shape[1]
        NUM_STAGES: gl.constexpr = k_smem.shape[0]
        ROWS: gl.constexpr = TILE // 2
        s_layout: gl.constexpr = _wgmma_layout(4, TILE)
        o_layout: gl.constexpr = _wgmma_layout(4, HEAD_DIM)
        p_layout: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=o_layout, k_width=2)
        row_o: gl.constexpr = gl.SliceLayout(1, o_layout)
        row_s: gl.constexpr = gl.SliceLayout(1, s_layout)
        q_half = q_smem.slice(HALF * ROWS, ROWS)

        m_i = gl.full([ROWS], float("-inf"), gl.float32, layout=row_s)
        l_i = gl.zeros([ROWS], gl.float32, layout=row_s)
        acc = gl.zeros([ROWS, HEAD_DIM], gl.float32, layout=o_layout)
        s_zero = gl.zeros([ROWS, TILE], gl.float32, layout=s_layout)
        offs_block = gl.arange(0, TILE, layout=gl.SliceLayout(0, s_layout))

        mask_at, valid_keys = _straddling_block(idx_base, n_valid, key_limit)
        mbarrier.wait(q_bar, 0)
        if OVERLAP:
            acc, m_i, l_i = _overlapped_blocks(HALF, HAS_BIAS, NAMED, EARLY_K, q_half, k_smem, v_smem, k_ready,
                                               v_ready, k_empty, kv_empty, turn, idx_base, n_valid, 0, mask_at,
                                               valid_keys, qk_scale, bias_from, bias_start, bias_log2, m_i, l_i, acc,
                                               s_zero, offs_block,
                                               p_layout, row_o)
        else:  # FlashAttention-3 without the intra-warpgroup overlap: only Q·Kᵀ takes turns
            for i in range(n_valid):
                stage = i % NUM_STAGES
                phase = (i // NUM_STAGES) & 1
                mbarrier.wait(k_ready.index(stage), phase)
                mbarrier.wait(turn.index(HALF), i & 1)
                s = warpgroup_mma(q_half, k_smem.index(stage).permute((1, 0)), s_zero, use_acc=False,
                                  is_async=True)
                mbarrier.arrive(turn.index(1 - HALF), count=1)
                s = warpgroup_mma_wait(num_outstanding=0, deps=(s,))
                p, m_i, l_i, alpha = _step(s, i, mask_at, valid_keys, idx_base, bias_from, bias_start, bias_log2,
                                           qk_scale, m_i, l_i, offs_block, HAS_BIAS)
                acc = _rescale_and_pv(acc, alpha, p, v_smem.index(stage), v_ready.index(stage), phase,
                                      kv_empty.index(stage), p_layout, row_o)

        _store_half(HALF, WRITE_LSE, TMA_OUT, acc, m_i, l_i, q_half, Out, Lse, out_row0, lse_row0, stride_on,
                    rows_left, out_desc, tma_row, col0, row_s)

    @gluon.jit
    def _pingpong_half_masked_out(HALF: gl.constexpr, WRITE_LSE: gl.constexpr, OVERLAP: gl.constexpr,
                                  HAS_BIAS: gl.constexpr, NAMED: gl.constexpr, EARLY_K: gl.constexpr, q_smem, k_smem,
                                  v_smem, q_bar, k_ready, v_ready, k_empty, kv_empty, turn, idx_base, n_valid,
                                  key_limit, qk_scale, bias_from, bias_start, bias_log2, Out, Lse, out_row0, lse_row0,
                                  stride_on, rows_left):
        """:func:`_pingpong_half` with masked stores of O: the partition takes no descriptor for it (Triton 3.6
        cannot lower a partition with an unused pointer or descriptor argument)."""
        _pingpong_half(HALF, WRITE_LSE, OVERLAP, HAS_BIAS, NAMED, EARLY_K, False, q_smem, k_smem, v_smem, q_bar,
                       k_ready, v_ready, k_empty, kv_empty, turn, idx_base, n_valid, key_limit, qk_scale, bias_from,
                       bias_start, bias_log2, Out, Lse, out_row0, lse_row0, stride_on, rows_left, Out, 0, 0)

    @gluon.jit
    def _count_below(idx_base, count, limit):
        """How many of a list's first ``count`` block ids are below ``limit`` (lists ascend: they are a prefix)."""
        scan: gl.constexpr = gl.BlockedLayout([1], [32], [gl.num_warps()], [0])
        below = 0
        for c in range(0, count, 256):
            offs = c + gl.arange(0, 256, layout=scan)
            ids = gl.load(idx_base + offs, mask=offs < count, other=0x3FFFFFFF)
            below += gl.sum((ids < limit).to(gl.int32), 0)
        return below

    # sizes and the strides that follow them are not specialised on (a progressive stage's length, a 1-head
    # stand-in): one binary per (dtype, head dim, schedule, flags), as the Triton kernel
    _SIZE_ARGUMENTS = ["stride_ob", "stride_lb", "stride_lh", "stride_ib", "stride_ih", "stride_iq", "stride_cb",
                       "stride_ch", "num_heads", "seq_q", "seq_k", "bias_start"]

    @gluon.jit(do_not_specialize=_SIZE_ARGUMENTS)
    def _gluon_block_sparse_fwd(
        q_desc, k_desc, v_desc, out_desc, Out, Lse, KvIndex, KvCount, KeyLengths,
        stride_ob, stride_on, stride_oh, stride_lb, stride_lh, stride_ib, stride_ih, stride_iq, stride_cb, stride_ch,
        num_heads, seq_q, seq_k, qk_scale, bias_start, bias_log2,
        HEAD_DIM: gl.constexpr, NUM_STAGES: gl.constexpr, HAS_KEY_LENGTHS: gl.constexpr, HAS_BIAS: gl.constexpr,
        WRITE_LSE: gl.constexpr, PIPELINE: gl.constexpr, TMA_OUT: gl.constexpr,
        PINGPONG: gl.constexpr,  # 0: off, 1: with the intra-warpgroup overlap, 2: without, 3: 1, named-barrier turns,
        # 4: 1, keys released after their Q·Kᵀ
        num_warps: gl.constexpr,
    ):
        qb = gl.program_id(0)
        pid_bh = gl.program_id(1)
        b = pid_bh // num_heads
        h = pid_bh % num_heads
        b64 = b.to(gl.int64)
        h64 = h.to(gl.int64)
        q_start = qb * TILE

        idx_base = KvIndex + b64 * stride_ib + h64 * stride_ih + qb * stride_iq
        count = gl.load(KvCount + b64 * stride_cb + h64 * stride_ch + qb)
        key_limit = seq_k
        n_valid = count
        if HAS_KEY_LENGTHS:  # listed blocks ascend: those starting before the limit are a prefix
            key_limit = gl.minimum(seq_k, gl.load(KeyLengths + b))
            n_valid = _count_below(idx_base, count, gl.cdiv(key_limit, TILE))

        bias_from = n_valid  # the list position from which blocks hold biased keys (a suffix: lists ascend)
        if HAS_BIAS:
            bias_from = _count_below(idx_base, n_valid, bias_start // TILE)  # that block on holds keys >= start

        # -- shared memory: the query tile, the key/value ring and their barriers
        q_smem = gl.allocate_shared_memory(q_desc.dtype, q_desc.block_type.shape, q_desc.layout)
        k_smem = gl.allocate_shared_memory(k_desc.dtype, [NUM_STAGES, TILE, HEAD_DIM], k_desc.layout)
        v_smem = gl.allocate_shared_memory(v_desc.dtype, [NUM_STAGES, TILE, HEAD_DIM], v_desc.layout)
        q_bar = gl.allocate_shared_memory(gl.int64, [1], mbarrier.MBarrierLayout())
        k_ready = gl.allocate_shared_memory(gl.int64, [NUM_STAGES, 1], mbarrier.MBarrierLayout())
        v_ready = gl.allocate_shared_memory(gl.int64, [NUM_STAGES, 1], mbarrier.MBarrierLayout())
        kv_empty = gl.allocate_shared_memory(gl.int64, [NUM_STAGES, 1], mbarrier.MBarrierLayout())
        turn = gl.allocate_shared_memory(gl.int64, [2, 1], mbarrier.MBarrierLayout())  # ping-pong's token
        if PINGPONG == 4:  # keys released on their own, before their values
            k_empty = gl.allocate_shared_memory(gl.int64, [NUM_STAGES, 1], mbarrier.MBarrierLayout())
            for s in gl.static_range(NUM_STAGES):
                mbarrier.init(k_empty.index(s), count=2)
        else:
            k_empty = kv_empty
        mbarrier.init(q_bar, count=1)
        for s in gl.static_range(NUM_STAGES):
            mbarrier.init(k_ready.index(s), count=1)
            mbarrier.init(v_ready.index(s), count=1)
            mbarrier.init(kv_empty.index(s), count=2 if PINGPONG else 1)  # both warpgroups release a buffer
        for s in gl.static_range(2):
            mbarrier.init(turn.index(s), count=1)
        if PINGPONG:
            mbarrier.arrive(turn.index(0), count=1)  # the top half issues first

        col0 = h * HEAD_DIM
        mbarrier.expect(q_bar, q_desc.block_type.nbytes)
        _tma_load(q_desc, [b * seq_q + q_start, col0], q_bar, q_smem)

        consumer_args = (q_smem, k_smem, v_smem, q_bar, k_ready, v_ready, kv_empty, idx_base, n_valid, key_limit,
                         qk_scale, bias_from, bias_start, bias_log2)
        producer_args = (k_desc, v_desc, k_smem, v_smem, k_ready, v_ready, k_empty, kv_empty, idx_base, n_valid,
                         b * seq_k, col0)
        if PINGPONG:  # two consumer partitions of one warpgroup each; each writes its own rows
            half_args = (q_smem, k_smem, v_smem, q_bar, k_ready, v_ready, k_empty, kv_empty, turn, idx_base, n_valid,
                         key_limit, qk_scale, bias_from, bias_start, bias_log2, Out, Lse,
                         b64 * stride_ob + h64 * stride_oh + q_start.to(gl.int64) * stride_on,
                         b64 * stride_lb + h64 * stride_lh + q_start, stride_on, seq_q - q_start)
            # the partitions' flags (HALF, WRITE_LSE, OVERLAP, HAS_BIAS, NAMED, EARLY_K[, TMA_OUT]) lead their
            # argument tuples, as a literal: a tuple held in a local is made of values, and constexprs on the right
            # of a tuple + are unwrapped to plain Python objects; either way a partition would build both sides of
            # each flag
            if TMA_OUT:
                tma_args = half_args + (out_desc, b * seq_q + q_start, col0)
                gl.warp_specialize([
                    (_pingpong_half, (0, WRITE_LSE, PINGPONG != 2, HAS_BIAS, PINGPONG == 3, PINGPONG == 4, True)
                     + tma_args),
                    (_pingpong_half, (1, WRITE_LSE, PINGPONG != 2, HAS_BIAS, PINGPONG == 3, PINGPONG == 4, True)
                     + tma_args),
                    (_producer, (PINGPONG == 4,) + producer_args)], [4, 1], [240, 24])
            else:
                gl.warp_specialize([
                    (_pingpong_half_masked_out, (0, WRITE_LSE, PINGPONG != 2, HAS_BIAS, PINGPONG == 3,
                                                 PINGPONG == 4) + half_args),
                    (_pingpong_half_masked_out, (1, WRITE_LSE, PINGPONG != 2, HAS_BIAS, PINGPONG == 3,
                                                 PINGPONG == 4) + half_args),
                    (_producer, (PINGPONG == 4,) + producer_args)], [4, 1], [240, 24])
        elif PIPELINE:
            acc, m_i, l_i = gl.warp_specialize([(_consumer_pipelined, (HAS_BIAS,) + consumer_args),
                                                (_producer, (False,) + producer_args)], [1], [24])
        else:
            acc, m_i, l_i = gl.warp_specialize([(_consumer, (HAS_BIAS,) + consumer_args),
                                                (_producer, (False,) + producer_args)], [1], [24])

        if not PINGPONG:
            _epilogue(acc, m_i, l_i, Out, Lse, b64, h64, q_start, stride_ob, stride_on, stride_oh, stride_lb,
                      stride_lh, seq_q, WRITE_LSE)

        mbarrier.invalidate(q_bar)
        for s in gl.static_range(NUM_STAGES):
            mbarrier.invalidate(k_ready.index(s))
            mbarrier.invalidate(v_ready.index(s))
            mbarrier.invalidate(kv_empty.index(s))
            if PINGPONG == 4:
                mbarrier.invalidate(k_empty.index(s))
        for s in gl.static_range(2):
            mbarrier.invalidate(turn.index(s))

    # -- the persistent ping-pong ("pingpong-persistent"): one program per SM walks query tiles in order, so the
    # next tile's Q, key and value loads run under this tile's last blocks and epilogue (a fresh program per tile
    # pays launch, barrier set-up and the first loads' latency with its tensor cores idle: about two blocks'
    # time per tile, most felt where lists are short)

    @gluon.jit
    def _tile_of(t, KvIndex, KvCount, KeyLengths, stride_ib, stride_ih, stride_iq, stride_cb, stride_ch, num_heads,
                 num_q_blocks, seq_k, bias_start, HAS_KEY_LENGTHS: gl.constexpr, HAS_BIAS: gl.constexpr):
        """Tile ``t``'s query block, batch entry, head, list and the list's valid prefix, key limit and first
        biased position (tiles run query-block fastest: programs side by side share a head's keys in L2)."""
        qb = t % num_q_blocks
        bh = t // num_q_blocks
        b = bh // num_heads
        h = bh % num_heads
        b64 = b.to(gl.int64)
        h64 = h.to(gl.int64)
        idx_base = KvIndex + b64 * stride_ib + h64 * stride_ih + qb * stride_iq
        count = gl.load(KvCount + b64 * stride_cb + h64 * stride_ch + qb)
        key_limit = seq_k
        n_valid = count
        if HAS_KEY_LENGTHS:
            key_limit = gl.minimum(seq_k, gl.load(KeyLengths + b))
            n_valid = _count_below(idx_base, count, gl.cdiv(key_limit, TILE))
        bias_from = n_valid
        if HAS_BIAS:
            bias_from = _count_below(idx_base, n_valid, bias_start // TILE)
        return qb, b, h, idx_base, n_valid, key_limit, bias_from

    @gluon.jit
    def _persistent_producer(HAS_KEY_LENGTHS: gl.constexpr, HAS_BIAS: gl.constexpr, q_desc, k_desc, v_desc, q_smem,
                             k_smem, v_smem, q_ready, q_empty, k_ready, v_ready, kv_empty, KvIndex, KvCount,
                             KeyLengths, stride_ib, stride_ih, stride_iq, stride_cb, stride_ch, num_heads,
                             num_q_blocks, num_tiles, seq_q, seq_k, bias_start):
        """One warp: per tile, the listed key and value blocks into the ring (which runs on across tiles) and the
        query tile once both halves have finished with the last one (after the ring's first fills, so those
        go ahead of the previous tile's epilogue)."""
        HEAD_DIM: gl.constexpr = q_smem.shape[1]
        NUM_STAGES: gl.constexpr = k_smem.shape[0]
        it = 0  # blocks the ring went through before this tile
        for t in range(gl.program_id(0), num_tiles, gl.num_programs(0)):
            j = (t - gl.program_id(0)) // gl.num_programs(0)  # this program's tile count so far (barrier phases)
            qb, b, h, idx_base, n_valid, key_limit, bias_from = _tile_of(
                t, KvIndex, KvCount, KeyLengths, stride_ib, stride_ih, stride_iq, stride_cb, stride_ch, num_heads,
                num_q_blocks, seq_k, bias_start, HAS_KEY_LENGTHS, HAS_BIAS)
            col0 = h * HEAD_DIM
            q_at = gl.minimum(n_valid, NUM_STAGES) - 1  # the Q load follows this list position's (-1: before all)
            if q_at < 0:
                mbarrier.wait(q_empty, (j & 1) ^ 1)  # a fresh barrier passes parity 1 at once
                mbarrier.expect(q_ready, q_desc.block_type.nbytes)
                _tma_load(q_desc, [b * seq_q + qb * TILE, col0], q_ready, q_smem)
            for i in range(n_valid):
                g = it + i
                stage = g % NUM_STAGES
                mbarrier.wait(kv_empty.index(stage), ((g // NUM_STAGES) & 1) ^ 1)
                row = b * seq_k + gl.load(idx_base + i) * TILE
                mbarrier.expect(k_ready.index(stage), k_desc.block_type.nbytes)
                _tma_load(k_desc, [row, col0], k_ready.index(stage), k_smem.index(stage))
                mbarrier.expect(v_ready.index(stage), v_desc.block_type.nbytes)
                _tma_load(v_desc, [row, col0], v_ready.index(stage), v_smem.index(stage))
                if i == q_at:
                    mbarrier.wait(q_empty, (j & 1) ^ 1)
                    mbarrier.expect(q_ready, q_desc.block_type.nbytes)
                    _tma_load(q_desc, [b * seq_q + qb * TILE, col0], q_ready, q_smem)
            it += n_valid

    @gluon.jit
    def _persistent_half(HALF: gl.constexpr, WRITE_LSE: gl.constexpr, HAS_KEY_LENGTHS: gl.constexpr,
                         HAS_BIAS: gl.constexpr, TMA_OUT: gl.constexpr, q_smem, k_smem, v_smem, q_ready, q_empty,
                         k_ready, v_ready, kv_empty, turn, KvIndex, KvCount, KeyLengths, stride_ib, stride_ih,
                         stride_iq, stride_cb, stride_ch, num_heads, num_q_blocks, num_tiles, seq_q, seq_k,
                         bias_start, qk_scale, bias_log2, Out, Lse, stride_ob, stride_on, stride_oh, stride_lb,
                         stride_lh, out_desc):
        """One warpgroup's rows of every tile of this program, as :func:`_pingpong_half` does one tile; the
        ring's position and the turns run on across tiles. The query buffer is released once this half is done
        with it: after its last Q·Kᵀ with masked stores, after its TMA store of O otherwise."""
        HEAD_DIM: gl.constexpr = q_smem.shape[1]
        ROWS: gl.constexpr = TILE // 2
        s_layout: gl.constexpr = _wgmma_layout(4, TILE)
        o_layout: gl.constexpr = _wgmma_layout(4, HEAD_DIM)
        p_layout: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=o_layout, k_width=2)
        row_o: gl.constexpr = gl.SliceLayout(1, o_layout)
        row_s: gl.constexpr = gl.SliceLayout(1, s_layout)
        q_half = q_smem.slice(HALF * ROWS, ROWS)
        s_zero = gl.zeros([ROWS, TILE], gl.float32, layout=s_layout)
        offs_block = gl.arange(0, TILE, layout=gl.SliceLayout(0, s_layout))
        it = 0  # blocks the ring went through before this tile
        for t in range(gl.program_id(0), num_tiles, gl.num_programs(0)):
            j = (t - gl.program_id(0)) // gl.num_programs(0)  # this program's tile count so far (barrier phases)
            qb, b, h, idx_base, n_valid, key_limit, bias_from = _tile_of(
                t, KvIndex, KvCount, KeyLengths, stride_ib, stride_ih, stride_iq, stride_cb, stride_ch, num_heads,
                num_q_blocks, seq_k, bias_start, HAS_KEY_LENGTHS, HAS_BIAS)
            q_start = qb * TILE
            mask_at, valid_keys = _straddling_block(idx_base, n_valid, key_limit)
            m_i = gl.full([ROWS], float("-inf"), gl.float32, layout=row_s)
            l_i = gl.zeros([ROWS], gl.float32, layout=row_s)
            acc = gl.zeros([ROWS, HEAD_DIM], gl.float32, layout=o_layout)
            mbarrier.wait(q_ready, j & 1)
            acc, m_i, l_i = _overlapped_blocks(HALF, HAS_BIAS, False, False, q_half, k_smem, v_smem, k_ready,
                                               v_ready, kv_empty, kv_empty, turn, idx_base, n_valid, it, mask_at,
                                               valid_keys, qk_scale, bias_from, bias_start, bias_log2, m_i, l_i, acc,
                                               s_zero, offs_block,
                                               p_layout, row_o)
            if not TMA_OUT:
                mbarrier.arrive(q_empty, count=1)
            _store_half(HALF, WRITE_LSE, TMA_OUT, acc, m_i, l_i, q_half, Out, Lse,
                        b.to(gl.int64) * stride_ob + h.to(gl.int64) * stride_oh + q_start.to(gl.int64) * stride_on,
                        b.to(gl.int64) * stride_lb + h.to(gl.int64) * stride_lh + q_start, stride_on, seq_q - q_start,
                        out_desc, b * seq_q + q_start, h * HEAD_DIM, row_s)
            if TMA_OUT:
                mbarrier.arrive(q_empty, count=1)
            it += n_valid

    @gluon.jit(do_not_specialize=_SIZE_ARGUMENTS + ["num_q_blocks", "num_tiles"])
    def _gluon_block_sparse_persistent(
        q_desc, k_desc, v_desc, out_desc, Out, Lse, KvIndex, KvCount, KeyLengths,
        stride_ob, stride_on, stride_oh, stride_lb, stride_lh, stride_ib, stride_ih, stride_iq, stride_cb, stride_ch,
        num_heads, seq_q, seq_k, qk_scale, bias_start, bias_log2, num_q_blocks, num_tiles,
        HEAD_DIM: gl.constexpr, NUM_STAGES: gl.constexpr, HAS_KEY_LENGTHS: gl.constexpr, HAS_BIAS: gl.constexpr,
        WRITE_LSE: gl.constexpr, TMA_OUT: gl.constexpr, num_warps: gl.constexpr,
    ):
        q_smem = gl.allocate_shared_memory(q_desc.dtype, q_desc.block_type.shape, q_desc.layout)
        k_smem = gl.allocate_shared_memory(k_desc.dtype, [NUM_STAGES, TILE, HEAD_DIM], k_desc.layout)
        v_smem = gl.allocate_shared_memory(v_desc.dtype, [NUM_STAGES, TILE, HEAD_DIM], v_desc.layout)
        q_ready = gl.allocate_shared_memory(gl.int64, [1], mbarrier.MBarrierLayout())
        q_empty = gl.allocate_shared_memory(gl.int64, [1], mbarrier.MBarrierLayout())
        k_ready = gl.allocate_shared_memory(gl.int64, [NUM_STAGES, 1], mbarrier.MBarrierLayout())
        v_ready = gl.allocate_shared_memory(gl.int64, [NUM_STAGES, 1], mbarrier.MBarrierLayout())
        kv_empty = gl.allocate_shared_memory(gl.int64, [NUM_STAGES, 1], mbarrier.MBarrierLayout())
        turn = gl.allocate_shared_memory(gl.int64, [2, 1], mbarrier.MBarrierLayout())
        mbarrier.init(q_ready, count=1)
        mbarrier.init(q_empty, count=2)  # both halves release the query buffer
        for s in gl.static_range(NUM_STAGES):
            mbarrier.init(k_ready.index(s), count=1)
            mbarrier.init(v_ready.index(s), count=1)
            mbarrier.init(kv_empty.index(s), count=2)
        for s in gl.static_range(2):
            mbarrier.init(turn.index(s), count=1)
        mbarrier.arrive(turn.index(0), count=1)  # the top half issues first

        tiles = (KvIndex, KvCount, KeyLengths, stride_ib, stride_ih, stride_iq, stride_cb, stride_ch, num_heads,
                 num_q_blocks, num_tiles, seq_q, seq_k, bias_start)
        half_args = (q_smem, k_smem, v_smem, q_ready, q_empty, k_ready, v_ready, kv_empty, turn) + tiles + (
            qk_scale, bias_log2, Out, Lse, stride_ob, stride_on, stride_oh, stride_lb, stride_lh, out_desc)
        producer_args = (q_desc, k_desc, v_desc, q_smem, k_smem, v_smem, q_ready, q_empty, k_ready, v_ready,
                         kv_empty) + tiles
        # flags lead each tuple as a literal (see the per-tile kernel)
        gl.warp_specialize([
            (_persistent_half, (0, WRITE_LSE, HAS_KEY_LENGTHS, HAS_BIAS, TMA_OUT) + half_args),
            (_persistent_half, (1, WRITE_LSE, HAS_KEY_LENGTHS, HAS_BIAS, TMA_OUT) + half_args),
            (_persistent_producer, (HAS_KEY_LENGTHS, HAS_BIAS) + producer_args)], [4, 1], [240, 24])

        mbarrier.invalidate(q_ready)
        mbarrier.invalidate(q_empty)
        for s in gl.static_range(NUM_STAGES):
            mbarrier.invalidate(k_ready.index(s))
            mbarrier.invalidate(v_ready.index(s))
            mbarrier.invalidate(kv_empty.index(s))
        for s in gl.static_range(2):
            mbarrier.invalidate(turn.index(s))

    @gluon.jit
    def _epilogue(acc, m_i, l_i, Out, Lse, b64, h64, q_start, stride_ob, stride_on, stride_oh, stride_lb, stride_lh,
                  seq_q, WRITE_LSE: gl.constexpr):
        """The one-partition consumers' output: rows with no valid key get 0 and LSE = -inf."""
        HEAD_DIM: gl.constexpr = acc.shape[1]
        s_layout: gl.constexpr = _wgmma_layout(CONSUMER_WARPS, TILE)
        o_layout: gl.constexpr = _wgmma_layout(CONSUMER_WARPS, HEAD_DIM)
        row_o: gl.constexpr = gl.SliceLayout(1, o_layout)
        out, lse = _finished_rows(acc, m_i, l_i, row_o)
        offs_m = q_start + gl.arange(0, TILE, layout=row_o)
        offs_d = gl.arange(0, HEAD_DIM, layout=gl.SliceLayout(0, o_layout))
        o_ptrs = (Out + b64 * stride_ob + h64 * stride_oh + gl.expand_dims(offs_m.to(gl.int64) * stride_on, 1)
                  + gl.expand_dims(offs_d, 0))
        gl.store(o_ptrs, out.to(Out.dtype.element_ty), mask=gl.expand_dims(offs_m < seq_q, 1))
        if WRITE_LSE:
            offs_l = q_start + gl.arange(0, TILE, layout=gl.SliceLayout(1, s_layout))
            gl.store(Lse + b64 * stride_lb + h64 * stride_lh + offs_l, lse, mask=offs_l < seq_q)


def block_sparse_attention_gluon(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    kv_index: torch.Tensor,
    kv_count: torch.Tensor,
    block_size: int,
    key_lengths: torch.Tensor | None,
    return_lse: bool,
    out: torch.Tensor | None = None,
    lse: torch.Tensor | None = None,
    num_stages: int | None = None,
    schedule: str | None = None,
    key_bias: tuple[int, float] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The launcher; the same contract as ``block_sparse_attention_triton`` (``key_bias``: ``(start, value)``,
    ``value`` added to the logits of keys ``>= start``).

    ``schedule`` (default: ``JENGA_GLUON_SCHEDULE``, else ``"pingpong"``) names one of :data:`SCHEDULES`:
    ``"pingpong"`` is FlashAttention-3's two warpgroups taking turns, with the intra-warpgroup overlap
    (:func:`_pingpong_half`); ``"pingpong-plain"`` the turns alone; ``"pipelined"`` (:func:`_consumer_pipelined`)
    and ``"plain"`` (:func:`_consumer`) one 8-warp consumer. Only ``"pingpong"`` is tuned and the default; the
    others are kept for A/B runs.

    Raises ``ValueError`` naming the reason where :func:`gluon_applies` says the kernel cannot run.
    """
    reason = gluon_applies(q, k, v, block_size, 0.0)
    if reason is not None:
        raise ValueError(f"the Gluon kernel cannot run these inputs: {reason}")
    return launch_prechecked(q, k, v, kv_index, kv_count, key_lengths, return_lse, out, lse, num_stages, schedule,
                             key_bias)


def launch_prechecked(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kv_index: torch.Tensor,
                      kv_count: torch.Tensor, key_lengths: torch.Tensor | None, return_lse: bool,
                      out: torch.Tensor | None = None, lse: torch.Tensor | None = None, num_stages: int | None = None,
                      schedule: str | None = None,
                      key_bias: tuple[int, float] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`block_sparse_attention_gluon` on inputs :func:`gluon_applies` has already passed (the Triton
    backend's dispatch asks it once per call; this launch does not ask again)."""
    # TMA descriptors view q, k, v as [B*N, H*D] rows from a 16-byte-aligned start: anything else is copied once
    # (a fused projection's chunk, a strided view), which costs a small share of the attention it feeds
    if out is None:  # allocated as the portable launcher does (and the custom op's fake says): like q's view
        out = torch.empty_like(unit_last_stride(q))
    q, k, v = (t if t.is_contiguous() and t.data_ptr() % 16 == 0 else t.clone(memory_format=torch.contiguous_format)
               for t in (q, k, v))
    batch, seq_q, heads, head_dim = q.shape
    seq_k = k.shape[1]
    if lse is None:
        lse = torch.empty((batch, heads, seq_q if return_lse else 0), device=q.device, dtype=torch.float32)
    kv_index = kv_index.expand(batch, heads, -1, -1)
    kv_count = kv_count.expand(batch, heads, -1)
    has_key_lengths = key_lengths is not None
    has_bias = key_bias is not None and float(key_bias[1]) != 0.0 and int(key_bias[0]) < seq_k
    bias_start, bias_log2 = (int(key_bias[0]), float(key_bias[1]) * _LOG2E) if has_bias else (seq_k, 0.0)
    key_lengths_arg = key_lengths.to(torch.int32) if has_key_lengths else kv_count
    layout = _tile_layout(head_dim, q.dtype)
    q_desc, k_desc, v_desc = (
        TensorDescriptor.from_tensor(t.view(t.shape[0] * t.shape[1], heads * head_dim), [BLOCK, head_dim], layout)
        for t in (q, k, v))
    # the ping-pong halves store O through their Q buffer and TMA (contiguous, aligned out of q's dtype only)
    tma_out = (os.environ.get("JENGA_GLUON_TMA_OUT", "1") != "0" and head_dim == 128 and out.dtype == q.dtype
               and out.is_contiguous() and out.data_ptr() % 16 == 0)  # head dim 64: Triton 3.6's lowering asserts
    # (without it the descriptor is never stored through, but keeps its type: a warp-specialised partition's
    # constexpr may arrive as a value, and Triton 3.9 verifies the dead store against the descriptor's block)
    out_desc = TensorDescriptor.from_tensor((out if tma_out else q).view(batch * seq_q, heads * head_dim),
                                            [BLOCK // 2, head_dim], layout)
    arguments = (q_desc, k_desc, v_desc, out_desc, out, lse, kv_index, kv_count, key_lengths_arg,
                 out.stride(0), out.stride(1), out.stride(2), lse.stride(0), lse.stride(1),
                 kv_index.stride(0), kv_index.stride(1), kv_index.stride(2), kv_count.stride(0), kv_count.stride(1),
                 heads, seq_q, seq_k, _LOG2E / math.sqrt(head_dim), bias_start, bias_log2)
    flags = dict(HAS_KEY_LENGTHS=has_key_lengths, HAS_BIAS=has_bias, WRITE_LSE=return_lse, TMA_OUT=tma_out)
    kernel, constants = _kernel_and_constants(schedule, head_dim, num_stages)
    q_blocks = math.ceil(seq_q / BLOCK)
    if kernel is _gluon_block_sparse_persistent:
        tiles = q_blocks * batch * heads
        kernel[(min(tiles, _multiprocessors(q.device)),)](*arguments, q_blocks, tiles, **flags, **constants)
    else:
        kernel[(q_blocks, batch * heads)](*arguments, **flags, **constants)
    return out, lse


@functools.cache
def _multiprocessors(device: torch.device) -> int:
    """The persistent grid's size: one program per SM (each takes all but a few KB of an SM's shared memory)."""
    return torch.cuda.get_device_properties(device).multi_processor_count


@functools.cache
def _tile_layout(head_dim: int, dtype: torch.dtype):
    """The shared-memory layout of a [128, head_dim] tile, the TMA descriptors' (once per kind, not per call)."""
    return gl.NVMMASharedLayout.get_default_for([BLOCK, head_dim], gl.bfloat16 if dtype == torch.bfloat16
                                                else gl.float16)


# the kernel's PINGPONG constexpr; 0 for the one-consumer ones
_PINGPONG = {"pingpong": 1, "pingpong-plain": 2, "pingpong-named": 3, "pingpong-persistent": 1, "pingpong-early-k": 4}


def _kernel_and_constants(schedule: str | None, head_dim: int, num_stages: int | None) -> tuple[Any, dict]:
    """The kernel for ``schedule`` (default ``JENGA_GLUON_SCHEDULE``, else ``"pingpong"``) and its schedule
    constexprs and warps (the persistent kernel has one schedule: no ``PIPELINE`` / ``PINGPONG``); ``ValueError``
    naming the accepted ones for another name."""
    schedule = schedule or os.environ.get("JENGA_GLUON_SCHEDULE") or "pingpong"
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown Gluon schedule {schedule!r}; accepted: {', '.join(SCHEDULES)}")
    pingpong = _PINGPONG.get(schedule, 0)
    constants = dict(HEAD_DIM=head_dim, NUM_STAGES=num_stages or _default_stages(head_dim, schedule != "plain"),
                     num_warps=_default_warps(bool(pingpong)))
    if schedule == "pingpong-persistent":
        return _gluon_block_sparse_persistent, constants
    return _gluon_block_sparse_fwd, dict(constants, PIPELINE=schedule == "pipelined", PINGPONG=pingpong)


def _default_stages(head_dim: int, refill_after_pv: bool) -> int:
    """Key/value ring depth. The pipelined and ping-pong consumers refill a buffer only after the P·V that read
    it: one stage more (at head dim 128, 3 stages take 229,612 bytes of shared memory of the 232,448 a Hopper
    block may have)."""
    return (2 if head_dim == 128 else 3) + int(refill_after_pv)


def _default_warps(pingpong: bool) -> int:
    """The default partition's warps: both consumer warpgroups, or (ping-pong) the top half's one."""
    return 4 if pingpong else CONSUMER_WARPS.value


def compile_for_hopper(head_dim: int = 128, num_stages: int | None = None, has_key_lengths: bool = True,
                       schedule: str = "plain", write_lse: bool = True, has_bias: bool = False,
                       tma_out: bool = False):
    """Compile the kernel for sm_90 without a GPU (``GluonASTSource`` with an explicit target, Triton >= 3.9):
    a build check and a way to read its PTX, registers and shared memory. Not under ``TRITON_INTERPRET=1``."""
    from triton.backends.compiler import GPUTarget
    from triton.experimental.gluon._runtime import GluonASTSource

    layout = _tile_layout(head_dim, torch.bfloat16)
    kernel, schedule_constants = _kernel_and_constants(schedule, head_dim, num_stages)
    constants = dict(HAS_KEY_LENGTHS=has_key_lengths, HAS_BIAS=has_bias, WRITE_LSE=write_lse, TMA_OUT=tma_out,
                     **schedule_constants)
    warps = constants["num_warps"]
    pointers = {"Out": "*bf16", "Lse": "*fp32", "KvIndex": "*i32", "KvCount": "*i32", "KeyLengths": "*i32"}
    signature = {}
    for name in kernel.arg_names:
        if name in constants:
            signature[name] = "constexpr"
        elif name.endswith("_desc"):
            rows = BLOCK // 2 if name == "out_desc" else BLOCK
            signature[name] = f"tensordesc<bf16[{rows},{head_dim}],{layout!r}>"
        else:
            signature[name] = pointers.get(name, "fp32" if name in ("qk_scale", "bias_log2") else "i32")
    return triton.compile(GluonASTSource(kernel, signature, constants),
                          target=GPUTarget("cuda", 90, 32), options=dict(num_warps=warps))
