"""HunyuanVideo text-to-video (720p) with jenga's "flash" preset: carving, progressive resolution, skipping.

    python examples/hunyuan_t2v.py
"""

import torch
from diffusers import HunyuanVideoPipeline, HunyuanVideoTransformer3DModel
from diffusers.utils import export_to_video

import jenga

model_id = "hunyuanvideo-community/HunyuanVideo"
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
