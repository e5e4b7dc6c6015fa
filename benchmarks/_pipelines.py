"""What the pipeline benchmark runs: the families' published configs (full size and tiny), the columns
(stock, jenga's presets, compiled), and building a pipeline with random weights and its call arguments.
Shared by ``pipeline.py``, ``first_run.py``, ``forward.py`` and ``parallel.py``.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

import jenga

# ----------------------------------------------------------------------------------------------------
# models: published configs and sizes


@dataclass(frozen=True)
class ModelSpec:
    """One architecture at one video size, with the inputs its pipeline gets."""

    name: str
    family: str  # "wan" or "hunyuan"
    preset_model: str  # JengaConfig.preset's model family
    config: dict[str, Any]
    height: int
    width: int
    frames: int
    text_tokens: int
    valid_text: int
    text_dim: int
    guidance: float
    flow_shift: float
    branches: int  # transformer calls per step: 2 with classifier-free guidance (Wan), 1 (HunyuanVideo)
    vae: dict[str, Any] = field(default_factory=dict)
    pooled_dim: int = 0
    block_size: int | None = None  # None: the preset's (128)

    @property
    def latent(self) -> tuple[int, int, int, int]:
        """Latent channels, frames, height, width (both families: time / 4, space / 8)."""
        return (16, (self.frames - 1) // 4 + 1, self.height // 8, self.width // 8)


_WAN_COMMON = dict(patch_size=(1, 2, 2), in_channels=16, out_channels=16, text_dim=4096, freq_dim=256,
                   cross_attn_norm=True, qk_norm="rms_norm_across_heads", eps=1e-6, rope_max_seq_len=1024)

MODELS = {
    # Wan-AI/Wan2.1-T2V-1.3B-Diffusers transformer/config.json; UniPC flow shift 3.0 at 480p
    "wan1.3b": ModelSpec("wan1.3b", "wan", "wan", {**_WAN_COMMON, "num_attention_heads": 12,
                         "attention_head_dim": 128, "ffn_dim": 8960, "num_layers": 30},
                         480, 832, 81, 512, 512, 4096, 5.0, 3.0, 2),
    # Wan-AI/Wan2.1-T2V-14B-Diffusers; flow shift 5.0 at 720p
    "wan14b": ModelSpec("wan14b", "wan", "wan-14b", {**_WAN_COMMON, "num_attention_heads": 40,
                        "attention_head_dim": 128, "ffn_dim": 13824, "num_layers": 40},
                        720, 1280, 81, 512, 512, 4096, 5.0, 5.0, 2),
    # hunyuanvideo-community/HunyuanVideo: the class defaults are the published config; embedded guidance,
    # one forward per step; 256 text tokens of which 200 valid (a typical prompt)
    "hunyuan": ModelSpec("hunyuan", "hunyuan", "hunyuan", {}, 720, 1280, 129, 256, 200, 4096, 6.0, 7.0, 1,
                         pooled_dim=768),
}

# the same families, tiny, for a CPU check of this script (--tiny): grids of 12-20 blocks of 16 tokens
TINY_MODELS = {
    "wan1.3b": dataclasses.replace(
        MODELS["wan1.3b"], config={**_WAN_COMMON, "num_attention_heads": 2, "attention_head_dim": 32,
                                   "ffn_dim": 64, "num_layers": 2, "text_dim": 32, "rope_max_seq_len": 32},
        height=128, width=160, frames=9, text_tokens=12, valid_text=12, text_dim=32, block_size=16,
        vae=dict(base_dim=8, dim_mult=[1, 1, 1, 1], num_res_blocks=1)),
    "hunyuan": dataclasses.replace(
        MODELS["hunyuan"], config=dict(in_channels=16, out_channels=16, num_attention_heads=2, attention_head_dim=32,
                                       num_layers=1, num_single_layers=1, num_refiner_layers=1, text_embed_dim=16,
                                       pooled_projection_dim=8, rope_axes_dim=(8, 12, 12)),
        height=128, width=128, frames=9, text_tokens=10, valid_text=7, text_dim=16, pooled_dim=8, block_size=16,
        vae=dict(latent_channels=16, block_out_channels=(8, 8, 8, 8), layers_per_block=1, norm_num_groups=4,
                 mid_block_add_attention=False)),
}

# speed-up targets vs stock-cudnn (H100), and the memory allowance over the dense peak
TARGETS = {
    "hunyuan": {"jenga-carving": 2.5, "jenga-full": 9.0},
    "wan1.3b": {"jenga-full": 4.8},
    "wan14b": {"jenga-full": 6.0},
}
MEMORY_ALLOWANCE = 1.10


@dataclass(frozen=True)
class Column:
    name: str
    jenga: str | None  # None (stock), "carving", "prores" or "full"
    sdpa: str  # "default" or "cudnn"
    compile: bool = False


COLUMNS = {c.name: c for c in (
    Column("stock-sdpa-default", None, "default"),
    Column("stock-cudnn", None, "cudnn"),
    Column("jenga-carving", "carving", "cudnn"),
    Column("jenga-carving-prores", "prores", "cudnn"),
    Column("jenga-full", "full", "cudnn"),
    Column("stock-cudnn-compile", None, "cudnn", compile=True),
    Column("jenga-full-compile", "full", "cudnn", compile=True),
)}
BASELINE, COMPILE_BASELINE = "stock-cudnn", "stock-cudnn-compile"


def column_config(column: Column, spec: ModelSpec, cdf_threshold: float | None = None
                  ) -> tuple[jenga.JengaConfig | None, str]:
    """The jenga config of a column and a one-line description of what it is; ``cdf_threshold`` replaces the
    preset's ``p`` (random weights give near-flat block scores, so a high ``p`` keeps most blocks there while a
    trained model's peaked scores reach it near the top-k floor; ``p = 0`` measures that floor)."""
    if column.jenga is None:
        return None, "stock diffusers"
    cfg, description = _preset_config(column, spec)
    cfg = dataclasses.replace(cfg, collect_stats=True)
    if cdf_threshold is not None:
        cfg = dataclasses.replace(cfg, cdf_threshold=cdf_threshold)
        description += f", p replaced by {cdf_threshold}"
    return cfg, description


