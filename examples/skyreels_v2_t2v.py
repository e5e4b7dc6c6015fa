"""SkyReels-V2 text-to-video with jenga: the plain T2V pipeline, or diffusion forcing for long videos.

    python examples/skyreels_v2_t2v.py --prompt "a cat surfing at sunset"                  # T2V 1.3B 540p
    python examples/skyreels_v2_t2v.py --diffusion-forcing --num-frames 257 --overlap-history 17

Diffusion forcing denoises each latent frame on its own timestep schedule and runs long videos in overlapping
windows; jenga carves every window's own grid. Progressive resolution and step skipping do not apply there (see
the README), so this script uses the full-resolution "base" preset. Arguments are checked before anything
loads; a model that is not cached fails at once when offline (HF_HUB_OFFLINE=1).
"""

from __future__ import annotations

import argparse
import sys

T2V_MODEL = "Skywork/SkyReels-V2-T2V-14B-540P-Diffusers"
DF_MODEL = "Skywork/SkyReels-V2-DF-1.3B-540P-Diffusers"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompt", default="A graceful white swan glides across a misty lake at dawn.")
    parser.add_argument("--model", help=f"default: {T2V_MODEL}, or {DF_MODEL} with --diffusion-forcing")
    parser.add_argument("--diffusion-forcing", action="store_true", help="SkyReelsV2DiffusionForcingPipeline")
    parser.add_argument("--height", type=int, default=544)
    parser.add_argument("--width", type=int, default=960)
    parser.add_argument("--num-frames", type=int, default=97)
    parser.add_argument("--overlap-history", type=int, default=17, help="diffusion forcing: frames shared by windows")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--preset", default="base", choices=("base", "turbo"),
                        help="turbo (progressive resolution) only without --diffusion-forcing")
    parser.add_argument("--out", default="skyreels_v2.mp4")
    args = parser.parse_args(argv)
    if args.height % 16 or args.width % 16:
        parser.error(f"--height and --width must be multiples of 16, got {args.height} x {args.width}")
    if args.num_frames < 1 or (args.num_frames - 1) % 4:
        parser.error(f"--num-frames must be 4k + 1 (the VAE's time compression), got {args.num_frames}")
    if args.steps < 1:
        parser.error(f"--steps must be >= 1, got {args.steps}")
    if args.diffusion_forcing and args.preset != "base":
        parser.error("--preset turbo (progressive resolution) does not apply to diffusion forcing: use base")
    if args.diffusion_forcing and not 0 < args.overlap_history < 97:
        parser.error(f"--overlap-history must be in (0, 97), got {args.overlap_history}")
    args.model = args.model or (DF_MODEL if args.diffusion_forcing else T2V_MODEL)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch
    from diffusers import AutoencoderKLWan, SkyReelsV2DiffusionForcingPipeline, SkyReelsV2Pipeline
    from diffusers.utils import export_to_video

    import jenga

    if not torch.cuda.is_available():
        print("this example needs a CUDA GPU", file=sys.stderr)
        return 2
    cls = SkyReelsV2DiffusionForcingPipeline if args.diffusion_forcing else SkyReelsV2Pipeline
    try:
        vae = AutoencoderKLWan.from_pretrained(args.model, subfolder="vae", dtype=torch.float32)
        pipe = cls.from_pretrained(args.model, vae=vae, dtype=torch.bfloat16).to("cuda")
    except OSError as err:  # not cached and offline, or a wrong model id
        print(f"cannot load {args.model}: {err}", file=sys.stderr)
        return 2

    jenga.patch(pipe, args.preset)  # SkyReels-V2's presets: Wan's values for the same width (see the README)
    call = dict(prompt=args.prompt, height=args.height, width=args.width, num_frames=args.num_frames,
                num_inference_steps=args.steps, guidance_scale=6.0, generator=torch.Generator().manual_seed(0))
    if args.diffusion_forcing:
        call.update(overlap_history=args.overlap_history, base_num_frames=97, addnoise_condition=20)
    video = pipe(**call).frames[0]
    export_to_video(video, args.out, fps=24)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
