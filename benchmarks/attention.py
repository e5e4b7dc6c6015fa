"""Block-sparse attention at the real video shapes: jenga's Triton kernel against the strongest peers.

Run on a CUDA GPU::

    python benchmarks/attention.py                       # the real shapes, densities 1.0 / 0.25 / 0.10
    python benchmarks/attention.py --shapes wan1.3b wan1.3b-32768 --sweep  # also every kernel config
    python benchmarks/attention.py --first-call --shapes wan1.3b hunyuan   # a fresh process's first call

Peers, all on the same lists in the same run, each given its best inputs:

- ``sdpa-cudnn`` / ``sdpa-flash``: dense SDPA on contiguous ``[B, H, N, D]`` tensors;
- ``flex``: ``torch.compile(flex_attention, dynamic=False)`` on contiguous ``[B, H, N, D]`` tensors, a
  ``BlockMask.from_kv_blocks`` holding every listed block as a full block and no ``mask_mod`` (keys past the
  key limit are cut by slicing k and v to the limit, so no block needs a mask), no LSE;
- ``flex-flash``: the same with ``kernel_options={"BACKEND": "FLASH"}`` (FlexAttention's FlashAttention-4
  lowering, where this torch has it and ``flash_attn.cute`` is installed);
- ``fa4``: FlashAttention-4's own block-sparse forward (``flash_attn.cute``), 128 x 128 tiles, if installed;
- ``jenga``: ours through the launcher every call takes: on Hopper the Gluon ping-pong kernel
  (``jenga.kernels.gluon_block_sparse``), elsewhere the portable Triton kernel with the tiles of the shipped table
  (``jenga.kernels.tuning``), never autotuned here; the row's ``launcher_ran`` says which ran;
- ``jenga-portable`` (``--portable``): the portable Triton kernel on Hopper too (``JENGA_GLUON=0``).

A peer that cannot run here is skipped with its reason in the JSON (``skipped``). Shapes come at the real
lengths and at the nearest multiples of 128 (``wan1.3b-32768``, ``hunyuan-119040``), where dense kernels
run faster. Effective TFLOP/s = 4 * B * H * N^2 * D * density / time, with the density of the lists used;
per-block share of cuDNN = cuDNN dense time * density / time. Each figure is the median of
``triton.testing.do_bench`` after warm-up, on random inputs. Writes ``benchmarks/results/attention-<card>.json``
(or ``--out``) after every shape.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import torch
import triton
from _common import BLOCK, SHAPES, Shape, bench, card_name, git_commit

from jenga import block_adjacency, curve_permutation, dense_to_lists, lists_to_dense, select_blocks
from jenga.kernels import tuning
from jenga.kernels.triton_block_sparse import _configs, _tma_default, block_sparse_attention_triton

# the real lengths' nearest multiples of 128 (Wan has no text keys: the 8 extra tokens are all valid)
ALIGNED_SHAPES = {
    "wan1.3b-32768": Shape("wan1.3b-32768", 12, (21, 30, 52), text_tokens=8, valid_text=8),
    "hunyuan-119040": Shape("hunyuan-119040", 24, (33, 45, 80), text_tokens=240, valid_text=200),
}
ALL_SHAPES = {**SHAPES, **ALIGNED_SHAPES}
DEFAULT_SHAPES = ["wan1.3b", "wan1.3b-32768", "wan14b", "hunyuan", "hunyuan-119040"]


def random_lists(batch, heads, qb, kb, density, device, generator):
    """Exactly round(density * kb) random key blocks per query block (at least one)."""
    keep = max(1, round(density * kb))
    scores = torch.rand(batch, heads, qb, kb, device=device, generator=generator)
    top = scores.topk(keep, dim=-1).indices
    mask = torch.zeros(batch, heads, qb, kb, dtype=torch.bool, device=device).scatter_(-1, top, True)
    return dense_to_lists(mask)


def ragged_lists(batch, heads, qb, kb, density, device, generator):
    """Random key blocks with a count per (head, query block) drawn uniformly from 1 .. 2 * density * kb (mean
    about ``density``): lists as uneven as the selector's, for the longest-first schedule, without its cost."""
    keep = (torch.rand(batch, heads, qb, 1, device=device, generator=generator) * 2 * density * kb).round()
    keep = keep.clamp(1, kb)
    rank = torch.rand(batch, heads, qb, kb, device=device, generator=generator).argsort(-1).argsort(-1)
    return dense_to_lists(rank < keep)


