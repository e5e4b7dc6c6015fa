"""Why the toy model misses the task: what its dense generations show, clip by clip, per guidance scale.

    python benchmarks/quality/diagnose.py --out diagnose.json                  # GPU, shipped weights
    python benchmarks/quality/diagnose.py --tiny --out /tmp/d.json             # CPU check

The task score says only right or wrong. This says why (issue 20): per prompted shape, the distribution of
the largest blob's bounding-box fill in the first frame (disc pi/4, square 1; the score reads "square"
above 0.89), how many clips show the object once (no copies), and how well fill
separates the two shapes at all (AUROC: 0.5 = the model ignores the shape word, 1 = perfectly separable at
some threshold); per prompted direction, how often the clip moves along the right axis and how often the sign
is wrong on that axis. The same statistics of rendered ground-truth clips come first, as the yardstick.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from evaluate import Size, eval_prompts, generate  # noqa: E402

from jenga.toy.data import render  # noqa: E402
from jenga.toy.model import WEIGHTS, build_pipeline, load_pretrained  # noqa: E402
from jenga.toy.score import SQUARE_FILL, read_object  # noqa: E402

FULL = Size(frames=16, side=64, block=128, steps=20, prompts=48, layers=(), capture_steps=())
TINY = Size(frames=4, side=32, block=64, steps=2, prompts=8, layers=(), capture_steps=())


def auroc(positives: list[float], negatives: list[float]) -> float:
    """P(a positive's value > a negative's), ties counted half: how well the value separates the two."""
    if not positives or not negatives:
        return float("nan")
    wins = sum((p > n) + 0.5 * (p == n) for p in positives for n in negatives)
    return wins / (len(positives) * len(negatives))


def quartiles(values: list[float]) -> list[float]:
    if len(values) < 2:
        return [round(v, 3) for v in values]
    return [round(v, 3) for v in statistics.quantiles(values, n=4)]


def summarise(videos: torch.Tensor, prompts: list) -> dict:
    found = [read_object(clip, prompt) for clip, prompt in zip(videos, prompts, strict=True)]
    n = len(found)
    out: dict = {"clips": n}
    for key in ("present", "axis_ok", "direction_ok", "shape_ok"):
        out[key] = round(100 * sum(getattr(r, key) for r in found) / n, 2)
    out["single"] = round(100 * sum(r.blobs == 1 for r in found) / n, 2)  # no copies of the object
    out["blobs"] = {str(k): sum(r.blobs == k for r in found) for k in sorted({r.blobs for r in found})}
    fills = {shape: [r.fill for r, p in zip(found, prompts, strict=True)
                     if r.present and r.fill == r.fill and p.objects[0].shape == shape] for shape in ("disc", "square")}
    out["fill"] = {shape: dict(n=len(v), mean=round(statistics.fmean(v), 3) if v else None, quartiles=quartiles(v))
                   for shape, v in fills.items()}
    out["fill_auroc_square_over_disc"] = round(auroc(fills["square"], fills["disc"]), 3)
    both = sorted(fills["disc"] + fills["square"])
    best = max(((sum(f <= t for f in fills["disc"]) + sum(f > t for f in fills["square"])) / max(len(both), 1), t)
               for t in both) if both else (float("nan"), float("nan"))
    out["fill_best_threshold"] = dict(accuracy=round(100 * best[0], 2), threshold=round(best[1], 3),
                                      scored_threshold=SQUARE_FILL)
    per_direction = {}
    for direction in ("up", "down", "left", "right"):
        rows = [r for r, p in zip(found, prompts, strict=True) if p.objects[0].direction == direction]
        on_axis = [r for r in rows if r.axis_ok]
        per_direction[direction] = dict(n=len(rows), axis=len(on_axis), right_sign=sum(r.direction_ok for r in rows),
                                        mean_displacement=[round(statistics.fmean(r.displacement[i] for r in rows), 2)
                                                           for i in (0, 1)] if rows else None)
    out["direction"] = per_direction
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", type=Path, default=WEIGHTS)
    parser.add_argument("--guidance", type=float, nargs="+", default=[4.0])
    parser.add_argument("--repeats", type=int, default=2, help="copies of the 48 prompts, each its own noise")
    parser.add_argument("--steps", type=int, default=None, help="Euler steps (default 20; tiny 2)")
    parser.add_argument("--seed", type=int, default=1000)
    parser.add_argument("--tiny", action="store_true", help="CPU check at 4 x 32 x 32")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    size = TINY if args.tiny else FULL
    if args.steps is not None:
        size = Size(**{**size.__dict__, "steps": args.steps})
    device = torch.device("cuda" if torch.cuda.is_available() and not args.tiny else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    transformer, prompts_module = load_pretrained(args.weights, device=device, dtype=dtype)
    prompts_module = prompts_module.float()
    pipe = build_pipeline(transformer)
    pipe.set_progress_bar_config(disable=True)
    prompts = eval_prompts(size, args.repeats)
    truth = render(prompts, size.frames, size.side, size.side, torch.Generator().manual_seed(args.seed), device)
    result: dict = dict(weights=str(args.weights), size=size.__dict__, card=torch.cuda.get_device_name(device)
                        if device.type == "cuda" else "cpu", rendered=summarise(truth, prompts), guidance={})
    print(json.dumps({"rendered": result["rendered"]}), flush=True)
    for guidance in args.guidance:
        start = time.perf_counter()
        with torch.autocast(device.type, dtype=dtype, enabled=device.type == "cuda"):
            videos = generate(pipe, lambda p: prompts_module(p).to(dtype), prompts, size, args.seed, guidance,
                              chunk=48)
        entry = summarise(videos, prompts)
        entry["seconds"] = round(time.perf_counter() - start, 2)
        result["guidance"][str(guidance)] = entry
        print(json.dumps({"guidance": guidance, **entry}), flush=True)
        args.out.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
