"""HunyuanVideo text-to-video (720p) with jenga's "flash" preset: carving, progressive resolution, skipping.

    python examples/hunyuan_t2v.py
"""

import sys
from pathlib import Path

import torch
from diffusers import HunyuanVideoPipeline, HunyuanVideoTransformer3DModel
from diffusers.utils import export_to_video

import jenga
from jenga.hub import exit_if_unavailable

model_id = "hunyuanvideo-community/HunyuanVideo"
if not torch.cuda.is_available():
    print(f"{Path(__file__).name}: needs a CUDA GPU (none here); `jenga demo` runs on a CPU", file=sys.stderr)
    raise SystemExit(2)
exit_if_unavailable(model_id)  # one line and exit code 2 when the weights are neither cached nor downloadable
transformer = HunyuanVideoTransformer3DModel.from_pretrained(model_id, subfolder="transformer", dtype=torch.bfloat16)
pipe = HunyuanVideoPipeline.from_pretrained(model_id, transformer=transformer, dtype=torch.float16)
pipe.vae.enable_tiling()
pipe.to("cuda")

jenga.patch(pipe, "flash")  # or "base" (carving only), "turbo", "3stage"

video = pipe(
    prompt="A cat walks on the grass, realistic style.",
    height=720, width=1280, num_frames=129, num_inference_steps=50,
    generator=torch.Generator().manual_seed(0),
).frames[0]
export_to_video(video, "hunyuan_t2v.mp4", fps=24)
