"""What limits the block-sparse kernel at long sequences: the per-head key/value working set against L2.

Every query block gets the same number of key blocks (``--density`` of all of them, drawn at random), but
drawn from a window of the first ``W`` key blocks only. The work is identical for every window; only the
bytes of keys and values that concurrently running programs of one head touch change (64 KiB per 128-token
block at head dim 128, bf16). If the per-block rate drops once the window outgrows L2 (50 MB on an H100),
the kernel is bound by L2 misses there, not by its arithmetic.

    python benchmarks/kernel_locality.py --shapes hunyuan wan14b
    ncu --clock-control none -k regex:block_sparse_fwd python benchmarks/kernel_locality.py --profile

Each window is timed as one launch (autotuned, and one fixed tile config) and split into ``--phases`` key
ranges run one after another (the kernel's opt-in ``key_phases``).
``--profile`` launches each case once with a fixed tile config (no autotuning, no timing) for a profiler.
Writes ``benchmarks/results/kernel-locality-<card>.json`` (or ``--out``).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch
import triton
from _common import BLOCK, SHAPES, bench, card_name, git_commit

from jenga.kernels.triton_block_sparse import last_tuned_config
from jenga.kernels.triton_key_phases import block_sparse_attention_key_phases as block_sparse_attention_triton
from jenga.kernels.triton_key_phases import key_phases_for

FIXED = dict(BLOCK_M=128, BLOCK_N=64, num_warps=4, num_stages=3)


def window_lists(heads: int, blocks: int, count: int, window: int, device, generator):
    """``count`` distinct random key blocks among the first ``window`` for every (head, query block)."""
    scores = torch.rand(1, heads, blocks, window, device=device, generator=generator)
    picked = scores.topk(count, dim=-1).indices.sort(dim=-1).values.to(torch.int32)
    kv_index = torch.zeros(1, heads, blocks, blocks, dtype=torch.int32, device=device)
    kv_index[..., :count] = picked
    kv_count = torch.full((1, heads, blocks), count, dtype=torch.int32, device=device)
    return kv_index, kv_count


def run_shape(name: str, args: argparse.Namespace, device: torch.device) -> list[dict]:
    shape = SHAPES[name]
    gen = torch.Generator(device=device).manual_seed(0)
    n, heads, dim = shape.video_tokens, shape.heads, 128  # video tokens only: no text-key masking
    q, k, v = (torch.randn(1, n, heads, dim, device=device, dtype=torch.bfloat16, generator=gen) for _ in range(3))
    blocks = math.ceil(n / BLOCK)
    count = round(args.density * blocks)
    block_bytes = 2 * BLOCK * dim * q.element_size()  # keys + values of one block of one head
    rows = []
    windows = sorted({blocks if mb <= 0 else min(blocks, max(count, round(mb * 1e6 / block_bytes)))
                      for mb in args.windows_mb})
    for window in windows:
        kv_index, kv_count = window_lists(heads, blocks, count, window, device, gen)

        def run(config=None, phases=1, kv_index=kv_index, kv_count=kv_count):
            return block_sparse_attention_triton(q, k, v, kv_index, kv_count, BLOCK, None, n, 0.0, False,
                                                 config=config, key_phases=phases)

        working_mb = window * block_bytes / 1e6
        if args.profile:
            run(FIXED)
            torch.cuda.synchronize()
            print(f"{name} window {window} blocks ({working_mb:.1f} MB per head): launched", flush=True)
            continue
        flops = 4 * heads * n * BLOCK * dim * count  # every query row against count * BLOCK keys
        row = dict(shape=name, heads=heads, tokens=n, blocks=blocks, count=count, window=window,
                   working_set_mb=round(working_mb, 1))
        # one launch (autotuned and one fixed tile config) against the default key phases
        variants = [("autotuned", None, 1), ("fixed", FIXED, 1)]
        variants += [(f"phases{p}", None, p) for p in args.phases if p > 1]
        variants += [(f"fixed-phases{p}", FIXED, p) for p in args.phases if p > 1]
        for label, config, phases in variants:
            ms = bench(lambda config=config, phases=phases, run=run: run(config, phases), args.budget_ms)
            row[f"{label}_ms"] = round(ms, 3)
            row[f"{label}_tflops"] = round(flops / ms / 1e9, 1)
            if config is None:
                row[f"{label}_config"] = last_tuned_config()
        row["phases_by_rule"] = key_phases_for(k)
        rows.append(row)
        print(f"{name:8s} window {window:4d}/{blocks} blocks = {working_mb:5.1f} MB/head: " + ", ".join(
            f"{label} {row[f'{label}_ms']:8.3f} ms {row[f'{label}_tflops']:6.1f} TFLOP/s" for label, _, _ in variants)
            + f" (sizing rule: {row['phases_by_rule']} phases)", flush=True)
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", nargs="+", default=["hunyuan"], choices=list(SHAPES))
    parser.add_argument("--density", type=float, default=0.25)
    parser.add_argument("--windows-mb", nargs="+", type=float, default=[16, 24, 32, 40, 48, 0],
                        help="per-head key+value bytes of the window in MB; 0 = every key block")
    parser.add_argument("--phases", nargs="+", type=int, default=[3],
                        help="key phase counts to time besides one launch (autotuned and fixed config)")
    parser.add_argument("--profile", action="store_true", help="one fixed-config launch per case, no timing")
    parser.add_argument("--budget-ms", type=float, default=300.0)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("benchmarks/kernel_locality.py needs a CUDA GPU", file=sys.stderr)
        return 2
    device = torch.device("cuda")
    card = card_name()
    print(f"card: {card}, torch {torch.__version__}, triton {triton.__version__}, commit {git_commit()}", flush=True)
    rows = []
    for name in args.shapes:
        rows += run_shape(name, args, device)
        torch.cuda.empty_cache()
    if not args.profile:
        out = args.out or Path(__file__).parent / "results" / f"kernel-locality-{card}.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        meta = dict(card=card, torch=torch.__version__, triton=triton.__version__, commit=git_commit(),
                    date=time.strftime("%Y-%m-%d"), density=args.density, fixed_config=FIXED)
        out.write_text(json.dumps(dict(meta=meta, rows=rows), indent=1))
        print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
