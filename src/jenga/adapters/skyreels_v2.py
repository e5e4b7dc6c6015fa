"""SkyReels-V2 (T2V, I2V and the diffusion-forcing T2V / I2V / V2V pipelines): Wan 2.1's architecture, so
the Wan adapter's facts hold (``attn1`` carves, ``rope`` / ``condition_embedder`` / ``blocks[0]`` /
``norm_out`` hook sites, same attention module and RoPE); what differs:

- Diffusion forcing (``enable_diffusion_forcing=True``): every latent frame has its own timestep. The
  ``condition_embedder`` output is per *frame* (``[B, F, 6 * dim]``, left alone), and the forward then
  expands it row-major to a per-*token* modulation ``[B, 6, N, dim]`` handed to every block: a hook on each
  block puts it into the carved order (one gather per forward, shared by the blocks). The per-token ``temb``
  is used after ``norm_out`` on row-major tokens, so it needs nothing.
- ``num_frame_per_block > 1`` (``causal_block_size``, asynchronous diffusion forcing) adds a block-causal
  token mask ``[1, 1, N, N]``: the same hook gathers it into the carved order and those forwards run dense
  attention (a token-level causal mask cannot be expressed on carved 128-token blocks, which mix frames).
- Long videos run in overlapping windows of latent frames, and each step attends over its own valid
  interval: the grid is read from the latent of every forward (nothing to do here).
- The diffusion-forcing pipelines step one scheduler copy per frame, so the pipeline's own scheduler never
  advances: their step clock follows the timesteps (progress ``1 - max(t) / 1000`` of the window's noisiest
  frame; a new window starts again at step 0).
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers import SkyReelsV2Transformer3DModel
from diffusers.hooks._helpers import TransformerBlockMetadata, TransformerBlockRegistry
from diffusers.models.transformers.transformer_skyreels_v2 import SkyReelsV2TransformerBlock

from .._hooks import JengaHook
from .wan import WanAdapter

__all__ = ["SkyReelsV2Adapter"]

DIFFUSION_FORCING_PIPELINES = (
    "SkyReelsV2DiffusionForcingPipeline",
    "SkyReelsV2DiffusionForcingImageToVideoPipeline",
    "SkyReelsV2DiffusionForcingVideoToVideoPipeline",
)
BLOCK_INPUT_HOOK = "jenga_skyreels_block_inputs"
RELEASE_HOOK = "jenga_skyreels_release"
_TEMB_ARG, _MASK_ARG = 2, 4  # SkyReelsV2TransformerBlock.forward(hidden, text, temb, rotary_emb, attention_mask)

# diffusers does not register SkyReels-V2's block (step skipping reads what it returns): as Wan's, the hidden states
if SkyReelsV2TransformerBlock not in TransformerBlockRegistry._registry:
    TransformerBlockRegistry.register(SkyReelsV2TransformerBlock, TransformerBlockMetadata(
        return_hidden_states_index=0, return_encoder_hidden_states_index=None))

# SkyReels-V2 1.3B has 1536 channels, the 14B models 5120 (as Wan 2.1)
_SMALL_MODEL_DIM = 3072


class _CarvedCopies:
    """One carved-order copy per forward of a tensor every block receives (the source is the forward's own
    local, so identity tells a new forward); released before ``norm_out`` so nothing outlives the forward."""

    def __init__(self) -> None:
        self.entries: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}

    def get(self, name: str, source: torch.Tensor, perm: torch.Tensor, dims: tuple[int, ...]) -> torch.Tensor:
        entry = self.entries.get(name)
        if entry is not None and entry[0] is source and entry[1] is perm:
            return entry[2]
        out = source
        for dim in dims:
            out = out.index_select(dim, perm)
        self.entries[name] = (source, perm, out)
        return out

    def clear(self) -> None:
        self.entries.clear()


class _BlockInputHook(JengaHook):
    """A block's per-token modulation ``[B, 6, N, dim]`` and causal mask ``[1, 1, N, N]`` in carved order."""

    def __init__(self, runtime: Any, copies: _CarvedCopies) -> None:
        super().__init__()
        self.runtime = runtime
        self.copies = copies

    def pre_forward(self, module: torch.nn.Module, *args, **kwargs):
        layout = self.runtime.plan.layout
        if layout is None:
            return args, kwargs
        args = list(args)
        for index, name, dims in ((_TEMB_ARG, "temb", (2,)), (_MASK_ARG, "attention_mask", (2, 3))):
            value = args[index] if len(args) > index else kwargs.get(name)
            if value is None or value.dim() != 4:  # 3-D temb: one modulation per sample, no order
                continue
            carved = self.copies.get(name, value, layout.perm, dims)
            if len(args) > index:
                args[index] = carved
            else:
                kwargs[name] = carved
        return tuple(args), kwargs

    def __repr__(self) -> str:
        return "SkyReelsBlockInputHook()"


