"""HunyuanVideo image-to-video with jenga: the first latent frame's blocks stay visible to every query.

    python examples/hunyuan_i2v.py path/to/first_frame.png
"""

import sys
from pathlib import Path

import torch
from diffusers import HunyuanVideoImageToVideoPipeline, HunyuanVideoTransformer3DModel
from diffusers.utils import export_to_video, load_image

import jenga
from jenga.hub import exit_if_unavailable

model_id = "hunyuanvideo-community/HunyuanVideo-I2V"
if len(sys.argv) != 2 or not Path(sys.argv[1]).is_file():
    print("usage: python examples/hunyuan_i2v.py path/to/first_frame.png (an existing image file)", file=sys.stderr)
    raise SystemExit(2)
if not torch.cuda.is_available():
    print(f"{Path(__file__).name}: needs a CUDA GPU (none here); `jenga demo` runs on a CPU", file=sys.stderr)
    raise SystemExit(2)
exit_if_unavailable(model_id)  # one line and exit code 2 when the weights are neither cached nor downloadable
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
