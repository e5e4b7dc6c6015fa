"""The toy video model: a small diffusers ``WanTransformer3DModel`` trained on :mod:`jenga.toy.data`.

It works in pixel space (3 channels; the "VAE" is the identity), so a ``WanPipeline`` runs it unchanged and
``jenga.patch`` treats it like any Wan checkpoint: 16 frames at 64x64 with 1x2x2 patches are 16,384 tokens,
128 blocks of 128. Prompts go in as ``prompt_embeds`` from a learned table (one token per word slot). The
trained weights ship with the package (``weights/toy-wan.safetensors``, float16).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from diffusers import ModelMixin
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.autoencoders.vae import DecoderOutput

from .data import COLOURS, DIRECTIONS, SHAPES, Prompt

__all__ = [
    "TRANSFORMER_CONFIG",
    "WEIGHTS",
    "PixelVAE",
    "PromptEncoder",
    "build_pipeline",
    "build_transformer",
    "load_pretrained",
    "quiet_frame_rounding",
    "save_pretrained",
]

WEIGHTS = Path(__file__).parent / "weights" / "toy-wan.safetensors"
TEXT_DIM = 64
TRANSFORMER_CONFIG: dict[str, Any] = dict(
    patch_size=(1, 2, 2), num_attention_heads=4, attention_head_dim=64, in_channels=3, out_channels=3,
    text_dim=TEXT_DIM, freq_dim=128, ffn_dim=1024, num_layers=6, cross_attn_norm=True,
    qk_norm="rms_norm_across_heads", eps=1e-6, rope_max_seq_len=128,
)
FLOW_SHIFT = 2.0  # sigma shift of training and of the pipeline's scheduler
VOCAB = ("<null>", "<none>", *SHAPES, *COLOURS, *DIRECTIONS)
SLOTS = 6  # (shape, colour, direction) x two objects


class PromptEncoder(torch.nn.Module):
    """Word-slot prompts to ``prompt_embeds [B, 6, 64]``: a token table plus a slot table."""

    def __init__(self) -> None:
        super().__init__()
        self.token = torch.nn.Embedding(len(VOCAB), TEXT_DIM)
        self.slot = torch.nn.Parameter(torch.zeros(SLOTS, TEXT_DIM))
        torch.nn.init.normal_(self.token.weight, std=1.0)
        torch.nn.init.normal_(self.slot, std=0.5)

    @staticmethod
    def token_ids(prompts: list[Prompt | None]) -> torch.Tensor:
        """``None`` is the unconditional prompt (all ``<null>``) used for classifier-free guidance."""
        ids = []
        for prompt in prompts:
            if prompt is None:
                ids.append([0] * SLOTS)
                continue
            row = []
            for i in range(2):
                if i < len(prompt.objects):
                    obj = prompt.objects[i]
                    row += [VOCAB.index(obj.shape), VOCAB.index(obj.colour), VOCAB.index(obj.direction)]
                else:
                    row += [1, 1, 1]
            ids.append(row)
        return torch.tensor(ids, dtype=torch.long)

    def forward(self, prompts: list[Prompt | None]) -> torch.Tensor:
        ids = self.token_ids(prompts).to(self.token.weight.device)
        return self.token(ids) + self.slot


class PixelVAE(ModelMixin, ConfigMixin):
    """The identity "autoencoder" of a pixel-space model: latents are the frames, ``[-1, 1]``."""

    @register_to_config
    def __init__(self, z_dim: int = 3) -> None:
        super().__init__()
        self.register_to_config(scale_factor_temporal=1, scale_factor_spatial=1, latents_mean=[0.0] * z_dim,
                                latents_std=[1.0] * z_dim)
        self.register_buffer("_anchor", torch.zeros(1), persistent=False)  # gives the module a device and dtype

    def encode(self, x: torch.Tensor, return_dict: bool = True) -> Any:
        raise NotImplementedError("the toy model generates from text only; it has no image conditioning")

    def decode(self, z: torch.Tensor, return_dict: bool = True) -> Any:
        video = z.clamp(-1, 1)
        return DecoderOutput(sample=video) if return_dict else (video,)


def build_transformer(seed: int = 0) -> torch.nn.Module:
    """The toy transformer with fresh (seeded) weights, float32 on the CPU."""
    from diffusers import WanTransformer3DModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return WanTransformer3DModel(**TRANSFORMER_CONFIG)


def save_pretrained(transformer: torch.nn.Module, prompts: PromptEncoder, path: Path) -> None:
    """One float16 safetensors file holding both modules."""
    from safetensors.torch import save_file

    tensors = {f"transformer.{k}": v.detach().half().cpu().contiguous() for k, v in transformer.state_dict().items()}
    tensors.update({f"prompts.{k}": v.detach().half().cpu().contiguous() for k, v in prompts.state_dict().items()})
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata={"format": "pt", "model": "jenga toy Wan (pixel space)"})


def load_pretrained(path: Path | str = WEIGHTS, device: torch.device | str = "cpu",
                    dtype: torch.dtype = torch.float32) -> tuple[torch.nn.Module, PromptEncoder]:
    """The trained transformer and prompt encoder (no pickle: safetensors only)."""
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"toy model weights not found at {path}; they ship inside the jenga package "
                                "(reinstall it) or come from benchmarks/quality/train.py")
    tensors = load_file(str(path))
    transformer, prompts = build_transformer(), PromptEncoder()
    for prefix, module in (("transformer.", transformer), ("prompts.", prompts)):
        state = {k[len(prefix):]: v.float() for k, v in tensors.items() if k.startswith(prefix)}
        module.load_state_dict(state, strict=True)
    transformer = _cast_like_from_pretrained(transformer.to(device), dtype)
    prompts = prompts.to(device=device, dtype=dtype).eval().requires_grad_(False)
    return transformer, prompts


def _cast_like_from_pretrained(model: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    """``dtype`` except the modules diffusers keeps in float32 (as ``from_pretrained(torch_dtype=...)`` does)."""
    keep = set(getattr(model, "_keep_in_fp32_modules", None) or ())
    for name, module in model.named_modules():
        if not keep & set(name.split(".")):
            for tensor in [*module.parameters(recurse=False), *module.buffers(recurse=False)]:
                if tensor.is_floating_point():
                    tensor.data = tensor.data.to(dtype)
    return model.eval().requires_grad_(False)


def build_pipeline(transformer: torch.nn.Module) -> Any:
    """A ``WanPipeline`` around the toy transformer: pixel "VAE", Euler flow-matching scheduler, no text encoder.

    Pass ``prompt_embeds`` (and ``negative_prompt_embeds`` for guidance) from :class:`PromptEncoder`; call it
    inside :func:`quiet_frame_rounding` with ``num_frames = frames - 1`` (see there)."""
    from diffusers import FlowMatchEulerDiscreteScheduler, WanPipeline

    vae = PixelVAE().to(device=next(transformer.parameters()).device)
    return WanPipeline(tokenizer=None, text_encoder=None, vae=vae, transformer=transformer,
                       scheduler=FlowMatchEulerDiscreteScheduler(shift=FLOW_SHIFT))


class _DropFrameRounding(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "has to be divisible by 1" not in record.getMessage()


@contextlib.contextmanager
def quiet_frame_rounding() -> Iterator[None]:
    """``WanPipeline`` turns ``num_frames`` into ``num_frames // f * f + 1`` for a temporal factor ``f`` whenever
    ``num_frames % f != 1``: with the pixel VAE's ``f = 1`` that is always, so ``num_frames = T - 1`` gives T
    frames, with a warning about it. This silences that one warning."""
    pipeline_logger = logging.getLogger("diffusers.pipelines.wan.pipeline_wan")
    noise = _DropFrameRounding()
    pipeline_logger.addFilter(noise)
    try:
        yield
    finally:
        pipeline_logger.removeFilter(noise)
