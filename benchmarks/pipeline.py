"""End-to-end pipeline benchmark: stock diffusers vs jenga on the full-size architectures (random bf16 weights).

Run on a CUDA GPU (nothing is downloaded: transformers are built from their published configs, with random
weights created directly on the GPU in bf16)::

    python benchmarks/pipeline.py                                  # every model, every column
    python benchmarks/pipeline.py --models wan1.3b --columns stock-cudnn jenga-full
    python benchmarks/pipeline.py --tiny --out /tmp/p.json         # the same code path on a CPU, tiny configs

Columns (all of one model in the same process, same inputs and seed):

- ``stock-sdpa-default``: stock diffusers, PyTorch picks the SDPA backend;
- ``stock-cudnn``: stock with cuDNN attention first in SDPA's priority list -- the baseline to beat;
- ``jenga-carving``: attention carving only (the family's ``base`` preset, no stage resize, no skipping);
- ``jenga-carving-prores``: carving + progressive resolution (``turbo`` preset, no skipping);
- ``jenga-full``: the full preset with step skipping (HunyuanVideo ``flash``; Wan ``turbo`` plus the
  HunyuanVideo 23-of-50 skip schedule, standing in for the TeaCache the reference used on Wan);
- ``stock-cudnn-compile`` / ``jenga-full-compile``: the same with ``torch.compile(pipe.transformer)``.
Every jenga column also runs with cuDNN first, so its dense steps and layers use the baseline's kernel.

Timing modes (``--mode``), stated in the output:

- ``composed`` (default): one pipeline run of the real schedule in which each distinct kind of transformer
  call -- latent shape (stage) x dense/sparse x computed/skipped step -- is computed ``--warmup`` times
  untimed, then ``--samples`` times timed; later calls of that kind return the last output again without
  computing. Total = the run's wall time outside the transformer + for every call the median time of its kind.
  Used where 50 real steps would not fit a GPU session (HunyuanVideo 720p: ~27 min dense).
- ``full``: ``--warmup-runs`` untimed runs, then one timed run of every step; the wall time is the total.

Whether a column's config took effect is checked, never assumed, and never from timings (a loaded machine
must not change a verdict): carving by jenga's plan and the carved layers that ran in each computed call,
progressive resolution by the latent shapes the transformer saw, step skipping by jenga's plan and by the
carved layers that ran in skipped steps (none) against computed ones (some); the skipped/computed time ratio
is reported beside it. Peak GPU memory per column; VAE decode timed once per model (where it fits).
Writes ``benchmarks/results/pipeline-<card>.json`` (merged with what is there: models and columns can be
run in separate processes) and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from _call_timer import Call, CallTimer, carved_layer_counter, plan_reader
from _common import card_name, git_commit
from _pipelines import (
    BASELINE,
    COLUMNS,
    COMPILE_BASELINE,
    MEMORY_ALLOWANCE,
    MODELS,
    TARGETS,
    TINY_MODELS,
    Column,
    ModelSpec,
    build_pipeline,
    build_transformer,
    call_arguments,
    column_config,
    random_model,
    sdpa_backend,
)

import jenga

# ----------------------------------------------------------------------------------------------------
# one column


def run_column(pipe: Any, spec: ModelSpec, column: Column, args: argparse.Namespace, device: torch.device,
               dtype: torch.dtype, log: Callable[[str], None]) -> dict[str, Any]:
    cfg, description = column_config(column, spec, args.cdf_threshold)
    cuda = device.type == "cuda"
    sync = (lambda: torch.cuda.synchronize(device)) if cuda else (lambda: None)
    transformer = pipe.transformer
    call = call_arguments(spec, args.steps, device, dtype)
    if cfg is not None:
        jenga.patch(pipe, cfg)
    if column.compile:
        torch._dynamo.reset()
        # dynamic=False: each stage's latent shape gets its own static graph, as a fixed-size run would
        pipe.transformer = torch.compile(transformer, dynamic=False, backend=args.compile_backend)
    replay = args.mode == "composed"
    try:
        with sdpa_backend(column.sdpa), torch.no_grad():
            if not replay:
                for _ in range(args.warmup_runs):
                    pipe(**call, generator=torch.Generator().manual_seed(0))
            if cuda:
                torch.cuda.reset_peak_memory_stats(device)
            timer = CallTimer(pipe.transformer, cfg, args.steps, spec.branches, replay, args.warmup, args.samples,
                              sync, plan_reader(transformer), carved_layer_counter(transformer))
            with timer:
                sync()
                start = time.perf_counter()
                latents = pipe(**call, generator=torch.Generator().manual_seed(0))[0]
                sync()
                wall = time.perf_counter() - start
    finally:
        pipe.transformer = transformer
        stats = jenga.selection_stats(pipe) if cfg is not None else []
        if cfg is not None:
            jenga.unpatch(pipe)
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if cuda else None
    density = block_density(stats)
    result = summarise(timer, wall, spec, cfg, args.steps, replay)
    result["block_density"] = density
    result.update(description=description, sdpa=column.sdpa, compile=column.compile,
                  config=None if cfg is None else cfg.to_dict(), peak_gib=None if peak is None else round(peak, 2),
                  finite=bool(torch.isfinite(latents.float()).all()))
    log(f"  {column.name:22s} {result['total_s']:9.2f} s  ({result['timing']}; {result['transformer_calls']} calls, "
        f"{result['computed_calls']} computed){'' if peak is None else f'  peak {peak:.1f} GiB'}"
        f"{'' if density is None else f'  block density {density}'}")
    for note in result["effects"]["notes"]:
        log(f"    {note}")
    return result


def block_density(stats: list[Any]) -> dict[str, float] | None:
    """Mean share of (query block, key block) pairs computed by the sparse layers, per latent grid (text key
    blocks included, as the kernel computes them)."""
    by_grid: dict[str, list[float]] = {}
    for layer in stats:
        by_grid.setdefault(f"{layer.kv_count.shape[-1]} query blocks", []).append(layer.density)
    return {grid: round(statistics.fmean(values), 4) for grid, values in by_grid.items()} or None


def summarise(timer: CallTimer, wall: float, spec: ModelSpec, cfg: jenga.JengaConfig | None, steps: int,
              replay: bool) -> dict[str, Any]:
    """Total time (measured or composed), per-kind times, and whether the config's features took effect."""
    medians = timer.kind_medians()
    computed_seconds = sum(c.seconds for c in timer.calls)  # computed calls + the (tiny) replay copies
    if replay:
        outside = wall - computed_seconds
        total = outside + sum(medians[c.kind] for c in timer.calls)
        timing = f"composed from per-kind medians over a {steps}-step schedule"
    else:
        outside, total, timing = wall - computed_seconds, wall, f"measured, every call of {steps} steps run"
    kinds = []
    for kind, median in medians.items():
        calls = [c for c in timer.calls if c.kind == kind]
        sparse = {c.sparse for c in calls if c.computed}
        skip = {c.skip for c in calls if c.computed}
        first = next((c.seconds for c in calls if c.computed), None)  # includes compilation and autotuning
        kinds.append(dict(kind=list(map(str, kind)), calls=len(calls), computed=sum(c.computed for c in calls),
                          median_s=round(median, 4), first_call_s=None if first is None else round(first, 3),
                          jenga_sparse=sorted(map(str, sparse)),
                          jenga_skip=sorted(map(str, skip)),
                          carved_layers=sorted({c.carved_layers for c in calls if c.computed} - {None})))
    expected_calls = steps * spec.branches
    effects = check_effects(timer, cfg, spec, medians)
    if len(timer.calls) != expected_calls:
        effects["notes"].append(f"WARNING: {len(timer.calls)} transformer calls, expected {expected_calls} "
                                f"({spec.branches} per step): the step of each call is uncertain")
    return dict(total_s=round(total, 3), timing=timing, wall_s=round(wall, 3), outside_transformer_s=round(outside, 3),
                transformer_calls=len(timer.calls), computed_calls=sum(c.computed for c in timer.calls),
                kinds=kinds, effects=effects)


