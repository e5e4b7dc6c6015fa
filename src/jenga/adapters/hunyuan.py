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
from diffusers.hooks import ModelHook
from diffusers.models.embeddings import apply_rotary_emb

from .._parallel_state import shard_bounds, video_tokens_seen
from .base import AttentionSite, CarvingProcessor, HookSites, ModelAdapter, carve_attention
from .ulysses import carve_attention_ulysses

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
        num_video = video_tokens_seen(self.runtime, hidden_states.shape[1])
        amplify = self.runtime.text_bias > 0 and plan.active and plan.num_tokens == num_video
        # joint attention over video and text with a key-padding mask (or none): what carving can take
        joint = encoder_hidden_states is not None and (attention_mask is None or attention_mask.dtype == torch.bool)
        if joint:  # dense steps (the text amplifier's take the carving branch below): the carved kernels compile
            self.warm_up_on_dense_step(attn, hidden_states, text_tokens=encoder_hidden_states.shape[1],
                                       key_lengths=attention_mask is not None)
        if not joint or not (amplify or (not self.dense and plan.carves(num_video))):
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

        if self.runtime.parallel is not None:
            out = carve_attention_ulysses(query, key, value, self.runtime, owner=self, attention_mask=attention_mask,
                                          dense=self.dense)
        else:
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
    context_parallel = True
    transformer_class = HunyuanVideoTransformer3DModel
    pipelines = ("HunyuanVideoPipeline", "HunyuanVideoImageToVideoPipeline")
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

    def block_stack(self, transformer: torch.nn.Module) -> list[torch.nn.Module]:
        return [*transformer.transformer_blocks, *transformer.single_transformer_blocks]

    def image_conditioned(self, transformer: torch.nn.Module) -> bool:
        return transformer.config.image_condition_type is not None

    def needs_first_frame_prefix(self, transformer: torch.nn.Module) -> bool:
        return transformer.config.image_condition_type == "token_replace"

    def reorder_rope(self, output: Any, reorder) -> Any:
        cos, sin = output
        return reorder(cos, 0), reorder(sin, 0)

    def cp_plan(self, transformer: torch.nn.Module) -> dict:
        return hunyuan_cp_plan()

    def after_parallelism(self, transformer: torch.nn.Module) -> None:
        register_shard_hooks(transformer)

    def parallel_exit_module(self, transformer: torch.nn.Module) -> torch.nn.Module:
        return transformer.proj_out


# ----------------------------------------------------------------------------------------------------
# context parallelism: diffusers 0.42 ships no ``_cp_plan`` for HunyuanVideo


def hunyuan_cp_plan() -> dict:
    """Context-parallel plan of ``HunyuanVideoTransformer3DModel`` (T2V and I2V).

    Split along the sequence: the RoPE tables (``[N, D]``, dim 0), the video tokens after ``x_embedder`` and
    the text tokens after ``context_embedder`` (the token refiner runs whole on every rank: its pooling and
    self-attention need all text tokens); gather after ``proj_out``. Every joint attention then sees, per
    rank, (video shard, text shard), which the Ulysses all-to-all assembles into each token once. The padded
    text mask and I2V's first-frame token count are made per rank by :func:`register_shard_hooks`.
    """
    from diffusers.models._modeling_parallel import ContextParallelInput, ContextParallelOutput

    return {
        "rope": {
            0: ContextParallelInput(split_dim=0, expected_dims=2, split_output=True),
            1: ContextParallelInput(split_dim=0, expected_dims=2, split_output=True),
        },
        "x_embedder": {0: ContextParallelInput(split_dim=1, expected_dims=3, split_output=True)},
        "context_embedder": {0: ContextParallelInput(split_dim=1, expected_dims=3, split_output=True)},
        "proj_out": ContextParallelOutput(gather_dim=1, expected_dims=3),
    }


SHARD_CAPTURE_HOOK = "jenga_cp_capture"
SHARD_BLOCK_HOOK = "jenga_cp_shard"
# positions in both block types' forward: (hidden, text, temb, attention_mask, freqs, token_replace_emb, num_tokens)
_MASK_ARG, _FIRST_FRAME_ARG = 3, 6


