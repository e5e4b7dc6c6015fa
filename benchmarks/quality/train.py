"""Train the toy video model (``jenga.toy``) with flow matching on synthetic clips, for a fixed time budget.

    python benchmarks/quality/train.py --seconds 300 --out weights.safetensors     # on a GPU
    python benchmarks/quality/train.py --tiny --seconds 20 --out /tmp/w.safetensors  # CPU smoke run

Clips come from ``jenga.toy.data.render`` at several sizes (32, 48 and 64 pixels square, 8 or 16 frames), so
that the 0.75-scale first stage of progressive resolution (48 of 64) and the small CPU test sizes are in
distribution. Batches hold about the same number of tokens whatever their size; later in the run the
full size gets more of the batches. Velocity target ``noise - clip`` (diffusers' flow-matching convention),
sigmas from a logit-normal shifted like the pipeline's scheduler, 10 % of prompts dropped for
classifier-free guidance, AdamW with warm-up and cosine decay over the time budget, an EMA of the weights is
what gets saved. Seeds are fixed; the time budget makes the step count depend on the card (it is logged).

Continuing the shipped model with a task-score target (issue 20), on one GPU:

    python benchmarks/quality/train.py --init shipped --seed 3 --seconds 420 --tokens 65536 --lr 3e-4 \
        --eval-every 1000 --target 85 --out $OUT/toy-wan.safetensors --log $OUT/train.json

``--eval-every N`` generates the 48 one-object prompts (``--eval-repeats`` copies, each its own noise) at the
training size (16 frames x 64 x 64, ``--eval-steps`` Euler steps, guidance 4, fixed seed) from the EMA weights
every N steps and at the end, scores them (:func:`jenga.toy.score.task_score`), and keeps the best EMA weights
by ``min(direction, shape)`` in ``--out``; training stops early once both reach ``--target``. The log lists every
evaluation. The learning-rate schedule and the bucket mix run over whichever budget (``--seconds``, ``--steps``)
is nearer its end.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import sys
import time
from pathlib import Path

import torch

from jenga.toy.data import all_single_prompts, random_prompts, render
from jenga.toy.model import (
    FLOW_SHIFT,
    WEIGHTS,
    PromptEncoder,
    build_pipeline,
    build_transformer,
    load_pretrained,
    quiet_frame_rounding,
    save_pretrained,
)
from jenga.toy.score import task_score

# (frames, side, weight early, weight late); batch size keeps tokens per batch near TOKENS
BUCKETS = [(8, 32, 2.0, 0.5), (16, 32, 2.0, 0.5), (8, 48, 1.0, 1.0), (16, 48, 1.0, 1.5), (8, 64, 0.5, 1.0),
           (16, 64, 0.5, 3.0)]
TOKENS = 16 * 16384
TINY_BUCKETS = [(4, 16, 1.0, 1.0), (8, 16, 1.0, 1.0), (4, 24, 1.0, 1.0)]
TINY_TOKENS = 4 * 512
EVAL_SEED = 1000  # noise of the evaluation generations, independent of --seed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=300.0, help="training time budget")
    parser.add_argument("--out", type=Path, required=True, help="safetensors file to write (float16)")
    parser.add_argument("--log", type=Path, default=None, help="JSON training log")
    parser.add_argument("--lr", type=float, default=6e-4)
    parser.add_argument("--ema", type=float, default=0.995)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--init", type=Path, default=None,
                        help="continue from these weights (e.g. the shipped src/jenga/toy/weights/"
                             "toy-wan.safetensors): training adds up across GPU sessions; use a new --seed then")
    parser.add_argument("--tokens", type=int, default=None,
                        help=f"tokens per batch (default {TOKENS}; fewer gives more, noisier steps in the same time)")
    parser.add_argument("--tiny", action="store_true", help="CPU smoke run at tiny sizes")
    parser.add_argument("--steps", type=int, default=None,
                        help="step budget: stop after this many steps or --seconds, whichever comes first (the "
                             "schedule follows the nearer one)")
    parser.add_argument("--eval-every", type=int, default=0,
                        help="every N steps (and at the end) score generations of the EMA weights; 0: never")
    parser.add_argument("--eval-repeats", type=int, default=2, help="copies of the 48 prompts per evaluation")
    parser.add_argument("--eval-steps", type=int, default=20, help="Euler steps per evaluation generation (default 20)")
    parser.add_argument("--object-weight", type=float, default=0.0,
                        help="extra loss weight on pixels the objects cover (0: plain MSE); the objects are a few "
                             "percent of the pixels but all of the task")
    parser.add_argument("--shape-weight", type=float, default=0.0,
                        help="extra loss weight on the pixels where a square and a disc of the object's size differ "
                             "(0: none); the shape word is decided there alone")
    parser.add_argument("--target", type=float, default=None,
                        help="stop early once an evaluation has direction and shape both >= this (percent)")
    args = parser.parse_args(argv)
    if args.init is not None and str(args.init) == "shipped":
        args.init = WEIGHTS
    for name in ("steps", "eval_repeats", "eval_steps"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name.replace('_', '-')} must be positive")
    for name in ("object_weight", "shape_weight"):
        if getattr(args, name) < 0:
            parser.error(f"--{name.replace('_', '-')} must be >= 0")
    if args.eval_every < 0:
        parser.error("--eval-every must be >= 0")
    if args.target is not None and not args.eval_every:
        parser.error("--target needs --eval-every")
    device = torch.device("cpu" if args.tiny or not torch.cuda.is_available() else "cuda")
    buckets, tokens = (TINY_BUCKETS, TINY_TOKENS) if args.tiny else (BUCKETS, TOKENS)
    if args.tokens is not None:
        if args.tokens < 1:
            parser.error("--tokens must be positive")
        tokens = args.tokens

    torch.manual_seed(args.seed)
    data_gen = torch.Generator().manual_seed(args.seed + 1)
    noise_gen = torch.Generator(device=device).manual_seed(args.seed + 2)
    if args.init is not None:
        transformer, prompts = load_pretrained(args.init, dtype=torch.float32)
        transformer, prompts = transformer.requires_grad_(True), prompts.requires_grad_(True)
    else:
        transformer, prompts = build_transformer(args.seed), PromptEncoder()
    transformer, prompts = transformer.to(device).train(), prompts.to(device).train()
    params = [*transformer.parameters(), *prompts.parameters()]
    optimizer = torch.optim.AdamW(params, lr=args.lr, betas=(0.9, 0.99), weight_decay=0.01)
    ema_t, ema_p = copy.deepcopy(transformer).eval(), copy.deepcopy(prompts).eval()
    ema_params = [*ema_t.parameters(), *ema_p.parameters()]
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else torch.autocast(
        "cpu", enabled=False)

    log: list[dict] = []
    started = time.perf_counter()
    step, warmup = 0, 50
    losses: list[torch.Tensor] = []
    eval_size = (4, 16, 2) if args.tiny else (16, 64, args.eval_steps)  # frames, side, steps
    evaluations: list[dict] = []
    best: dict | None = None
    best_path = args.out

    def evaluate_now() -> bool:
        """Score the EMA weights; keep them in ``--out`` when best so far; True once the target is met."""
        nonlocal best
        started_eval = time.perf_counter()
        score, clips = _task_score(ema_t, ema_p, eval_size, args.eval_repeats, device)
        entry = dict(step=step, seconds=round(time.perf_counter() - started, 1),
                     eval_seconds=round(time.perf_counter() - started_eval, 1),
                     clips=clips, **{k: round(v, 2) for k, v in score.items()})
        key = min(score["direction"], score["shape"])
        if best is None or key > best["key"]:
            best = dict(key=key, **entry)
            save_pretrained(ema_t, ema_p, best_path)
        entry["best"] = best["step"]
        evaluations.append(entry)
        print(json.dumps({"eval": entry}), flush=True)
        return args.target is not None and min(score["direction"], score["shape"]) >= args.target

    stopped_early = False
    weighted = bool(args.object_weight or args.shape_weight)  # the loss weights the objects or their corners
    while (elapsed := time.perf_counter() - started) < args.seconds and (args.steps is None or step < args.steps):
        progress = elapsed / args.seconds if args.steps is None else max(elapsed / args.seconds, step / args.steps)
        weights = torch.tensor([early + (late - early) * progress for *_, early, late in buckets])
        frames, side, *_ = buckets[int(torch.multinomial(weights, 1, generator=data_gen))]
        batch = max(1, tokens // (frames * side * side // 4))
        batch_prompts = random_prompts(batch, data_gen)
        rendered = render(batch_prompts, frames, side, side, data_gen, device=device, with_coverage=weighted)
        clips, coverage = rendered if weighted else (rendered, None)
        conditioned = [p if float(torch.rand((), generator=data_gen)) > 0.1 else None for p in batch_prompts]

        sigma = torch.sigmoid(torch.randn(batch, device=device, generator=noise_gen))
        sigma = FLOW_SHIFT * sigma / (1 + (FLOW_SHIFT - 1) * sigma)
        noise = torch.randn(clips.shape, device=device, generator=noise_gen)
        s = sigma.view(-1, 1, 1, 1, 1)
        noisy = (1 - s) * clips + s * noise
        with autocast:
            pred = transformer(noisy, timestep=sigma * 1000, encoder_hidden_states=prompts(conditioned),
                               return_dict=False)[0]
        error = (pred.float() - (noise - clips)).pow(2)
        if weighted:  # normalised, so the loss scale stays that of plain MSE
            weight = 1 + args.object_weight * coverage[:, :1] + args.shape_weight * coverage[:, 1:]
            loss = (error * weight).mean() / weight.mean()
        else:
            loss = error.mean()

        lr = args.lr * min(1.0, (step + 1) / warmup) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))
        for group in optimizer.param_groups:
            group["lr"] = lr
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        decay = min(args.ema, (1 + step) / (10 + step))
        with torch.no_grad():
            torch._foreach_lerp_(ema_params, params, 1 - decay)  # one launch per dtype, not per tensor
        losses.append(loss.detach())
        step += 1
        if step % 25 == 0:
            entry = dict(step=step, seconds=round(time.perf_counter() - started, 1),
                         loss=round(float(torch.stack(losses).mean()), 4), lr=lr,
                         grad_norm=round(float(grad_norm), 3), last_bucket=[frames, side, batch])
            log.append(entry)
            losses.clear()
            print(json.dumps(entry), flush=True)
        if args.eval_every and step % args.eval_every == 0 and evaluate_now():
            stopped_early = True
            break
    if args.eval_every:
        if not evaluations or evaluations[-1]["step"] != step:
            evaluate_now()
    else:
        save_pretrained(ema_t, ema_p, args.out)
    summary = dict(steps=step, seconds=round(time.perf_counter() - started, 1), device=str(device),
                   card=torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                   params=sum(p.numel() for p in transformer.parameters()), lr=args.lr, ema=args.ema,
                   seed=args.seed, object_weight=args.object_weight, shape_weight=args.shape_weight,
                   init=None if args.init is None else str(args.init), buckets=buckets,
                   tokens_per_batch=tokens, step_budget=args.steps, target=args.target, stopped_early=stopped_early,
                   evaluations=evaluations, best=best, log=log,
                   weights_bytes=args.out.stat().st_size)
    print(json.dumps({k: v for k, v in summary.items() if k not in ("log", "evaluations")}), flush=True)
    if args.log:
        args.log.write_text(json.dumps(summary, indent=1))
    return 0


def _task_score(transformer: torch.nn.Module, prompts_module: torch.nn.Module, size: tuple[int, int, int],
                repeats: int, device: torch.device) -> tuple[dict[str, float], int]:
    """Task score of generations: the 48 one-object prompts x ``repeats``, fixed noise (the same in every
    evaluation and run, so scores compare), guidance 4."""
    frames, side, steps = size
    # a CPU smoke run (side 16) scores every 6th prompt (each shape, colour and direction still appears)
    prompts = (all_single_prompts()[::6] if side <= 16 else all_single_prompts()) * repeats
    was_training = transformer.training
    transformer.eval()
    pipe = build_pipeline(transformer)
    pipe.set_progress_bar_config(disable=True)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else torch.autocast(
        "cpu", enabled=False)
    with torch.no_grad(), autocast, quiet_frame_rounding():
        negative = prompts_module([None] * len(prompts))
        videos = pipe(prompt_embeds=prompts_module(prompts), negative_prompt_embeds=negative, height=side, width=side,
                      num_frames=frames - 1, num_inference_steps=steps, guidance_scale=4.0,
                      generator=torch.Generator(device).manual_seed(EVAL_SEED), output_type="latent",
                      return_dict=False)[0]
    transformer.train(was_training)
    return task_score(videos.float().clamp(-1, 1), prompts), len(prompts)


if __name__ == "__main__":
    sys.exit(main())
