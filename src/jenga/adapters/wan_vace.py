"""Wan VACE (``WanVACEPipeline``, ``WanVACETransformer3DModel``): Wan plus a control branch. Both the main
blocks' and the VACE control blocks' self-attention (``attn1``) carve.

Facts (diffusers 0.42 ``transformer_wan_vace.py``): the forward runs ``rope(latent)`` first, patch-embeds the
latent and the control latent (video, mask and reference frames, zero-padded to the same token count) into
row-major tokens, then runs every ``vace_blocks[i]`` on ``(hidden_states, text, control, temb, rope)``
before the main ``blocks``; block 0 of the control branch adds ``proj_in(control)`` to the hidden states.
The control hints they return are added to the hidden states after the main blocks listed in
``vace_layers``. So the carved order enters twice: at ``vace_blocks[0]`` (hidden states and control
tokens, a hook of this adapter) and at ``blocks[0]`` (hidden states, the Wan enter hook); the hints are
then in the order the main blocks see. Layer ids: main blocks ``0..L-1``, control blocks ``L..L+V-1``.

Step skipping does not apply: the hints are added between the main blocks, outside the block stack a
skipped step bypasses, so a skipped step would add them on top of a residual that already holds them.
"""

from __future__ import annotations

from typing import Any

import PIL.Image
import torch
from diffusers import WanVACETransformer3DModel

from .._hooks import JengaHook
from .base import AttentionSite
from .wan import WanAdapter

__all__ = ["WanVACEAdapter"]

CONTROL_ENTER_HOOK = "jenga_vace_enter"
_HIDDEN_ARG, _CONTROL_ARG = 0, 2  # WanVACETransformerBlock.forward(hidden, text, control, temb, rotary_emb)


class _ControlEnterHook(JengaHook):
    """``vace_blocks[0]``: the row-major hidden states and control tokens into carved order."""

    def __init__(self, runtime: Any) -> None:
        super().__init__()
        self.runtime = runtime

    def pre_forward(self, module: torch.nn.Module, *args, **kwargs):
        layout = self.runtime.plan.layout
        if layout is None:
            return args, kwargs
        args = list(args)
        for index, name in ((_HIDDEN_ARG, "hidden_states"), (_CONTROL_ARG, "control_hidden_states")):
            if len(args) > index:
                args[index] = args[index].index_select(1, layout.perm)
            else:
                kwargs[name] = kwargs[name].index_select(1, layout.perm)
        return tuple(args), kwargs

    def __repr__(self) -> str:
        return "VACEControlEnterHook()"


def _resize_frames(frames: Any, size: tuple[int, int], name: str, resample: PIL.Image.Resampling) -> Any:
    """A control ``video`` / ``mask`` (list of PIL images, or a tensor with the frame size last) at ``size``."""
    height, width = size
    if isinstance(frames, torch.Tensor):
        if tuple(frames.shape[-2:]) == size:
            return frames
        mode = "nearest" if resample == PIL.Image.Resampling.NEAREST else "bilinear"
        flat = frames.reshape(-1, 1, *frames.shape[-2:]).float()
        out = torch.nn.functional.interpolate(flat, size=size, mode=mode)
        return out.reshape(*frames.shape[:-2], height, width).to(frames.dtype)
    if isinstance(frames, (list, tuple)) and all(isinstance(f, PIL.Image.Image) for f in frames):
        return [f if f.size == (width, height) else f.resize((width, height), resample) for f in frames]
    raise ValueError(
        f"WanVACEPipeline with jenga stages: {name}= must be a list of PIL images or a tensor (frame size last) so "
        f"that jenga can resize it to each stage's size, got {type(frames).__name__}; or use a full-resolution config"
    )


class WanVACEAdapter(WanAdapter):
    name = "wan-vace"
    context_parallel = False  # its extra per-token hooks are not wired for a sharded sequence
    transformer_class = WanVACETransformer3DModel
    pipelines = ("WanVACEPipeline",)
    image_to_video_pipelines = ()

    def attention_sites(self, transformer: torch.nn.Module) -> list[AttentionSite]:
        main = super().attention_sites(transformer)
        offset = len(main)
        control = [AttentionSite(offset + i, f"vace_blocks.{i}.attn1", block.attn1)
                   for i, block in enumerate(transformer.vace_blocks)]
        return main + control

    def block_stack(self, transformer: torch.nn.Module) -> list[torch.nn.Module]:
        raise ValueError(
            "skip_steps does not apply to WanVACETransformer3DModel: the VACE control hints are added between the "
            "main blocks, outside the block stack a skipped step bypasses. Patch with skip_steps=()"
        )

    def image_conditioned(self, transformer: torch.nn.Module) -> bool:
        return False

    def extra_hooks(self, transformer: torch.nn.Module, runtime: Any) -> list[tuple[torch.nn.Module, Any, str]]:
        return [(transformer.vace_blocks[0], _ControlEnterHook(runtime), CONTROL_ENTER_HOOK)]

    def stage_arguments(self, pipeline_name: str, call: dict[str, Any]) -> dict[str, Any]:
        """The control video and mask at the stage's pixel size (the pipeline only shrinks a video whose area
        exceeds the call's, rounding each side down; reference images it fits to the size itself)."""
        size = (int(call["height"]), int(call["width"]))
        call = dict(call)
        for name, resample in (("video", PIL.Image.Resampling.BICUBIC), ("mask", PIL.Image.Resampling.NEAREST)):
            if call.get(name) is not None:
                call[name] = _resize_frames(call[name], size, name, resample)
        return call