def _graphed(fn):
    """``fn`` captured once in a CUDA graph; the returned callable replays it (device time, no host overhead)."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return graph.replay


def smooth_field(shape: Shape, dim: int, heads: int, device, generator) -> torch.Tensor:
    """Low-frequency random features over the video grid plus noise: attention with real locality.

    Returns ``[1, N_video, heads, dim]`` in row-major token order.
    """
    t, h, w = shape.grid
    coarse = torch.randn(1, heads * dim, max(2, t // 4), max(2, h // 6), max(2, w // 6), device=device,
                         generator=generator)
    fine = torch.nn.functional.interpolate(coarse, size=(t, h, w), mode="trilinear", align_corners=False)
    fine = fine + 0.3 * torch.randn(fine.shape, device=device, generator=generator)
    return fine.view(heads, dim, -1).permute(2, 0, 1).unsqueeze(0).contiguous()


def lists_within(kv_index, kv_count, num_kb: int, key_blocks: int):
    """The lists with blocks at or past ``key_blocks`` dropped (width ``key_blocks``): what the peers get once
    k and v are cut at the key limit."""
    return dense_to_lists(lists_to_dense(kv_index, kv_count, num_kb)[..., :key_blocks].contiguous())


class Peers:
    """The peers' inputs for one shape, prepared once; :meth:`build` returns a peer's callable and its output,
    or ``(None, None)`` with the reason in ``skipped``, so that a missing peer is recorded, not fatal."""

    def __init__(self, q, k, v, limit: int):
        # contiguous [B, H, N, D]: what Flex and SDPA run fastest on; k and v cut at the key limit
        self.qh, self.kh, self.vh = (t.transpose(1, 2).contiguous() for t in (q, k, v))
        self.kh_cut, self.vh_cut = self.kh[:, :, :limit], self.vh[:, :, :limit]
        self.q, self.k_cut, self.v_cut = q, k[:, :limit], v[:, :limit]  # FlashAttention-4 takes [B, N, H, D]
        self.limit = limit
        self.skipped: dict[str, str] = {}
        self._flex = None

    def _compiled_flex(self):
        if self._flex is None:
            from torch.nn.attention.flex_attention import flex_attention

            # every shape and backend is one more compile of the same function: past dynamo's default limit
            # of 8 it would fall back to eager FlexAttention and time that instead
            for name in ("recompile_limit", "cache_size_limit", "accumulated_recompile_limit",
                         "accumulated_cache_size_limit"):
                if hasattr(torch._dynamo.config, name):
                    setattr(torch._dynamo.config, name, max(256, getattr(torch._dynamo.config, name)))
            self._flex = torch.compile(flex_attention, dynamic=False)
        return self._flex

    def make_flex(self, index, count, backend: str | None = None):
        """Every listed block full, no mask_mod, no LSE; ``backend="FLASH"`` asks for the FA4 lowering."""
        from torch.nn.attention.flex_attention import BlockMask

        seq_q = self.qh.shape[2]
        block_mask = BlockMask.from_kv_blocks(
            torch.zeros_like(count), torch.zeros_like(index), count, index, BLOCK_SIZE=BLOCK, mask_mod=None,
            seq_lengths=(seq_q, self.limit), compute_q_blocks=False)
        flex = self._compiled_flex()
        options = {"BACKEND": backend} if backend else None

        def run():
            return flex(self.qh, self.kh_cut, self.vh_cut, block_mask=block_mask, kernel_options=options)
        return run

    def make_fa4(self, index, count):
        """FlashAttention-4's public forward with the lists as full blocks (as benchmarks/fa4_peer.py)."""
        from flash_attn.cute import flash_attn_func
        from flash_attn.cute.block_sparsity import BlockSparseTensorsTorch

        tensors = BlockSparseTensorsTorch(
            mask_block_cnt=torch.zeros_like(count), mask_block_idx=torch.zeros_like(index), full_block_cnt=count,
            full_block_idx=index, block_size=(BLOCK, BLOCK))

        def run():
            out = flash_attn_func(self.q, self.k_cut, self.v_cut, block_sparse_tensors=tensors)
            return out[0] if isinstance(out, tuple) else out
        return run

    def build(self, name: str, index, count):
        """The peer's callable after one checked call, or None with the reason kept in ``skipped``."""
        if name in self.skipped:  # failed at an earlier density of this shape: not retried
            return None, None
        try:
            if name == "flex":
                fn = self.make_flex(index, count)
            elif name == "flex-flash":
                fn = self.make_flex(index, count, backend="FLASH")
            elif name == "fa4":
                fn = self.make_fa4(index, count)
            else:
                raise ValueError(name)
            out = fn()
            torch.cuda.synchronize()
        except Exception as err:  # noqa: BLE001 - a peer missing on this machine is recorded, not fatal
            self.skipped[name] = f"{type(err).__name__}: {str(err)[:300]}"
            return None, None
        out = out[0] if isinstance(out, tuple) else out
        if name.startswith("flex"):
            out = out.transpose(1, 2)
        return fn, out


