"""One transformer forward of the full-size architectures without a pipeline benchmark (CogVideoX, LTX-Video,
HunyuanVideo 1.5, SkyReels-V2, Wan VACE; random bf16 weights): stock diffusers against jenga carving at the
top-k floor (p = 0) and at the preset's p.

Run on a CUDA GPU (nothing is downloaded; the specs are in ``_video_specs.py``)::

    python benchmarks/forward.py                                   # every spec
    python benchmarks/forward.py --specs cogvideox1.5-5b ltx-2b --repeats 5
    python benchmarks/forward.py --tiny --out /tmp/f.json          # the same code path on a CPU, tiny configs

Each forward is the call the family's T2V pipeline makes: CFG batched into one forward of batch 2 (CogVideoX,
LTX; CogVideoX's RoPE tables from the pipeline's own helper), one forward per guidance branch (HunyuanVideo 1.5:
1,985 condition tokens after the video, the padding masked; SkyReels-V2: its diffusion-forcing forward with
per-frame timesteps; VACE: main and control blocks). Stock runs with cuDNN attention first in SDPA's priority
list (the baseline of ``pipeline.py``; calls it cannot take, such as HunyuanVideo 1.5's dense bool mask, fall to
the next kernel, as users get them). jenga runs the family's ``base`` preset on the bare transformer at the
family's timestep, carving in the timed forward: 700 (progress 0.3, the first stage, past the dense steps; no
step skipped) for CogVideoX, LTX and HunyuanVideo 1.5, 500 (the second half's drop rate, ``dense_steps=0``) for
SkyReels-V2 and VACE. That carving took effect is checked, never assumed: the drop rate is jenga's plan and the
kept-block density of every layer comes from jenga's statistics, in an untimed forward. Random weights give
near-flat block scores, so the preset's p keeps far more blocks than a trained model would: the floor column is
what a trained model approaches. One forward is a step of a 50-step run; a full run composes from it as
``pipeline.py`` does (dense steps: the stock time; sparse steps: the carved time). Median of ``--repeats`` timed
forwards after ``--warmup``. Writes ``benchmarks/results/forward-<card>.json`` (merged with what is there) and
prints a Markdown table.

The JSON is that of the CogVideoX/LTX and HunyuanVideo 1.5 scripts this one replaced (``forward_hunyuan15.py``
wrote ``condition_tokens``, now in every entry beside ``text_tokens``). ``forward_wan_family.py`` (5e533d0) wrote
``specs`` / ``jenga-preset-p`` / ``p`` / a scalar ``density`` / ``carved_layers`` / ``tokens``: the same figures
are now ``models`` / ``jenga-preset`` / ``cdf_threshold`` / ``density.mean`` / ``density.layers`` /
``video_tokens``; its stock ran without cuDNN first.
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
from _call_timer import plan_reader
from _common import card_name, git_commit
from _pipelines import sdpa_backend
from _video_specs import FAMILIES, SPECS, TINY_SPECS, ForwardSpec, build_transformer, forward_inputs

import jenga

COLUMNS = {"stock": None, "jenga-floor": 0.0, "jenga-preset": None}  # column -> p (None: the preset's)


def carving_config(spec: ForwardSpec, cdf_threshold: float | None, tiny: bool) -> jenga.JengaConfig:
    """The family's ``base`` preset (p as published, or ``cdf_threshold``); tiny runs use the torch backend."""
    overrides: dict[str, Any] = dict(FAMILIES[spec.family].carving)
    if cdf_threshold is not None:
        overrides["cdf_threshold"] = cdf_threshold
    if spec.block_size is not None:
        overrides["block_size"] = spec.block_size
    if tiny:
        overrides.update(backend="torch", min_video_blocks=1)
    return jenga.JengaConfig.preset("base", model=spec.preset or spec.family, **overrides)


def time_forward(transformer: torch.nn.Module, inputs: dict[str, Any], repeats: int,
                 warmup: int) -> tuple[list[float], bool]:
    """Seconds of each of ``repeats`` forwards after ``warmup`` untimed ones; whether the last output is finite."""
    cuda = inputs["hidden_states"].is_cuda
    times = []
    with torch.no_grad():
        for index in range(warmup + repeats):
            if cuda:
                torch.cuda.synchronize()
            start = time.perf_counter()
            out = transformer(**inputs)[0]
            if cuda:
                torch.cuda.synchronize()
            if index >= warmup:
                times.append(time.perf_counter() - start)
    return times, bool(torch.isfinite(out).all())


