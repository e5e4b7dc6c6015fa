"""The forward benchmark's specs (``forward.py``): full-size transformers of the families without a pipeline
benchmark (CogVideoX, LTX-Video, HunyuanVideo 1.5, SkyReels-V2, Wan VACE) and the inputs of one forward, as each
family's pipeline builds them.

Configs are the published ``transformer/config.json`` values (not downloadable here: written from the model
cards and diffusers' conversion scripts; fields not listed are the class defaults, which are CogVideoX-5B's,
LTX-Video 0.9's and HunyuanVideo 1.5 480p/720p's). Sizes are each model's documented default call. A family
(``FAMILIES``) says how its transformer is fed and at which step it is timed; a spec (``SPECS``) is one model at
one size. ``TINY_SPECS``: the same names at a few hundred tokens, for a CPU check of the code path (``--tiny``).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from _pipelines import random_transformer


@dataclass(frozen=True)
class ForwardSpec:
    """One transformer at one video size: ``grid`` is the latent token grid its forward sees."""

    name: str
    family: str  # a key of FAMILIES
    config: dict[str, Any]
    height: int
    width: int
    frames: int
    text_tokens: int
    valid_text: int  # unpadded text tokens (families with a text mask)
    block_size: int | None = None  # None: the preset's
    preset: str | None = None  # JengaConfig.preset's model family; None: ``family``
    text_2_tokens: int = 0  # HunyuanVideo 1.5: ByT5 tokens
    image_tokens: int = 0  # HunyuanVideo 1.5: SigLIP tokens (zeros in T2V)

    @property
    def grid(self) -> tuple[int, int, int]:
        return FAMILIES[self.family].grid(self)

    @property
    def video_tokens(self) -> int:
        return math.prod(self.grid)

    @property
    def condition_tokens(self) -> int:
        """Every text and image token the forward gets beside the video."""
        return self.text_tokens + self.text_2_tokens + self.image_tokens


Inputs = Callable[[ForwardSpec, torch.nn.Module, float, torch.device, torch.dtype], dict[str, Any]]


@dataclass(frozen=True)
class Family:
    """How a family's transformer is built, fed, and carved so that the timed forward is a computed sparse step."""

    transformer: str  # the diffusers class
    grid: Callable[[ForwardSpec], tuple[int, int, int]]
    inputs: Inputs  # (spec, transformer, timestep, device, dtype) -> forward kwargs
    batch: int  # 2: the pipeline batches CFG into one forward; 1: one forward per guidance branch
    timestep: float
    carving: dict[str, Any]  # overrides of the ``base`` preset


def _grid_16(spec: ForwardSpec) -> tuple[int, int, int]:
    """4x temporal compression, 16x spatial (an 8x VAE with 2x2 patches, or a 16x VAE with patch 1)."""
    return (spec.frames - 1) // 4 + 1, spec.height // 16, spec.width // 16


def _grid_cogvideox(spec: ForwardSpec) -> tuple[int, int, int]:
    pt, p = spec.config.get("patch_size_t") or 1, spec.config.get("patch_size", 2)
    frames = (spec.frames - 1) // 4 + 1
    frames += (-frames) % pt  # CogVideoX 1.5 pads the latent frames to its temporal patch
    return frames // pt, spec.height // 8 // p, spec.width // 8 // p


def _grid_ltx(spec: ForwardSpec) -> tuple[int, int, int]:
    return (spec.frames - 1) // 8 + 1, spec.height // 32, spec.width // 32  # 1:8 x 1:32 VAE, patch 1


def _randn(gen: torch.Generator, device: torch.device, dtype: torch.dtype) -> Callable[..., torch.Tensor]:
    return lambda *shape: torch.randn(*shape, generator=gen, device=gen.device).to(device=device, dtype=dtype)