def _preset_config(column: Column, spec: ModelSpec) -> tuple[jenga.JengaConfig, str]:
    extra: dict[str, Any] = {}
    if spec.block_size is not None:
        extra["block_size"] = spec.block_size
    preset = jenga.JengaConfig.preset
    if column.jenga == "carving":
        cfg = preset("base", model=spec.preset_model, **extra)
        full_res = tuple(s._replace(scale=1.0) for s in cfg.stages)  # every base preset is full-res already
        cfg = dataclasses.replace(cfg, stages=full_res, skip_steps=())
        return cfg, "base preset: carving only (no resize, no skipping)"
    if column.jenga == "prores":
        return preset("turbo", model=spec.preset_model, skip_steps=(), **extra), \
            "turbo preset without skipping: carving + progressive resolution"
    if spec.family == "hunyuan":
        return preset("flash", model=spec.preset_model, **extra), "flash preset: carving + resolution + skipping"
    skip = preset("flash", model="hunyuan").skip_steps
    return preset("turbo", model=spec.preset_model, skip_steps=skip, **extra), \
        "turbo preset + the HunyuanVideo 23-of-50 skip schedule (the reference used TeaCache on Wan)"


# ----------------------------------------------------------------------------------------------------
# building the pipeline


def build_transformer(spec: ModelSpec, device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    """Random weights created in ``dtype`` on ``device`` (a 14B model in float32 would need 57 GB first)."""
    from diffusers import HunyuanVideoTransformer3DModel, WanTransformer3DModel

    cls = WanTransformer3DModel if spec.family == "wan" else HunyuanVideoTransformer3DModel
    return random_transformer(cls, spec.config, device, dtype)


def random_transformer(cls: type, config: dict[str, Any], device: torch.device,
                       dtype: torch.dtype) -> torch.nn.Module:
    """``random_model`` in eval mode without gradients; the modules diffusers keeps in float32 when loading a
    checkpoint (``_keep_in_fp32_modules``) are made float32 again, as users get them."""
    model = random_model(cls, config, device, dtype)
    keep = set(getattr(model, "_keep_in_fp32_modules", None) or ())
    for name, module in model.named_modules():
        if keep & set(name.split(".")):
            module.float()
    return model.eval().requires_grad_(False)


def random_model(cls: type, config: dict[str, Any], device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    """``cls(**config)`` with seeded random weights, allocated on ``device`` in ``dtype`` from the start."""
    torch.manual_seed(0)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            return cls(**config)
    finally:
        torch.set_default_dtype(previous)


def build_pipeline(spec: ModelSpec, transformer: torch.nn.Module) -> Any:
    """The family's pipeline around ``transformer``; no text encoder (random embeddings), no VAE (latent out)."""
    if spec.family == "wan":
        from diffusers import UniPCMultistepScheduler, WanPipeline

        scheduler = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True,
                                            num_train_timesteps=1000, flow_shift=spec.flow_shift)
        return WanPipeline(tokenizer=None, text_encoder=None, vae=None, scheduler=scheduler, transformer=transformer)
    from diffusers import FlowMatchEulerDiscreteScheduler, HunyuanVideoPipeline

    return HunyuanVideoPipeline(text_encoder=None, tokenizer=None, transformer=transformer, vae=None,
                                scheduler=FlowMatchEulerDiscreteScheduler(shift=spec.flow_shift),
                                text_encoder_2=None, tokenizer_2=None)


def call_arguments(spec: ModelSpec, steps: int, device: torch.device, dtype: torch.dtype) -> dict[str, Any]:
    """Random prompt embeddings of the real shapes (the same for every column), latent output."""
    gen = torch.Generator().manual_seed(1)

    def embeds(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=gen).to(device, dtype)

    kwargs: dict[str, Any] = dict(height=spec.height, width=spec.width, num_frames=spec.frames,
                                  num_inference_steps=steps, output_type="latent", return_dict=False)
    if spec.family == "wan":
        kwargs.update(prompt_embeds=embeds(1, spec.text_tokens, spec.text_dim),
                      negative_prompt_embeds=embeds(1, spec.text_tokens, spec.text_dim), guidance_scale=spec.guidance)
    else:
        mask = torch.zeros(1, spec.text_tokens, dtype=torch.int64, device=device)
        mask[:, :spec.valid_text] = 1
        kwargs.update(prompt_embeds=embeds(1, spec.text_tokens, spec.text_dim),
                      pooled_prompt_embeds=embeds(1, spec.pooled_dim), prompt_attention_mask=mask,
                      guidance_scale=spec.guidance)
    return kwargs


@contextlib.contextmanager
def sdpa_backend(kind: str) -> Iterator[None]:
    """``cudnn``: cuDNN attention first, the others after it for the calls it cannot take (e.g. masks)."""
    if kind == "default":
        yield
        return
    from torch.nn.attention import SDPBackend, sdpa_kernel

    order = [SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION,
             SDPBackend.MATH]
    with sdpa_kernel(order, set_priority=True):
        yield