def carving(transformer: torch.nn.Module, inputs: dict[str, Any], cfg: jenga.JengaConfig) -> dict[str, Any]:
    """The drop rate and kept-block density over the layers of one untimed patched forward; ``RuntimeError`` if
    nothing carved."""
    jenga.patch(transformer, cfg, collect_stats=True)
    try:
        with torch.no_grad():
            transformer(**inputs)
        stats = jenga.selection_stats(transformer)
        drop_rate = float(plan_reader(transformer)().drop_rate)  # the plan is reset in place by unpatch
    finally:
        jenga.unpatch(transformer)
    if not stats:
        raise RuntimeError(f"jenga did not carve (no layer statistics) with {cfg}")
    values = [s.density for s in stats]
    return {"drop_rate": drop_rate,
            "density": {"mean": statistics.fmean(values), "min": min(values), "max": max(values),
                        "layers": len(values)}}


def run_spec(spec: ForwardSpec, args: argparse.Namespace, device: torch.device, dtype: torch.dtype) -> dict:
    transformer = build_transformer(spec, device, dtype)
    inputs = forward_inputs(spec, transformer, device, dtype)
    family = FAMILIES[spec.family]
    result: dict[str, Any] = {"grid": list(spec.grid), "video_tokens": spec.video_tokens,
                              "text_tokens": spec.text_tokens, "condition_tokens": spec.condition_tokens,
                              "valid_text": spec.valid_text, "size": f"{spec.width}x{spec.height}x{spec.frames}",
                              "batch": family.batch, "timestep": family.timestep, "columns": {}}
    cuda = device.type == "cuda"
    with sdpa_backend("cudnn" if cuda else "default"):
        for name, p in COLUMNS.items():
            if cuda:
                torch.cuda.reset_peak_memory_stats()
            entry: dict[str, Any] = {}
            if name != "stock":
                cfg = carving_config(spec, p, args.tiny)
                entry.update(cdf_threshold=cfg.cdf_threshold, block_size=cfg.block_size,
                             **carving(transformer, inputs, cfg))
                jenga.patch(transformer, cfg)
            try:
                times, finite = time_forward(transformer, inputs, args.repeats, args.warmup)
            finally:
                jenga.unpatch(transformer)
            entry.update(seconds=statistics.median(times), samples=times, finite=finite)
            if cuda:
                entry["peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
            result["columns"][name] = entry
            print(f"  {spec.name} {name}: {entry['seconds']:.4f} s", file=sys.stderr, flush=True)
    stock = result["columns"]["stock"]["seconds"]
    for entry in result["columns"].values():
        entry["speedup"] = stock / entry["seconds"]
    del transformer, inputs
    if cuda:
        torch.cuda.empty_cache()
    return result


def table(results: dict[str, dict]) -> str:
    lines = ["| model | size (video + condition tokens) | stock | jenga p = 0 (drop rate, density) | "
             "jenga preset p (density) |", "|---|---|---|---|---|"]
    for name, r in results.items():
        c = r["columns"]
        cells = [f"{c['stock']['seconds']:.3f} s"]
        for key in ("jenga-floor", "jenga-preset"):
            e = c[key]
            drop = f"{e['drop_rate']}, " if key == "jenga-floor" else ""
            cells.append(f"{e['seconds']:.3f} s, {e['speedup']:.2f}x ({drop}{e['density']['mean']:.2f}, "
                         f"p {e['cdf_threshold']})")
        lines.append(f"| {name} | {r['size']} ({r['video_tokens']} + {r['condition_tokens']}) | "
                     + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--specs", "--models", nargs="+", default=None, help=f"of {sorted(SPECS)} (default: all)")
    parser.add_argument("--repeats", "--samples", type=int, default=3, help="timed forwards per column")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--tiny", action="store_true", help="tiny configs on the CPU (checks the code path)")
    parser.add_argument("--out", type=Path, default=None, help="JSON (default benchmarks/results/forward-<card>.json)")
    args = parser.parse_args(argv)
    specs = TINY_SPECS if args.tiny else SPECS
    names = args.specs or list(specs)
    unknown = sorted(set(names) - set(specs))
    if unknown:
        parser.error(f"unknown specs {unknown}; accepted: {sorted(specs)}")
    if args.repeats < 1 or args.warmup < 0:
        parser.error("--repeats must be >= 1 and --warmup >= 0")
    if not args.tiny and not torch.cuda.is_available():
        parser.error("full-size runs need a CUDA GPU (use --tiny on a CPU)")
    device = torch.device("cpu" if args.tiny else "cuda")
    dtype = torch.float32 if args.tiny else torch.bfloat16
    card = "cpu-tiny" if args.tiny else card_name()
    out = args.out or Path(__file__).resolve().parent / "results" / f"forward-{card}.json"
    report = json.loads(out.read_text()) if out.exists() else {"models": {}}
    report.pop("timestep", None)  # the earlier scripts' run-wide timestep: now each entry's
    import diffusers

    report.update(commit=git_commit(), card=card, torch=torch.__version__, diffusers=diffusers.__version__,
                  python=platform.python_version(), weights="random", dtype=str(dtype), warmup=args.warmup,
                  repeats=args.repeats)
    results = {}
    for name in names:
        results[name] = run_spec(specs[name], args, device, dtype)
        report["models"][name] = results[name]
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=1))
    print(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