def _inputs_cogvideox(spec: ForwardSpec, transformer: torch.nn.Module, timestep: float, device: torch.device,
                      dtype: torch.dtype) -> dict[str, Any]:
    """CFG-batched; the RoPE tables from the pipeline's own helper."""
    from diffusers import CogVideoXDDIMScheduler, CogVideoXPipeline

    randn, cfg = _randn(torch.Generator("cpu").manual_seed(0), device, dtype), transformer.config
    frames, height, width = spec.grid
    text = randn(2, spec.text_tokens, cfg.text_embed_dim)
    pt, p = cfg.patch_size_t or 1, cfg.patch_size
    latent = randn(2, frames * pt, cfg.in_channels, height * p, width * p)
    pipe = CogVideoXPipeline(tokenizer=None, text_encoder=None, vae=None, transformer=transformer,
                             scheduler=CogVideoXDDIMScheduler())
    rope = None
    if cfg.use_rotary_positional_embeddings:
        rope = pipe._prepare_rotary_positional_embeddings(spec.height, spec.width, latent.size(1), device)
    return dict(hidden_states=latent, encoder_hidden_states=text,
                timestep=torch.full((2,), int(timestep), device=device, dtype=torch.long),
                image_rotary_emb=rope, return_dict=False)


def _inputs_ltx(spec: ForwardSpec, transformer: torch.nn.Module, timestep: float, device: torch.device,
                dtype: torch.dtype) -> dict[str, Any]:
    """CFG-batched, padded T5 text with its mask."""
    randn, cfg = _randn(torch.Generator("cpu").manual_seed(0), device, dtype), transformer.config
    frames, height, width = spec.grid
    text = randn(2, spec.text_tokens, cfg.caption_channels)
    mask = torch.zeros(2, spec.text_tokens, dtype=torch.long, device=device)
    mask[:, : spec.valid_text] = 1
    latent = randn(2, frames * height * width, cfg.in_channels)
    return dict(hidden_states=latent, encoder_hidden_states=text,
                timestep=torch.full((2,), float(timestep), device=device), encoder_attention_mask=mask,
                num_frames=frames, height=height, width=width, rope_interpolation_scale=(8 / 25, 32, 32),
                return_dict=False)


def _inputs_hunyuan15(spec: ForwardSpec, transformer: torch.nn.Module, timestep: float, device: torch.device,
                      dtype: torch.dtype) -> dict[str, Any]:
    """One guider branch of ``HunyuanVideo15Pipeline`` (batch 1): latent + zero condition latents + zero mask;
    ``valid_text`` of the Qwen tokens valid, no quoted glyph text (ByT5 all padding), zero image tokens (T2V)."""
    cfg = transformer.config
    randn = _randn(torch.Generator(device).manual_seed(1), device, dtype)
    frames, height, width = spec.grid
    latents = randn(1, cfg.out_channels, frames, height, width)
    condition = torch.zeros(1, cfg.in_channels - cfg.out_channels, frames, height, width, device=device, dtype=dtype)
    mask = torch.zeros(1, spec.text_tokens, device=device, dtype=dtype)
    mask[:, : spec.valid_text] = 1
    return dict(
        hidden_states=torch.cat([latents, condition], dim=1),
        timestep=torch.full((1,), timestep, device=device, dtype=dtype),
        encoder_hidden_states=randn(1, spec.text_tokens, cfg.text_embed_dim),
        encoder_attention_mask=mask,
        encoder_hidden_states_2=torch.zeros(1, spec.text_2_tokens, cfg.text_embed_2_dim, device=device, dtype=dtype),
        encoder_attention_mask_2=torch.zeros(1, spec.text_2_tokens, device=device, dtype=dtype),
        image_embeds=torch.zeros(1, spec.image_tokens, cfg.image_embed_dim, device=device, dtype=dtype),
        return_dict=False,
    )


def _inputs_wan_family(spec: ForwardSpec, transformer: torch.nn.Module, timestep: float, device: torch.device,
                       dtype: torch.dtype) -> dict[str, Any]:
    """One guidance branch (batch 1). SkyReels-V2: the diffusion-forcing forward, one timestep per latent frame;
    VACE: control latents (video 32 + mask 64 channels)."""
    cfg = transformer.config
    randn = _randn(torch.Generator(device).manual_seed(0), device, dtype)
    frames, height, width = (spec.frames - 1) // 4 + 1, spec.height // 8, spec.width // 8
    kwargs: dict[str, Any] = dict(hidden_states=randn(1, cfg.in_channels, frames, height, width),
                                  encoder_hidden_states=randn(1, spec.text_tokens, cfg.text_dim), return_dict=False)
    if spec.family == "skyreels-v2":
        kwargs.update(timestep=torch.full((1, frames), timestep, device=device), enable_diffusion_forcing=True)
    else:
        kwargs.update(timestep=torch.full((1,), timestep, device=device),
                      control_hidden_states=randn(1, cfg.vace_in_channels, frames, height, width))
    return kwargs


