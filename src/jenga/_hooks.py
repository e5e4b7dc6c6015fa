"""The four per-forward hooks of a patch (diffusers ``ModelHook``s on submodules, one name each).

Order inside one transformer forward (both families):

1. ``LAYOUT_HOOK`` on the RoPE module (the first module the forward runs): reads the latent shape,
   starts the forward plan (grid, carved layout, block tables) and gathers the RoPE tables into carved
   order.
2. ``CLOCK_HOOK`` on the time embedding: reads the step (cache context, scheduler, or timestep count per
   CFG branch) and decides whether this forward carves; reorders per-token modulation (Wan 2.2 TI2V).
3. ``ENTER_HOOK`` where the row-major hidden states appear (Wan: input of ``blocks[0]``; HunyuanVideo:
   output of ``x_embedder``): one gather into carved order.
4. ``EXIT_HOOK`` on the output norm: one gather back to row-major before unpatchify; ends the plan.

The transformer's own ``forward`` is never wrapped, so ``enable_model_cpu_offload`` (which wraps it) and
unpatching do not fight over it. Nothing here touches weights.
"""

from __future__ import annotations

import logging
import weakref
from typing import Any

import torch
from diffusers.hooks import HookRegistry, ModelHook

from . import _parallel_state as parallel
from ._state import BranchStates, CarvingRuntime
from .skipping import check_skip_stack

LAYOUT_HOOK = "jenga_layout"
CLOCK_HOOK = "jenga_clock"
ENTER_HOOK = "jenga_enter"
EXIT_HOOK = "jenga_exit"
HOOK_NAMES = (LAYOUT_HOOK, CLOCK_HOOK, ENTER_HOOK, EXIT_HOOK)

logger = logging.getLogger("jenga")


def _tensor_arg(args: tuple, kwargs: dict, name: str) -> torch.Tensor:
    """The argument ``name`` (``HookSites``' ``*_arg``): its keyword, else the first positional argument."""
    return kwargs[name] if name in kwargs else args[0]


def _replace_tensor_arg(args: tuple, kwargs: dict, name: str, value: Any) -> tuple[tuple, dict]:
    if name in kwargs:
        return args, {**kwargs, name: value}
    return (value, *args[1:]), kwargs


def _per_token_to_carved(perm: torch.Tensor, x: torch.Tensor, dim: int) -> torch.Tensor:
    if x.shape[dim] != perm.numel():  # split before this hook: context parallelism's plan
        raise NotImplementedError(
            f"per-token modulation of {x.shape[dim]} tokens for a sequence of {perm.numel()} (Wan 2.2 TI2V "
            "under context parallelism) is not supported: the plan splits the timesteps before jenga can order them"
        )
    return x.index_select(dim, perm)


class JengaHook(ModelHook):
    """Base of the four hooks: remembers the forward wrapper it installed (see :func:`unregister`)."""

    installed_forward: Any = None


class LayoutHook(JengaHook):
    """RoPE module: start the forward plan from the latent, reorder the RoPE tables."""

    def __init__(self, runtime: CarvingRuntime, adapter: Any, arg_name: str,
                 transformer: torch.nn.Module | None = None) -> None:
        super().__init__()
        self.runtime = runtime
        self.adapter = adapter
        self.arg_name = arg_name
        self._transformer = None if transformer is None else weakref.ref(transformer)  # for the early warm-up
        self._batch = 1

    def pre_forward(self, module: torch.nn.Module, *args, **kwargs):
        parallel.check_attached(self.runtime)
        layout = self.runtime.begin_forward(self.adapter.token_grid(args, kwargs, self.runtime.patch_size,
                                                                    self.arg_name))
        if layout is not None:
            parallel.check_grid(self.runtime, layout.num_tokens)
            latent = kwargs.get(self.arg_name, args[0] if args else None)
            self._batch = int(latent.shape[0]) if isinstance(latent, torch.Tensor) and latent.dim() else 1
        return args, kwargs

    def post_forward(self, module: torch.nn.Module, output: Any) -> Any:
        perm = self.runtime.plan.perm
        if perm is None:
            return output
        output = self.adapter.reorder_rope(output, lambda x, dim: x.index_select(dim, perm))
        transformer = None if self._transformer is None else self._transformer()
        self.runtime.early_warm_up(self.adapter, transformer, self._batch, output)
        return output

    def __repr__(self) -> str:
        return f"LayoutHook(curve={self.runtime.config.curve!r}, block_size={self.runtime.config.block_size})"