def time_portable(ours, budget_ms):
    """ms of the same launch with the Gluon kernel switched off (``JENGA_GLUON=0``): the portable kernel."""
    saved = os.environ.get("JENGA_GLUON")
    os.environ["JENGA_GLUON"] = "0"
    try:
        return bench(ours, budget_ms), ours()[0]
    finally:
        if saved is None:
            os.environ.pop("JENGA_GLUON")
        else:
            os.environ["JENGA_GLUON"] = saved


def kernel_that_runs(q, k, v) -> str:
    """Which kernel jenga's launcher picks for these inputs (no key bias, 128-blocks, no explicit tiles)."""
    from jenga.kernels.triton_block_sparse import _gluon_wanted  # the launcher's own routing

    if _gluon_wanted(q, k, v, BLOCK, 0.0):
        return "gluon-" + os.environ.get("JENGA_GLUON_SCHEDULE", "pingpong")
    return "triton"


def run_shape(shape: Shape, head_dim: int, densities, sweep: bool, budget_ms: float, log,
              peers=("flex", "flex-flash", "fa4"), skipped: dict | None = None,
              dtype: torch.dtype = torch.bfloat16, longest_first: bool = False, portable: bool = False,
              list_kinds=("random", "selector")) -> list[dict]:
    device = torch.device("cuda")
    gen = torch.Generator(device=device).manual_seed(0)
    n, heads = shape.tokens, shape.heads
    q, k, v = (torch.randn(1, n, heads, head_dim, device=device, dtype=dtype, generator=gen) for _ in range(3))
    key_lengths = None
    limit = shape.video_tokens + shape.valid_text if shape.text_tokens else n
    if limit < n:
        key_lengths = torch.tensor([limit], device=device, dtype=torch.int32)
    qb = kb = math.ceil(n / BLOCK)
    choice = tuning.choose(device, head_dim, dtype, BLOCK, n, _tma_default(q, k, v), None)
    tiles = dict(choice.config, use_tma=choice.use_tma, source=choice.source)
    log(f"{shape.name}: {n} tokens, key limit {limit}; jenga tiles {tiles}")
    others = Peers(q, k, v, limit)
    flops_dense = 4 * heads * n * n * head_dim
    rows = []

    def record(kind, lists_kind, density, ms, **extra):
        row = dict(shape=shape.name, head_dim=head_dim, dtype=str(dtype).removeprefix("torch."), heads=heads,
                   tokens=n, kernel=kind, lists=lists_kind,
                   density=round(density, 4), ms=round(ms, 4),
                   tflops=round(flops_dense * density / ms / 1e9, 1), **extra)
        rows.append(row)
        log(f"{shape.name:8s} d={head_dim:3d} {lists_kind:9s} density={density:.3f} {kind:14s} "
            f"{ms:9.3f} ms {row['tflops']:6.1f} TFLOP/s")
        return row

    # -- dense baselines (unmasked, full length, contiguous [B, H, N, D])
    qt, kt, vt = others.qh, others.kh, others.vh
    from torch.nn.attention import SDPBackend, sdpa_kernel

    dense = {}
    for name, backend in (("sdpa-cudnn", SDPBackend.CUDNN_ATTENTION), ("sdpa-flash", SDPBackend.FLASH_ATTENTION)):
        try:
            with sdpa_kernel(backend):
                ms = bench(lambda: torch.nn.functional.scaled_dot_product_attention(qt, kt, vt), budget_ms)
            dense[name] = ms
            record(name, "dense", 1.0, ms)
        except RuntimeError as err:  # a backend absent on this card/build
            log(f"{name} unavailable: {err}")

    # -- lists: random, and from the real selector on smooth inputs
    perm, inverse = curve_permutation(shape.grid, "zorder", device=device)
    adjacency = block_adjacency(shape.grid, BLOCK, "zorder", device=device)
    smooth_q = smooth_field(shape, head_dim, heads, device, gen).to(dtype)
    smooth_k = (smooth_q.float() + 0.5 * torch.randn(smooth_q.shape, device=device, generator=gen)).to(dtype)
    if shape.text_tokens:
        text = torch.randn(1, shape.text_tokens, heads, head_dim, device=device, dtype=dtype, generator=gen)
        smooth_q, smooth_k = torch.cat([smooth_q, text], 1), torch.cat([smooth_k, text], 1)
    sel_q = torch.cat([smooth_q[:, perm], smooth_q[:, shape.video_tokens:]], 1)
    sel_k = torch.cat([smooth_k[:, perm], smooth_k[:, shape.video_tokens:]], 1)

    for density in densities:
        cases = [("random", random_lists(1, heads, qb, kb, density, device, gen))] if "random" in list_kinds else []
        if density < 1.0 and "ragged" in list_kinds:
            cases.append(("ragged", ragged_lists(1, heads, qb, kb, density, device, gen)))
        if density < 1.0 and "selector" in list_kinds:
            def select(drop=1.0 - density):
                return select_blocks(sel_q, sel_k, drop_rate=drop, cdf_threshold=0.0, block_size=BLOCK,
                                     num_video_tokens=shape.video_tokens, adjacency=adjacency)
            lists = select()
            cases.append(("selector", (lists.kv_index, lists.kv_count)))
        for lists_kind, (kv_index, kv_count) in cases:
            real_density = kv_count.float().sum().item() / (heads * qb * kb)

            def ours(kv_index=kv_index, kv_count=kv_count):
                return block_sparse_attention_triton(q, k, v, kv_index, kv_count, BLOCK, key_lengths, n, 0.0, False)

            ms_ours = bench(ours, budget_ms)
            ref = ours()[0]
            ran = kernel_that_runs(q, k, v)
            extra = dict(launcher_ran=ran, **({"tiles": tiles} if ran == "triton" else {}))
            if "sdpa-cudnn" in dense:
                extra["vs_cudnn_per_block"] = round(dense["sdpa-cudnn"] * real_density / ms_ours, 3)
            cut_index, cut_count = lists_within(kv_index, kv_count, kb, math.ceil(limit / BLOCK))
            for peer in peers:
                fn, peer_out = others.build(peer, cut_index, cut_count)
                if fn is None:
                    log(f"  {peer} skipped: {others.skipped[peer]}")
                    continue
                ms_peer = bench(fn, budget_ms)
                err = ((peer_out.float() - ref.float()).norm() / ref.float().norm()).item()
                peer_extra = dict(rel_err_vs_jenga=float(f"{err:.3g}"))
                if "sdpa-cudnn" in dense:
                    peer_extra["vs_cudnn_per_block"] = round(dense["sdpa-cudnn"] * real_density / ms_peer, 3)
                record(peer, lists_kind, real_density, ms_peer, **peer_extra)
                extra[f"vs_{peer}"] = round(ms_peer / ms_ours, 3)
                del fn, peer_out
            if lists_kind == "selector":
                ms_sel = bench(select, budget_ms / 2)

                def permute():
                    gathered = [t[:, perm] for t in (q, k, v)]
                    return gathered[0][:, inverse]

                ms_perm = bench(permute, budget_ms / 2)
                extra.update(selector_ms=round(ms_sel, 4), permute_ms=round(ms_perm, 4),
                             overhead_share=round((ms_sel + ms_perm) / ms_ours, 4))
                # under torch.compile (as in a compiled pipeline) pooling, scores and softmax fuse and the
                # Python between the launches goes: what a compiled transformer pays per layer
                try:
                    compiled_select = torch.compile(select, dynamic=False, fullgraph=True)
                    ms_sel_compiled = bench(compiled_select, budget_ms / 2)
                    extra.update(selector_compiled_ms=round(ms_sel_compiled, 4),
                                 selector_compiled_share=round(ms_sel_compiled / ms_ours, 4))
                except Exception as err:  # noqa: BLE001 - a compile failure must not cost the other figures
                    log(f"  compiled selector failed: {type(err).__name__}: {str(err)[:200]}")
                # replayed from a CUDA graph: the selector's device time alone, what a layer pays when the
                # host runs ahead of the GPU (as it does in a pipeline, where each layer's matmuls take ms)
                try:
                    ms_sel_graph = bench(_graphed(select), budget_ms / 2)
                    extra.update(selector_graph_ms=round(ms_sel_graph, 4),
                                 selector_graph_share=round(ms_sel_graph / ms_ours, 4))
                except Exception as err:  # noqa: BLE001 - a capture failure must not cost the other figures
                    log(f"  graphed selector failed: {type(err).__name__}: {str(err)[:200]}")
            record("jenga", lists_kind, real_density, ms_ours, **extra)
            if portable and extra["launcher_ran"] != "triton":  # the portable kernel on the same lists
                ms_portable, out_portable = time_portable(ours, budget_ms)
                err = ((out_portable.float() - ref.float()).norm() / ref.float().norm()).item()
                record("jenga-portable", lists_kind, real_density, ms_portable, rel_err_vs_jenga=float(f"{err:.3g}"),
                       jenga_speedup=round(ms_portable / ms_ours, 3),
                       **({"vs_cudnn_per_block": round(dense["sdpa-cudnn"] * real_density / ms_portable, 3)}
                          if "sdpa-cudnn" in dense else {}))
            if longest_first:  # the same launch with query tiles started longest list first
                def ours_sorted(kv_index=kv_index, kv_count=kv_count):
                    return block_sparse_attention_triton(q, k, v, kv_index, kv_count, BLOCK, key_lengths, n, 0.0,
                                                         False, longest_first=True)
                ms_sorted = bench(ours_sorted, budget_ms)
                # against the portable kernel in its plain order (the longest-first order is that kernel's)
                ms_plain, out_plain = (ms_ours, ref) if extra["launcher_ran"] == "triton" else time_portable(ours,
                                                                                                            budget_ms)
                same = torch.equal(ours_sorted()[0], out_plain)
                record("jenga-triton-longest-first", lists_kind, real_density, ms_sorted,
                       vs_plain_order=round(ms_plain / ms_sorted, 3), equal_to_plain_order=same)
            if skipped is not None:
                skipped.update({f"{shape.name}/{peer}": why for peer, why in others.skipped.items()})

            if sweep and lists_kind == "random":
                for cfg in _configs():
                    for use_tma in (False, True):
                        c = dict(cfg.kwargs, num_warps=cfg.num_warps, num_stages=cfg.num_stages)
                        if c.get("Q_TMA") and not use_tma:
                            continue  # queries through a descriptor need the descriptor path

                        def variant(c=c, use_tma=use_tma, kv_index=kv_index, kv_count=kv_count):
                            return block_sparse_attention_triton(q, k, v, kv_index, kv_count, BLOCK, key_lengths, n,
                                                                 0.0, False, config=c, use_tma=use_tma)
                        try:
                            ms = bench(variant, budget_ms)
                        except Exception as err:  # noqa: BLE001 - a config that does not fit this card
                            log(f"  config {c} tma={use_tma} failed: {type(err).__name__}: {str(err)[:160]}")
                            continue
                        label = "/".join(str(x) for x in c.values()) + ("/tma" if use_tma else "/ptr")
                        record(f"cfg {label}", lists_kind, real_density, ms, config=c, use_tma=use_tma)
    return rows


