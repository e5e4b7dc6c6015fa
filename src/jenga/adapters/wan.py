"""Wan (2.1 and 2.2, T2V / I2V / TI2V, 1.3B to A14B): only the self-attention ``attn1`` carves.

Facts (diffusers 0.42 ``transformer_wan.py``): the forward runs ``rope(latent)`` first, returning
``(cos, sin)`` of ``[1, N, 1, D]``; it flattens the patch embedding to row-major ``(T', H', W')`` tokens;
``condition_embedder`` returns ``(temb, timestep_proj, text, image)`` where Wan 2.2 TI2V's per-token
``timestep_proj`` is ``[B, N, 6 * dim]`` (``temb`` ``[B, N, dim]`` is only used after the blocks, in
row-major order); ``blocks[0]`` takes the hidden states; ``norm_out`` follows the last block.
``attn2`` (text and image cross-attention) keeps the stock processor.
"""

from __future__ import annotations

import os
from typing import Any

import torch
from diffusers import WanTransformer3DModel

from .._parallel_state import video_tokens_seen
from ..backends import interpreting
from .base import AttentionSite, CarvingProcessor, HookSites, ModelAdapter, carve_attention, query_like_of
from .ulysses import carve_attention_ulysses

__all__ = ["WanAdapter", "WanCarvingProcessor"]

# Wan 1.3B has 1536 channels, TI2V-5B 3072, the 14B models 5120: the last use the 14B presets.
_SMALL_MODEL_DIM = 3072


def _rotate_pairs(x: torch.Tensor, freqs_cos: torch.Tensor, freqs_sin: torch.Tensor) -> torch.Tensor:
    """Wan's interleaved RoPE, op for op as the stock processor applies it (identical rounding)."""
    x1, x2 = x.unflatten(-1, (-1, 2)).unbind(-1)
    cos = freqs_cos[..., 0::2]
    sin = freqs_sin[..., 1::2]
    out = torch.empty_like(x)
    out[..., 0::2] = x1 * cos - x2 * sin
    out[..., 1::2] = x1 * sin + x2 * cos
    return out.type_as(x)


def _fused_prep_allowed(attn: torch.nn.Module, rotary_emb: tuple[torch.Tensor, torch.Tensor] | None) -> bool:
    """What can be decided before projecting: RoPE given, eager mode (under ``torch.compile`` inductor fuses
    the stock ops itself), CUDA (the CPU interpreter only with ``JENGA_FUSED_QK_PREP=1``, for tests), stock
    ``torch.nn.RMSNorm`` layers with weights. ``JENGA_FUSED_QK_PREP=0`` turns the fused path off."""
    if torch.compiler.is_compiling() or rotary_emb is None:
        return False
    setting = os.environ.get("JENGA_FUSED_QK_PREP", "auto")
    if setting == "0":
        return False
    if not (rotary_emb[0].is_cuda and not interpreting()) and not (setting == "1" and interpreting()):
        return False
    return all(type(n) is torch.nn.RMSNorm and n.weight is not None for n in (attn.norm_q, attn.norm_k))


def _fused_prep_applies(attn: torch.nn.Module, query: torch.Tensor, key: torch.Tensor,
                        rotary_emb: tuple[torch.Tensor, torch.Tensor] | None) -> bool:
    """Whether one Triton kernel per tensor may replace ``norm_q``/``norm_k`` + RoPE on these projections:
    :func:`_fused_prep_allowed`, inference (no gradients), and the shapes, strides and dtypes it handles."""
    if not _fused_prep_allowed(attn, rotary_emb):
        return False
    from ..kernels.triton_qk_prep import MAX_CHANNELS

    norms = (attn.norm_q, attn.norm_k)
    batch, seq, channels = query.shape
    cos, sin = rotary_emb
    if torch.is_grad_enabled() and any(t.requires_grad for t in (query, key, *(n.weight for n in norms))):
        return False
    return (
        query.dtype in (torch.bfloat16, torch.float16, torch.float32)
        and key.dtype == query.dtype and key.shape == query.shape
        and query.stride(-1) == 1 and key.stride(-1) == 1
        and channels <= MAX_CHANNELS
        and all(tuple(n.normalized_shape) == (channels,) for n in norms)
        and all(t.dim() == 4 and t.shape[0] in (1, batch) and t.shape[1] == seq and t.shape[2] == 1
                and t.shape[3] * attn.heads == channels and t.shape[3] % 2 == 0 and t.stride(-1) == 1
                and t.device == query.device for t in (cos, sin))
    )