# CogVideoX/LTX: timestep 700 (progress 0.3, the first stage, past the presets' 10 % dense steps); HunyuanVideo
# 1.5 the same, no step skipped; SkyReels-V2/VACE at 500 (the second half's drop rate), no dense steps
FAMILIES = {
    "cogvideox": Family("CogVideoXTransformer3DModel", _grid_cogvideox, _inputs_cogvideox, 2, 700.0, {}),
    "ltx": Family("LTXVideoTransformer3DModel", _grid_ltx, _inputs_ltx, 2, 700.0, {}),
    "hunyuan15": Family("HunyuanVideo15Transformer3DModel", _grid_16, _inputs_hunyuan15, 1, 700.0,
                        {"skip_steps": ()}),
    "skyreels-v2": Family("SkyReelsV2Transformer3DModel", _grid_16, _inputs_wan_family, 1, 500.0,
                          {"dense_steps": 0.0}),
    "wan-vace": Family("WanVACETransformer3DModel", _grid_16, _inputs_wan_family, 1, 500.0, {"dense_steps": 0.0}),
}

_COG_5B = dict(num_attention_heads=48, attention_head_dim=64, num_layers=42, use_rotary_positional_embeddings=True)
_WAN = dict(patch_size=(1, 2, 2), in_channels=16, out_channels=16, text_dim=4096, freq_dim=256,
            cross_attn_norm=True, qk_norm="rms_norm_across_heads", eps=1e-6, rope_max_seq_len=1024)
_WAN_SMALL = dict(num_attention_heads=12, attention_head_dim=128, ffn_dim=8960, num_layers=30)
_WAN_LARGE = dict(num_attention_heads=40, attention_head_dim=128, ffn_dim=13824, num_layers=40)
# HunyuanVideo 1.5: the class defaults (16 heads x 128, 54 layers, in 65 = 32 latent + 32 condition + 1 mask);
# 1000 Qwen2.5-VL tokens (120 valid), 256 ByT5, 729 SigLIP: 1,985 condition tokens after the video
_HY15 = dict(text_tokens=1000, valid_text=120, text_2_tokens=256, image_tokens=729)

SPECS = {
    # THUDM/CogVideoX1.5-5B: temporal patch 2, no patch bias, RoPE tables up to 300 x 300 latents; 1360x768, 81 f
    "cogvideox1.5-5b": ForwardSpec("cogvideox1.5-5b", "cogvideox", {**_COG_5B, "patch_size_t": 2, "patch_bias": False,
                                   "sample_height": 300, "sample_width": 300, "sample_frames": 81},
                                   768, 1360, 81, 226, 226),
    # THUDM/CogVideoX-5b: 720x480, 49 f (13 latent frames)
    "cogvideox-5b": ForwardSpec("cogvideox-5b", "cogvideox", dict(_COG_5B), 480, 720, 49, 226, 226),
    # Lightricks/LTX-Video 0.9.x 2B: diffusers' documented call 704x480, 161 f; 128 T5 tokens
    "ltx-2b": ForwardSpec("ltx-2b", "ltx", {}, 480, 704, 161, 128, 100),
    # Lightricks/LTX-Video 0.9.7/0.9.8 13B (4096 channels, 48 layers): 1216x704, 121 f
    "ltx-13b": ForwardSpec("ltx-13b", "ltx", dict(num_attention_heads=32, attention_head_dim=128, num_layers=48,
                                                   cross_attention_dim=4096), 704, 1216, 121, 128, 100),
    # hunyuanvideo-community/HunyuanVideo-1.5 480p / 720p T2V: each pipeline's default call, 848x480 and 1280x720
    # (the 16:9 bucket of target_size 640 / 960), 121 f: 31 x 30 x 53 = 49,290 and 31 x 45 x 80 = 111,600 tokens
    "hunyuan15-480p": ForwardSpec("hunyuan15-480p", "hunyuan15", dict(target_size=640, task_type="t2v"),
                                  480, 848, 121, **_HY15),
    "hunyuan15-720p": ForwardSpec("hunyuan15-720p", "hunyuan15", dict(target_size=960, task_type="t2v"),
                                  720, 1280, 121, **_HY15),
    # Skywork/SkyReels-V2-DF-1.3B-540P-Diffusers: Wan 2.1 1.3B's transformer; 544 x 960, 97 frames
    "skyreels1.3b": ForwardSpec("skyreels1.3b", "skyreels-v2", {**_WAN, **_WAN_SMALL}, 544, 960, 97, 512, 512,
                                block_size=128),
    # Skywork/SkyReels-V2-DF-14B-540P-Diffusers
    "skyreels14b": ForwardSpec("skyreels14b", "skyreels-v2", {**_WAN, **_WAN_LARGE}, 544, 960, 97, 512, 512,
                               block_size=128, preset="skyreels-v2-14b"),
    # Wan-AI/Wan2.1-VACE-1.3B-diffusers: control hints after every second of the 30 blocks; 480 x 832, 81 frames
    "vace1.3b": ForwardSpec("vace1.3b", "wan-vace", {**_WAN, **_WAN_SMALL, "vace_layers": list(range(0, 30, 2)),
                                                     "vace_in_channels": 96}, 480, 832, 81, 512, 512,
                            block_size=128, preset="wan"),
}

