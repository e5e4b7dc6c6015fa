"""``jenga.calibrate`` on a full-size Wan2.1-T2V-1.3B pipeline (random bf16 weights, 480p, 81 frames): its cost.

Run on a GPU machine: ``python -m pytest tests/gpu/test_calibrate_gpu.py -q -s``. One calibration (6 steps,
every layer, 2 heads x 8 query blocks, the default 8 drop rates x 5 values of p, recall >= 0.95 per layer) of a
``WanPipeline`` with CFG, then checks that it cost well under one 50-step generation (the share it reports, from
its measured per-call time) and that the picked config patches and runs. Random weights give nearly uniform block
scores, so the picked densities say little; the cost is the point. Prints JSON and writes
``$OUT/calibrate_gpu.json`` when ``$OUT`` is set. ``JENGA_SMALL_CHECK=1`` runs it at a reduced size on the CPU.
"""

from __future__ import annotations

import json
import os

import pytest
import torch
from _wan13b import FULL_CONFIG, FULL_TEXT, SMALL, SMALL_CONFIG, SMALL_TEXT, cast_like_from_pretrained

if not torch.cuda.is_available() and not SMALL:
    pytest.skip("needs a CUDA GPU (or JENGA_SMALL_CHECK=1 for a reduced CPU run)", allow_module_level=True)

from diffusers import UniPCMultistepScheduler, WanPipeline, WanTransformer3DModel  # noqa: E402

import jenga  # noqa: E402

FULL_CALL = dict(height=480, width=832, num_frames=81)  # latent 21 x 60 x 104 -> 32,760 tokens
SMALL_CALL = dict(height=128, width=128, num_frames=17)


def test_calibration_costs_well_under_one_generation():
    device = torch.device("cpu" if SMALL else "cuda")
    dtype = torch.float32 if SMALL else torch.bfloat16
    torch.manual_seed(0)
    transformer = WanTransformer3DModel(**(SMALL_CONFIG if SMALL else FULL_CONFIG))
    transformer = cast_like_from_pretrained(transformer, dtype).to(device).eval().requires_grad_(False)
    scheduler = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0)
    pipe = WanPipeline(tokenizer=None, text_encoder=None, vae=None, scheduler=scheduler, transformer=transformer)
    pipe.set_progress_bar_config(disable=True)
    text = SMALL_TEXT if SMALL else FULL_TEXT
    g = torch.Generator().manual_seed(1)
    prompt, negative = (torch.randn(*text, generator=g).to(device, dtype) for _ in range(2))
    base = jenga.JengaConfig.preset("base", model="wan", block_size=32 if SMALL else 128)
    report = jenga.calibrate(pipe, base=base, prompt_embeds=prompt, negative_prompt_embeds=negative,
                             guidance_scale=5.0, **(SMALL_CALL if SMALL else FULL_CALL))
    timing = report.timing
    result = dict(device=torch.cuda.get_device_name() if device.type == "cuda" else "cpu", grid=report.grid,
                  config=report.config.to_dict(), stages=report.stages, timing=timing)
    print(report.table())
    print(json.dumps(result, indent=1))
    if os.environ.get("OUT"):
        with open(os.path.join(os.environ["OUT"], "calibrate_gpu.json"), "w") as f:
            json.dump(result, f, indent=1)
    assert timing["calibration_share"] < 0.3, timing
    with jenga.patched(pipe, report.config):
        out = pipe(prompt_embeds=prompt, negative_prompt_embeds=negative, guidance_scale=5.0, num_inference_steps=2,
                   output_type="latent", **(SMALL_CALL if SMALL else FULL_CALL)).frames
    assert torch.isfinite(out).all()
