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

from jenga.toy.data import random_prompts, render
from jenga.toy.model import FLOW_SHIFT, PromptEncoder, build_transformer, load_pretrained, save_pretrained

# (frames, side, weight early, weight late); batch size keeps tokens per batch near TOKENS
BUCKETS = [(8, 32, 2.0, 0.5), (16, 32, 2.0, 0.5), (8, 48, 1.0, 1.0), (16, 48, 1.0, 1.5), (8, 64, 0.5, 1.0),
           (16, 64, 0.5, 3.0)]
TOKENS = 16 * 16384
TINY_BUCKETS = [(4, 16, 1.0, 1.0), (8, 16, 1.0, 1.0), (4, 24, 1.0, 1.0)]
TINY_TOKENS = 4 * 512


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
    args = parser.parse_args(argv)
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
    while (elapsed := time.perf_counter() - started) < args.seconds:
        progress = elapsed / args.seconds
        weights = torch.tensor([early + (late - early) * progress for *_, early, late in buckets])
        frames, side, *_ = buckets[int(torch.multinomial(weights, 1, generator=data_gen))]
        batch = max(1, tokens // (frames * side * side // 4))
        batch_prompts = random_prompts(batch, data_gen)
        clips = render(batch_prompts, frames, side, side, data_gen, device=device)
        conditioned = [p if float(torch.rand((), generator=data_gen)) > 0.1 else None for p in batch_prompts]

        sigma = torch.sigmoid(torch.randn(batch, device=device, generator=noise_gen))
        sigma = FLOW_SHIFT * sigma / (1 + (FLOW_SHIFT - 1) * sigma)
        noise = torch.randn(clips.shape, device=device, generator=noise_gen)
        s = sigma.view(-1, 1, 1, 1, 1)
        noisy = (1 - s) * clips + s * noise
        with autocast:
            pred = transformer(noisy, timestep=sigma * 1000, encoder_hidden_states=prompts(conditioned),
                               return_dict=False)[0]
        loss = torch.nn.functional.mse_loss(pred.float(), noise - clips)

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
    save_pretrained(ema_t, ema_p, args.out)
    summary = dict(steps=step, seconds=round(time.perf_counter() - started, 1), device=str(device),
                   card=torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                   params=sum(p.numel() for p in transformer.parameters()), lr=args.lr, ema=args.ema,
                   seed=args.seed, init=None if args.init is None else str(args.init), buckets=buckets,
                   tokens_per_batch=tokens, log=log,
                   weights_bytes=args.out.stat().st_size)
    print(json.dumps({k: v for k, v in summary.items() if k != "log"}), flush=True)
    if args.log:
        args.log.write_text(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