class _ShardFacts:
    """Full lengths of this forward, read before the plan splits them."""

    def __init__(self, transformer: torch.nn.Module) -> None:
        cfg = transformer.config
        self.patch = (int(cfg.patch_size_t), int(cfg.patch_size), int(cfg.patch_size))
        self.num_video = 0
        self.text_valid: torch.Tensor | None = None  # int[B]: valid text tokens per sample
        self.num_text = 0
        self.world, self.anything = 1, False
        self._mask_in: torch.Tensor | None = None
        self._mask_out: torch.Tensor | None = None


class _CaptureHook(ModelHook):
    """``x_embedder`` (latent → video length) and ``context_embedder`` (text mask → valid lengths)."""

    def __init__(self, facts: _ShardFacts, what: str) -> None:
        super().__init__()
        self.facts, self.what = facts, what

    def pre_forward(self, module, *args, **kwargs):
        facts = self.facts
        if self.what == "video":
            latent = args[0] if args else kwargs["hidden_states"]
            pt, p, _ = facts.patch
            facts.num_video = (latent.shape[2] // pt) * (latent.shape[3] // p) * (latent.shape[4] // p)
        else:
            text = args[0] if args else kwargs["hidden_states"]
            mask = args[2] if len(args) > 2 else kwargs.get("attention_mask")
            facts.num_text = text.shape[1]
            if not facts.anything and facts.num_text % facts.world:
                raise ValueError(
                    f"{facts.num_text} text tokens do not divide by the context-parallel degree {facts.world}: use "
                    f"ContextParallelConfig(ulysses_degree={facts.world}, ulysses_anything=True) for uneven shards"
                )
            facts.text_valid = None if mask is None else mask.sum(dim=1, dtype=torch.int)
        return args, kwargs


class _BlockShardHook(ModelHook):
    """Every block: the forward's mask (built from local lengths) becomes this rank's slice of the global
    mask, and I2V's first-frame token count this rank's share of frame 0."""

    def __init__(self, facts: _ShardFacts, cp: Any) -> None:
        super().__init__()
        self.facts, self.cp = facts, cp

    def _rank(self) -> tuple[int, int, bool]:
        import torch.distributed as dist

        return (dist.get_rank(self.cp._flattened_mesh.get_group()), self.cp._world_size,
                bool(self.cp.ulysses_anything or self.cp.ring_anything))

    def pre_forward(self, module, *args, **kwargs):
        args = list(args)
        rank, world, anything = self._rank()
        facts = self.facts
        v0, v1 = shard_bounds(facts.num_video, world, rank, anything)
        mask = args[_MASK_ARG] if len(args) > _MASK_ARG else kwargs.get("attention_mask")
        if mask is not None and facts.text_valid is not None:
            if mask is not facts._mask_in:
                t0, t1 = shard_bounds(facts.num_text, world, rank, anything)
                positions = torch.arange(t0, t1, device=mask.device)
                text = positions.unsqueeze(0) < facts.text_valid.to(mask.device).unsqueeze(1)
                video = torch.ones(text.shape[0], v1 - v0, dtype=torch.bool, device=mask.device)
                facts._mask_in, facts._mask_out = mask, torch.cat([video, text], dim=1)[:, None, None, :]
            if len(args) > _MASK_ARG:
                args[_MASK_ARG] = facts._mask_out
            else:
                kwargs["attention_mask"] = facts._mask_out
        if len(args) > _FIRST_FRAME_ARG and isinstance(args[_FIRST_FRAME_ARG], int):
            args[_FIRST_FRAME_ARG] = max(0, min(args[_FIRST_FRAME_ARG] - v0, v1 - v0))
        return tuple(args), kwargs


def register_shard_hooks(transformer: torch.nn.Module) -> None:
    """The hooks :func:`hunyuan_cp_plan` needs (after ``enable_parallelism``; kept with it)."""
    from diffusers.hooks import HookRegistry

    cp = transformer._parallel_config.context_parallel_config
    facts = _ShardFacts(transformer)
    facts.world, facts.anything = cp._world_size, bool(cp.ulysses_anything or cp.ring_anything)
    for module, what in ((transformer.x_embedder, "video"), (transformer.context_embedder, "text")):
        HookRegistry.check_if_exists_or_initialize(module).register_hook(_CaptureHook(facts, what),
                                                                          SHARD_CAPTURE_HOOK)
    for block in [*transformer.transformer_blocks, *transformer.single_transformer_blocks]:
        HookRegistry.check_if_exists_or_initialize(block).register_hook(_BlockShardHook(facts, cp), SHARD_BLOCK_HOOK)