class _ReleaseHook(JengaHook):
    """Before ``norm_out``: drop the forward's carved copies."""

    def __init__(self, copies: _CarvedCopies) -> None:
        super().__init__()
        self.copies = copies

    def pre_forward(self, module: torch.nn.Module, *args, **kwargs):
        self.copies.clear()
        return args, kwargs

    def __repr__(self) -> str:
        return "SkyReelsReleaseHook()"


class SkyReelsV2Adapter(WanAdapter):
    name = "skyreels-v2"
    context_parallel = False  # its extra per-token hooks are not wired for a sharded sequence
    transformer_class = SkyReelsV2Transformer3DModel
    pipelines = ("SkyReelsV2Pipeline", "SkyReelsV2ImageToVideoPipeline", *DIFFUSION_FORCING_PIPELINES)
    # the diffusion-forcing I2V pipeline conditions on clean first-frame latents (timestep 0), as I2V does
    image_to_video_pipelines = ("SkyReelsV2ImageToVideoPipeline", "SkyReelsV2DiffusionForcingImageToVideoPipeline")

    def preset_model(self, transformer: torch.nn.Module) -> str:
        cfg = transformer.config
        small = cfg.num_attention_heads * cfg.attention_head_dim <= _SMALL_MODEL_DIM
        return "skyreels-v2" if small else "skyreels-v2-14b"

    def reorder_time(self, output: Any, reorder, num_tokens: int) -> Any:
        """Per-frame (diffusion forcing) or per-sample modulation: nothing is per token here."""
        return output

    def extra_hooks(self, transformer: torch.nn.Module, runtime: Any) -> list[tuple[torch.nn.Module, Any, str]]:
        copies = _CarvedCopies()
        hooks = [(block, _BlockInputHook(runtime, copies), BLOCK_INPUT_HOOK) for block in transformer.blocks]
        return [*hooks, (transformer.norm_out, _ReleaseHook(copies), RELEASE_HOOK)]

    def step_from_timesteps(self, pipeline_name: str | None) -> bool:
        return pipeline_name in DIFFUSION_FORCING_PIPELINES

    def check_pipeline(self, pipeline_name: str | None, config: Any) -> None:
        if pipeline_name not in DIFFUSION_FORCING_PIPELINES:
            return
        if config.switch_points():
            raise ValueError(
                f"{pipeline_name}: progressive resolution (stages changing scale or shift mid-run) does not apply: "
                "diffusion forcing denoises frames on their own per-frame schedules (and long videos window by "
                "window), so there is no single step at which the whole latent could be resized and re-noised. "
                "Use a full-resolution config, e.g. the 'base' preset"
            )
        if config.skip_steps:
            raise ValueError(
                f"{pipeline_name}: skip_steps does not apply: the per-frame timestep schedule has no run-wide "
                "step count to skip by, and the valid frame interval changes between steps. Patch with skip_steps=()"
            )
