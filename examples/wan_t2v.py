"""Wan2.1 text-to-video (1.3B, 480p) with jenga: load as usual, patch, generate.

    python examples/wan_t2v.py    # downloads Wan-AI/Wan2.1-T2V-1.3B-Diffusers on first use
"""

import sys
from pathlib import Path

import torch
from diffusers import AutoencoderKLWan, WanPipeline
from diffusers.utils import export_to_video

import jenga
from jenga.hub import exit_if_unavailable

model_id = "Wan-AI/Wan2.1-T2V-1.3B-Diffusers"  # or Wan-AI/Wan2.1-T2V-14B-Diffusers (720p: flow_shift 5.0)
if not torch.cuda.is_available():
    print(f"{Path(__file__).name}: needs a CUDA GPU (none here); `jenga demo` runs on a CPU", file=sys.stderr)
    raise SystemExit(2)
exit_if_unavailable(model_id)  # one line and exit code 2 when the weights are neither cached nor downloadable
vae = AutoencoderKLWan.from_pretrained(model_id, subfolder="vae", dtype=torch.float32)
pipe = WanPipeline.from_pretrained(model_id, vae=vae, dtype=torch.bfloat16).to("cuda")

jenga.patch(pipe)  # the Wan "base" preset; jenga.patch(pipe, "turbo") adds progressive resolution

video = pipe(
    prompt="A cat and a dog baking a cake together in a sunlit kitchen.",
    negative_prompt="blurry, low quality, static",
    height=480, width=832, num_frames=81, num_inference_steps=50, guidance_scale=5.0,
    generator=torch.Generator().manual_seed(0),
).frames[0]
export_to_video(video, "wan_t2v.mp4", fps=16)
