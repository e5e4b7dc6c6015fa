"""Wan2.2 text-to-video A14B (two experts) with jenga: one patch covers both transformers.

    python examples/wan22_t2v.py
"""

import sys
from pathlib import Path

import torch
from diffusers import AutoencoderKLWan, WanPipeline
from diffusers.utils import export_to_video

import jenga
from jenga.hub import exit_if_unavailable

model_id = "Wan-AI/Wan2.2-T2V-A14B-Diffusers"
if not torch.cuda.is_available():
    print(f"{Path(__file__).name}: needs a CUDA GPU (none here); `jenga demo` runs on a CPU", file=sys.stderr)
    raise SystemExit(2)
exit_if_unavailable(model_id)  # one line and exit code 2 when the weights are neither cached nor downloadable
vae = AutoencoderKLWan.from_pretrained(model_id, subfolder="vae", dtype=torch.float32)
pipe = WanPipeline.from_pretrained(model_id, vae=vae, dtype=torch.bfloat16).to("cuda")

jenga.patch(pipe)  # patches pipe.transformer and pipe.transformer_2 with the Wan 14B "base" preset

video = pipe(
    prompt="Two anthropomorphic cats in boxing gear fight on a spotlit stage.",
    height=720, width=1280, num_frames=81, num_inference_steps=40, guidance_scale=4.0, guidance_scale_2=3.0,
    generator=torch.Generator().manual_seed(0),
).frames[0]
export_to_video(video, "wan22_t2v.mp4", fps=16)
