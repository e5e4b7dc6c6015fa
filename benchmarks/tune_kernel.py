"""Measure the block-sparse kernel's tile table for this GPU: what ``jenga/kernels/tuned/<arch>.json`` ships.

Run on the GPU the table is for (one NVIDIA H200 for ``sm90``)::

    python benchmarks/tune_kernel.py --out-dir $OUT          # writes $OUT/sm90.json and $OUT/tune-kernel-rows.json

For each head dim (64, 128), dtype (bfloat16, float16, float32) and length bucket (powers of two, 4,096 to
131,072 tokens, at the real models' lengths: Wan 1.3B 32,760, HunyuanVideo 544p 57,856, Wan 14B 75,600,
HunyuanVideo 720p 119,056) it times every kernel config the autotuner would try, with plain loads and with
tensor descriptors, on random block lists at densities 0.25 and 1.0, and keeps per load path the config with
the least summed time relative to each case's fastest. Head counts are cut at long lengths so that one dense
launch takes tens of milliseconds (the grid still holds many waves of programs).

Compiling every config is the slow part: ``--workers`` processes compile them first (Triton's disk cache),
then this process times them one after another. ``--max-seconds`` stops before the next (head dim, dtype)
once passed; the table written so far is kept (it is rewritten after each).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import torch

BLOCK = 128
# bucket -> the lengths tuned for it (the real models' where they fall in the bucket)
LENGTHS = {4096: (4096,), 8192: (8192,), 16384: (16384,), 32768: (32760,), 65536: (57856,),
           131072: (75600, 119056)}
DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


def heads_for(n: int) -> int:
    """Heads for length ``n``: 24 up to 32k tokens, fewer beyond (about 25 ms per dense bf16 launch), 2 at least."""
    return max(2, min(24, round(24 * (32768 / n) ** 2)))


def make_case(n: int, density: float, head_dim: int, dtype: torch.dtype, seed: int = 0):
    """Random q, k, v ``[1, n, H, D]`` and exactly ``round(density * blocks)`` random key blocks per query block.

    Deterministic, so the compile workers see the same shapes and strides (hence the same kernel
    specialisations) as the timing process.
    """
    from jenga import dense_to_lists

    device = torch.device("cuda")
    gen = torch.Generator(device=device).manual_seed(seed)
    heads = heads_for(n)
    q, k, v = (torch.randn(1, n, heads, head_dim, device=device, dtype=dtype, generator=gen) for _ in range(3))
    blocks = math.ceil(n / BLOCK)
    keep = max(1, round(density * blocks))
    scores = torch.rand(1, heads, blocks, blocks, device=device, generator=gen)
    mask = torch.zeros_like(scores, dtype=torch.bool).scatter_(-1, scores.topk(keep, -1).indices, True)
    kv_index, kv_count = dense_to_lists(mask)
    return q, k, v, kv_index, kv_count


def candidates(head_dim: int, dtype: torch.dtype, use_tma: bool) -> list[dict]:
    """The autotuner's configs for this kind (same pruning), plus the safe default."""
    from jenga.kernels import tuning
    from jenga.kernels.triton_block_sparse import _configs, _prune_configs

    named = dict(KV_BLOCK=BLOCK, HEAD_DIM=head_dim, IEEE=dtype == torch.float32, USE_TMA=use_tma)
    found = [dict(c.kwargs, num_warps=c.num_warps, num_stages=c.num_stages)
             for c in _prune_configs(_configs(), named)]
    default = tuning.default_choice(head_dim, dtype, BLOCK, torch.cuda.get_device_capability()).config
    if default not in found:
        found.append(dict(default))
    return [c for c in found if use_tma or not c.get("Q_TMA")]


def launch(case, config, use_tma):
    from jenga.kernels.triton_block_sparse import block_sparse_attention_triton

    q, k, v, kv_index, kv_count = case
    n = q.shape[1]
    return block_sparse_attention_triton(q, k, v, kv_index, kv_count, BLOCK, None, n, 0.0, False, config=config,
                                         use_tma=use_tma)


def cases_of(densities):
    return [(bucket, n, d) for bucket, lengths in LENGTHS.items() for n in lengths for d in densities]


def _compile_worker(job) -> list[str]:
    """In a fresh process: launch each (config, path) once per case, filling Triton's disk cache."""
    head_dim, dtype_name, variants, densities = job
    dtype = DTYPES[dtype_name]
    failures = []
    for _, n, density in cases_of(densities):
        case = make_case(n, density, head_dim, dtype)
        for config, use_tma in variants:
            try:
                launch(case, config, use_tma)
            except Exception as err:  # noqa: BLE001 - reported by the timing pass too
                failures.append(f"{config} tma={use_tma} n={n}: {type(err).__name__}: {str(err)[:120]}")
        del case
        torch.cuda.synchronize()
    return failures


