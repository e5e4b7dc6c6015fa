"""HunyuanVideo image-to-video with jenga: the first latent frame's blocks stay visible to every query.

    python examples/hunyuan_i2v.py path/to/first_frame.png
"""

import sys

import torch
from diffusers import HunyuanVideoImageToVideoPipeline, HunyuanVideoTransformer3DModel
from diffusers.utils import export_to_video, load_image

import jenga

model_id = "hunyuanvideo-community/HunyuanVideo-I2V"
transformer = HunyuanVideoTransformer3DModel.from_pretrained(model_id, subfolder="transformer", dtype=torch.bfloat16)
pipe = HunyuanVideoImageToVideoPipeline.from_pretrained(model_id, transformer=transformer, dtype=torch.float16)
pipe.vae.enable_tiling()
pipe.to("cuda")

jenga.patch(pipe)  # HunyuanVideo "base" preset

video = pipe(
    image=load_image(sys.argv[1]), prompt="A man with short gray hair plays a red electric guitar.",
    guidance_scale=6.0, num_inference_steps=50, generator=torch.Generator().manual_seed(0),
).frames[0]
export_to_video(video, "hunyuan_i2v.mp4", fps=15)
