"""LTX-Video (T2V, I2V, condition pipeline): only the self-attention ``attn1`` carves.

Facts (diffusers 0.42 ``transformer_ltx.py`` and ``pipelines/ltx``): the pipelines pack the latent into
tokens ``[B, S, C]`` row-major over ``(F, H, W)`` (patch size 1: the VAE compresses 1:32 in space and 1:8 in
time, so 704x480x161 is 21 x 15 x 22 = 6,930 tokens). The forward runs ``rope(hidden_states, num_frames,
height, width, rope_interpolation_scale, video_coords)`` first, returning ``(cos, sin)`` of ``[B, S, C]``
(over all channels, applied before the head split); ``proj_in`` yields the row-major tokens;
``time_embed`` (``AdaLayerNormSingle``) returns ``(temb, embedded_timestep)``, one row per sample or, with
per-token timesteps (I2V and the condition pipeline: conditioning tokens at timestep 0), one per token,
flattened ``[B * S, ...]``; ``temb`` modulates the blocks (carved order), ``embedded_timestep`` the output
after ``norm_out`` (row-major). ``attn2`` (text cross-attention) keeps the stock processor.

``LTXConditionPipeline`` passes ``video_coords`` instead of the grid and puts the latents of conditions at
other frame positions before the video tokens: the grid is read from the coordinates (one host read per new
coordinate tensor, i.e. per pipeline call), and those extra tokens are kept by every query like text.
"""

from __future__ import annotations

import weakref
from typing import Any

import torch
from diffusers import LTXVideoTransformer3DModel
from diffusers.models.transformers.transformer_ltx import apply_rotary_emb

from .base import AttentionSite, CarvingProcessor, HookSites, ModelAdapter, TokenGrid, carve_attention

__all__ = ["LTXAdapter", "LTXCarvingProcessor", "grid_from_video_coords"]