def first_call_child(name: str, density: float) -> int:
    """In a fresh process: the first call of ``jenga.block_sparse_attention`` at this shape (compile and, with
    JENGA_AUTOTUNE=1, tuning) against the next one. Prints one JSON line."""
    from jenga import block_sparse_attention

    shape = ALL_SHAPES[name]
    device = torch.device("cuda")
    gen = torch.Generator(device=device).manual_seed(0)
    n, heads = shape.tokens, shape.heads
    q, k, v = (torch.randn(1, n, heads, 128, device=device, dtype=torch.bfloat16, generator=gen) for _ in range(3))
    limit = shape.video_tokens + shape.valid_text if shape.text_tokens else n
    key_lengths = torch.tensor([limit], device=device, dtype=torch.int32) if limit < n else None
    kv_index, kv_count = random_lists(1, heads, math.ceil(n / BLOCK), math.ceil(n / BLOCK), density, device, gen)
    torch.cuda.synchronize()
    timings = []
    for _ in range(3):
        start = time.perf_counter()
        block_sparse_attention(q, k, v, kv_index, kv_count, key_lengths=key_lengths, backend="triton")
        torch.cuda.synchronize()
        timings.append(time.perf_counter() - start)
    print(json.dumps(dict(shape=name, tokens=n, density=density, first_s=round(timings[0], 3),
                          warm_ms=round(1000 * min(timings[1:]), 3), launcher_ran=kernel_that_runs(q, k, v),
                          autotune=tuning.autotune_requested())), flush=True)
    return 0


