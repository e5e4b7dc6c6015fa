"""Tiny CogVideoX and LTX-Video pipelines built from configs in code (no hub), for fast CPU tests.

CogVideoX: 9 frames at 128x128 -> latent [B, 3, 4, 16, 16] -> 3 x 8 x 8 = 192 tokens (1.0, patch 2); 1.5 pads to
4 latent frames -> 2 x 8 x 8 = 128 tokens (temporal patch 2). LTX: a tiny VAE compressing 1:4 in space and
time, so 9 frames at 32x32 -> 3 x 8 x 8 = 192 tokens (the real VAE's 1:32 x 1:8 would need 256 px).
Heads are 2 x 32; blocks of 16 tokens (see ``_tiny.ALL_BLOCKS`` / ``CARVING``).
"""

from __future__ import annotations

import numpy as np
import PIL.Image
import torch
from diffusers import (
    AutoencoderKLCogVideoX,
    AutoencoderKLLTXVideo,
    CogVideoXDDIMScheduler,
    CogVideoXImageToVideoPipeline,
    CogVideoXPipeline,
    CogVideoXTransformer3DModel,
    FlowMatchEulerDiscreteScheduler,
    LTXConditionPipeline,
    LTXImageToVideoPipeline,
    LTXPipeline,
    LTXVideoTransformer3DModel,
)

COG_SIZE = 128
LTX_SIZE = 32
NUM_FRAMES = 9
TEXT_DIM = 16


def _quiet(pipe):
    pipe.set_progress_bar_config(disable=True)
    return pipe


def image(size: int, seed: int = 3) -> PIL.Image.Image:
    rng = np.random.default_rng(seed)
    return PIL.Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8))


# ----------------------------------------------------------------------------------------------------
# CogVideoX


def cogvideox_transformer(version: str = "1.0", i2v: bool = False, seed: int = 0,
                          **config) -> CogVideoXTransformer3DModel:
    """``version``: ``"1.0"`` (5B-style: RoPE; I2V with learned positions), ``"1.0-2b"`` (sincos positions, no
    RoPE) or ``"1.5"`` (temporal patch 2; I2V with an ofs embedding)."""
    torch.manual_seed(seed)
    kwargs = dict(num_attention_heads=2, attention_head_dim=32, in_channels=8 if i2v else 4, out_channels=4,
                  time_embed_dim=16, text_embed_dim=TEXT_DIM, num_layers=2, sample_width=16, sample_height=16,
                  sample_frames=NUM_FRAMES, patch_size=2, temporal_compression_ratio=4, max_text_seq_length=12,
                  use_rotary_positional_embeddings=version != "1.0-2b",
                  use_learned_positional_embeddings=version == "1.0" and i2v)
    if version == "1.5":
        kwargs.update(patch_size_t=2, patch_bias=False, ofs_embed_dim=16 if i2v else None)
    kwargs.update(config)
    return CogVideoXTransformer3DModel(**kwargs).eval()


def cogvideox_vae() -> AutoencoderKLCogVideoX:
    torch.manual_seed(1)
    return AutoencoderKLCogVideoX(
        in_channels=3, out_channels=3, down_block_types=("CogVideoXDownBlock3D",) * 4,
        up_block_types=("CogVideoXUpBlock3D",) * 4, block_out_channels=(8, 8, 8, 8), latent_channels=4,
        layers_per_block=1, norm_num_groups=2, temporal_compression_ratio=4,
    ).eval()


def cogvideox_pipeline(kind: str = "t2v") -> CogVideoXPipeline | CogVideoXImageToVideoPipeline:
    """``kind``: ``t2v``, ``t2v-2b``, ``t2v-1.5``, ``i2v`` or ``i2v-1.5``."""
    version = "1.5" if kind.endswith("1.5") else "1.0-2b" if kind.endswith("2b") else "1.0"
    scheduler = CogVideoXDDIMScheduler(timestep_spacing="trailing", rescale_betas_zero_snr=True,
                                       prediction_type="v_prediction")
    i2v = kind.startswith("i2v")
    transformer = cogvideox_transformer(version, i2v=i2v)
    cls = CogVideoXImageToVideoPipeline if i2v else CogVideoXPipeline
    return _quiet(cls(tokenizer=None, text_encoder=None, vae=cogvideox_vae(), transformer=transformer,
                      scheduler=scheduler))


