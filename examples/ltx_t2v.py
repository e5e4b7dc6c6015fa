"""LTX-Video text-to-video with jenga's carving ("base": 64-token blocks, drop rates 0.75 / 0.85, p 0.9; a
principled default, no published reference values). LTX's 1:32 x 1:8 VAE keeps sequences short (704x480x161 is
6,930 tokens), so carving saves less here than on Wan or HunyuanVideo: self-attention is about a third of a
forward's work at this size.

    python examples/ltx_t2v.py --prompt "a woman walks along a beach at sunset"
    python examples/ltx_t2v.py --image first.png --prompt "..."          # LTXImageToVideoPipeline

Progressive resolution does not apply (packed latents, dynamic shift); ``turbo`` adds step skipping.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

PRESETS = ("base", "turbo")


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="Lightricks/LTX-Video")
    parser.add_argument("--prompt", default="A woman with long brown hair walks along a beach at sunset.")
    parser.add_argument("--negative-prompt", default="worst quality, inconsistent motion, blurry, jittery, distorted")
    parser.add_argument("--image", default=None, help="first frame: runs LTXImageToVideoPipeline")
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--width", type=int, default=704)
    parser.add_argument("--frames", type=int, default=161)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--preset", default="base", choices=PRESETS)
    parser.add_argument("--dense", action="store_true", help="stock diffusers, no jenga")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="ltx_t2v.mp4")
    args = parser.parse_args(argv)
    if args.height % 32 or args.width % 32 or min(args.height, args.width) < 32:
        parser.error(f"--height and --width must be positive multiples of 32 (the LTX VAE), got "
                     f"{args.height}x{args.width}")
    if args.frames < 1 or (args.frames - 1) % 8:
        parser.error(f"--frames must be 8k + 1 (the VAE compresses time 8x), got {args.frames}")
    if args.steps < 1:
        parser.error(f"--steps must be >= 1, got {args.steps}")
    if args.image is not None and not os.path.isfile(args.image):
        parser.error(f"--image {args.image!r} is not a file")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    import torch

    from jenga.hub import exit_if_unavailable

    if not torch.cuda.is_available():
        print(f"{Path(__file__).name}: needs a CUDA GPU (none here); `jenga demo` runs on a CPU", file=sys.stderr)
        return 2
    exit_if_unavailable(args.model)  # one line and exit code 2 when the weights are neither cached nor downloadable
    from diffusers import LTXImageToVideoPipeline, LTXPipeline
    from diffusers.utils import export_to_video, load_image

    import jenga

    cls = LTXPipeline if args.image is None else LTXImageToVideoPipeline
    pipe = cls.from_pretrained(args.model, dtype=torch.bfloat16).to("cuda")
    if not args.dense:
        jenga.patch(pipe, args.preset)
    extra = {} if args.image is None else {"image": load_image(args.image)}
    video = pipe(prompt=args.prompt, negative_prompt=args.negative_prompt, height=args.height, width=args.width,
                 num_frames=args.frames, num_inference_steps=args.steps,
                 generator=torch.Generator().manual_seed(args.seed), **extra).frames[0]
    export_to_video(video, args.out, fps=24)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
