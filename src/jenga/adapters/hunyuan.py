"""HunyuanVideo (T2V and I2V): joint video-text attention in the dual- and single-stream blocks carves.

Facts (diffusers 0.42 ``transformer_hunyuan_video.py``): the forward runs ``rope(latent)`` first,
returning ``(cos, sin)`` of ``[N, D]``; ``time_text_embed`` sees the timestep; ``x_embedder`` returns the
row-major ``[B, N, C]`` video tokens; ``norm_out`` follows the last single-stream block. Text tokens sit
after the video tokens in every attention (dual-stream: projected separately and concatenated after
RoPE; single-stream: concatenated before the projections), and the bool mask ``[B, 1, 1, N]`` is a valid
prefix, so it reduces to one key length per sample. The token refiner keeps its stock processor.
``image_condition_type="token_replace"`` (I2V) modulates the first ``H' * W'`` tokens separately, so the
carved order keeps frame 0 as a prefix.
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers import HunyuanVideoTransformer3DModel
from diffusers.models.embeddings import apply_rotary_emb

from .base import AttentionSite, CarvingProcessor, HookSites, ModelAdapter, carve_attention

__all__ = ["HunyuanVideoAdapter", "HunyuanVideoCarvingProcessor"]


class HunyuanVideoCarvingProcessor(CarvingProcessor):
    """Joint-attention processor: video queries carve (every text key block kept, padded text masked by
    key length), text queries attend densely; the stock processor when the forward does not carve.

    ``image_rotary_emb`` is a named parameter on purpose: diffusers' ``Attention.forward`` drops keyword
    arguments the processor's signature does not name.
    """

    def __call__(
        self,
        attn: torch.nn.Module,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        image_rotary_emb: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        plan = self.runtime.plan
        amplify = self.runtime.text_bias > 0 and plan.active and plan.num_tokens == hidden_states.shape[1]
        if (
            encoder_hidden_states is None
            or (attention_mask is not None and attention_mask.dtype != torch.bool)
            or not (amplify or (not self.dense and plan.carves(hidden_states.shape[1])))
        ):
            return self.stock(attn, hidden_states, encoder_hidden_states, attention_mask, image_rotary_emb)

        num_text = encoder_hidden_states.shape[1]
        single_stream = attn.add_q_proj is None
        tokens = torch.cat([hidden_states, encoder_hidden_states], dim=1) if single_stream else hidden_states

        query = attn.to_q(tokens).unflatten(2, (attn.heads, -1))
        key = attn.to_k(tokens).unflatten(2, (attn.heads, -1))
        value = attn.to_v(tokens).unflatten(2, (attn.heads, -1))
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)

        if image_rotary_emb is not None:  # RoPE on the video tokens only
            if single_stream:
                query = torch.cat([apply_rotary_emb(query[:, :-num_text], image_rotary_emb, sequence_dim=1),
                                   query[:, -num_text:]], dim=1)
                key = torch.cat([apply_rotary_emb(key[:, :-num_text], image_rotary_emb, sequence_dim=1),
                                 key[:, -num_text:]], dim=1)
            else:
                query = apply_rotary_emb(query, image_rotary_emb, sequence_dim=1)
                key = apply_rotary_emb(key, image_rotary_emb, sequence_dim=1)

        if not single_stream:
            text_query = attn.add_q_proj(encoder_hidden_states).unflatten(2, (attn.heads, -1))
            text_key = attn.add_k_proj(encoder_hidden_states).unflatten(2, (attn.heads, -1))
            text_value = attn.add_v_proj(encoder_hidden_states).unflatten(2, (attn.heads, -1))
            if attn.norm_added_q is not None:
                text_query = attn.norm_added_q(text_query)
            if attn.norm_added_k is not None:
                text_key = attn.norm_added_k(text_key)
            query = torch.cat([query, text_query], dim=1)
            key = torch.cat([key, text_key], dim=1)
            value = torch.cat([value, text_value], dim=1)

        key_lengths = None
        if attention_mask is not None:
            key_lengths = attention_mask.reshape(attention_mask.shape[0], -1).sum(-1)
        out = carve_attention(query, key, value, self.runtime, owner=self, key_lengths=key_lengths,
                              dense=self.dense)
        out = out.flatten(2, 3).to(query.dtype)

        video_out, text_out = out[:, :-num_text], out[:, -num_text:]
        if getattr(attn, "to_out", None) is not None:
            video_out = attn.to_out[0](video_out)
            video_out = attn.to_out[1](video_out)
        if getattr(attn, "to_add_out", None) is not None:
            text_out = attn.to_add_out(text_out)
        return video_out, text_out


class HunyuanVideoAdapter(ModelAdapter):
    name = "hunyuan"
    transformer_class = HunyuanVideoTransformer3DModel
    image_to_video_pipelines = ("HunyuanVideoImageToVideoPipeline",)

    def preset_model(self, transformer: torch.nn.Module) -> str:
        return "hunyuan"

    def patch_size(self, transformer: torch.nn.Module) -> tuple[int, int, int]:
        cfg = transformer.config
        return int(cfg.patch_size_t), int(cfg.patch_size), int(cfg.patch_size)

    def attention_sites(self, transformer: torch.nn.Module) -> list[AttentionSite]:
        dual = [AttentionSite(i, f"transformer_blocks.{i}.attn", block.attn)
                for i, block in enumerate(transformer.transformer_blocks)]
        offset = len(dual)
        single = [AttentionSite(offset + i, f"single_transformer_blocks.{i}.attn", block.attn)
                  for i, block in enumerate(transformer.single_transformer_blocks)]
        return dual + single

    def hook_sites(self, transformer: torch.nn.Module) -> HookSites:
        return HookSites(rope=transformer.rope, clock=transformer.time_text_embed,
                         enter=transformer.x_embedder, enter_on="output", exit=transformer.norm_out, exit_arg="x")

    def make_processor(self, stock: Any, site: AttentionSite, runtime: Any, dense: bool):
        return HunyuanVideoCarvingProcessor(stock, site.layer, runtime, dense)

    blocks_return_pair = True

    def block_stack(self, transformer: torch.nn.Module) -> list[torch.nn.Module]:
        return [*transformer.transformer_blocks, *transformer.single_transformer_blocks]

    def image_conditioned(self, transformer: torch.nn.Module) -> bool:
        return transformer.config.image_condition_type is not None

    def needs_first_frame_prefix(self, transformer: torch.nn.Module) -> bool:
        return transformer.config.image_condition_type == "token_replace"

    def reorder_rope(self, output: Any, reorder) -> Any:
        cos, sin = output
        return reorder(cos, 0), reorder(sin, 0)