def pick(rows: list[dict], bucket: int, path: str):
    """The config of ``path`` with the least sum over the bucket's cases of time / the case's fastest time."""
    in_bucket = [r for r in rows if r["len_bucket"] == bucket and r["ms"] is not None]
    fastest = {}
    for r in in_bucket:
        key = (r["tokens"], r["density"])
        fastest[key] = min(fastest.get(key, math.inf), r["ms"])
    scores: dict[str, list] = {}
    for r in in_bucket:
        if r["path"] != path:
            continue
        label = json.dumps(r["config"], sort_keys=True)
        scores.setdefault(label, [0.0, 0, r["config"]])
        scores[label][0] += r["ms"] / fastest[(r["tokens"], r["density"])]
        scores[label][1] += 1
    cases = len(fastest)
    complete = [s for s in scores.values() if s[1] == cases]  # a config that failed somewhere is not picked
    if not complete:
        return None
    score, _, config = min(complete, key=lambda s: s[0])
    return config, score / cases


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out-dir", type=Path, required=True)
    parser.add_argument("--head-dims", nargs="+", type=int, default=[128, 64])
    parser.add_argument("--dtypes", nargs="+", default=["bfloat16", "float16", "float32"], choices=list(DTYPES))
    parser.add_argument("--densities", nargs="+", type=float, default=[0.25, 1.0])
    parser.add_argument("--workers", type=int, default=12, help="compile processes (0: compile while timing)")
    parser.add_argument("--budget-ms", type=float, default=60.0, help="timed runs per measurement, in ms")
    parser.add_argument("--max-seconds", type=float, default=300.0)
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("benchmarks/tune_kernel.py needs a CUDA GPU", file=sys.stderr)
        return 2
    import triton
    from _common import card_name, git_commit

    from jenga.kernels import tuning
    from jenga.kernels.triton_autotune_timer import tuning_bench

    started = time.time()
    args.out_dir.mkdir(parents=True, exist_ok=True)
    capability = torch.cuda.get_device_capability()
    arch = tuning.arch_name(capability)
    tma_ok = capability[0] >= 9
    kinds = [(hd, dt) for dt in args.dtypes for hd in args.head_dims]
    variants = {kind: [(c, tma) for tma in ((False, True) if tma_ok else (False,))
                       for c in candidates(kind[0], DTYPES[kind[1]], tma)] for kind in kinds}
    log = lambda msg: print(f"[{time.time() - started:6.1f}s] {msg}", flush=True)  # noqa: E731
    log(f"{card_name()} {arch}, torch {torch.__version__}, triton {triton.__version__}; "
        f"{sum(len(v) for v in variants.values())} variants over {len(kinds)} kinds")

    if args.workers > 0:  # compile every (kind, variant) in parallel: one job per few variants
        chunk = max(1, math.ceil(sum(len(vs) for vs in variants.values()) / args.workers))
        jobs = [(hd, dt, vs[i:i + chunk], args.densities) for (hd, dt), vs in variants.items()
                for i in range(0, len(vs), chunk)]
        with ProcessPoolExecutor(args.workers, mp_context=get_context("spawn")) as pool:
            for failures in pool.map(_compile_worker, jobs):
                for failure in failures:
                    log(f"compile failed: {failure}")
        log(f"compiled {len(jobs)} jobs")

    meta = dict(arch=arch, card=card_name(), torch=torch.__version__, triton=triton.__version__,
                commit=git_commit(), date=time.strftime("%Y-%m-%d"), python=platform.python_version(),
                command=" ".join(["python", "benchmarks/tune_kernel.py", *(argv or sys.argv[1:])]),
                densities=args.densities, lengths={str(b): list(ls) for b, ls in LENGTHS.items()})
    entries, rows = [], []
    for hd, dt in kinds:
        if time.time() - started > args.max_seconds:
            log(f"stopping before head dim {hd} {dt}: --max-seconds {args.max_seconds} passed")
            break
        dtype = DTYPES[dt]
        kind_rows = []
        for bucket, n, density in cases_of(args.densities):
            case = make_case(n, density, hd, dtype)
            for config, use_tma in variants[(hd, dt)]:
                path = "tma" if use_tma else "pointer"
                try:
                    ms = tuning_bench(lambda c=config, t=use_tma, case=case: launch(case, c, t),
                                      budget_ms=args.budget_ms)
                except Exception as err:  # noqa: BLE001 - a config that does not fit: recorded, never picked
                    ms = None
                    log(f"  {config} {path} n={n} failed: {type(err).__name__}: {str(err)[:120]}")
                kind_rows.append(dict(head_dim=hd, dtype=dt, len_bucket=bucket, tokens=n, heads=heads_for(n),
                                      density=density, path=path, config=config,
                                      ms=None if ms is None else round(ms, 4)))
            del case
        rows += kind_rows
        for bucket in LENGTHS:
            entry = dict(head_dim=hd, dtype=dt, block_size=BLOCK, len_bucket=bucket)
            picks = {path: pick(kind_rows, bucket, path) for path in ("pointer", "tma")}
            picks = {path: p for path, p in picks.items() if p is not None}
            if not picks:
                log(f"  no config ran at head dim {hd} {dt} bucket {bucket}")
                continue
            for path, (config, _) in picks.items():
                entry[path] = config
            entry["best"] = min(picks, key=lambda p: picks[p][1])
            entry["score"] = {path: round(s, 4) for path, (_, s) in picks.items()}  # mean time / case's fastest
            entries.append(entry)
            log(f"head dim {hd} {dt} bucket {bucket}: {entry['best']} {entry[entry['best']]} "
                f"(relative time {entry['score']})")
        (args.out_dir / f"{arch}.json").write_text(json.dumps(dict(meta, entries=entries), indent=1))
        (args.out_dir / "tune-kernel-rows.json").write_text(json.dumps(dict(meta=meta, rows=rows)))
        log(f"wrote {args.out_dir / f'{arch}.json'} ({len(entries)} entries)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