def check_effects(timer: CallTimer, cfg: jenga.JengaConfig | None, spec: ModelSpec,
                  medians: dict[tuple, float]) -> dict[str, Any]:
    """What really happened, from the calls: never report a column as something it is not. The verdicts
    rest on work done (jenga's plan, carved layers run, latent shapes), never on time, which CPU or GPU load
    bends; the skipped/computed time ratio is only reported."""
    notes: list[str] = []
    if cfg is None:
        return dict(carving=None, prores=None, skipping=None, notes=notes)
    calls = [c for c in timer.calls if c.computed]
    carving = any(c.sparse and c.carved_layers != 0 for c in calls)  # None: no records, the plan alone
    if not carving:
        notes.append("carving did NOT take effect: no computed call ran block-sparse attention")
    elif all(c.carved_layers is None for c in calls):
        notes.append("carving judged by jenga's plan alone: no carved-layer records (collect_stats off)")
    full_shape = max((c.shape for c in timer.calls), key=math.prod)
    wants_prores = any(s.scale < 1.0 for s in cfg.stages)
    smaller = sorted({c.shape for c in timer.calls if c.shape != full_shape})
    prores = bool(smaller) if wants_prores else None
    if wants_prores:
        notes.append(f"progressive resolution {'took effect' if prores else 'did NOT take effect'}: latent shapes "
                     f"{[list(s) for s in smaller + [full_shape]]} (config scales "
                     f"{[s.scale for s in cfg.stages]})")
    skipping = None
    if cfg.skip_steps:
        skipping, note = check_skipping(timer, calls, medians)
        notes.append(note)
    return dict(carving=carving, prores=prores, skipping=skipping, notes=notes)


