"""HunyuanVideo 1.5 text-to-video (or image-to-video with --image) with jenga: carving with every text, glyph and
image token kept; "turbo"/"flash" add a reduced-resolution first stage (T2V only). The presets are principled
defaults (HunyuanVideo's keep budget and skip schedule, the pipeline's own shift), not reference values.

    python examples/hunyuan15_t2v.py --prompt "A cat walks on the grass, realistic"
    python examples/hunyuan15_t2v.py --resolution 720p --preset turbo
    python examples/hunyuan15_t2v.py --image first.png --prompt "The cat turns its head"   # I2V, base preset
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

MODELS = {
    ("480p", "t2v"): "hunyuanvideo-community/HunyuanVideo-1.5-480p_t2v",
    ("720p", "t2v"): "hunyuanvideo-community/HunyuanVideo-1.5-720p_t2v",
    ("480p", "i2v"): "hunyuanvideo-community/HunyuanVideo-1.5-480p_i2v",
    ("720p", "i2v"): "hunyuanvideo-community/HunyuanVideo-1.5-720p_i2v",
}
SIZES = {"480p": (480, 848), "720p": (720, 1280)}  # the T2V pipeline's 16:9 default at each target size
PRESETS = ("base", "turbo", "flash")


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompt", default="A cat walks on the grass, realistic.")
    parser.add_argument("--image", type=Path, default=None, help="first frame: image-to-video")
    parser.add_argument("--resolution", default="480p", choices=sorted(SIZES))
    parser.add_argument("--model", default=None, help="a hub id or local folder (default: by resolution and task)")
    parser.add_argument("--frames", type=int, default=121)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--preset", default="base", choices=PRESETS)
    parser.add_argument("--dense", action="store_true", help="stock diffusers, no jenga")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("hunyuan15.mp4"))
    args = parser.parse_args(argv)
    if args.image is not None and not args.image.is_file():
        parser.error(f"--image {args.image} is not a file")
    if args.image is not None and args.preset != "base":
        parser.error(f"--preset {args.preset} has a reduced-resolution stage, which the image-to-video pipeline "
                     "cannot run (it sizes the video from the image): use --preset base")
    if args.frames < 1 or (args.frames - 1) % 4:
        parser.error(f"--frames must be 4k + 1 (the VAE compresses time 4x), got {args.frames}")
    if args.steps < 1:
        parser.error(f"--steps must be >= 1, got {args.steps}")
    if args.out.parent and not args.out.parent.exists():
        parser.error(f"--out folder {args.out.parent} does not exist")
    args.model = args.model or MODELS[(args.resolution, "i2v" if args.image else "t2v")]
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    import torch

    if not torch.cuda.is_available():
        print(f"{Path(__file__).name}: needs a CUDA GPU (none here); `jenga demo` runs on a CPU", file=sys.stderr)
        return 2
    from jenga.hub import exit_if_unavailable

    exit_if_unavailable(args.model)  # one line and exit code 2 when the weights are neither cached nor downloadable
    from diffusers import HunyuanVideo15ImageToVideoPipeline, HunyuanVideo15Pipeline
    from diffusers.utils import export_to_video, load_image

    import jenga

    cls = HunyuanVideo15ImageToVideoPipeline if args.image else HunyuanVideo15Pipeline
    pipe = cls.from_pretrained(args.model, dtype=torch.bfloat16)
    pipe.vae.enable_tiling()
    pipe.to("cuda")
    if not args.dense:
        jenga.patch(pipe, args.preset)
    call = dict(prompt=args.prompt, num_frames=args.frames, num_inference_steps=args.steps,
                generator=torch.Generator().manual_seed(args.seed))
    if args.image:
        call["image"] = load_image(str(args.image))
    else:
        call["height"], call["width"] = SIZES[args.resolution]
    video = pipe(**call).frames[0]
    export_to_video(video, str(args.out), fps=24)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
