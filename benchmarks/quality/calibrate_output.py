"""The output-measured calibration against the fixed preset on the toy model, judged on held-out clips (issue 20).

    python benchmarks/quality/calibrate_output.py --min-psnr 35 32 --threads 1 \\
        --out benchmarks/results/calibrate-output-toy-default-cpu.json

1. ``jenga.calibrate(min_psnr=DB)`` per budget on ONE clip (``--calibration-prompt``, seed ``--calibration-seed``,
   the toy size's steps unless ``--calibration-steps``; several prompts: one batch, the budget on its pooled
   squared error): the per-layer ``p`` search, its passes and its wall time,
   against one dense generation of that clip at the size's steps (the search's own dense pass when the steps are
   the same, else that pass scaled by the steps).
2. Held-out check: the ``--clips`` one-object prompts of ``calibrate_layers.spread_prompts`` (none is the
   calibration prompt) with another seed (``--seed``), dense, with the Wan ``base`` preset and with each calibrated
   config: PSNR / SSIM per clip against dense (``jenga.toy.score``, clamped to ``[-1, 1]``) and the kept-block
   density ``collect_stats`` records. The budget is stated per clip on the calibration clip; the held-out figures
   say whether the pick carries over to clips it never saw.

Calibration's PSNR is that of the unclamped final latents with peak 2 (the ``[-1, 1]`` span); the score's clamps
both clips first, which can only raise it (clamping is 1-Lipschitz), so the two read the same scale.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).parent))
from calibrate_layers import generate, measured, spread_prompts, write_result  # noqa: E402

import jenga  # noqa: E402
from jenga.calibration import DEFAULT_THRESHOLDS, calibrate  # noqa: E402
from jenga.demo import SIZES  # noqa: E402
from jenga.toy.data import Prompt  # noqa: E402
from jenga.toy.model import build_pipeline, load_pretrained, quiet_frame_rounding  # noqa: E402


def _summary(g: dict[str, Any]) -> dict[str, Any]:
    """The held-out figures of one config (``measured``'s, less the per-clip list's repeats)."""
    return dict(kept_density=g["kept_density"], psnr_db=g["psnr_db"], ssim=g["ssim"],
                kept_density_per_layer=g["kept_density_per_layer"], seconds=g["seconds"],
                layer_cdf_thresholds=g["config"]["layer_cdf_thresholds"])


def _budget(text: str) -> float | str:
    return text if text == "base" else float(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=tuple(SIZES), default="default", help="toy size (default: 8 x 32 x 32)")
    parser.add_argument("--min-psnr", type=_budget, nargs="+", default=[35.0],
                        help="budgets, dB, or 'base' (the preset's own PSNR on the calibration clips; default 35)")
    parser.add_argument("--raise-p", type=float, nargs="+", default=[],
                        help="calibration: p values above the preset's a layer may be raised to (the exchange search; "
                             "default: none)")
    parser.add_argument("--max-passes", type=int, default=24, help="calibration: most patched passes (default 24)")
    parser.add_argument("--cdf-thresholds", type=float, nargs="+", default=list(DEFAULT_THRESHOLDS),
                        help="calibration: the ladder of p (values below the preset's 0.9; default 0.7 0.5 0.3 0)")
    parser.add_argument("--calibration-steps", type=int, default=None,
                        help="steps of the calibration passes (default: the size's, as the held-out clips)")
    parser.add_argument("--calibration-prompt", nargs="+", default=["a red disc moving right"],
                        help="the calibration clip's prompt (several: one clip each, in one batch)")
    parser.add_argument("--calibration-seed", type=int, default=0)
    parser.add_argument("--clips", type=int, default=12, help="held-out clips, spread over the 48 prompts")
    parser.add_argument("--seed", type=int, default=1, help="seed of the held-out clips (default 1)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    size = SIZES[args.size]
    steps = args.calibration_steps or size.steps
    transformer, encoder = load_pretrained()
    pipe = build_pipeline(transformer)
    pipe.set_progress_bar_config(disable=True)
    base = jenga.JengaConfig.preset("base", model="wan", block_size=size.block_size)
    prompts = [Prompt.parse(text) for text in args.calibration_prompt]
    with torch.no_grad():
        call = dict(prompt_embeds=encoder(prompts), negative_prompt_embeds=encoder([None] * len(prompts)),
                    height=size.height, width=size.width, num_frames=size.frames - 1, guidance_scale=4.0)
    calibration, picks = {}, {}
    for budget in args.min_psnr:
        start = time.perf_counter()
        with quiet_frame_rounding():
            report = calibrate(pipe, base=base, min_psnr=budget, max_passes=args.max_passes,
                               cdf_thresholds=args.cdf_thresholds, raise_thresholds=args.raise_p, steps=steps,
                               num_inference_steps=size.steps, seed=args.calibration_seed, **call)
        seconds = time.perf_counter() - start
        print(report.table(), flush=True)
        t = report.timing
        name = f"calibrated-{budget}" if budget == "base" else f"calibrated-{budget:g}dB"
        picks[name] = report.config
        calibration[name] = dict(
            config=report.config.to_dict(), meets_budget=report.meets_budget, notes=report.notes,
            passes=report.passes,
            seconds=round(seconds, 1), dense_pass_s=round(t["dense_pass_s"], 2),
            dense_generation_s=round(t["generation_dense_s"], 2),
            share_of_one_generation=round(seconds / t["generation_dense_s"], 2),
            patched_passes=t["patched_passes"], patched_pass_s=round(t["patched_pass_s"], 2))

    held_out = spread_prompts(args.clips)
    start = time.perf_counter()
    dense = generate(pipe, encoder, held_out, size, args.seed)
    dense_s = time.perf_counter() - start
    generation = {}
    for name, cfg in {"preset": base, **picks}.items():
        generation[name] = _summary(measured(pipe, encoder, held_out, size, args.seed, cfg, dense))
        g = generation[name]
        print(f"{name:18s} kept density {g['kept_density']:.4f}  PSNR {g['psnr_db']['mean']:.2f} dB "
              f"(min {g['psnr_db']['min']:.2f})  SSIM {g['ssim']['mean']:.4f} (min {g['ssim']['min']:.4f})", flush=True)
    write_result(args.out, argv, size, calibration_prompts=[str(p) for p in prompts],
                 calibration_seed=args.calibration_seed, calibration_steps=steps, held_out_seed=args.seed,
                 held_out_clips=[str(p) for p in held_out], held_out_dense_s=round(dense_s, 1),
                 calibration=calibration, held_out=generation)
    return 0


if __name__ == "__main__":
    sys.exit(main())
