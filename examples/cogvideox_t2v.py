"""CogVideoX text-to-video with jenga's carving ("base": drop rates 0.75 / 0.85, p 0.9; a principled default,
no published reference values). CogVideoX 1.5 5B samples 1360x768 at 81 frames; CogVideoX 5B 720x480 at 49.

    python examples/cogvideox_t2v.py --prompt "a panda playing guitar in a bamboo forest"
    python examples/cogvideox_t2v.py --model THUDM/CogVideoX-5b --height 480 --width 720 --frames 49 --preset turbo

Progressive resolution does not apply (CogVideoX samples with DDIM-style schedulers); ``turbo`` adds step skipping.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

PRESETS = ("base", "turbo")


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="THUDM/CogVideoX1.5-5B")
    parser.add_argument("--prompt", default="A panda playing a guitar in a bamboo forest, cinematic.")
    parser.add_argument("--height", type=int, default=768)
    parser.add_argument("--width", type=int, default=1360)
    parser.add_argument("--frames", type=int, default=81)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--preset", default="base", choices=PRESETS)
    parser.add_argument("--dense", action="store_true", help="stock diffusers, no jenga")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="cogvideox_t2v.mp4")
    args = parser.parse_args(argv)
    if args.height % 16 or args.width % 16 or min(args.height, args.width) < 16:
        parser.error(f"--height and --width must be positive multiples of 16 (VAE x8, patch 2), got "
                     f"{args.height}x{args.width}")
    if args.frames < 1 or (args.frames - 1) % 4:
        parser.error(f"--frames must be 4k + 1 (the VAE compresses time 4x), got {args.frames}")
    if args.steps < 1:
        parser.error(f"--steps must be >= 1, got {args.steps}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    import torch

    from jenga.hub import exit_if_unavailable

    if not torch.cuda.is_available():
        print(f"{Path(__file__).name}: needs a CUDA GPU (none here); `jenga demo` runs on a CPU", file=sys.stderr)
        return 2
    exit_if_unavailable(args.model)  # one line and exit code 2 when the weights are neither cached nor downloadable
    from diffusers import CogVideoXPipeline
    from diffusers.utils import export_to_video

    import jenga

    pipe = CogVideoXPipeline.from_pretrained(args.model, dtype=torch.bfloat16)
    pipe.vae.enable_tiling()
    pipe.to("cuda")
    if not args.dense:
        jenga.patch(pipe, args.preset)
    video = pipe(prompt=args.prompt, height=args.height, width=args.width, num_frames=args.frames,
                 num_inference_steps=args.steps, guidance_scale=6.0,
                 generator=torch.Generator().manual_seed(args.seed)).frames[0]
    export_to_video(video, args.out, fps=16)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
