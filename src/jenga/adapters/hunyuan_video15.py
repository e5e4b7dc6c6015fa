"""HunyuanVideo 1.5 (T2V and I2V, 480p and 720p): the joint video + condition attention of every block carves.

Facts (diffusers 0.42 ``transformer_hunyuan_video15.py``, ``pipelines/hunyuan_video1_5``):

- 54 dual-stream blocks (``transformer_blocks``), no single-stream blocks; patch size 1 x 1 x 1 over a 16x
  spatial, 4x temporal VAE latent, so the token grid is the latent grid (480p 121 frames: 31 x 30 x 53).
- The forward runs ``rope(latent)`` first, returning ``(cos, sin)`` of ``[N, D]`` (axes 16 / 56 / 56 of the
  128 head channels, row-major ``(T, H, W)`` tokens); ``time_embed`` sees the timestep; ``x_embedder``
  returns the row-major ``[B, N, C]`` video tokens; ``norm_out`` (argument ``x``) follows the last block.
- Every block attends jointly: video tokens (RoPE) first, then one condition sequence built per sample as
  ``[valid image, valid ByT5, valid Qwen text, padded image, padded ByT5, padded text]`` (729 SigLIP image
  tokens, 256 ByT5 glyph tokens, 1000 Qwen2.5-VL tokens). Its mask ``[B, L]`` is therefore a valid prefix,
  which reduces to one key length per sample (``N + valid``). The stock processor masks padded queries too;
  they never reach a video token (their keys are masked in every layer) nor the output, so carving masks
  keys only. In T2V the image embeddings are zeros and their 729 tokens are masked as padding.
- I2V conditions twice: the image's SigLIP tokens in the condition sequence (always kept, like text), and
  its VAE latent channel-concatenated onto latent frame 0 with a mask channel (``in_channels`` 65 = 32 + 32
  + 1), so frame 0's blocks are kept (``first_frame``), as for Wan I2V. No token replacement.
- The token refiner (``context_embedder``) keeps its stock processor.
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers import HunyuanVideo15Transformer3DModel
from diffusers.hooks._helpers import TransformerBlockMetadata, TransformerBlockRegistry
from diffusers.models.embeddings import apply_rotary_emb
from diffusers.models.transformers.transformer_hunyuan_video15 import HunyuanVideo15TransformerBlock

from .base import AttentionSite, CarvingProcessor, HookSites, ModelAdapter, carve_attention

__all__ = ["HunyuanVideo15Adapter", "HunyuanVideo15CarvingProcessor"]

# diffusers 0.42 registers no metadata for this block; step skipping reads what it takes and returns from here
try:
    TransformerBlockRegistry.get(HunyuanVideo15TransformerBlock)
except ValueError:
    TransformerBlockRegistry.register(
        HunyuanVideo15TransformerBlock,
        TransformerBlockMetadata(return_hidden_states_index=0, return_encoder_hidden_states_index=1),
    )

I2V_PIPELINE = "HunyuanVideo15ImageToVideoPipeline"
_NO_RESIZE = (
    "HunyuanVideo15ImageToVideoPipeline takes no height/width: it sizes the video from the image's aspect-ratio "
    "bucket at the transformer's target_size and encodes the image latent at that size, so a stage cannot run at "
    "a smaller latent through the pipeline's own call"
)


class HunyuanVideo15CarvingProcessor(CarvingProcessor):
    """Joint-attention processor: video queries carve (every condition key block kept, padded condition
    tokens masked by key length), condition queries attend densely; the stock processor when the forward
    does not carve.

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
        num_video = hidden_states.shape[1]
        amplify = self.runtime.text_bias > 0 and plan.active and plan.num_tokens == num_video
        if encoder_hidden_states is not None:  # dense steps, the text amplifier's too: the carved kernels compile
            self.warm_up_on_dense_step(attn, hidden_states, text_tokens=encoder_hidden_states.shape[1],
                                       key_lengths=attention_mask is not None)
        if encoder_hidden_states is None or not (amplify or (not self.dense and plan.carves(num_video))):
            return self.stock(attn, hidden_states, encoder_hidden_states, attention_mask, image_rotary_emb)

        # the stock processor's ops in its order (identical rounding), projections read at call time (LoRA)
        query = attn.to_q(hidden_states).unflatten(2, (attn.heads, -1))
        key = attn.to_k(hidden_states).unflatten(2, (attn.heads, -1))
        value = attn.to_v(hidden_states).unflatten(2, (attn.heads, -1))
        query = attn.norm_q(query)
        key = attn.norm_k(key)
        if image_rotary_emb is not None:
            query = apply_rotary_emb(query, image_rotary_emb, sequence_dim=1)
            key = apply_rotary_emb(key, image_rotary_emb, sequence_dim=1)

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
        if attention_mask is not None:  # [B, L] over the condition tokens, a valid prefix (see module docstring)
            key_lengths = num_video + attention_mask.reshape(attention_mask.shape[0], -1).bool().sum(-1)
        out = carve_attention(query, key, value, self.runtime, owner=self, key_lengths=key_lengths,
                              dense=self.dense)
        out = out.flatten(2, 3).to(query.dtype)

        num_text = encoder_hidden_states.shape[1]
        video_out, text_out = out[:, :-num_text], out[:, -num_text:]
        video_out = attn.to_out[1](attn.to_out[0](video_out))
        if getattr(attn, "to_add_out", None) is not None:
            text_out = attn.to_add_out(text_out)
        return video_out, text_out