def first_calls(names, density: float, autotune: bool, log, on_row=None) -> list[dict]:
    """Each shape in fresh processes with an empty Triton cache (cold: the JIT compile), then again on the
    filled cache (warm disk cache); with ``autotune`` also a cold process under JENGA_AUTOTUNE=1."""
    rows = []
    modes = [("table", False)] + ([("autotune", True)] if autotune else [])
    for name in names:
        for mode, tune in modes:
            with tempfile.TemporaryDirectory() as scratch:
                env = dict(os.environ, TRITON_CACHE_DIR=os.path.join(scratch, "triton"),
                           XDG_CACHE_HOME=os.path.join(scratch, "xdg"))
                env.pop(tuning.AUTOTUNE_ENV, None)
                if tune:
                    env[tuning.AUTOTUNE_ENV] = "1"
                for cache in ("cold", "warm") if not tune else ("cold",):
                    cmd = [sys.executable, __file__, "--first-call-child", name, "--densities", str(density)]
                    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
                    if done.returncode != 0:
                        log(f"first call {name} {mode} {cache} failed: {done.stderr[-600:]}")
                        continue
                    row = dict(json.loads(done.stdout.strip().splitlines()[-1]), mode=mode, triton_cache=cache)
                    row["first_over_warm"] = round(1000 * row["first_s"] / row["warm_ms"], 1)
                    rows.append(row)
                    log(f"first call {name} {mode} {cache} cache: {row['first_s']:.2f} s, warm {row['warm_ms']:.2f} ms")
                    if on_row is not None:  # saved as it goes: a run cut by a time limit keeps what it measured
                        on_row(row)
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", nargs="+", default=DEFAULT_SHAPES, choices=list(ALL_SHAPES))
    parser.add_argument("--peers", nargs="*", default=["flex", "flex-flash", "fa4"],
                        choices=["flex", "flex-flash", "fa4"], help="peers timed beside ours on the same lists")
    parser.add_argument("--first-call", action="store_true",
                        help="time a fresh process's first call at each shape (density: the first of --densities)")
    parser.add_argument("--first-call-autotune", action="store_true",
                        help="with --first-call, also a cold process under JENGA_AUTOTUNE=1")
    parser.add_argument("--first-call-child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--densities", nargs="+", type=float, default=[1.0, 0.25, 0.10])
    parser.add_argument("--head-dims", nargs="+", type=int, default=[128])
    parser.add_argument("--dtypes", nargs="+", default=["bfloat16"], choices=["bfloat16", "float16"])
    parser.add_argument("--sweep", action="store_true", help="also time each kernel config explicitly")
    parser.add_argument("--portable", action="store_true",
                        help="also time the portable Triton kernel where the Gluon one runs (Hopper)")
    parser.add_argument("--lists", nargs="+", default=["random", "selector"], choices=["random", "ragged", "selector"],
                        help="block lists: random (equal counts), ragged (uneven counts), the real selector's")
    parser.add_argument("--longest-first", action="store_true",
                        help="also time ours with query tiles launched longest list first")
    parser.add_argument("--budget-ms", type=float, default=400.0, help="timing budget per measurement")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("benchmarks/attention.py needs a CUDA GPU", file=sys.stderr)
        return 2
    if args.first_call_child:
        return first_call_child(args.first_call_child, args.densities[0])

    def log(msg):
        print(msg, flush=True)

    card = card_name()
    log(f"card: {card}, torch {torch.__version__}, triton {triton.__version__}, commit {git_commit()}")
    rows = []
    started = time.time()
    out = args.out or Path(__file__).parent / "results" / f"attention-{card}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    skipped = {}

    def save():  # after every shape: a run cut by a time limit keeps what it measured
        meta = dict(card=card, torch=torch.__version__, triton=triton.__version__, commit=git_commit(),
                    date=time.strftime("%Y-%m-%d"), python=platform.python_version(),
                    command=" ".join(["python", "benchmarks/attention.py", *(argv or sys.argv[1:])]),
                    seconds=round(time.time() - started), shapes={k: asdict(v) for k, v in ALL_SHAPES.items()},
                    skipped=skipped)
        out.write_text(json.dumps(dict(meta=meta, rows=rows), indent=1))
        log(f"wrote {out}")

    if args.first_call:
        first_calls(args.shapes, args.densities[0], args.first_call_autotune, log,
                    on_row=lambda row: (rows.append(row), save()))
        save()
        return 0
    for dtype, head_dim in itertools.product(args.dtypes, args.head_dims):
        for name in args.shapes:
            rows += run_shape(ALL_SHAPES[name], head_dim, args.densities, args.sweep, args.budget_ms, log,
                              peers=args.peers, skipped=skipped, dtype=getattr(torch, dtype),
                              longest_first=args.longest_first, portable=args.portable, list_kinds=args.lists)
            save()
    return 0


if __name__ == "__main__":
    sys.exit(main())
