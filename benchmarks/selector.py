"""Block selector cost at the real video shapes: ``select_blocks`` with the torch reference vs the Triton kernel.

Run on a CUDA GPU::

    python benchmarks/selector.py                         # Wan 1.3B and HunyuanVideo shapes
    python benchmarks/selector.py --attention --out sel.json   # also time the sparse attention it feeds

Per shape and (drop rate, cdf threshold): the median milliseconds (``triton.testing.do_bench`` after
warm-up) of the whole ``select_blocks`` call per backend, of its shared prologue (pooling, scores,
softmax) and its pooling alone, of the Triton list kernel alone, and whether both backends give
identical lists. Small calls are launch-bound: ``do_bench`` then times the host as much as the GPU. Inputs
are random bf16 ``q, k`` with the z-order block adjacency. Exits 1 if any lists differ, 2 without CUDA.
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
from _common import BLOCK, SHAPES, Shape, bench, card_name, git_commit

HEAD_DIM = 128


def run_shape(shape: Shape, cases, attention: bool, budget_ms: float, log) -> tuple[list[dict], bool]:
    """Time and compare both backends on one shape; returns (rows, all lists identical)."""
    from jenga import block_adjacency, select_blocks
    from jenga.kernels.triton_block_sparse import block_sparse_attention_triton
    from jenga.kernels.triton_select import select_lists_triton
    from jenga.selection import MASS_SCALE, _mass_limit, pool_blocks

    device = torch.device("cuda")
    gen = torch.Generator(device=device).manual_seed(0)
    n, heads, nv = shape.tokens, shape.heads, shape.video_tokens
    q, k = (torch.randn(1, n, heads, HEAD_DIM, device=device, dtype=torch.bfloat16, generator=gen) for _ in range(2))
    adjacency = block_adjacency(shape.grid, BLOCK, "zorder", device)
    num_video = nv if shape.text_tokens else None
    num_blocks, video_blocks = math.ceil(n / BLOCK), math.ceil(nv / BLOCK)
    first_text = nv // BLOCK if shape.text_tokens else num_blocks
    v = torch.randn(q.shape, device=device, dtype=q.dtype, generator=gen) if attention else None
    rows, identical = [], True

    def prologue():
        qp, kp = pool_blocks(q, BLOCK, nv), pool_blocks(k, BLOCK, nv)
        return torch.softmax(torch.matmul(qp, kp.transpose(-1, -2)).div_(math.sqrt(HEAD_DIM)), dim=-1)

    ms_prologue = bench(prologue, budget_ms)
    ms_pool = bench(lambda: (pool_blocks(q, BLOCK, nv), pool_blocks(k, BLOCK, nv)), budget_ms)
    floor_ms = 2 * q.numel() * q.element_size() / 3.0e9  # reading q and k once at 3 TB/s
    log(f"{shape.name}: pooling q and k {ms_pool:.3f} ms (read floor at 3 TB/s {floor_ms:.3f} ms), "
        f"prologue (pooling, scores, softmax) {ms_prologue:.3f} ms")
    probs = prologue()
    for drop, p in cases:
        def select(backend, drop=drop, p=p):
            return select_blocks(q, k, drop_rate=drop, cdf_threshold=p, block_size=BLOCK, num_video_tokens=num_video,
                                 adjacency=adjacency, backend=backend)

        top_k = max(1, math.floor((1.0 - drop) * video_blocks))

        def lists_kernel(top_k=top_k, p=p):
            return select_lists_triton(probs, adjacency, None, num_blocks, first_text, top_k, _mass_limit(p),
                                       MASS_SCALE)

        ref, ours = select("torch"), select("triton")
        same_count = ref.kv_count == ours.kv_count
        same_rows = (ref.kv_index == ours.kv_index).all(-1) & same_count
        bad_rows = int((~same_rows).sum().item())
        identical &= bad_rows == 0
        ms_torch, ms_triton = bench(lambda: select("torch"), budget_ms), bench(lambda: select("triton"), budget_ms)
        ms_kernel = bench(lists_kernel, budget_ms)
        density = ours.kv_count.float().mean().item() / num_blocks
        row = dict(shape=shape.name, heads=heads, tokens=n, blocks=num_blocks, drop_rate=drop, cdf_threshold=p,
                   density=round(density, 4), torch_ms=round(ms_torch, 4), triton_ms=round(ms_triton, 4),
                   prologue_ms=round(ms_prologue, 4), pool_ms=round(ms_pool, 4), kernel_ms=round(ms_kernel, 4),
                   speedup=round(ms_torch / ms_triton, 2), identical=bad_rows == 0, mismatched_rows=bad_rows)
        if attention:
            def attend(lists=ours):
                return block_sparse_attention_triton(q, k, v, lists.kv_index, lists.kv_count, BLOCK, None, n, 0.0,
                                                     False)

            ms_attn = bench(attend, budget_ms)
            row.update(attention_ms=round(ms_attn, 4), selector_share=round(ms_triton / ms_attn, 4))
        rows.append(row)
        log(format_row(row))
    return rows, identical


def format_row(row: dict) -> str:
    verdict = "identical" if row["identical"] else f"DIFFER in {row['mismatched_rows']} rows"
    text = (f"{row['shape']:8s} drop={row['drop_rate']:.2f} p={row['cdf_threshold']:.2f} "
            f"density={row['density']:.3f} torch={row['torch_ms']:8.3f} ms triton={row['triton_ms']:7.3f} ms "
            f"(prologue {row['prologue_ms']:.3f} + lists {row['kernel_ms']:.3f}) x{row['speedup']:<6} {verdict}")
    if "attention_ms" in row:
        text += f"  attention={row['attention_ms']:.3f} ms share={100 * row['selector_share']:.2f}%"
    return text


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", nargs="+", default=["wan1.3b", "hunyuan"], choices=list(SHAPES))
    parser.add_argument("--drop-rates", nargs="+", type=float, default=[0.75, 0.9])
    parser.add_argument("--cdf-thresholds", nargs="+", type=float, default=[0.0, 0.9])
    parser.add_argument("--attention", action="store_true", help="also time the sparse attention on the lists")
    parser.add_argument("--budget-ms", type=float, default=200.0, help="timing budget per measurement")
    parser.add_argument("--out", type=Path, default=None, help="JSON path (default benchmarks/results/...)")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("benchmarks/selector.py needs a CUDA GPU", file=sys.stderr)
        return 2
    import triton

    def log(msg):
        print(msg, flush=True)

    card = card_name()
    log(f"card: {card}, torch {torch.__version__}, triton {triton.__version__}, commit {git_commit()}")
    cases = [(d, p) for d in args.drop_rates for p in args.cdf_thresholds]
    rows, identical, started = [], True, time.time()
    for name in args.shapes:
        shape_rows, same = run_shape(SHAPES[name], cases, args.attention, args.budget_ms, log)
        rows += shape_rows
        identical &= same
    out = args.out or Path(__file__).parent / "results" / f"selector-{card}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = dict(card=card, torch=torch.__version__, triton=triton.__version__, commit=git_commit(),
                date=time.strftime("%Y-%m-%d"), python=platform.python_version(), seconds=round(time.time() - started),
                block_size=BLOCK, head_dim=HEAD_DIM, shapes={k: asdict(v) for k, v in SHAPES.items()})
    out.write_text(json.dumps(dict(meta=meta, rows=rows, identical=identical), indent=1))
    log("")
    log(f"{'shape':8s} {'drop':>5s} {'p':>5s} {'density':>7s} {'torch ms':>9s} {'triton ms':>9s} {'speedup':>7s} "
        f"{'lists':>9s}")
    for r in rows:
        log(f"{r['shape']:8s} {r['drop_rate']:5.2f} {r['cdf_threshold']:5.2f} {r['density']:7.3f} {r['torch_ms']:9.3f} "
            f"{r['triton_ms']:9.3f} {r['speedup']:7.2f} {'identical' if r['identical'] else 'DIFFER':>9s}")
    log(f"wrote {out}")
    if not identical:
        print("the torch and triton selectors gave different lists", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