def check_skipping(timer: CallTimer, calls: list[Call], medians: dict[tuple, float]) -> tuple[bool, str]:
    """Step skipping took effect when, in every stage with carved steps of both kinds, jenga flagged skip on
    each computed call of a skipped step and none of them ran a carved layer, while every computed step's call
    ran at least one (so the count is live there). Counts of work, not times: the same verdict on a busy
    machine; the skipped/computed time ratio goes in the note."""
    by_stage: dict[str, dict[str, list[Call]]] = {}
    for c in calls:
        if len(c.kind) == 4 and c.kind[2] == "sparse":
            by_stage.setdefault(c.kind[1], {}).setdefault(c.kind[3], []).append(c)
    compared = {stage: v for stage, v in by_stage.items() if "skipped" in v and "computed" in v}
    skipped = [c for v in compared.values() for c in v["skipped"]]
    computed = [c for v in compared.values() for c in v["computed"]]
    flagged = bool(skipped) and all(c.skip for c in skipped)
    known = all(c.carved_layers is not None for c in skipped + computed)
    live = known and bool(computed) and all(c.carved_layers > 0 for c in computed)
    bypassed = live and bool(skipped) and all(c.carved_layers == 0 for c in skipped)
    skipping = bool(timer.skipped) and flagged and bypassed
    ratios = [min(medians[c.kind] for c in v["skipped"]) / min(medians[c.kind] for c in v["computed"])
              for v in compared.values()]
    layers = {stage: {k: sorted({c.carved_layers for c in v[k]}, key=str) for k in ("computed", "skipped")}
              for stage, v in compared.items()}
    caveats = [text for text, applies in (
        ("no carved-layer records: collect_stats off", not known),
        ("no stage has carved steps of both kinds: nothing to compare", not compared),
        ("a computed step ran no carved layer: the count shows nothing", bool(computed) and known and not live),
    ) if applies]
    note = (f"step skipping {'took effect' if skipping else 'did NOT take effect'}: "
            f"{len(timer.skipped)} steps in the config's skip set, jenga flagged skip on every computed call of a "
            f"skipped carved step: {flagged}, carved layers run per call {layers}"
            f"{''.join(f' ({text})' for text in caveats)}, "
            f"skipped/computed step time {[round(r, 3) for r in ratios]} (reported, not judged)")
    return skipping, note


