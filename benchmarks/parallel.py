"""Several GPUs: stock diffusers Ulysses vs jenga under Ulysses, full-size architectures (random bf16 weights).

Launch with torchrun, one process per GPU (nothing is downloaded)::

    torchrun --nproc-per-node 8 benchmarks/parallel.py        # HunyuanVideo 720p 129 f, Wan2.1-14B 720p 81 f
    torchrun --nproc-per-node 8 benchmarks/parallel.py --models wan14b --columns stock-cudnn jenga-carving
    python benchmarks/parallel.py --tiny --out /tmp/par.json  # CPU dry run: 2 gloo processes, tiny configs

Every rank builds the same transformer (seeded), ``jenga.enable_parallelism(pipe,
ContextParallelConfig(ulysses_degree=N))`` shards it with the family's plan, and runs the columns of
``benchmarks/pipeline.py`` (``stock-cudnn``, ``jenga-carving`` = the ``base`` preset, ``jenga-full``), timed the
same way (``composed`` by default: per-kind medians composed to the 50-step schedule). Per rank it records the
total, peak memory, the time spent inside Ulysses' all-to-alls (each one synchronised and timed; this perturbs
the overlap a little) and the sparse work (kept query-key block pairs over its heads). Rank 0 writes
``benchmarks/results/parallel-<card>-x<N>.json`` with, per column: the slowest rank's total (the wall time),
the all-to-all share, the sparse imbalance across ranks (max / mean - 1 of kept block pairs), peak memory per
rank, and, with ``--single benchmarks/results/pipeline-<card>.json`` (a one-GPU run of benchmarks/pipeline.py),
the parallel efficiency ``T1 / (N * TN)``.

``--ulysses-anything`` (default on GPUs) lets shards differ in length (low-resolution stages of the full
presets); gloo cannot gather uneven shards, so ``--tiny`` runs equal shards.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parent))

import pipeline as single  # noqa: E402  (benchmarks/pipeline.py)
from _common import card_name, git_commit  # noqa: E402

import jenga  # noqa: E402

PARALLEL_MODELS = ("hunyuan", "wan14b")
PARALLEL_COLUMNS = ("stock-cudnn", "jenga-carving", "jenga-full")


class AllToAllTimer:
    """Wraps diffusers' Ulysses all-to-all (a module global) to time each call, synchronised."""

    def __init__(self, device: torch.device) -> None:
        self.device, self.seconds, self.calls = device, 0.0, 0

    def __enter__(self) -> AllToAllTimer:
        from diffusers.models import attention_dispatch

        self._module, self._original = attention_dispatch, attention_dispatch._all_to_all_single
        sync = (lambda: torch.cuda.synchronize(self.device)) if self.device.type == "cuda" else (lambda: None)

        def timed(x: torch.Tensor, group: Any) -> torch.Tensor:
            sync()
            start = time.perf_counter()
            out = self._original(x, group)
            sync()
            self.seconds += time.perf_counter() - start
            self.calls += 1
            return out

        attention_dispatch._all_to_all_single = timed
        return self

    def __exit__(self, *exc: object) -> None:
        self._module._all_to_all_single = self._original


def run_rank(spec: Any, columns: list[Any], args: argparse.Namespace, device: torch.device, dtype: torch.dtype,
             world: int, log) -> dict[str, Any]:
    from diffusers import ContextParallelConfig

    transformer = single.build_transformer(spec, device, dtype)
    pipe = single.build_pipeline(spec, transformer)
    pipe.set_progress_bar_config(disable=not (args.progress and dist.get_rank() == 0))
    jenga.enable_parallelism(pipe, ContextParallelConfig(ulysses_degree=world, ulysses_anything=args.ulysses_anything))
    results: dict[str, Any] = {}
    for column in columns:
        timer = AllToAllTimer(device)
        work: dict[str, int | None] = {"pairs": None}
        density_of = single.block_density

        def density_and_work(stats: list[Any], work=work, density_of=density_of) -> Any:  # read before unpatch
            work["pairs"] = int(sum(int(s.kv_count.sum()) for s in stats)) if stats else None
            return density_of(stats)

        single.block_density = density_and_work
        try:
            with timer:
                result = single.run_column(pipe, spec, column, args, device, dtype, log)
        except Exception as err:  # noqa: BLE001 - one failing column must not lose the others' figures
            result = dict(error=f"{type(err).__name__}: {str(err)[:300]}")
            log(f"  {column.name:22s} FAILED: {result['error']}")
        finally:
            single.block_density = density_of
            single._free(device)
        result["all_to_all_s"] = round(timer.seconds, 4)
        result["all_to_all_calls"] = timer.calls
        result["sparse_pairs"] = work["pairs"]
        results[single.column_key(column, args)] = result  # "jenga-full@p0" with --cdf-threshold 0, as pipeline.py
    del pipe, transformer
    single._free(device)
    return results


