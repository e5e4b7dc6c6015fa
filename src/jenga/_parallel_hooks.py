"""Hook order under context parallelism: jenga's hooks around diffusers' split and gather hooks.

:func:`attach` runs from :func:`jenga.patch` and :func:`jenga.enable_parallelism` (design: :mod:`jenga.parallel`).
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from diffusers.hooks import ModelHook

from . import _hooks
from ._parallel_state import context_parallel_config, state_of
from .adapters import check_context_parallel

logger = logging.getLogger("jenga")

__all__ = ["PARALLEL_EXIT_HOOK", "ParallelExitHook", "attach"]

PARALLEL_EXIT_HOOK = "jenga_parallel_exit"
_CP_PREFIXES = ("cp_input---", "cp_output---", "jenga_cp_")


class ParallelExitHook(ModelHook):
    """On ``proj_out`` under context parallelism: back to row-major after the plan's gather."""

    installed_forward: Any = None

    def __init__(self, runtime: Any) -> None:
        super().__init__()
        self.runtime = runtime

    def post_forward(self, module: torch.nn.Module, output: torch.Tensor) -> torch.Tensor:
        layout = self.runtime.plan.layout
        if layout is None or output.shape[1] != layout.num_tokens:
            return output
        return output.index_select(1, layout.inverse)

    def __repr__(self) -> str:
        return "ParallelExitHook()"


def _side(hook: ModelHook) -> int:
    """Where a jenga hook goes relative to the context-parallel hooks of its module: -1 inside (it
    reorders in ``post_forward`` or must see the local shard), +1 outside (reorders in ``pre_forward``)."""
    if isinstance(hook, _hooks.EnterHook) and hook.on == "input":
        return 1
    if isinstance(hook, ParallelExitHook):
        return 1
    return -1


def _arrange(module: torch.nn.Module) -> None:
    """Rebuild ``module``'s hook chain: jenga's inner hooks, diffusers' context-parallel hooks, jenga's
    outer hooks (registration order is inner to outer). Only modules holding nothing else are touched."""
    registry = module.__dict__.get("_diffusers_hook")
    if registry is None:
        return
    names = list(registry._hook_order)
    cp = [n for n in names if n.startswith(_CP_PREFIXES)]
    ours = [n for n in names if n.startswith("jenga_") and n not in cp]
    if not cp or not ours:
        return
    others = [n for n in names if n not in cp and n not in ours]
    if others:
        raise RuntimeError(
            f"jenga cannot order its hooks around context parallelism on {type(module).__name__}: it also "
            f"holds {others}; enable those after jenga.enable_parallelism"
        )
    hooks = {n: registry.hooks[n] for n in names}
    wanted = ([n for n in ours if _side(hooks[n]) < 0] + cp + [n for n in ours if _side(hooks[n]) > 0])
    if wanted == names:
        return
    for name in reversed(names):
        registry.remove_hook(name, recurse=False)
    for name in wanted:
        registry.register_hook(hooks[name], name)
    for name in wanted:  # jenga's unregister notices wrappers added on top of ours by this
        if hasattr(hooks[name], "installed_forward"):
            hooks[name].installed_forward = module.__dict__["forward"]


def attach(transformer: torch.nn.Module, record: Any) -> None:
    """Make a patched transformer with context parallelism enabled carve correctly (idempotent)."""
    if context_parallel_config(getattr(transformer, "_parallel_config", None)) is not None:
        check_context_parallel(transformer)  # a family jenga does not carve sharded: patch rolls back and raises
    state = state_of(transformer)
    runtime = record.runtime
    if state is None:
        runtime.parallel = None
        return
    if runtime.parallel is not None:
        return
    exit_module = record.adapter.parallel_exit_module(transformer)
    hook = ParallelExitHook(runtime)
    had_registry, had_forward = _hooks.register(exit_module, hook, PARALLEL_EXIT_HOOK)
    record.hooks.append((exit_module, PARALLEL_EXIT_HOOK, had_registry, had_forward))
    modules = {id(m): m for m, *_ in record.hooks}
    for module in modules.values():
        _arrange(module)
    runtime.parallel = state
    logger.debug("jenga: carving under Ulysses degree %d (rank %d) on %s", state.world, state.rank,
                 type(transformer).__name__)