# ----------------------------------------------------------------------------------------------------
# VAE decode, once per model


def time_vae_decode(spec: ModelSpec, device: torch.device, dtype: torch.dtype, tiny: bool) -> dict[str, Any]:
    """One decode of a final-size latent with the family's VAE (random weights), after a one-frame warm-up.
    Only the time is meaningful: the latent is noise and the pipeline's latent scaling is left out."""
    from diffusers import AutoencoderKLHunyuanVideo, AutoencoderKLWan

    cls = AutoencoderKLWan if spec.family == "wan" else AutoencoderKLHunyuanVideo
    # Wan's pipelines load the VAE in float32 (its published examples); HunyuanVideo's in half precision
    dtype = torch.float32 if spec.family == "wan" else dtype
    vae = None
    try:
        vae = random_model(cls, spec.vae, device, dtype).eval().requires_grad_(False)
        if spec.family == "hunyuan" and not tiny:
            vae.enable_tiling()  # what HunyuanVideo's pipeline docs recommend at 720p
        channels, frames, height, width = spec.latent
        latent = torch.randn(1, channels, frames, height, width, device=device, dtype=dtype)
        with torch.no_grad():
            vae.decode(latent[:, :, :1])
            if device.type == "cuda":
                torch.cuda.synchronize(device)
                torch.cuda.reset_peak_memory_stats(device)
            start = time.perf_counter()
            video = vae.decode(latent).sample
            if device.type == "cuda":
                torch.cuda.synchronize(device)
        seconds = time.perf_counter() - start
        peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
        return dict(seconds=round(seconds, 3), shape=list(video.shape), dtype=str(dtype),
                    tiling=spec.family == "hunyuan" and not tiny,
                    peak_gib=None if peak is None else round(peak, 2))
    except torch.cuda.OutOfMemoryError as err:
        return dict(seconds=None, error=f"out of memory: {str(err)[:200]}")
    finally:
        vae = None
        _free(device)


def _free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


# ----------------------------------------------------------------------------------------------------
# driver


