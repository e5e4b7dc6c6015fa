"""What a fresh process pays on its first generation, and where it goes: Triton compiles against the rest.

    python benchmarks/first_run.py --column jenga-full --out first-run-jenga.json     # GPU, a fresh process
    python benchmarks/first_run.py --column stock-cudnn --out first-run-stock.json    # the same for stock
    python benchmarks/first_run.py --tiny --column jenga-full --out /tmp/f.json        # CPU check of the code path

One process: Triton's cache points at an empty directory (with ``--triton-cache DIR --keep-cache``, at what an
earlier process left there: a fresh process with a warm disk cache, as every run after a machine's first). The
model is built (not timed), then ``--runs`` whole generations are timed one after the other (random bf16
weights, latent output, cuDNN first in SDPA, the column's config as in ``benchmarks/pipeline.py``). Every
Triton compile inside a run is timed by wrapping ``triton.compiler.compile``, with the kernel's name and the
time into the run it started. The first run's excess over the last, less the compile time, is what the first
CUDA / cuDNN / cuBLAS calls and allocations cost. Stock diffusers pays that part too: run the ``stock-cudnn``
column in its own process for it. Each run's ``warm_up`` entry says how long the first carved step waited for
jenga's background warm-up; ``steps_at_s`` is when each step's work had been queued on the host. The first
process on a machine pays more than later ones (stock too: 1.58 s against 0.35 s over warm on an H200): compare
processes that are not the machine's first.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path


def _triton_cache_from_argv(argv: list[str]) -> None:
    """Point Triton's cache at ``--triton-cache DIR`` (emptied unless ``--keep-cache``) or at a new empty
    directory, before triton is imported anywhere: it reads the location at import."""
    target = argv[argv.index("--triton-cache") + 1] if "--triton-cache" in argv[:-1] else None
    if target is None:
        target = tempfile.mkdtemp(prefix="jenga-first-run-triton-")
    elif "--keep-cache" not in argv:
        shutil.rmtree(target, ignore_errors=True)
    os.environ["TRITON_CACHE_DIR"] = target


_triton_cache_from_argv(sys.argv)

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from _common import card_name, git_commit  # noqa: E402
from _pipelines import (  # noqa: E402
    COLUMNS,
    MODELS,
    TINY_MODELS,
    build_pipeline,
    build_transformer,
    call_arguments,
    column_config,
    sdpa_backend,
)

import jenga  # noqa: E402

COMPILES: list[dict] = []
_run_started = [0.0]


def time_triton_compiles() -> None:
    """Wrap Triton's compile entry point (the JIT imports it from ``triton.compiler`` when it first binds a
    kernel, so this must run before any kernel launches)."""
    import triton.compiler
    import triton.compiler.compiler

    original = triton.compiler.compiler.compile

    def timed(src, *args, **kwargs):
        start = time.perf_counter()
        try:
            return original(src, *args, **kwargs)
        finally:
            name = getattr(src, "name", None) or getattr(getattr(src, "fn", None), "__name__", repr(src))
            COMPILES.append(dict(kernel=str(name), seconds=round(time.perf_counter() - start, 3),
                                 at_s=round(start - _run_started[0], 3)))

    triton.compiler.compile = timed
    triton.compiler.compiler.compile = timed


def cached_kernels() -> dict[str, int]:
    """Kernel name -> binaries in Triton's cache directory so far (a cross-check of the timed compiles)."""
    root = Path(os.environ.get("TRITON_CACHE_DIR", Path.home() / ".triton" / "cache"))
    names: dict[str, int] = {}
    for meta in root.glob("*/*.json"):
        if meta.name.startswith("__grp__"):
            continue
        try:
            name = json.loads(meta.read_text()).get("name")
        except (OSError, ValueError):
            continue
        if name:
            names[name] = names.get(name, 0) + 1
    return names