class HunyuanVideo15Adapter(ModelAdapter):
    name = "hunyuan15"
    transformer_class = HunyuanVideo15Transformer3DModel
    pipelines = ("HunyuanVideo15Pipeline", I2V_PIPELINE)
    image_to_video_pipelines = (I2V_PIPELINE,)

    def preset_model(self, transformer: torch.nn.Module) -> str:
        return "hunyuan15"

    def patch_size(self, transformer: torch.nn.Module) -> tuple[int, int, int]:
        cfg = transformer.config
        return int(cfg.patch_size_t), int(cfg.patch_size), int(cfg.patch_size)

    def attention_sites(self, transformer: torch.nn.Module) -> list[AttentionSite]:
        return [AttentionSite(i, f"transformer_blocks.{i}.attn", block.attn)
                for i, block in enumerate(transformer.transformer_blocks)]

    def hook_sites(self, transformer: torch.nn.Module) -> HookSites:
        return HookSites(rope=transformer.rope, clock=transformer.time_embed,
                         enter=transformer.x_embedder, enter_on="output", exit=transformer.norm_out, exit_arg="x")

    def make_processor(self, stock: Any, site: AttentionSite, runtime: Any,
                       dense: bool) -> HunyuanVideo15CarvingProcessor:
        return HunyuanVideo15CarvingProcessor(stock, site.layer, runtime, dense)

    def block_stack(self, transformer: torch.nn.Module) -> list[torch.nn.Module]:
        return list(transformer.transformer_blocks)

    def image_conditioned(self, transformer: torch.nn.Module) -> bool:
        """A bare transformer: the checkpoint's ``task_type`` (the I2V pipeline turns it on by itself)."""
        return transformer.config.task_type == "i2v"

    def reorder_rope(self, output: Any, reorder) -> Any:
        cos, sin = output
        return reorder(cos, 0), reorder(sin, 0)

    def check_pipeline(self, pipeline_name: str | None, config: Any) -> None:
        """I2V cannot run stages (see ``_NO_RESIZE``; the stage driver also sets each stage's size): a config
        with a reduced-resolution stage or a stage shift raises."""
        if pipeline_name == I2V_PIPELINE and any(s.scale != 1.0 or s.shift is not None for s in config.stages):
            raise ValueError(
                f"{_NO_RESIZE}; this config has stages {list(config.stages)}. Use the 'base' preset or "
                "full-resolution stages without a shift (set the shift on the pipeline's scheduler); carving and "
                "skip_steps apply"
            )

    def default_pixel_size(self, pipeline: Any) -> tuple[int, int] | None:
        """``HunyuanVideo15Pipeline``'s size when ``height``/``width`` are not given (16:9 at its target size)."""
        if type(pipeline).__name__ == I2V_PIPELINE:
            return None
        ratio_h, ratio_w = pipeline.default_aspect_ratio[1], pipeline.default_aspect_ratio[0]
        height, width = pipeline.video_processor.calculate_default_height_width(ratio_h, ratio_w,
                                                                                pipeline.target_size)
        return int(height), int(width)
