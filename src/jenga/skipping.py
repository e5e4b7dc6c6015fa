"""Step skipping: on a skipped step the block stack does not run; its output is its input plus the residual
(output - input of the whole stack) of the last computed step of the same CFG branch.

Which steps skip is config arithmetic (:meth:`JengaConfig.skipped_steps`; worked examples in
``tests/test_skipping.py``); step 0, the first step of a stage and any step without a residual of its
branch and shape are always computed. One :class:`BlockSkipHook` per block: the clock hook decides and
hands over the residual eagerly (:meth:`CarvingRuntime.set_step`), so traced blocks guard on a flag only.
diffusers' block caches decide per block too: combined with ``skip_steps`` they raise a ``RuntimeError``.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import torch
from diffusers.hooks import ModelHook
from diffusers.hooks._helpers import TransformerBlockMetadata, TransformerBlockRegistry
from diffusers.hooks.first_block_cache import _FBC_BLOCK_HOOK, _FBC_LEADER_BLOCK_HOOK
from diffusers.hooks.mag_cache import _MAG_CACHE_BLOCK_HOOK, _MAG_CACHE_LEADER_BLOCK_HOOK
from diffusers.hooks.sea_cache import _SEA_CACHE_BLOCK_HOOK, _SEA_CACHE_LEADER_BLOCK_HOOK

if TYPE_CHECKING:
    from ._state import CarvingRuntime

__all__ = ["SKIP_HOOK", "BlockSkipHook", "block_metadata", "check_no_block_cache", "check_skip_stack"]

logger = logging.getLogger("jenga")

SKIP_HOOK = "jenga_skip"
# block-level hooks of diffusers' caches that decide on their own whether a block runs
_CONFLICTING_HOOKS = (_FBC_LEADER_BLOCK_HOOK, _FBC_BLOCK_HOOK, _MAG_CACHE_LEADER_BLOCK_HOOK,
                      _MAG_CACHE_BLOCK_HOOK, _SEA_CACHE_LEADER_BLOCK_HOOK, _SEA_CACHE_BLOCK_HOOK)


def block_metadata(block: torch.nn.Module) -> TransformerBlockMetadata:
    """diffusers' record of what ``block`` takes and returns; ``TypeError`` for a block class it lacks."""
    try:
        return TransformerBlockRegistry.get(type(block))
    except ValueError:
        raise TypeError(
            f"step skipping needs diffusers' TransformerBlockMetadata for {type(block).__name__}; register it "
            "(diffusers.hooks._helpers.TransformerBlockRegistry.register) or patch with skip_steps=()"
        ) from None


def check_no_block_cache(blocks: list[torch.nn.Module]) -> None:
    """``RuntimeError`` when a diffusers block cache is attached to the stack that ``skip_steps`` skips."""
    for index, block in enumerate(blocks):
        registry = block.__dict__.get("_diffusers_hook")
        found = [name for name in _CONFLICTING_HOOKS if registry is not None and name in registry.hooks]
        if found:
            raise RuntimeError(
                f"block {index} carries diffusers cache hooks {found}: they and jenga's skip_steps both decide "
                "which steps run the block stack. Use one of them: patch with skip_steps=() to keep the diffusers "
                "cache, or remove it (transformer.disable_cache()) to use skip_steps"
            )


def check_skip_stack(runtime: CarvingRuntime) -> None:
    """Before each forward that may skip (called by the clock hook, outside traced code): no diffusers block
    cache attached since patching, and a one-time warning for blocks compiled one by one."""
    blocks = runtime.skip_blocks
    if not runtime.config.skip_steps or blocks is None:
        return
    check_no_block_cache(blocks)
    if runtime.regional_compile_warned or not any(
        getattr(b, "_compiled_call_impl", None) is not None for b in blocks
    ):
        return
    # skipping hooks on individually compiled blocks make dynamo compile one graph per block role (first,
    # middle, last) and kind of step, which can pass its recompile limit (with ``dynamic=False`` it does on
    # the tiny test models); the whole transformer compiles fine
    runtime.regional_compile_warned = True
    logger.warning(
        "jenga: the transformer blocks are compiled one by one (compile_repeated_blocks) and skip_steps is set: "
        "each block role (first, middle, last) and kind of step needs its own graph, which can exceed "
        "torch.compile's recompile limit (blocks past it run uncompiled). Compile the whole transformer "
        "(torch.compile(pipe.transformer)) or patch with skip_steps=()"
    )


@torch.compiler.disable
def _log_no_residual(step: int, branch: Any) -> None:
    logger.debug("jenga: step %d computed: no residual of this shape for branch %r", step, branch)


class BlockSkipHook(ModelHook):
    """One block of the stack: run it, or pass its input through (the last block adds the cached residual).

    What the block takes and returns comes from diffusers' ``TransformerBlockRegistry`` (as its own block
    caches read it): a block that also returns ``encoder_hidden_states`` (HunyuanVideo) passes its text
    states through unchanged on skipped steps (the forward drops them after the stack); only the video
    hidden states carry a residual.
    """

    def __init__(self, runtime: CarvingRuntime, blocks: list[torch.nn.Module], *, first: bool, last: bool) -> None:
        super().__init__()
        self.runtime = runtime
        self.blocks = blocks
        self.first = first
        self.last = last
        self.metadata: TransformerBlockMetadata | None = None  # the block's, set when registered
        self.skipping = False  # this forward's decision, taken by the first block
        self.stack_input: torch.Tensor | None = None
        self.installed_forward: Any = None

    def initialize_hook(self, module: torch.nn.Module) -> torch.nn.Module:
        self.metadata = block_metadata(module)
        return module

    def new_forward(self, module: torch.nn.Module, *args, **kwargs):
        meta = self.metadata
        hidden = meta._get_parameter_from_args_kwargs(meta.hidden_states_argument_name, args, kwargs)
        state = self._shared()
        plan = self.runtime.plan  # decided eagerly by the clock hook: the traced code reads flags only
        if self.first:
            cached = plan.residual
            state.skipping = plan.skip and cached is not None and cached.shape == hidden.shape
            if plan.skip and not state.skipping:
                _log_no_residual(plan.step, plan.skip_key)
            if not state.skipping:
                state.stack_input = hidden
        if state.skipping:
            if self.last:
                hidden = hidden + plan.residual
            if meta.return_encoder_hidden_states_index is None:
                return hidden
            text = meta._get_parameter_from_args_kwargs(meta.encoder_hidden_states_argument_name, args, kwargs)
            out = [None, None]
            out[meta.return_hidden_states_index] = hidden
            out[meta.return_encoder_hidden_states_index] = text
            return tuple(out)
        output = self.fn_ref.original_forward(*args, **kwargs)
        if self.last and state.stack_input is not None:
            paired = meta.return_encoder_hidden_states_index is not None
            out_hidden = output[meta.return_hidden_states_index] if paired else output
            plan.new_residual = out_hidden - state.stack_input  # filed under the branch by end_forward
            state.stack_input = None
        return output

    def _shared(self) -> BlockSkipHook:
        """The first block's hook holds the per-forward decision for the whole stack."""
        if self.first:
            return self
        return self.blocks[0]._diffusers_hook.get_hook(SKIP_HOOK)

    def __repr__(self) -> str:
        role = "first+last" if self.first and self.last else "first" if self.first else "last" if self.last else "mid"
        return f"BlockSkipHook({role})"