def combine(per_rank: list[dict[str, Any]], reference: dict[str, Any] | None, world: int) -> dict[str, Any]:
    """Across ranks, per column: wall (slowest rank), all-to-all share, sparse imbalance, peak memory, efficiency."""
    out: dict[str, Any] = {}
    for name in per_rank[0]:
        ranks = [r[name] for r in per_rank]
        if any("error" in r for r in ranks):
            out[name] = dict(error=next(r["error"] for r in ranks if "error" in r))
            continue
        totals = [r["total_s"] for r in ranks]
        computed = [sum(k["median_s"] * k["computed"] for k in r["kinds"]) for r in ranks]
        pairs = [r["sparse_pairs"] for r in ranks if r.get("sparse_pairs")]
        entry = dict(
            total_s=max(totals), total_s_per_rank=totals, timing=ranks[0]["timing"],
            all_to_all_s_per_rank=[r["all_to_all_s"] for r in ranks],
            all_to_all_share=round(max(r["all_to_all_s"] for r in ranks) / max(max(computed), 1e-9), 4),
            peak_gib_per_rank=[r["peak_gib"] for r in ranks], block_density=ranks[0]["block_density"],
            sparse_imbalance=None if not pairs else round(max(pairs) / (sum(pairs) / len(pairs)) - 1, 4),
        )
        single_total = (reference or {}).get(name, {}).get("total_s")
        if single_total:
            entry["single_gpu_total_s"] = single_total
            entry["parallel_efficiency"] = round(single_total / (world * entry["total_s"]), 3)
        out[name] = entry
    stock = next((e.get("total_s") for k, e in out.items() if k.startswith("stock-cudnn")), None)
    for entry in out.values():
        if stock and "total_s" in entry:
            entry["speedup_vs_parallel_stock"] = round(stock / entry["total_s"], 2)
    return out


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--models", nargs="+", default=list(PARALLEL_MODELS), choices=list(single.MODELS))
    parser.add_argument("--columns", nargs="+", default=list(PARALLEL_COLUMNS),
                        choices=[n for n, c in single.COLUMNS.items() if not c.compile])
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--mode", choices=("composed", "full"), default="composed")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--samples", type=int, default=1)
    parser.add_argument("--warmup-runs", type=int, default=1)
    parser.add_argument("--cdf-threshold", type=float, default=None)
    parser.add_argument("--ulysses-anything", action=argparse.BooleanOptionalAction, default=None,
                        help="uneven shards (default: on for GPUs, off for --tiny: gloo gathers equal sizes only)")
    parser.add_argument("--single", type=Path, default=None, help="benchmarks/pipeline.py JSON of one GPU")
    parser.add_argument("--progress", action="store_true")
    parser.add_argument("--tiny", action="store_true", help="CPU dry run: tiny configs, 2 gloo processes")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.tiny:
        # the tiny configs stand in for the full ones of the same family (Wan 14B -> the tiny Wan)
        tiny_of = {"wan14b": "wan1.3b"}
        tiny = (tiny_of.get(m, m) for m in args.models)
        args.models = list(dict.fromkeys(m for m in tiny if m in single.TINY_MODELS))
    args.steps = args.steps or (4 if args.tiny else 50)
    if args.ulysses_anything is None:
        args.ulysses_anything = not args.tiny
    args.compile_backend, args.fail_fast, args.vae = "inductor", False, False
    return args


def main_rank(args: argparse.Namespace) -> int:
    rank, world = dist.get_rank(), dist.get_world_size()
    if args.tiny:
        device, dtype = torch.device("cpu"), torch.float32
    else:
        device, dtype = torch.device("cuda", int(os.environ.get("LOCAL_RANK", rank))), torch.bfloat16
        torch.cuda.set_device(device)

    def log(msg: str) -> None:
        if rank == 0:
            print(msg, flush=True)

    card = "cpu-tiny" if args.tiny else card_name()
    log(f"card: {card} x{world}, torch {torch.__version__}, jenga {jenga.__version__}, commit {git_commit()}")
    specs = single.TINY_MODELS if args.tiny else single.MODELS
    columns = [single.COLUMNS[name] for name in args.columns]
    reference = json.loads(args.single.read_text())["models"] if args.single and args.single.exists() else {}
    models: dict[str, Any] = {}
    for name in args.models:
        spec = specs[name]
        log(f"{name}: {spec.width}x{spec.height}, {spec.frames} frames, Ulysses degree {world}")
        mine = run_rank(spec, columns, args, device, dtype, world, log)
        gathered: list[Any] = [None] * world
        dist.all_gather_object(gathered, mine)
        models[name] = combine(gathered, reference.get(name, {}).get("columns", {}), world)
        for column, entry in models[name].items():
            log(f"  {column:16s} {json.dumps(entry)}")
    if rank == 0:
        out = args.out or Path(__file__).parent / "results" / f"parallel-{card}-x{world}.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        meta = dict(card=card, world=world, torch=torch.__version__, commit=git_commit(),
                    date=time.strftime("%Y-%m-%d"), steps=args.steps, mode=args.mode,
                    ulysses_anything=args.ulysses_anything)
        out.write_text(json.dumps(dict(meta=meta, models=models), indent=1))
        log(f"wrote {out}")
    failed = any("error" in e for m in models.values() for e in m.values())
    return 1 if failed else 0


def _tiny_worker(rank: int, init_file: str, argv: list[str]) -> None:
    torch.accelerator.device_count = lambda: 1  # diffusers 0.42.1 divides by it (0 on a CPU)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        code = main_rank(parse_args(argv))
    finally:
        dist.destroy_process_group()
    if code:
        raise SystemExit(code)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.tiny and "RANK" not in os.environ:
        import tempfile

        import torch.multiprocessing as mp

        with tempfile.TemporaryDirectory() as tmp:
            mp.start_processes(_tiny_worker, args=(os.path.join(tmp, "init"), argv), nprocs=2, start_method="fork")
        return 0
    if not args.tiny and not torch.cuda.is_available():
        print("benchmarks/parallel.py needs CUDA GPUs under torchrun (or --tiny for a CPU dry run)", file=sys.stderr)
        return 2
    dist.init_process_group("gloo" if args.tiny else "nccl")
    try:
        return main_rank(args)
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
