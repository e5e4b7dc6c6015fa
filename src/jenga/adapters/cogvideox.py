"""CogVideoX 1.0 and 1.5 (T2V / I2V): the joint text + video self-attention ``attn1`` of every block carves.

Facts (diffusers 0.42 ``cogvideox_transformer_3d.py``, ``CogVideoXAttnProcessor2_0``): the latent is
``[B, F, C, H, W]`` (frames before channels); the forward runs ``time_proj(timestep)`` first, then
``patch_embed(text, latent)``, which returns ``[text; video]`` tokens with the video row-major over
``(F / patch_size_t, H / p, W / p)`` (1.0 has no temporal patch, ``patch_size_t=None``; 1.5 has 2) and any
sincos or learned positional embedding already added. The forward splits text and video and hands both to
every block. ``attn1`` attends over ``[text; video]`` jointly, without a mask (the text is padded to
``max_text_seq_length`` and the padding attended, as stock): the carving processor puts the text after the
video (every text key block kept, text queries dense) and splits them again. RoPE (5B and 1.5 models; the 2B
model has none) is not a module of the transformer: the pipeline passes ``(cos, sin)`` of ``[N, head_dim]``
and each block applies it to the video tokens, so the processors gather it into carved order.
``norm_final`` follows the last block. I2V checkpoints concatenate the image latent (frame 0) to the
channels (``in_channels = 2 * out_channels``).
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers import CogVideoXTransformer3DModel
from diffusers.models.embeddings import apply_rotary_emb

from .base import AttentionSite, CarvingProcessor, HookSites, ModelAdapter, TokenGrid, carve_attention

__all__ = ["CogVideoXAdapter", "CogVideoXCarvingProcessor"]


class CogVideoXCarvingProcessor(CarvingProcessor):
    """Joint text + video ``attn1``: video queries carve (every text key block kept), text queries attend
    densely. While the forward's tokens are in carved order every call (dense layers and steps too) gets the
    RoPE tables in that order; the stock processor runs when the forward does not carve.

    ``image_rotary_emb`` is a named parameter on purpose: diffusers' ``Attention.forward`` drops keyword
    arguments the processor's signature does not name.
    """

    def __call__(
        self,
        attn: torch.nn.Module,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        image_rotary_emb: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        plan = self.runtime.plan
        num_video = hidden_states.shape[1]
        if image_rotary_emb is not None and plan.active and plan.perm is not None and plan.num_tokens == num_video:
            image_rotary_emb = tuple(t.index_select(t.ndim - 2, plan.perm) for t in image_rotary_emb)
        if self.dense or attention_mask is not None or not plan.carves(num_video):
            if attention_mask is None:
                self.warm_up_on_dense_step(attn, hidden_states, text_tokens=encoder_hidden_states.shape[1])
            return self.stock(attn, hidden_states, encoder_hidden_states, attention_mask, image_rotary_emb)

        tokens = torch.cat([hidden_states, encoder_hidden_states], dim=1)  # video first: carve_attention's order
        if getattr(attn, "fused_projections", False):
            query, key, value = attn.to_qkv(tokens).chunk(3, dim=-1)
        else:
            query, key, value = attn.to_q(tokens), attn.to_k(tokens), attn.to_v(tokens)
        query, key, value = (x.unflatten(2, (attn.heads, -1)) for x in (query, key, value))  # [B, S, H, D]
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)
        if image_rotary_emb is not None:  # RoPE on the video tokens only
            query = torch.cat([apply_rotary_emb(query[:, :num_video], image_rotary_emb, sequence_dim=1),
                               query[:, num_video:]], dim=1)
            key = torch.cat([apply_rotary_emb(key[:, :num_video], image_rotary_emb, sequence_dim=1),
                             key[:, num_video:]], dim=1)
        out = carve_attention(query, key, value, self.runtime, owner=self)
        out = out.flatten(2, 3).type_as(query)
        out = attn.to_out[0](out)
        out = attn.to_out[1](out)
        return out[:, :num_video], out[:, num_video:]


class CogVideoXAdapter(ModelAdapter):
    name = "cogvideox"
    transformer_class = CogVideoXTransformer3DModel
    pipelines = ("CogVideoXPipeline", "CogVideoXImageToVideoPipeline")
    image_to_video_pipelines = ("CogVideoXImageToVideoPipeline",)
    progressive_unsupported = (
        "CogVideoX pipelines sample with CogVideoXDDIMScheduler / CogVideoXDPMScheduler (a DDPM noise schedule: "
        "no flow-matching sigmas that a resized clean latent could be re-noised to)"
    )

    def preset_model(self, transformer: torch.nn.Module) -> str:
        return "cogvideox"

    def patch_size(self, transformer: torch.nn.Module) -> tuple[int, int, int]:
        cfg = transformer.config
        return int(cfg.patch_size_t or 1), int(cfg.patch_size), int(cfg.patch_size)

    def token_grid(self, args: tuple, kwargs: dict, patch_size: tuple[int, int, int],
                   arg_name: str = "image_embeds") -> TokenGrid:
        latent = args[1] if len(args) > 1 else kwargs["image_embeds"]  # patch_embed(text, latent [B, F, C, H, W])
        pt, ph, pw = patch_size
        return TokenGrid((latent.shape[1] // pt, latent.shape[3] // ph, latent.shape[4] // pw), latent.device)

    def attention_sites(self, transformer: torch.nn.Module) -> list[AttentionSite]:
        return [AttentionSite(i, f"transformer_blocks.{i}.attn1", block.attn1)
                for i, block in enumerate(transformer.transformer_blocks)]

    def hook_sites(self, transformer: torch.nn.Module) -> HookSites:
        return HookSites(rope=transformer.patch_embed, clock=transformer.time_proj, clock_first=True,
                         enter=transformer.transformer_blocks[0], enter_on="input",
                         exit=transformer.norm_final, exit_arg="input", rope_arg="image_embeds",
                         clock_arg="timesteps")

    def make_processor(self, stock: Any, site: AttentionSite, runtime: Any, dense: bool) -> CogVideoXCarvingProcessor:
        return CogVideoXCarvingProcessor(stock, site.layer, runtime, dense)

    def block_stack(self, transformer: torch.nn.Module) -> list[torch.nn.Module]:
        return list(transformer.transformer_blocks)

    def image_conditioned(self, transformer: torch.nn.Module) -> bool:
        cfg = transformer.config
        return cfg.out_channels is not None and cfg.in_channels != cfg.out_channels

    def reorder_rope(self, output: Any, reorder) -> Any:
        return output  # patch_embed's [text; video] output: the video enters carved order at the first block