def cogvideox_inputs(pipe, batch: int = 2, steps: int = 3, seed: int = 0, **extra) -> dict:
    """Random prompt embeddings (CogVideoX attends to the padded text too: no mask, as stock)."""
    gen = torch.Generator().manual_seed(seed + 100)
    kwargs = dict(
        prompt_embeds=torch.randn(batch, 12, TEXT_DIM, generator=gen),
        negative_prompt_embeds=torch.randn(batch, 12, TEXT_DIM, generator=gen),
        height=COG_SIZE, width=COG_SIZE, num_frames=NUM_FRAMES, num_inference_steps=steps, guidance_scale=6.0,
        output_type="latent", seed=seed,
    )
    if isinstance(pipe, CogVideoXImageToVideoPipeline):
        kwargs["image"] = [image(COG_SIZE, seed=s) for s in range(batch)]  # one image per sample
    kwargs.update(extra)
    return kwargs


# ----------------------------------------------------------------------------------------------------
# LTX-Video


def ltx_transformer(seed: int = 0, **config) -> LTXVideoTransformer3DModel:
    torch.manual_seed(seed)
    kwargs = dict(in_channels=8, out_channels=8, patch_size=1, patch_size_t=1, num_attention_heads=2,
                  attention_head_dim=32, cross_attention_dim=64, num_layers=2, caption_channels=TEXT_DIM)
    kwargs.update(config)
    return LTXVideoTransformer3DModel(**kwargs).eval()


def ltx_vae() -> AutoencoderKLLTXVideo:
    torch.manual_seed(1)
    return AutoencoderKLLTXVideo(
        in_channels=3, out_channels=3, latent_channels=8, block_out_channels=(8, 8, 8, 8),
        decoder_block_out_channels=(8, 8, 8, 8), layers_per_block=(1, 1, 1, 1, 1),
        decoder_layers_per_block=(1, 1, 1, 1, 1), spatio_temporal_scaling=(True, True, False, False),
        decoder_spatio_temporal_scaling=(True, True, False, False), decoder_inject_noise=(False,) * 5,
        upsample_residual=(False,) * 4, upsample_factor=(1,) * 4, timestep_conditioning=False, patch_size=1,
        patch_size_t=1, encoder_causal=True, decoder_causal=False,
    ).eval()


def ltx_pipeline(kind: str = "t2v") -> LTXPipeline | LTXImageToVideoPipeline | LTXConditionPipeline:
    """``kind``: ``t2v``, ``i2v`` or ``condition``."""
    # LTX 0.9.0-0.9.1 schedulers shift dynamically; the condition pipeline (0.9.5+) passes its own timesteps
    scheduler = FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=kind != "condition", base_shift=0.95,
                                                max_shift=2.05, base_image_seq_len=1024, max_image_seq_len=4096,
                                                shift_terminal=0.1)
    cls = {"t2v": LTXPipeline, "i2v": LTXImageToVideoPipeline, "condition": LTXConditionPipeline}[kind]
    return _quiet(cls(scheduler=scheduler, vae=ltx_vae(), text_encoder=None, tokenizer=None,
                      transformer=ltx_transformer()))


def ltx_inputs(pipe, batch: int = 2, steps: int = 3, seed: int = 0, **extra) -> dict:
    """Per-sample text padding (the mask is applied in the cross-attention): sample b keeps ``8 - 3 * b``."""
    gen = torch.Generator().manual_seed(seed + 100)
    text_len = 8

    def text():
        mask = torch.zeros(batch, text_len, dtype=torch.int64)
        for b in range(batch):
            mask[b, : text_len - 3 * b] = 1
        return torch.randn(batch, text_len, TEXT_DIM, generator=gen), mask

    embeds, mask = text()
    neg, neg_mask = text()
    kwargs = dict(
        prompt_embeds=embeds, prompt_attention_mask=mask, negative_prompt_embeds=neg,
        negative_prompt_attention_mask=neg_mask, height=LTX_SIZE, width=LTX_SIZE, num_frames=NUM_FRAMES,
        num_inference_steps=steps, guidance_scale=3.0, output_type="latent", seed=seed,
    )
    if isinstance(pipe, LTXImageToVideoPipeline):
        kwargs["image"] = image(LTX_SIZE)
    kwargs.update(extra)
    return kwargs
