"""The patch record and where a patch keeps it on a transformer (one attribute, read by :func:`record_of`).

Its own module so that the stage driver and the demo find a patch without importing :mod:`jenga.patching`
(which imports them).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from ._state import CarvingRuntime
from .config import JengaConfig

if TYPE_CHECKING:
    from .adapters import ModelAdapter

RECORD_ATTR = "_jenga_patch"


@dataclass
class PatchRecord:
    """Everything needed to undo a patch exactly, kept on the transformer while it is patched."""

    config: JengaConfig
    adapter: ModelAdapter
    runtime: CarvingRuntime
    processors: list[tuple[torch.nn.Module, Any]]
    hooks: list[tuple[torch.nn.Module, str, bool, bool]]

    def same_patch(self, config: JengaConfig, pipeline: Any, scheduler: Any) -> bool:
        """Whether patching again with these arguments would change nothing."""
        runtime = self.runtime
        return (self.config == config and runtime.pipeline_object() is pipeline
                and runtime.scheduler is scheduler)

    def reset_state(self) -> None:
        """Reset the patch's stateful hooks (the clock hook: every CFG branch's state -- clock, cached residual --
        and the runtime's plan), as diffusers does at the end of a pipeline call; the stage driver also does it
        when a call raises."""
        for module, name, _, _ in self.hooks:
            registry = module.__dict__.get("_diffusers_hook")
            hook = registry.hooks.get(name) if registry is not None else None
            if hook is not None and getattr(hook, "_is_stateful", False):
                hook.reset_state(module)

    def __repr__(self) -> str:
        carving = sum(not getattr(module.processor, "dense", True) for module, _ in self.processors)
        return (
            f"JengaPatch(model={self.adapter.name}, carving_processors={carving}/{len(self.processors)}, "
            f"hooks={list(dict.fromkeys(name for _, name, _, _ in self.hooks))}, "
            f"first_frame={self.runtime.first_frame}, "
            f"config={self.config})"
        )


def record_of(transformer: torch.nn.Module | None) -> PatchRecord | None:
    """The patch record of ``transformer`` (or of the module inside ``torch.compile``'s wrapper), or None."""
    if transformer is None:
        return None
    return getattr(transformer, "_orig_mod", transformer).__dict__.get(RECORD_ATTR)