class ClockHook(JengaHook):
    """Time embedding: the step of this forward, per CFG branch; per-token modulation into carved order."""

    _is_stateful = True

    def __init__(self, runtime: CarvingRuntime, adapter: Any, arg_name: str, first: bool = False) -> None:
        super().__init__()
        self.runtime = runtime
        self.adapter = adapter
        self.arg_name = arg_name
        self.first = first  # runs before the layout hook: the step is applied when the plan starts
        # every CFG branch's state (clock, cached residual); diffusers' cache_context(name, ...) sets the branch
        # on every StateManager of a stateful hook, its stateful-hook reset clears them
        self.state_manager = BranchStates()

    def pre_forward(self, module: torch.nn.Module, *args, **kwargs):
        self._tick(_tensor_arg(args, kwargs, self.arg_name))
        return args, kwargs

    @torch.compiler.disable
    def _tick(self, timestep: torch.Tensor | None) -> None:
        try:
            context = self.state_manager.context
        except ValueError:  # no cache_context around this call (custom loops, HunyuanVideo pipelines)
            context = None
        check_skip_stack(self.runtime)  # a diffusers block cache attached after patching would fight us
        if self.first:
            self.runtime.pending_clock = (context, timestep, self.state_manager)
        else:
            self.runtime.set_step(context, timestep, self.state_manager)

    def post_forward(self, module: torch.nn.Module, output: Any) -> Any:
        perm = self.runtime.plan.perm
        if perm is None or self.first:  # a clock that runs first has no plan of this forward yet
            return output
        return self.adapter.reorder_time(output, lambda x, dim: _per_token_to_carved(perm, x, dim), perm.numel())

    def reset_state(self, module: torch.nn.Module) -> torch.nn.Module:
        self.state_manager.reset()
        self.runtime.reset()
        return module

    def __repr__(self) -> str:
        return "ClockHook()"


class EnterHook(JengaHook):
    """Row-major hidden states into carved order, once per forward."""

    def __init__(self, runtime: CarvingRuntime, on: str, arg_name: str) -> None:
        super().__init__()
        if on not in ("input", "output"):
            raise ValueError(f"EnterHook on must be 'input' or 'output', got {on!r}")
        self.runtime = runtime
        self.on = on
        self.arg_name = arg_name

    def pre_forward(self, module: torch.nn.Module, *args, **kwargs):
        perm = self.runtime.plan.perm
        if self.on == "output" or perm is None:
            return args, kwargs
        hidden = _tensor_arg(args, kwargs, self.arg_name)
        return _replace_tensor_arg(args, kwargs, self.arg_name, hidden.index_select(1, perm))

    def post_forward(self, module: torch.nn.Module, output: Any) -> Any:
        perm = self.runtime.plan.perm
        if self.on == "input" or perm is None:
            return output
        return output.index_select(1, perm)

    def __repr__(self) -> str:
        return f"EnterHook(on={self.on!r})"


class ExitHook(JengaHook):
    """Back to row-major before the output norm (and unpatchify); the forward plan ends here."""

    def __init__(self, runtime: CarvingRuntime, arg_name: str) -> None:
        super().__init__()
        self.runtime = runtime
        self.arg_name = arg_name

    def pre_forward(self, module: torch.nn.Module, *args, **kwargs):
        inverse = self.runtime.plan.inverse
        self.runtime.end_forward()
        if inverse is None or self.runtime.parallel is not None:  # sharded here: undone after the gather
            return args, kwargs
        hidden = _tensor_arg(args, kwargs, self.arg_name)
        return _replace_tensor_arg(args, kwargs, self.arg_name, hidden.index_select(1, inverse))

    def __repr__(self) -> str:
        return "ExitHook()"


def register(module: torch.nn.Module, hook: JengaHook, name: str) -> tuple[bool, bool]:
    """Register ``hook`` as ``name``; returns what :func:`unregister` needs to restore the module exactly."""
    had_registry = "_diffusers_hook" in module.__dict__
    had_forward = "forward" in module.__dict__
    HookRegistry.check_if_exists_or_initialize(module).register_hook(hook, name)
    hook.installed_forward = module.__dict__["forward"]  # to notice a wrapper added on top of ours later
    return had_registry, had_forward


def unregister(module: torch.nn.Module, name: str, had_registry: bool, had_forward: bool) -> None:
    """Remove hook ``name``; drop the registry and the instance ``forward`` if they were ours alone."""
    registry = module.__dict__.get("_diffusers_hook")
    if registry is None or name not in registry.hooks:
        return
    hook = registry.hooks[name]
    if registry._hook_order[-1] == name and module.__dict__.get("forward") is not hook.installed_forward:
        logger.warning(
            "jenga: %s.forward was wrapped again after patching (e.g. enable_sequential_cpu_offload); "
            "removing hook %s drops that wrapper too: enable it again after unpatch", type(module).__name__, name
        )
    registry.remove_hook(name, recurse=False)
    if registry.hooks:
        return
    if not had_forward:
        module.__dict__.pop("forward", None)
    if not had_registry:
        del module.__dict__["_diffusers_hook"]