def warm_up_report(pipe) -> dict | None:
    """The background warm-up's account so far (``jenga._warm_up``): runs, threads through, and the wait it cost
    the first carved steps."""
    for module in pipe.transformer.modules():
        warm_up = getattr(getattr(getattr(module, "processor", None), "runtime", None), "kernel_warm_up", None)
        if warm_up is not None:
            return dict(runs=warm_up.runs, finished=warm_up.finished,  # (an older jenga has only these two)
                        waited_s=round(getattr(warm_up, "waited_s", float("nan")), 3))
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--column", default="jenga-full", choices=list(COLUMNS))
    parser.add_argument("--model", default="wan1.3b", choices=["wan1.3b", "wan14b", "hunyuan"])
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--runs", type=int, default=2, help="generations timed in turn (the first is the cold one)")
    parser.add_argument("--triton-cache", type=Path, default=None,
                        help="Triton's cache directory (default: a new empty one); emptied first unless --keep-cache")
    parser.add_argument("--keep-cache", action="store_true",
                        help="keep what --triton-cache holds: a fresh process with a warm disk cache")
    parser.add_argument("--tiny", action="store_true", help="tiny configs on the CPU (checks the code path only)")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    if args.runs < 1 or args.steps < 1:
        parser.error("--runs and --steps must be positive")
    time_triton_compiles()
    device = torch.device("cpu" if args.tiny else "cuda")
    dtype = torch.float32 if args.tiny else torch.bfloat16
    spec = (TINY_MODELS if args.tiny else MODELS)[args.model]
    column = COLUMNS[args.column]
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    started = time.perf_counter()
    pipe = build_pipeline(spec, build_transformer(spec, device, dtype))
    pipe.set_progress_bar_config(disable=True)
    cfg, description = column_config(column, spec)
    if cfg is not None:
        jenga.patch(pipe, cfg)
    call = call_arguments(spec, args.steps, device, dtype)
    sync()
    build_s = time.perf_counter() - started

    runs = []
    steps_at: list[float] = []

    def record_step(pipeline, step, timestep, callback_kwargs):
        steps_at.append(round(time.perf_counter() - _run_started[0], 3))  # host time the step's work was queued
        return callback_kwargs

    with sdpa_backend(column.sdpa), torch.no_grad():
        for _ in range(args.runs):
            before = len(COMPILES)
            steps_at.clear()
            sync()
            _run_started[0] = time.perf_counter()
            pipe(**call, generator=torch.Generator().manual_seed(0), callback_on_step_end=record_step)
            sync()
            seconds = time.perf_counter() - _run_started[0]
            compiles = COMPILES[before:]
            runs.append(dict(seconds=round(seconds, 3), compiles=len(compiles),
                             compile_s=round(sum(c["seconds"] for c in compiles), 3), compile_list=compiles,
                             cached_kernels=cached_kernels(), steps_at_s=list(steps_at),
                             warm_up=warm_up_report(pipe)))
            print(json.dumps({k: v for k, v in runs[-1].items() if k != "compile_list"}), flush=True)
            for entry in compiles:
                print(json.dumps(entry), flush=True)
    cold, warm = runs[0], runs[-1]
    card = card_name() if device.type == "cuda" else "cpu"
    command = " ".join(["python", "benchmarks/first_run.py", *(argv if argv is not None else sys.argv[1:])])
    result = dict(card=card, commit=os.environ.get("JENGA_COMMIT") or git_commit(), date=time.strftime("%Y-%m-%d"),
                  torch=torch.__version__, model=args.model, column=args.column, description=description,
                  steps=args.steps, build_s=round(build_s, 2),
                  triton_cache="kept" if args.keep_cache and args.triton_cache else "empty",
                  runs=runs, cold_s=cold["seconds"], warm_s=warm["seconds"],
                  cold_over_warm=round(cold["seconds"] / warm["seconds"], 3) if args.runs > 1 else None,
                  excess_s=round(cold["seconds"] - warm["seconds"], 3),
                  excess_not_compile_s=round(cold["seconds"] - warm["seconds"] - cold["compile_s"], 3),
                  command=command)
    args.out.write_text(json.dumps(result, indent=1))
    print(json.dumps({k: v for k, v in result.items() if k != "runs"}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