class LTXCarvingProcessor(CarvingProcessor):
    """``attn1`` processor: block-sparse self-attention when the forward carves, else the stock processor.
    Projections are read from ``attn`` at call time (LoRA layers loaded later are used)."""

    def __call__(
        self,
        attn: torch.nn.Module,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        image_rotary_emb: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        plan = self.runtime.plan
        if (
            self.dense
            or encoder_hidden_states is not None
            or attention_mask is not None
            or not plan.carves(hidden_states.shape[1] - plan.extra_tokens)
        ):
            if encoder_hidden_states is None and attention_mask is None:
                self.warm_up_on_dense_step(attn, hidden_states)
            return self.stock(attn, hidden_states, encoder_hidden_states, attention_mask, image_rotary_emb)
        query = attn.norm_q(attn.to_q(hidden_states))
        key = attn.norm_k(attn.to_k(hidden_states))
        value = attn.to_v(hidden_states)
        if image_rotary_emb is not None:
            query = apply_rotary_emb(query, image_rotary_emb)
            key = apply_rotary_emb(key, image_rotary_emb)
        query, key, value = (x.unflatten(2, (attn.heads, -1)) for x in (query, key, value))
        out = carve_attention(query, key, value, self.runtime, owner=self)
        out = out.flatten(2, 3).to(query.dtype)
        out = attn.to_out[0](out)
        return attn.to_out[1](out)


def grid_from_video_coords(coords: torch.Tensor) -> tuple[tuple[int, int, int], int] | None:
    """``((F, H, W), extra)`` from ``LTXConditionPipeline``'s ``video_coords`` ``[B, 3, S]``: the video is the
    last ``F * H * W`` tokens, row-major, starting at the only token with coordinates ``(0, 0, 0)``; the
    ``extra`` tokens before it are conditioning latents of other frame positions (their frame coordinate is
    their frame index, > 0). None when the coordinates do not have that form."""
    c = coords[0].detach().float().cpu()
    origin = (c == 0).all(dim=0).nonzero().flatten()
    if origin.numel() != 1:
        return None
    extra = int(origin[0])
    video = c[:, extra:]
    frame0 = int((video[0] == video[0, 0]).long().cumprod(0).sum())  # leading tokens of frame 0
    width = int((video[1, :frame0] == 0).long().cumprod(0).sum())  # leading tokens of row 0
    if width < 1 or frame0 % width or video.shape[1] % frame0:
        return None
    grid = (video.shape[1] // frame0, frame0 // width, width)
    return grid, extra


class LTXAdapter(ModelAdapter):
    name = "ltx"
    transformer_class = LTXVideoTransformer3DModel
    # the condition pipeline's usual condition is an image at frame 0 (kept like I2V's first frame); its
    # conditions at other frames arrive as extra tokens, always kept
    pipelines = ("LTXPipeline", "LTXImageToVideoPipeline", "LTXConditionPipeline")
    image_to_video_pipelines = ("LTXImageToVideoPipeline", "LTXConditionPipeline")
    pixel_multiple = 32  # the LTX pipelines' check_inputs
    progressive_unsupported = (
        "LTX pipelines pack their latents into tokens [B, S, C], shift the sigmas with the sequence length "
        "(use_dynamic_shifting) and, in LTXConditionPipeline, prepend conditioning latents, so a stage cannot be "
        "resized and re-noised from outside the call"
    )

    def __init__(self) -> None:
        self._coords: tuple[Any, TokenGrid | None] | None = None  # (weakref to video_coords, its grid)

    def preset_model(self, transformer: torch.nn.Module) -> str:
        return "ltx"

    def patch_size(self, transformer: torch.nn.Module) -> tuple[int, int, int]:
        cfg = transformer.config
        return int(cfg.patch_size_t), int(cfg.patch_size), int(cfg.patch_size)

    def token_grid(self, args: tuple, kwargs: dict, patch_size: tuple[int, int, int],
                   arg_name: str = "hidden_states") -> TokenGrid | None:
        names = ("hidden_states", "num_frames", "height", "width", "rope_interpolation_scale", "video_coords")
        values = dict(zip(names, args, strict=False)) | kwargs
        hidden = values["hidden_states"]
        coords = values.get("video_coords")
        if coords is not None:
            return self._grid_from_coords(coords, hidden)
        frames, height, width = (values.get(name) for name in ("num_frames", "height", "width"))
        if frames is None or height is None or width is None:
            return None
        pt, ph, pw = patch_size
        grid = (int(frames) // pt, int(height) // ph, int(width) // pw)
        if grid[0] * grid[1] * grid[2] != hidden.shape[1]:
            return None
        return TokenGrid(grid, hidden.device)

    def _grid_from_coords(self, coords: torch.Tensor, hidden: torch.Tensor) -> TokenGrid | None:
        cached = self._coords
        if cached is not None and cached[0]() is coords:
            return cached[1]
        found = grid_from_video_coords(coords)
        tokens = None
        if found is not None and found[0][0] * found[0][1] * found[0][2] + found[1] == hidden.shape[1]:
            tokens = TokenGrid(found[0], hidden.device, extra_tokens=found[1])
        self._coords = (weakref.ref(coords), tokens)
        return tokens

    def attention_sites(self, transformer: torch.nn.Module) -> list[AttentionSite]:
        return [AttentionSite(i, f"transformer_blocks.{i}.attn1", block.attn1)
                for i, block in enumerate(transformer.transformer_blocks)]

    def hook_sites(self, transformer: torch.nn.Module) -> HookSites:
        return HookSites(rope=transformer.rope, clock=transformer.time_embed, enter=transformer.proj_in,
                         enter_on="output", exit=transformer.norm_out, exit_arg="input")

    def make_processor(self, stock: Any, site: AttentionSite, runtime: Any, dense: bool) -> LTXCarvingProcessor:
        return LTXCarvingProcessor(stock, site.layer, runtime, dense)

    def block_stack(self, transformer: torch.nn.Module) -> list[torch.nn.Module]:
        return list(transformer.transformer_blocks)

    def reorder_rope(self, output: Any, reorder) -> Any:
        cos, sin = output
        return reorder(cos, 1), reorder(sin, 1)

    def reorder_time(self, output: Any, reorder, num_tokens: int) -> Any:
        temb, embedded = output  # embedded_timestep modulates after norm_out, in row-major order: unchanged
        rows = temb.shape[0]
        if rows >= num_tokens and rows % num_tokens == 0:  # per-token timesteps, [B * S, 6 * C]
            temb = reorder(temb.unflatten(0, (-1, num_tokens)), 1).flatten(0, 1)
        return temb, embedded