def _projections(attn: torch.nn.Module, hidden_states: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Flat ``q, k, v`` ``[B, N, C]``, read from ``attn`` at call time (LoRA layers loaded later are used)."""
    if getattr(attn, "fused_projections", False):
        return attn.to_qkv(hidden_states).chunk(3, dim=-1)
    return attn.to_q(hidden_states), attn.to_k(hidden_states), attn.to_v(hidden_states)


def self_attention_qkv(
    attn: torch.nn.Module, hidden_states: torch.Tensor, rotary_emb: tuple[torch.Tensor, torch.Tensor] | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Post-RoPE ``q, k, v`` ``[B, N, H, D]`` of a Wan ``attn1``, as the stock processor computes them. In
    eager mode on a GPU, RMSNorm + RoPE run as one Triton kernel per tensor (:mod:`jenga.kernels.triton_qk_prep`)."""
    return _prepare(attn, *_projections(attn, hidden_states), rotary_emb)


def _prepare(attn: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
             rotary_emb: tuple[torch.Tensor, torch.Tensor] | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Norms, head split and RoPE of flat projections: fused where :func:`_fused_prep_applies`, else the stock
    processor's ops in its order (identical rounding)."""
    value = value.unflatten(2, (attn.heads, -1))
    if _fused_prep_applies(attn, query, key, rotary_emb):
        from ..kernels.triton_qk_prep import rms_norm_rope_triton

        cos, sin = rotary_emb
        query, key = (rms_norm_rope_triton(x, norm.weight, _rms_eps(norm, x), cos, sin).unflatten(2, (attn.heads, -1))
                      for x, norm in ((query, attn.norm_q), (key, attn.norm_k)))
        return query, key, value
    query = attn.norm_q(query).unflatten(2, (attn.heads, -1))
    key = attn.norm_k(key).unflatten(2, (attn.heads, -1))
    if rotary_emb is not None:
        query = _rotate_pairs(query, *rotary_emb)
        key = _rotate_pairs(key, *rotary_emb)
    return query, key, value


def _rms_eps(norm: torch.nn.RMSNorm, x: torch.Tensor) -> float:
    """``torch.nn.RMSNorm``'s epsilon: its own, or the input dtype's machine epsilon when None."""
    return float(norm.eps) if norm.eps is not None else float(torch.finfo(x.dtype).eps)


class WanCarvingProcessor(CarvingProcessor):
    """``attn1`` processor: block-sparse self-attention when the forward carves, else dense attention as the
    stock processor runs it (with the fused RMSNorm + RoPE in eager mode on a GPU).

    Projections are read from ``attn`` at call time (LoRA layers loaded later are used); the attention
    backend settings are forwarded to the stock processor, and used for the dense attention.
    """

    def __call__(
        self,
        attn: torch.nn.Module,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        rotary_emb: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        self.runtime.kernel_warm_up.wait_job("qk-prep")  # the fused RMSNorm + RoPE, if the early warm-up compiles it
        if (
            self.dense
            or encoder_hidden_states is not None
            or attention_mask is not None
            or not self.runtime.plan.carves(video_tokens_seen(self.runtime, hidden_states.shape[1]))
        ):
            if encoder_hidden_states is None and getattr(attn, "add_k_proj", None) is None:
                if attention_mask is None:  # (a masked forward, e.g. SkyReels-V2's causal blocks, never carves)
                    self.warm_up_on_dense_step(attn, hidden_states)  # the carved kernels compile meanwhile
                return self._dense(attn, hidden_states, attention_mask, rotary_emb)
            return self.stock(attn, hidden_states, encoder_hidden_states, attention_mask, rotary_emb)

        query, key, value = self_attention_qkv(attn, hidden_states, rotary_emb)
        if self.runtime.parallel is not None:
            out = carve_attention_ulysses(query, key, value, self.runtime, owner=self)
        else:
            out = carve_attention(query, key, value, self.runtime, owner=self)
        out = out.flatten(2, 3).type_as(query)
        out = attn.to_out[0](out)
        return attn.to_out[1](out)

    def _dense(self, attn: torch.nn.Module, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None,
               rotary_emb: tuple[torch.Tensor, torch.Tensor] | None) -> torch.Tensor:
        """Dense self-attention (dense steps and layers): the stock processor's, with the fused RMSNorm + RoPE
        where it applies; otherwise the stock processor itself."""
        if not _fused_prep_allowed(attn, rotary_emb):
            return self.stock(attn, hidden_states, None, attention_mask, rotary_emb)
        from diffusers.models.attention_dispatch import dispatch_attention_fn

        query, key, value = self_attention_qkv(attn, hidden_states, rotary_emb)
        out = dispatch_attention_fn(query, key, value, attn_mask=attention_mask, dropout_p=0.0, is_causal=False,
                                    backend=self._attention_backend, parallel_config=self._parallel_config)
        out = out.flatten(2, 3).type_as(query)
        out = attn.to_out[0](out)
        return attn.to_out[1](out)


class WanAdapter(ModelAdapter):
    name = "wan"
    context_parallel = True
    transformer_class = WanTransformer3DModel
    pipelines = ("WanPipeline", "WanImageToVideoPipeline", "WanVideoToVideoPipeline")
    image_to_video_pipelines = ("WanImageToVideoPipeline",)

    def preset_model(self, transformer: torch.nn.Module) -> str:
        cfg = transformer.config
        return "wan" if cfg.num_attention_heads * cfg.attention_head_dim <= _SMALL_MODEL_DIM else "wan-14b"

    def patch_size(self, transformer: torch.nn.Module) -> tuple[int, int, int]:
        pt, ph, pw = transformer.config.patch_size
        return int(pt), int(ph), int(pw)

    def attention_sites(self, transformer: torch.nn.Module) -> list[AttentionSite]:
        return [AttentionSite(i, f"blocks.{i}.attn1", block.attn1) for i, block in enumerate(transformer.blocks)]

    def hook_sites(self, transformer: torch.nn.Module) -> HookSites:
        return HookSites(rope=transformer.rope, clock=transformer.condition_embedder,
                         enter=transformer.blocks[0], enter_on="input", exit=transformer.norm_out, exit_arg="inputs")

    def early_warm_up(self, runtime: Any, transformer: torch.nn.Module, batch: int, rope_output: Any,
                      stage: int) -> None:
        """The self-attention's stand-ins (video tokens only, no key lengths or bias, as the carved call) and the
        fused RMSNorm + RoPE on the reordered RoPE tables, which the first dense attention would otherwise compile
        on the main thread (0.6-0.8 s of a fresh process's first step on an H200)."""
        owner = next((p for _, p in runtime.processors if not p.dense), None)
        if owner is None or not isinstance(rope_output, tuple) or len(rope_output) != 2:
            return
        attn = transformer.blocks[owner.layer].attn1
        cos, sin = rope_output
        num = runtime.plan.num_tokens
        like = query_like_of(attn, batch, num, cos.dtype, cos.device)
        if like is None:
            return
        runtime.warm_up_kernels(like, owner, stage=stage)
        (_, _, heads, head_dim), dtype, device = like
        channels = heads * head_dim
        norm = attn.norm_q
        shaped = torch.empty((1, 1, channels), device=device, dtype=dtype).expand(1, num, channels)  # no storage
        if _fused_prep_applies(attn, shaped, shaped, rope_output):
            from ..kernels.triton_qk_prep import rms_norm_rope_triton

            def job() -> None:
                x = torch.randn((1, num, channels), device=device, dtype=dtype)
                rms_norm_rope_triton(x, norm.weight, _rms_eps(norm, x), cos, sin)

            runtime.kernel_warm_up.start_job("qk-prep", ("qk-prep", num, channels, head_dim, dtype, device), job,
                                             device)

    def make_processor(self, stock: Any, site: AttentionSite, runtime: Any, dense: bool) -> WanCarvingProcessor:
        return WanCarvingProcessor(stock, site.layer, runtime, dense)

    def block_stack(self, transformer: torch.nn.Module) -> list[torch.nn.Module]:
        return list(transformer.blocks)

    def image_conditioned(self, transformer: torch.nn.Module) -> bool:
        cfg = transformer.config
        return cfg.image_dim is not None or cfg.in_channels != cfg.out_channels

    def reorder_rope(self, output: Any, reorder) -> Any:
        cos, sin = output
        return reorder(cos, 1), reorder(sin, 1)

    def cp_plan(self, transformer: torch.nn.Module) -> dict | None:
        """diffusers' own ``WanTransformer3DModel._cp_plan`` (None: the model's)."""
        return None

    def parallel_exit_module(self, transformer: torch.nn.Module) -> torch.nn.Module:
        return transformer.proj_out

    def check_pipeline(self, pipeline_name: str | None, config: Any) -> None:
        if pipeline_name == "WanVideoToVideoPipeline" and config.switch_points():
            raise ValueError(
                "WanVideoToVideoPipeline: progressive resolution (stages changing scale or shift mid-run) does not "
                "apply: the call starts from the input video noised to its strength and keeps only the last "
                "strength share of the schedule, which a stage plan over the whole schedule would replace. Use a "
                "full-resolution config, e.g. the 'base' preset"
            )

    def reorder_time(self, output: Any, reorder, num_tokens: int) -> Any:
        temb, timestep_proj, text, image = output
        if timestep_proj.ndim == 3:  # Wan 2.2 TI2V: one modulation per token
            timestep_proj = reorder(timestep_proj, 1)
        return temb, timestep_proj, text, image
