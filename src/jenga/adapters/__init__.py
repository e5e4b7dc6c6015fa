"""Model-family adapters, looked up by transformer class.

A new family is one :class:`~jenga.adapters.base.ModelAdapter` subclass registered here; the patch
itself never branches on the model.
"""

from __future__ import annotations

import torch

from .base import AttentionSite, HookSites, ModelAdapter, TokenGrid, carve_attention
from .cogvideox import CogVideoXAdapter
from .hunyuan import HunyuanVideoAdapter
from .hunyuan_video15 import HunyuanVideo15Adapter
from .ltx import LTXAdapter
from .skyreels_v2 import SkyReelsV2Adapter
from .wan import WanAdapter
from .wan_vace import WanVACEAdapter

__all__ = [
    "AttentionSite",
    "HookSites",
    "ModelAdapter",
    "TokenGrid",
    "adapter_for",
    "carve_attention",
    "check_context_parallel",
    "register_adapter",
    "supported_pipelines",
    "supported_transformers",
]

_REGISTRY: dict[type, ModelAdapter] = {}


def register_adapter(adapter: ModelAdapter) -> ModelAdapter:
    """Register ``adapter`` for its exact ``transformer_class`` (subclasses are other models)."""
    _REGISTRY[adapter.transformer_class] = adapter
    return adapter


def supported_transformers() -> tuple[str, ...]:
    """Class names of the transformers an adapter is registered for."""
    return tuple(sorted(cls.__name__ for cls in _REGISTRY))


def supported_pipelines() -> tuple[str, ...]:
    """Pipeline class names the registered adapters declare (``ModelAdapter.pipelines``), in their order."""
    return tuple(dict.fromkeys(name for adapter in _REGISTRY.values() for name in adapter.pipelines))


def adapter_for(transformer: torch.nn.Module) -> ModelAdapter:
    """The adapter of ``transformer``'s class, or ``TypeError`` naming the supported classes."""
    adapter = _REGISTRY.get(type(transformer))
    if adapter is None:
        raise TypeError(
            f"jenga cannot patch {type(transformer).__name__}; supported transformers: "
            f"{', '.join(supported_transformers())}; supported pipelines: {', '.join(supported_pipelines())}"
        )
    return adapter


def check_context_parallel(transformer: torch.nn.Module) -> None:
    """``NotImplementedError`` when jenga does not carve ``transformer``'s family under context parallelism
    (``ModelAdapter.context_parallel``), naming the transformers it does: never a sharded sequence carved as whole."""
    if adapter_for(transformer).context_parallel:
        return
    supported = sorted(cls.__name__ for cls, adapter in _REGISTRY.items() if adapter.context_parallel)
    raise NotImplementedError(
        f"jenga does not carve {type(transformer).__name__} under context parallelism yet; it does for "
        f"{', '.join(supported)}. Run this model with one pipeline per GPU, or without jenga (the transformer's "
        "own enable_parallelism() on an unpatched pipeline)"
    )


register_adapter(WanAdapter())
register_adapter(HunyuanVideoAdapter())
register_adapter(CogVideoXAdapter())
register_adapter(LTXAdapter())
register_adapter(SkyReelsV2Adapter())
register_adapter(WanVACEAdapter())
register_adapter(HunyuanVideo15Adapter())
