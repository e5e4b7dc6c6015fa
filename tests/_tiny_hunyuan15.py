"""Tiny HunyuanVideo 1.5 pipelines (T2V and I2V) built from configs in code (no hub), for fast CPU tests.

No text encoders: the tests pass Qwen (``prompt_embeds``) and ByT5 (``prompt_embeds_2``) embeddings with
per-sample padding masks, so the pipelines never tokenize. I2V gets a 2-layer SigLIP vision tower (16 image
tokens) and a tiny VAE (16x spatial, 4x temporal, 4 latent channels) for the image latent.
"""

from __future__ import annotations

import numpy as np
import PIL.Image
import torch
from diffusers import (
    AutoencoderKLHunyuanVideo15,
    FlowMatchEulerDiscreteScheduler,
    HunyuanVideo15ImageToVideoPipeline,
    HunyuanVideo15Pipeline,
    HunyuanVideo15Transformer3DModel,
)
from diffusers.guiders import ClassifierFreeGuidance

TEXT_DIM = 24  # Qwen2.5-VL hidden size stand-in
TEXT_2_DIM = 20  # ByT5 d_model stand-in
IMAGE_DIM = 16  # SigLIP hidden size
LATENT_CHANNELS = 4
TARGET_SIZE = 128  # I2V: a square image maps to the 128 x 128 bucket (8 x 8 latent)
HEIGHT, WIDTH, NUM_FRAMES = 128, 128, 9  # T2V: 3 x 8 x 8 = 192 video tokens
TEXT_LEN, TEXT_2_LEN = 12, 6


def transformer(seed: int = 0, task_type: str = "t2v", **config) -> HunyuanVideo15Transformer3DModel:
    torch.manual_seed(seed)
    kwargs = dict(
        in_channels=2 * LATENT_CHANNELS + 1, out_channels=LATENT_CHANNELS, num_attention_heads=2,
        attention_head_dim=32, num_layers=2, num_refiner_layers=1, mlp_ratio=2.0, patch_size=1, patch_size_t=1,
        text_embed_dim=TEXT_DIM, text_embed_2_dim=TEXT_2_DIM, image_embed_dim=IMAGE_DIM, rope_axes_dim=(8, 12, 12),
        target_size=TARGET_SIZE, task_type=task_type,
    )
    kwargs.update(config)
    return HunyuanVideo15Transformer3DModel(**kwargs).eval()


def vae() -> AutoencoderKLHunyuanVideo15:
    torch.manual_seed(1)
    return AutoencoderKLHunyuanVideo15(
        latent_channels=LATENT_CHANNELS, block_out_channels=(8, 8, 8, 8, 8), layers_per_block=1,
    ).eval()


def siglip():
    """A 2-layer SigLIP vision tower (16 channels, 16 tokens of a 32 x 32 input) and its processor."""
    from transformers import SiglipImageProcessorPil, SiglipVisionConfig, SiglipVisionModel

    torch.manual_seed(2)
    config = SiglipVisionConfig(hidden_size=IMAGE_DIM, intermediate_size=16, num_hidden_layers=2,
                                num_attention_heads=2, image_size=32, patch_size=8)
    return SiglipVisionModel(config).eval(), SiglipImageProcessorPil(size={"height": 32, "width": 32})


def pipeline(kind: str = "t2v", guidance_scale: float = 3.0):
    """``kind``: ``t2v`` or ``i2v``; ``guidance_scale`` 1.0 turns CFG off (one forward per step)."""
    scheduler = FlowMatchEulerDiscreteScheduler(shift=5.0)
    guider = ClassifierFreeGuidance(guidance_scale=guidance_scale)
    common = dict(text_encoder=None, tokenizer=None, vae=vae(), scheduler=scheduler, text_encoder_2=None,
                  tokenizer_2=None, guider=guider)
    if kind == "t2v":
        pipe = HunyuanVideo15Pipeline(transformer=transformer(0, "t2v"), **common)
    elif kind == "i2v":
        encoder, processor = siglip()
        pipe = HunyuanVideo15ImageToVideoPipeline(transformer=transformer(0, "i2v"), image_encoder=encoder,
                                                  feature_extractor=processor, **common)
    else:
        raise ValueError(f"unknown kind {kind!r}; accepted: 't2v', 'i2v'")
    pipe.set_progress_bar_config(disable=True)
    return pipe


def inputs(pipe, batch: int = 2, steps: int = 2, seed: int = 0, cfg: bool = True, **extra) -> dict:
    """Per-sample padding: sample b keeps ``TEXT_LEN - 4 b`` Qwen and ``TEXT_2_LEN - 2 b`` ByT5 tokens."""
    gen = torch.Generator().manual_seed(seed + 100)

    def embeds():
        mask = torch.zeros(batch, TEXT_LEN)
        mask_2 = torch.zeros(batch, TEXT_2_LEN)
        for b in range(batch):
            mask[b, : TEXT_LEN - 4 * b] = 1
            mask_2[b, : TEXT_2_LEN - 2 * b] = 1
        return (torch.randn(batch, TEXT_LEN, TEXT_DIM, generator=gen), mask,
                torch.randn(batch, TEXT_2_LEN, TEXT_2_DIM, generator=gen), mask_2)

    text, mask, text_2, mask_2 = embeds()
    kwargs = dict(prompt_embeds=text, prompt_embeds_mask=mask, prompt_embeds_2=text_2, prompt_embeds_mask_2=mask_2,
                  num_frames=NUM_FRAMES, num_inference_steps=steps, output_type="latent", seed=seed)
    if cfg:
        neg, neg_mask, neg_2, neg_mask_2 = embeds()
        kwargs.update(negative_prompt_embeds=neg, negative_prompt_embeds_mask=neg_mask,
                      negative_prompt_embeds_2=neg_2, negative_prompt_embeds_mask_2=neg_mask_2)
    if isinstance(pipe, HunyuanVideo15ImageToVideoPipeline):
        kwargs["image"] = image()
    else:
        kwargs.update(height=HEIGHT, width=WIDTH)
    kwargs.update(extra)
    return kwargs


def image(seed: int = 3) -> PIL.Image.Image:
    rng = np.random.default_rng(seed)
    return PIL.Image.fromarray(rng.integers(0, 255, (TARGET_SIZE, TARGET_SIZE, 3), dtype=np.uint8))


def run(pipe, kwargs: dict) -> torch.Tensor:
    """Run the pipeline with a fresh generator from ``kwargs["seed"]`` and return the latents."""
    kwargs = dict(kwargs)
    kwargs["generator"] = torch.Generator().manual_seed(kwargs.pop("seed"))
    with torch.no_grad():
        return pipe(**kwargs, return_dict=False)[0]
