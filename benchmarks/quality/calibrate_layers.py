"""Per-layer thresholds against the fixed preset on the toy model, at the preset's own quality or a stated recall
budget (issue 20).

    python benchmarks/quality/calibrate_layers.py --out benchmarks/results/calibrate-layers-cpu.json   # CPU

1. ``jenga.calibrate(min_recall="base", layer_thresholds=True)`` on one clip (``--calibration-prompt``, seed
   ``--seed``): per stage, each layer's own ``p`` so that the stage's mean recall over the layers is at least
   the Wan ``base`` preset's on the same captures (``--budget recall+error``: and the mean output error at most
   the preset's); the report gives both mean densities (same captures). ``--min-recall 0.9``: a stated budget
   instead of the preset's own recall.
   ``--uniform`` also runs the stage-mean pick with one ``p`` (``layer_thresholds=False``) for comparison.
2. Generation check: ``--clips`` one-object prompts spread over the 48 (one batch, one seed, the toy size's
   steps, CFG 4), dense, with the preset and with the calibrated config: PSNR and SSIM of each clip against
   dense (``jenga.toy.score``), and the kept-block density measured by ``collect_stats`` (every sparse layer
   forward, both CFG branches, every head and query block).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

import jenga
from jenga.calibration import calibrate
from jenga.demo import SIZES
from jenga.toy.data import DIRECTIONS, Prompt, all_single_prompts
from jenga.toy.model import build_pipeline, load_pretrained, quiet_frame_rounding
from jenga.toy.score import psnr, ssim


def generate(pipe: Any, encoder: torch.nn.Module, prompts: list, size: Any, seed: int) -> torch.Tensor:
    """One batch of clips ``[B, 3, T, H, W]`` in ``[-1, 1]`` (the toy's pixel-space latents)."""
    with torch.no_grad(), quiet_frame_rounding():
        out = pipe(prompt_embeds=encoder(prompts), negative_prompt_embeds=encoder([None] * len(prompts)),
                   height=size.height, width=size.width, num_frames=size.frames - 1, num_inference_steps=size.steps,
                   guidance_scale=4.0, generator=torch.Generator().manual_seed(seed), output_type="latent",
                   return_dict=False)[0]
    return out.float().clamp(-1, 1)


def spread_prompts(clips: int) -> list:
    """``clips`` one-object prompts spread evenly over the 48 (the clips every generation check judges on).

    The 48 run shape-major, then colour, then direction (four in a row), so evenly spaced picks alone (every
    4th for 12 clips) would all move the same way: each pick keeps its shape and colour and takes direction
    ``i mod 4`` (picks of one shape and colour are consecutive, at most four, so they stay distinct)."""
    every = all_single_prompts()
    directions = len(DIRECTIONS)
    picks = [round(i * len(every) / clips) % len(every) for i in range(clips)]
    return [every[pick - pick % directions + i % directions] for i, pick in enumerate(picks)]


def measured(pipe: Any, encoder: torch.nn.Module, prompts: list, size: Any, seed: int, cfg: jenga.JengaConfig,
             dense: torch.Tensor) -> dict[str, Any]:
    """Generate with ``cfg``; PSNR / SSIM per clip against ``dense`` and the kept-block density it recorded."""
    jenga.patch(pipe, dataclasses.replace(cfg, collect_stats=True))
    try:
        start = time.perf_counter()
        videos = generate(pipe, encoder, prompts, size, seed)
        seconds = time.perf_counter() - start
        stats = jenga.selection_stats(pipe)
    finally:
        jenga.unpatch(pipe)
    per_layer: dict[int, list[float]] = {}
    for s in stats:
        per_layer.setdefault(s.layer, []).append(s.density)
    p, q = psnr(dense, videos), ssim(dense, videos)
    return dict(psnr_db=dict(mean=round(float(p.mean()), 2), min=round(float(p.min()), 2),
                             per_clip=[round(float(x), 2) for x in p]),
                ssim=dict(mean=round(float(q.mean()), 4), min=round(float(q.min()), 4)),
                kept_density=round(statistics.fmean(s.density for s in stats), 4),
                kept_density_per_layer={x: round(statistics.fmean(v), 4) for x, v in sorted(per_layer.items())},
                sparse_layer_forwards=len(stats), seconds=round(seconds, 2), config=cfg.to_dict())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=tuple(SIZES), default="default", help="toy size (default: 8 x 32 x 32)")
    parser.add_argument("--clips", type=int, default=12, help="generation clips, spread over the 48 prompts")
    parser.add_argument("--calibration-prompt", default="a red disc moving right")
    parser.add_argument("--seed", type=int, default=0, help="seed of the calibration pass and of the clips")
    parser.add_argument("--uniform", action="store_true", help="also the stage-mean pick with one p for all layers")
    parser.add_argument("--budget", choices=("recall", "recall+error"), default="recall",
                        help="the preset's own stage-mean recall (default), or its mean recall and mean error both")
    parser.add_argument("--min-recall", default="base",
                        help="the recall budget: 'base' (the preset's own stage-mean recall, default) or a number, "
                             "a budget the user states (the generation check then shows what it costs against the "
                             "preset)")
    parser.add_argument("--heads", type=int, default=2, help="calibration: heads sampled per layer (default 2)")
    parser.add_argument("--query-blocks", type=int, default=8, help="calibration: query blocks per head (default 8)")
    parser.add_argument("--cdf-thresholds", type=float, nargs="+", default=None,
                        help="candidate p (default: jenga.calibration.LAYER_THRESHOLDS, 12 values from 0 to 0.99)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    size = SIZES[args.size]
    min_recall = args.min_recall if args.min_recall == "base" else float(args.min_recall)
    transformer, encoder = load_pretrained()
    pipe = build_pipeline(transformer)
    pipe.set_progress_bar_config(disable=True)
    base = jenga.JengaConfig.preset("base", model="wan", block_size=size.block_size)
    prompt = Prompt.parse(args.calibration_prompt)
    with torch.no_grad():
        call = dict(prompt_embeds=encoder([prompt]), negative_prompt_embeds=encoder([None]), height=size.height,
                    width=size.width, num_frames=size.frames - 1, guidance_scale=4.0)
    picks = {}
    for name, layer_thresholds in (("layers", True), ("uniform", False))[: 2 if args.uniform else 1]:
        with quiet_frame_rounding():
            report = calibrate(pipe, base=base, min_recall=min_recall, layer_thresholds=layer_thresholds,
                               max_error="base" if args.budget == "recall+error" else None,
                               steps=size.steps, num_inference_steps=size.steps, heads=args.heads,
                               query_blocks=args.query_blocks, cdf_thresholds=args.cdf_thresholds, seed=args.seed,
                               **call)
        print(report.table(), flush=True)
        picks[name] = report
    calibration = {name: dict(config=r.config.to_dict(), budget=r.budget, timing=r.timing, stages=[
        dict(stage=row["stage"], drop_rate=row["drop_rate"], density=row["density"], recall=row["recall"],
             output_error=row["output_error"], min_recall=row.get("min_recall"), max_error=row.get("max_error"),
             cdf_thresholds=row.get("cdf_thresholds"), preset={k: row["base"][k] for k in ("density", "recall",
                                                                                          "output_error")})
        for row in r.stages])
        for name, r in picks.items()}

    prompts = spread_prompts(args.clips)
    dense = generate(pipe, encoder, prompts, size, args.seed)
    variants = {"preset": base, **{f"calibrated-{name}": r.config for name, r in picks.items()}}
    generation = {}
    for name, cfg in variants.items():
        generation[name] = measured(pipe, encoder, prompts, size, args.seed, cfg, dense)
        g = generation[name]
        print(f"{name:18s} kept density {g['kept_density']:.4f}  PSNR {g['psnr_db']['mean']:.2f} dB "
              f"(min {g['psnr_db']['min']:.2f})  SSIM {g['ssim']['mean']:.4f} (min {g['ssim']['min']:.4f})", flush=True)
    write_result(args.out, argv, size, calibration_prompt=str(prompt), seed=args.seed,
                 clips=[str(p) for p in prompts], calibration=calibration, generation=generation)
    return 0


def write_result(out: Path, argv: list[str] | None, size: Any, **fields: Any) -> None:
    """The JSON record of a CPU quality script: date, commit, command and size, then ``fields``."""
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    result = dict(date=datetime.now(timezone.utc).strftime("%Y-%m-%d"), commit=commit, device="cpu",
                  threads=torch.get_num_threads(),
                  command=" ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
                  size=dataclasses.asdict(size), **fields)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    sys.exit(main())
