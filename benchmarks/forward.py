"""One transformer forward of the CogVideoX and LTX-Video full-size architectures (random bf16 weights): stock
diffusers against jenga carving at the top-k floor (p = 0) and at the preset's p.

Run on a CUDA GPU (nothing is downloaded; the specs are in ``_video_specs.py``)::

    python benchmarks/forward.py                                   # every model
    python benchmarks/forward.py --models cogvideox1.5-5b ltx-2b --repeats 5
    python benchmarks/forward.py --tiny --out /tmp/f.json          # the same code path on a CPU, tiny configs

Each forward is the CFG-batched call the family's T2V pipeline makes (batch 2), built as the pipeline builds it
(CogVideoX's RoPE tables from the pipeline's own helper). jenga runs the family's ``base`` preset on the bare
transformer at a timestep of 700 (progress 0.3: the first stage, drop rate 0.75, past the dense steps), so the
measured call is a sparse step. Stock runs with cuDNN attention first in SDPA's priority list (the baseline of
``pipeline.py``). That carving took effect is checked, never assumed: the kept-block density of every layer is
read from jenga's statistics in an untimed call. One forward is a step of a 50-step run; a full run composes
from it as ``benchmarks/pipeline.py`` does (dense steps: the stock time; sparse steps: the carved time).
Writes ``benchmarks/results/forward-<card>.json`` (merged with what is there) and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
from _common import card_name, git_commit
from _video_specs import SPECS, TINY_SPECS, ForwardSpec, build_transformer, forward_inputs
from pipeline import sdpa_backend

import jenga

TIMESTEP = 700.0  # progress 1 - 700 / 1000 = 0.3: first stage, after the presets' 10 % dense steps


def carving_config(spec: ForwardSpec, cdf_threshold: float | None, tiny: bool) -> jenga.JengaConfig:
    """The family's ``base`` preset (p as published, or ``cdf_threshold``); tiny runs use the torch backend."""
    overrides: dict[str, Any] = {}
    if cdf_threshold is not None:
        overrides["cdf_threshold"] = cdf_threshold
    if spec.block_size is not None:
        overrides["block_size"] = spec.block_size
    if tiny:
        overrides.update(backend="torch", min_video_blocks=1)
    return jenga.JengaConfig.preset("base", model=spec.family, **overrides)


def time_forward(transformer: torch.nn.Module, inputs: dict[str, Any], repeats: int, warmup: int) -> list[float]:
    """Seconds of each of ``repeats`` forwards after ``warmup`` untimed ones."""
    cuda = torch.cuda.is_available() and inputs["hidden_states"].is_cuda
    times = []
    with torch.no_grad():
        for index in range(warmup + repeats):
            if cuda:
                torch.cuda.synchronize()
            start = time.perf_counter()
            transformer(**inputs)
            if cuda:
                torch.cuda.synchronize()
            if index >= warmup:
                times.append(time.perf_counter() - start)
    return times


def density(transformer: torch.nn.Module, inputs: dict[str, Any], cfg: jenga.JengaConfig) -> dict[str, float]:
    """Kept-block density over the layers of one untimed patched forward; ``RuntimeError`` if nothing carved."""
    jenga.patch(transformer, cfg, collect_stats=True)
    try:
        with torch.no_grad():
            transformer(**inputs)
        stats = jenga.selection_stats(transformer)
    finally:
        jenga.unpatch(transformer)
    if not stats:
        raise RuntimeError(f"jenga did not carve (no layer statistics) with {cfg}")
    values = [s.density for s in stats]
    return {"mean": statistics.fmean(values), "min": min(values), "max": max(values), "layers": len(values)}


def run_model(spec: ForwardSpec, args: argparse.Namespace, device: torch.device, dtype: torch.dtype) -> dict:
    transformer = build_transformer(spec, device, dtype)
    inputs = forward_inputs(spec, transformer, TIMESTEP, device, dtype)
    result: dict[str, Any] = {"grid": list(spec.grid), "video_tokens": spec.video_tokens,
                              "text_tokens": spec.text_tokens, "size": f"{spec.width}x{spec.height}x{spec.frames}",
                              "batch": 2, "columns": {}}
    columns = {"stock": None, "jenga-floor": 0.0, "jenga-preset": None}
    with sdpa_backend("cudnn" if device.type == "cuda" else "default"):
        for name, p in columns.items():
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats()
            entry: dict[str, Any] = {}
            if name != "stock":
                cfg = carving_config(spec, p, args.tiny)
                entry.update(cdf_threshold=cfg.cdf_threshold, drop_rate=cfg.drop_rates[0], block_size=cfg.block_size,
                             density=density(transformer, inputs, cfg))
                jenga.patch(transformer, cfg)
            try:
                times = time_forward(transformer, inputs, args.repeats, args.warmup)
            finally:
                jenga.unpatch(transformer)
            entry.update(seconds=statistics.median(times), samples=times)
            if device.type == "cuda":
                entry["peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
            result["columns"][name] = entry
            print(f"  {spec.name} {name}: {entry['seconds']:.4f} s", file=sys.stderr, flush=True)
    stock = result["columns"]["stock"]["seconds"]
    for entry in result["columns"].values():
        entry["speedup"] = stock / entry["seconds"]
    del transformer
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return result


def table(results: dict[str, dict]) -> str:
    lines = ["| model | size (tokens) | stock | jenga p = 0 (density) | jenga preset p (density) |",
             "|---|---|---|---|---|"]
    for name, r in results.items():
        c = r["columns"]
        cells = [f"{c['stock']['seconds']:.3f} s"]
        for key in ("jenga-floor", "jenga-preset"):
            e = c[key]
            cells.append(f"{e['seconds']:.3f} s, {e['speedup']:.2f}x ({e['density']['mean']:.2f}, "
                         f"p {e['cdf_threshold']})")
        lines.append(f"| {name} | {r['size']} ({r['video_tokens']} + {r['text_tokens']}) | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=None, help=f"of {sorted(SPECS)} (default: all)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--tiny", action="store_true", help="tiny configs on the CPU (checks the code path)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    specs = TINY_SPECS if args.tiny else SPECS
    names = args.models or list(specs)
    unknown = sorted(set(names) - set(specs))
    if unknown:
        parser.error(f"unknown models {unknown}; accepted: {sorted(specs)}")
    if args.repeats < 1 or args.warmup < 0:
        parser.error("--repeats must be >= 1 and --warmup >= 0")
    if not args.tiny and not torch.cuda.is_available():
        parser.error("full-size runs need a CUDA GPU (use --tiny on a CPU)")
    device = torch.device("cpu" if args.tiny else "cuda")
    dtype = torch.float32 if args.tiny else torch.bfloat16
    card = "cpu-tiny" if args.tiny else card_name()
    out = args.out or Path(__file__).resolve().parent / "results" / f"forward-{card}.json"
    report = json.loads(out.read_text()) if out.exists() else {"models": {}}
    report.update(commit=git_commit(), card=card, torch=torch.__version__, python=platform.python_version(),
                  timestep=TIMESTEP, weights="random", dtype=str(dtype))
    import diffusers

    report["diffusers"] = diffusers.__version__
    results = {}
    for name in names:
        results[name] = run_model(specs[name], args, device, dtype)
        report["models"][name] = results[name]
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=1))
    print(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
