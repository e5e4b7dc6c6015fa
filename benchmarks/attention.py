"""Block-sparse attention at the real video shapes: jenga's Triton kernel vs FlexAttention vs dense SDPA.

Run on a CUDA GPU::

    python benchmarks/attention.py                       # all shapes, densities 1.0 / 0.25 / 0.10
    python benchmarks/attention.py --shapes wan1.3b --sweep  # also time every kernel config explicitly

Effective TFLOP/s = 4 * B * H * N^2 * D * density / time, with the density of the lists actually used.
Each figure is the median of ``triton.testing.do_bench`` after warm-up, on random (never zero) inputs.
Writes ``benchmarks/results/attention-<card>.json`` (or ``--out``).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from dataclasses import asdict
from pathlib import Path

import torch
import triton
from _common import BLOCK, SHAPES, Shape, bench, card_name, git_commit

from jenga import block_adjacency, curve_permutation, dense_to_lists, select_blocks
from jenga.kernels.flex import block_sparse_attention_flex, flex_block_mask
from jenga.kernels.triton_block_sparse import _configs, block_sparse_attention_triton, last_tuned_config


def random_lists(batch, heads, qb, kb, density, device, generator):
    """Exactly round(density * kb) random key blocks per query block (at least one)."""
    keep = max(1, round(density * kb))
    scores = torch.rand(batch, heads, qb, kb, device=device, generator=generator)
    top = scores.topk(keep, dim=-1).indices
    mask = torch.zeros(batch, heads, qb, kb, dtype=torch.bool, device=device).scatter_(-1, top, True)
    return dense_to_lists(mask)


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


def run_shape(shape: Shape, head_dim: int, densities, sweep: bool, budget_ms: float, log) -> list[dict]:
    device = torch.device("cuda")
    gen = torch.Generator(device=device).manual_seed(0)
    dtype = torch.bfloat16
    n, heads = shape.tokens, shape.heads
    q, k, v = (torch.randn(1, n, heads, head_dim, device=device, dtype=dtype, generator=gen) for _ in range(3))
    key_lengths = None
    if shape.text_tokens:
        key_lengths = torch.tensor([shape.video_tokens + shape.valid_text], device=device, dtype=torch.int32)
    qb = kb = math.ceil(n / BLOCK)
    flops_dense = 4 * heads * n * n * head_dim
    rows = []

    def record(kind, lists_kind, density, ms, **extra):
        row = dict(shape=shape.name, head_dim=head_dim, heads=heads, tokens=n, kernel=kind, lists=lists_kind,
                   density=round(density, 4), ms=round(ms, 4),
                   tflops=round(flops_dense * density / ms / 1e9, 1), **extra)
        rows.append(row)
        log(f"{shape.name:8s} d={head_dim:3d} {lists_kind:9s} density={density:.3f} {kind:14s} "
            f"{ms:9.3f} ms {row['tflops']:6.1f} TFLOP/s")
        return row

    # -- dense baselines (unmasked, full length)
    qt, kt, vt = (t.transpose(1, 2) for t in (q, k, v))
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
        cases = [("random", random_lists(1, heads, qb, kb, density, device, gen))]
        if density < 1.0:
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
            tuned = last_tuned_config()
            block_mask = flex_block_mask(kv_index, kv_count, 1, heads, n, n, BLOCK, key_lengths)

            def flex(kv_index=kv_index, kv_count=kv_count, block_mask=block_mask):
                return block_sparse_attention_flex(q, k, v, kv_index, kv_count, BLOCK, key_lengths, n, 0.0, False,
                                                   block_mask=block_mask)

            ms_flex = bench(flex, budget_ms)
            record("flex", lists_kind, real_density, ms_flex)
            extra = dict(vs_flex=round(ms_flex / ms_ours, 3), tuned_config=tuned)
            if "sdpa-cudnn" in dense:
                extra["vs_cudnn_per_block"] = round(dense["sdpa-cudnn"] * real_density / ms_ours, 3)
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
            record("jenga-triton", lists_kind, real_density, ms_ours, **extra)

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


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    parser.add_argument("--densities", nargs="+", type=float, default=[1.0, 0.25, 0.10])
    parser.add_argument("--head-dims", nargs="+", type=int, default=[128])
    parser.add_argument("--sweep", action="store_true", help="also time each kernel config explicitly")
    parser.add_argument("--budget-ms", type=float, default=400.0, help="timing budget per measurement")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("benchmarks/attention.py needs a CUDA GPU", file=sys.stderr)
        return 2

    def log(msg):
        print(msg, flush=True)

    card = card_name()
    log(f"card: {card}, torch {torch.__version__}, triton {triton.__version__}, commit {git_commit()}")
    rows = []
    started = time.time()
    out = args.out or Path(__file__).parent / "results" / f"attention-{card}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    for head_dim in args.head_dims:
        for name in args.shapes:
            rows += run_shape(SHAPES[name], head_dim, args.densities, args.sweep, args.budget_ms, log)
            # Saved after every shape: a run cut by a time limit keeps what it measured.
            meta = dict(card=card, torch=torch.__version__, triton=triton.__version__, commit=git_commit(),
                        date=time.strftime("%Y-%m-%d"), python=platform.python_version(),
                        seconds=round(time.time() - started), shapes={k: asdict(v) for k, v in SHAPES.items()})
            out.write_text(json.dumps(dict(meta=meta, rows=rows), indent=1))
            log(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
