"""Wan VACE with jenga: generate a video guided by a control video and mask (or only a prompt).

    python examples/wan_vace.py --prompt "a red fox runs through snow"                       # text only
    python examples/wan_vace.py --video control.mp4 --mask mask.mp4 --prompt "..."           # inpainting
    python examples/wan_vace.py --reference ref.png --prompt "..." --preset turbo

jenga carves the self-attention of the main blocks and of the VACE control blocks. With ``--preset turbo``
(progressive resolution) the control video and mask are resized to each stage's size by jenga; step
skipping does not apply to VACE. Arguments (and input files) are checked before anything loads; a model
that is not cached fails at once when offline (HF_HUB_OFFLINE=1).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

MODEL = "Wan-AI/Wan2.1-VACE-1.3B-diffusers"  # or Wan-AI/Wan2.1-VACE-14B-diffusers (720p)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompt", default="A red fox runs through fresh snow in a pine forest.")
    parser.add_argument("--model", default=MODEL)
    parser.add_argument("--video", type=Path, help="control video (frames are resized to --height x --width)")
    parser.add_argument("--mask", type=Path, help="mask video: white = generate, black = keep the control video")
    parser.add_argument("--reference", type=Path, help="reference image")
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--width", type=int, default=832)
    parser.add_argument("--num-frames", type=int, default=81)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--preset", default="base", choices=("base", "turbo"))
    parser.add_argument("--out", default="wan_vace.mp4")
    args = parser.parse_args(argv)
    if args.height % 16 or args.width % 16:
        parser.error(f"--height and --width must be multiples of 16, got {args.height} x {args.width}")
    if args.num_frames < 1 or (args.num_frames - 1) % 4:
        parser.error(f"--num-frames must be 4k + 1 (the VAE's time compression), got {args.num_frames}")
    if args.steps < 1:
        parser.error(f"--steps must be >= 1, got {args.steps}")
    if args.mask is not None and args.video is None:
        parser.error("--mask needs --video (the mask selects which parts of the control video to keep)")
    for name in ("video", "mask", "reference"):
        path = getattr(args, name)
        if path is not None and not path.is_file():
            parser.error(f"--{name} {path}: no such file")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch
    from diffusers import AutoencoderKLWan, WanVACEPipeline
    from diffusers.utils import export_to_video, load_image, load_video

    import jenga

    if not torch.cuda.is_available():
        print("this example needs a CUDA GPU", file=sys.stderr)
        return 2
    size = (args.width, args.height)
    video = [f.resize(size) for f in load_video(str(args.video))][: args.num_frames] if args.video else None
    mask = [f.resize(size) for f in load_video(str(args.mask))][: args.num_frames] if args.mask else None
    if video is not None and len(video) < args.num_frames:
        print(f"--video has {len(video)} frames, fewer than --num-frames {args.num_frames}", file=sys.stderr)
        return 2
    reference = load_image(str(args.reference)) if args.reference else None
    try:
        vae = AutoencoderKLWan.from_pretrained(args.model, subfolder="vae", dtype=torch.float32)
        pipe = WanVACEPipeline.from_pretrained(args.model, vae=vae, dtype=torch.bfloat16).to("cuda")
    except OSError as err:  # not cached and offline, or a wrong model id
        print(f"cannot load {args.model}: {err}", file=sys.stderr)
        return 2

    jenga.patch(pipe, args.preset)  # VACE checkpoints are Wan: the Wan presets apply
    frames = pipe(prompt=args.prompt, video=video, mask=mask, reference_images=reference, height=args.height,
                  width=args.width, num_frames=args.num_frames, num_inference_steps=args.steps, guidance_scale=5.0,
                  generator=torch.Generator().manual_seed(0)).frames[0]
    export_to_video(frames, args.out, fps=16)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