def run_model(spec: ModelSpec, columns: list[Column], args: argparse.Namespace, device: torch.device,
              dtype: torch.dtype, log: Callable[[str], None],
              on_column: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Every column on one built transformer; ``on_column(results so far)`` after each (to save them)."""
    log(f"{spec.name}: {spec.width}x{spec.height}, {spec.frames} frames, latent {spec.latent}, {args.steps} steps, "
        f"{spec.branches} transformer call(s) per step")
    started = time.time()
    transformer = build_transformer(spec, device, dtype)
    params = sum(p.numel() for p in transformer.parameters())
    log(f"  built in {time.time() - started:.0f} s: {params / 1e9:.2f} B parameters")
    pipe = build_pipeline(spec, transformer)
    pipe.set_progress_bar_config(disable=not args.progress)
    results: dict[str, Any] = {}
    for column in columns:
        try:
            results[column_key(column, args)] = run_column(pipe, spec, column, args, device, dtype, log)
        except Exception as err:  # noqa: BLE001 - one failing column must not lose the others' figures
            if isinstance(err, torch.cuda.OutOfMemoryError):
                message = f"out of memory: {str(err)[:300]}"
            else:
                message = f"{type(err).__name__}: {str(err)[:300]}"
            log(f"  {column.name:22s} FAILED: {message}")
            results[column_key(column, args)] = dict(error=message)
            if args.fail_fast:
                raise
        finally:
            torch._dynamo.reset()
            _free(device)
        if on_column is not None:
            on_column(model_entry(spec, args, params, results))
    entry = model_entry(spec, args, params, results)  # ratios are added when it is saved (merge_entry)
    del pipe, transformer
    _free(device)
    if args.vae:
        entry["vae_decode"] = time_vae_decode(spec, device, dtype, args.tiny)
        log(f"  vae decode: {entry['vae_decode']}")
    return entry


def model_entry(spec: ModelSpec, args: argparse.Namespace, params: int, results: dict[str, Any]) -> dict[str, Any]:
    return dict(params=params, latent=list(spec.latent), height=spec.height, width=spec.width, frames=spec.frames,
                steps=args.steps, mode=args.mode, warmup=args.warmup, samples=args.samples,
                layers=spec.config.get("num_layers"), columns=dict(results))


def merge_entry(model: str, previous: dict[str, Any], entry: dict[str, Any], targets: bool) -> dict[str, Any]:
    """Columns run separately (same steps and mode) land in one table; newer figures replace older."""
    if previous.get("steps") == entry["steps"] and previous.get("mode") == entry["mode"]:
        entry = {**entry, "columns": {**previous.get("columns", {}), **entry["columns"]}}
        if "vae_decode" not in entry and "vae_decode" in previous:
            entry["vae_decode"] = previous["vae_decode"]
    add_ratios(model, entry["columns"], targets=targets)
    return entry


def column_key(column: Column, args: argparse.Namespace) -> str:
    """The column's name in the results; ``@p<value>`` when ``--cdf-threshold`` replaced the preset's p."""
    if column.jenga is None or args.cdf_threshold is None:
        return column.name
    return f"{column.name}@p{args.cdf_threshold:g}"


def add_ratios(model: str, results: dict[str, Any], targets: bool = True) -> None:
    """Speed-up vs the baseline (the compile baseline for compiled columns), memory vs the dense peak, and
    the H100 targets (``targets=False`` under --tiny: they mean nothing there)."""
    for name, r in results.items():
        if "total_s" not in r:
            continue
        base_name = COMPILE_BASELINE if COLUMNS[name.split("@")[0]].compile else BASELINE
        base = results.get(base_name, {})
        if "total_s" in base:
            r["speedup_vs"] = base_name
            r["speedup"] = round(base["total_s"] / r["total_s"], 3)
            target = TARGETS.get(model, {}).get(name.split("@")[0]) if targets else None
            if target is not None:
                r["target"] = target
                r["target_met"] = r["speedup"] >= target
        dense_peak = results.get(BASELINE, {}).get("peak_gib")
        if dense_peak and r.get("peak_gib"):
            r["memory_vs_dense"] = round(r["peak_gib"] / dense_peak, 3)
            r["memory_ok"] = r["peak_gib"] <= dense_peak * MEMORY_ALLOWANCE


def markdown(models: dict[str, Any]) -> str:
    """One table row per model and column, for benchmarks/RESULTS.md."""
    lines = ["| model | column | total | timing | speed-up | target | peak GiB | block density | effects |",
             "|---|---|---|---|---|---|---|---|---|"]
    for model, entry in models.items():
        for name, r in entry["columns"].items():
            if "error" in r:
                lines.append(f"| {model} | {name} | failed: {r['error'][:80]} | | | | | | |")
                continue
            eff = r["effects"]
            flags = ", ".join(f"{k}={'yes' if v else 'NO'}" for k, v in eff.items() if k != "notes" and v is not None)
            speed = f"{r['speedup']:.2f}× vs {r['speedup_vs']}" if "speedup" in r else ""
            target = f"≥ {r['target']}× {'met' if r['target_met'] else 'NOT met'}" if "target" in r else ""
            lines.append(f"| {model} | {name} | {r['total_s']:.1f} s | {r['timing']} | {speed} | {target} | "
                         f"{r['peak_gib'] if r['peak_gib'] is not None else ''} | "
                         f"{', '.join(map(str, (r.get('block_density') or {}).values()))} | {flags} |")
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="exit codes: 0 every column ran; 1 a column failed; 2 usage (e.g. no CUDA)")
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--columns", nargs="+", default=None, choices=list(COLUMNS),
                        help="default: all (without the compile columns under --tiny)")
    parser.add_argument("--steps", type=int, default=None,
                        help="denoising steps of the schedule (default 50; 10 under --tiny)")
    parser.add_argument("--mode", choices=("composed", "full"), default="composed",
                        help="composed: per-kind medians over the schedule; full: every step computed and timed")
    parser.add_argument("--warmup", type=int, default=1, help="composed: untimed computed calls per kind")
    parser.add_argument("--samples", type=int, default=3, help="composed: timed computed calls per kind")
    parser.add_argument("--warmup-runs", type=int, default=1, help="full: untimed whole runs before the timed one")
    parser.add_argument("--cdf-threshold", type=float, default=None,
                        help="replace the presets' p in every jenga column (results keyed '<column>@p<value>'); "
                             "0 keeps the top-k floor, what a trained model's peaked block scores come close to")
    parser.add_argument("--no-vae", dest="vae", action="store_false", help="skip the VAE decode timing")
    parser.add_argument("--progress", action="store_true", help="the pipelines' progress bars")
    parser.add_argument("--fail-fast", action="store_true", help="stop at the first failing column")
    parser.add_argument("--compile-backend", default="inductor",
                        help="torch.compile backend of the compile columns (default inductor; eager/aot_eager "
                             "check the wrapping quickly under --tiny)")
    parser.add_argument("--tiny", action="store_true",
                        help="tiny configs on the CPU (float32): checks this script's code path, times nothing real")
    parser.add_argument("--out", type=Path, default=None,
                        help="JSON to write (merged); default benchmarks/results/pipeline-<card>.json")
    args = parser.parse_args(argv)
    if args.tiny:
        args.models = [m for m in args.models if m in TINY_MODELS]
        if args.columns is None:
            args.columns = [name for name, c in COLUMNS.items() if not c.compile]
    if args.columns is None:
        args.columns = list(COLUMNS)
    if args.steps is None:
        args.steps = 10 if args.tiny else 50
    if args.steps < 2 or args.samples < 1 or args.warmup < 0 or args.warmup_runs < 0:
        parser.error("need --steps >= 2, --samples >= 1, --warmup >= 0, --warmup-runs >= 0")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not args.tiny and not torch.cuda.is_available():
        print("benchmarks/pipeline.py needs a CUDA GPU (or --tiny for a CPU check of the code path)", file=sys.stderr)
        return 2
    device = torch.device("cpu" if args.tiny else "cuda")
    dtype = torch.float32 if args.tiny else torch.bfloat16

    def log(msg: str) -> None:
        print(msg, flush=True)

    card = "cpu-tiny" if args.tiny else card_name()
    log(f"card: {card}, torch {torch.__version__}, jenga {jenga.__version__}, commit {git_commit()}, "
        f"mode {args.mode}")
    specs = TINY_MODELS if args.tiny else MODELS
    columns = [COLUMNS[name] for name in args.columns]
    out = args.out or Path(__file__).parent / "results" / f"pipeline-{card}.json"
    data = json.loads(out.read_text()) if out.exists() else {"meta": {}, "models": {}}
    started = time.time()

    def save(name: str, entry: dict[str, Any], previous: dict[str, Any]) -> None:
        data["models"][name] = merge_entry(name, previous, entry, targets=not args.tiny)
        data["meta"] = dict(card=card, torch=torch.__version__, commit=git_commit(), date=time.strftime("%Y-%m-%d"),
                            python=platform.python_version(), tiny=args.tiny,
                            cudnn=torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
                            seconds=round(time.time() - started))
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(data, indent=1))  # after every column: a time limit keeps what was measured

    for name in args.models:
        previous = data["models"].get(name, {})
        entry = run_model(specs[name], columns, args, device, dtype, log,
                          on_column=lambda partial, name=name, previous=previous: save(name, partial, previous))
        save(name, entry, previous)
    log(markdown({name: data["models"][name] for name in args.models}))
    log(f"wrote {out}")
    failed = any("error" in r for name in args.models for r in data["models"][name]["columns"].values())
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
