"""Wan2.2 text-to-video A14B (two experts) with jenga: one patch covers both transformers.

    python examples/wan22_t2v.py
"""

import torch
from diffusers import AutoencoderKLWan, WanPipeline
from diffusers.utils import export_to_video

import jenga

model_id = "Wan-AI/Wan2.2-T2V-A14B-Diffusers"
vae = AutoencoderKLWan.from_pretrained(model_id, subfolder="vae", dtype=torch.float32)
pipe = WanPipeline.from_pretrained(model_id, vae=vae, dtype=torch.bfloat16).to("cuda")

jenga.patch(pipe)  # patches pipe.transformer and pipe.transformer_2 with the Wan 14B "base" preset

video = pipe(
    prompt="Two anthropomorphic cats in boxing gear fight on a spotlit stage.",
    height=720, width=1280, num_frames=81, num_inference_steps=40, guidance_scale=4.0, guidance_scale_2=3.0,
    generator=torch.Generator().manual_seed(0),
).frames[0]
export_to_video(video, "wan22_t2v.mp4", fps=16)
