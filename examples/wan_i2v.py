"""Wan2.1 image-to-video (14B, 480p) with jenga: the first latent frame's blocks stay visible to every query.

    python examples/wan_i2v.py path/to/first_frame.png
"""

import sys
from pathlib import Path

import torch
from diffusers import AutoencoderKLWan, WanImageToVideoPipeline
from diffusers.utils import export_to_video, load_image
from transformers import CLIPVisionModel

import jenga
from jenga.hub import exit_if_unavailable

model_id = "Wan-AI/Wan2.1-I2V-14B-480P-Diffusers"
if len(sys.argv) != 2 or not Path(sys.argv[1]).is_file():
    print("usage: python examples/wan_i2v.py path/to/first_frame.png (an existing image file)", file=sys.stderr)
    raise SystemExit(2)
if not torch.cuda.is_available():
    print(f"{Path(__file__).name}: needs a CUDA GPU (none here); `jenga demo` runs on a CPU", file=sys.stderr)
    raise SystemExit(2)
exit_if_unavailable(model_id)  # one line and exit code 2 when the weights are neither cached nor downloadable
image_encoder = CLIPVisionModel.from_pretrained(model_id, subfolder="image_encoder", dtype=torch.float32)
vae = AutoencoderKLWan.from_pretrained(model_id, subfolder="vae", dtype=torch.float32)
pipe = WanImageToVideoPipeline.from_pretrained(
    model_id, vae=vae, image_encoder=image_encoder, dtype=torch.bfloat16
).to("cuda")

jenga.patch(pipe)  # Wan 14B "base" preset; first-frame keys are kept automatically for image-to-video

image = load_image(sys.argv[1]).resize((832, 480))
video = pipe(
    image=image, prompt="The camera slowly pushes in while the scene comes to life.",
    height=480, width=832, num_frames=81, num_inference_steps=50, guidance_scale=5.0,
    generator=torch.Generator().manual_seed(0),
).frames[0]
export_to_video(video, "wan_i2v.mp4", fps=16)
