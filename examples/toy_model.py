"""The toy video model that ships with jenga, dense and carved, with its task score: runs offline, CPU or GPU.

    python examples/toy_model.py "a green square moving left"
"""

import sys

import torch

import jenga
from jenga.toy.data import Prompt
from jenga.toy.model import build_pipeline, load_pretrained, quiet_frame_rounding
from jenga.toy.score import psnr, task_score

text = sys.argv[1] if len(sys.argv) > 1 else "a red disc moving right"
try:  # before loading anything: a prompt the model cannot read is one line, exit code 2
    prompts = [Prompt.parse(text)]
except ValueError as err:
    print(f"toy_model.py: cannot read the prompt {text!r}: {err} (e.g. 'a green square moving left')",
          file=sys.stderr)
    raise SystemExit(2) from None

device = "cuda" if torch.cuda.is_available() else "cpu"
# the training size on a GPU (16 x 32 x 32 tokens = 128 blocks of 128); a quick small size on a CPU
frames, side, block, steps = (16, 64, 128, 30) if device == "cuda" else (8, 32, 64, 10)
dtype = torch.bfloat16 if device == "cuda" else torch.float32
transformer, prompt_encoder = load_pretrained(device=device, dtype=dtype)
pipe = build_pipeline(transformer)


def generate() -> torch.Tensor:
    with torch.no_grad(), quiet_frame_rounding():  # num_frames - 1: the pixel "VAE" has a temporal factor of 1
        return pipe(prompt_embeds=prompt_encoder(prompts), negative_prompt_embeds=prompt_encoder([None]),
                    height=side, width=side, num_frames=frames - 1, num_inference_steps=steps, guidance_scale=4.0,
                    generator=torch.Generator().manual_seed(0), output_type="latent", return_dict=False)[0].clamp(-1, 1)


dense = generate()
with jenga.patched(pipe, jenga.JengaConfig.preset("base", model="wan", block_size=block)):
    carved = generate()
print(f"{prompts[0]}: dense task {task_score(dense, prompts)}, jenga task {task_score(carved, prompts)}, "
      f"PSNR jenga vs dense {float(psnr(dense, carved)):.1f} dB")