# the same names, tiny, for a CPU check of the benchmark (--tiny): 10-20 blocks of 16 tokens
_COG_TINY = dict(num_attention_heads=2, attention_head_dim=32, num_layers=2, time_embed_dim=16, text_embed_dim=16,
                 sample_height=16, sample_width=16, sample_frames=9, use_rotary_positional_embeddings=True)
_HY15_TINY = dict(in_channels=9, out_channels=4, num_attention_heads=2, attention_head_dim=32, num_layers=2,
                  num_refiner_layers=1, mlp_ratio=2.0, text_embed_dim=24, text_embed_2_dim=20, image_embed_dim=16,
                  rope_axes_dim=(8, 12, 12), target_size=128, task_type="t2v")
_WAN_TINY = dict(_WAN, num_attention_heads=2, attention_head_dim=32, ffn_dim=64, num_layers=3, text_dim=32,
                 rope_max_seq_len=32)
_WAN_TINY_CALL = dict(height=128, width=160, frames=9, text_tokens=12, valid_text=12, block_size=16)
_HY15_TINY_CALL = dict(config=_HY15_TINY, height=128, frames=9, text_tokens=12, valid_text=8, text_2_tokens=6,
                       image_tokens=16, block_size=16)
TINY_SPECS = {
    "cogvideox1.5-5b": dataclasses.replace(SPECS["cogvideox1.5-5b"],
                                           config={**_COG_TINY, "patch_size_t": 2, "sample_height": 32,
                                                   "sample_width": 32},
                                           height=128, width=160, frames=13, text_tokens=12, valid_text=12,
                                           block_size=16),
    "cogvideox-5b": dataclasses.replace(SPECS["cogvideox-5b"], config=_COG_TINY, height=128, width=128, frames=9,
                                        text_tokens=12, valid_text=12, block_size=16),
    "ltx-2b": dataclasses.replace(SPECS["ltx-2b"], config=dict(in_channels=8, out_channels=8, num_attention_heads=2,
                                                               attention_head_dim=32, cross_attention_dim=64,
                                                               num_layers=2, caption_channels=16),
                                  height=256, width=320, frames=17, text_tokens=8, valid_text=5, block_size=16),
    "hunyuan15-480p": dataclasses.replace(SPECS["hunyuan15-480p"], width=128, **_HY15_TINY_CALL),
    "hunyuan15-720p": dataclasses.replace(SPECS["hunyuan15-720p"], width=192, **_HY15_TINY_CALL),
    "skyreels1.3b": dataclasses.replace(SPECS["skyreels1.3b"], config=_WAN_TINY, **_WAN_TINY_CALL),
    "vace1.3b": dataclasses.replace(SPECS["vace1.3b"], config={**_WAN_TINY, "vace_layers": [0, 2],
                                                               "vace_in_channels": 96}, **_WAN_TINY_CALL),
}


def build_transformer(spec: ForwardSpec, device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    """Seeded random weights allocated on ``device`` in ``dtype`` (the modules diffusers keeps in float32 too)."""
    import diffusers

    return random_transformer(getattr(diffusers, FAMILIES[spec.family].transformer), spec.config, device, dtype)


def forward_inputs(spec: ForwardSpec, transformer: torch.nn.Module, device: torch.device,
                   dtype: torch.dtype) -> dict[str, Any]:
    """Keyword arguments of one transformer forward at the family's timestep, built as its pipeline does."""
    family = FAMILIES[spec.family]
    return family.inputs(spec, transformer, family.timestep, device, dtype)
