"""Full-size specs of the CogVideoX and LTX-Video transformers and the inputs of one of their forwards, as
their pipelines build them (CFG batched into one forward of batch 2, as both pipelines do).

Configs are the published ``transformer/config.json`` values (not downloadable here: written from the model
cards and diffusers' conversion scripts; fields not listed are the class defaults, which are CogVideoX-5B's
and LTX-Video 0.9's). Sizes are each model's documented default call.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass(frozen=True)
class ForwardSpec:
    """One transformer at one video size: ``grid`` is the latent token grid its forward sees."""

    name: str
    family: str  # "cogvideox" or "ltx"
    config: dict[str, Any]
    height: int
    width: int
    frames: int
    text_tokens: int
    valid_text: int
    text_dim: int
    block_size: int | None = None  # None: the preset's
    notes: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def grid(self) -> tuple[int, int, int]:
        if self.family == "cogvideox":
            pt = self.config.get("patch_size_t") or 1
            p = self.config.get("patch_size", 2)
            frames = (self.frames - 1) // 4 + 1
            frames += (-frames) % pt  # CogVideoX 1.5 pads the latent frames to its temporal patch
            return frames // pt, self.height // 8 // p, self.width // 8 // p
        scale = self.extra.get("vae_spatial", 32)
        return (self.frames - 1) // self.extra.get("vae_temporal", 8) + 1, self.height // scale, self.width // scale

    @property
    def video_tokens(self) -> int:
        return math.prod(self.grid)


_COG_5B = dict(num_attention_heads=48, attention_head_dim=64, num_layers=42, use_rotary_positional_embeddings=True)

SPECS = {
    # THUDM/CogVideoX1.5-5B: temporal patch 2, no patch bias, RoPE tables up to 300 x 300 latents; 1360x768, 81 f
    "cogvideox1.5-5b": ForwardSpec("cogvideox1.5-5b", "cogvideox", {**_COG_5B, "patch_size_t": 2, "patch_bias": False,
                                   "sample_height": 300, "sample_width": 300, "sample_frames": 81},
                                   768, 1360, 81, 226, 226, 4096),
    # THUDM/CogVideoX-5b: 720x480, 49 f (13 latent frames)
    "cogvideox-5b": ForwardSpec("cogvideox-5b", "cogvideox", dict(_COG_5B), 480, 720, 49, 226, 226, 4096),
    # Lightricks/LTX-Video 0.9.x 2B: diffusers' documented call 704x480, 161 f; 128 T5 tokens
    "ltx-2b": ForwardSpec("ltx-2b", "ltx", {}, 480, 704, 161, 128, 100, 4096),
    # Lightricks/LTX-Video 0.9.7/0.9.8 13B (4096 channels, 48 layers): 1216x704, 121 f
    "ltx-13b": ForwardSpec("ltx-13b", "ltx", dict(num_attention_heads=32, attention_head_dim=128, num_layers=48,
                                                   cross_attention_dim=4096), 704, 1216, 121, 128, 100, 4096),
}

# the same families, tiny, for a CPU check of the benchmark (--tiny): 12-20 blocks of 16 tokens
_COG_TINY = dict(num_attention_heads=2, attention_head_dim=32, num_layers=2, time_embed_dim=16, text_embed_dim=16,
                 sample_height=16, sample_width=16, sample_frames=9, use_rotary_positional_embeddings=True)
TINY_SPECS = {
    "cogvideox1.5-5b": dataclasses.replace(SPECS["cogvideox1.5-5b"],
                                           config={**_COG_TINY, "patch_size_t": 2, "sample_height": 32,
                                                   "sample_width": 32},
                                           height=128, width=160, frames=13, text_tokens=12, valid_text=12,
                                           text_dim=16, block_size=16),
    "cogvideox-5b": dataclasses.replace(SPECS["cogvideox-5b"], config=_COG_TINY, height=128, width=128, frames=9,
                                        text_tokens=12, valid_text=12, text_dim=16, block_size=16),
    "ltx-2b": dataclasses.replace(SPECS["ltx-2b"], config=dict(in_channels=8, out_channels=8, num_attention_heads=2,
                                                               attention_head_dim=32, cross_attention_dim=64,
                                                               num_layers=2, caption_channels=16),
                                  height=256, width=320, frames=17, text_tokens=8, valid_text=5, text_dim=16,
                                  block_size=16),
}


def build_transformer(spec: ForwardSpec, device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    """Seeded random weights allocated on ``device`` in ``dtype`` from the start."""
    from diffusers import CogVideoXTransformer3DModel, LTXVideoTransformer3DModel

    cls = CogVideoXTransformer3DModel if spec.family == "cogvideox" else LTXVideoTransformer3DModel
    torch.manual_seed(0)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = cls(**spec.config)
    finally:
        torch.set_default_dtype(previous)
    return model.eval().requires_grad_(False)


def forward_inputs(spec: ForwardSpec, transformer: torch.nn.Module, timestep: float, device: torch.device,
                   dtype: torch.dtype) -> dict[str, Any]:
    """Keyword arguments of one CFG-batched transformer forward, built as the family's T2V pipeline does."""
    gen = torch.Generator(device="cpu").manual_seed(0)
    batch = 2

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=gen).to(device=device, dtype=dtype)

    text = randn(batch, spec.text_tokens, spec.text_dim)
    frames, height, width = spec.grid
    if spec.family == "cogvideox":
        from diffusers import CogVideoXDDIMScheduler, CogVideoXPipeline

        cfg = transformer.config
        pt, p = cfg.patch_size_t or 1, cfg.patch_size
        latent = randn(batch, frames * pt, cfg.in_channels, height * p, width * p)
        pipe = CogVideoXPipeline(tokenizer=None, text_encoder=None, vae=None, transformer=transformer,
                                 scheduler=CogVideoXDDIMScheduler())
        rope = None
        if cfg.use_rotary_positional_embeddings:
            rope = pipe._prepare_rotary_positional_embeddings(spec.height, spec.width, latent.size(1), device)
        return dict(hidden_states=latent, encoder_hidden_states=text,
                    timestep=torch.full((batch,), int(timestep), device=device, dtype=torch.long),
                    image_rotary_emb=rope, return_dict=False)
    mask = torch.zeros(batch, spec.text_tokens, dtype=torch.long, device=device)
    mask[:, : spec.valid_text] = 1
    latent = randn(batch, frames * height * width, transformer.config.in_channels)
    rope_scale = (spec.extra.get("vae_temporal", 8) / 25, spec.extra.get("vae_spatial", 32),
                  spec.extra.get("vae_spatial", 32))
    return dict(hidden_states=latent, encoder_hidden_states=text,
                timestep=torch.full((batch,), float(timestep), device=device), encoder_attention_mask=mask,
                num_frames=frames, height=height, width=width, rope_interpolation_scale=rope_scale,
                return_dict=False)
