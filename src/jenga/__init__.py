"""jenga: training-free attention carving and progressive resolution for video diffusion transformers.

Usage, on a diffusers Wan or HunyuanVideo pipeline::

    import jenga
    jenga.patch(pipe)                  # the model family's "base" preset; or jenga.patch(pipe, "turbo")
    video = pipe(prompt="a red fox running through snow").frames[0]
    jenga.unpatch(pipe)                # exactly the stock pipeline again

``with jenga.patched(pipe, config): ...`` patches inside a block only; ``jenga.JengaConfig.preset(name,
model=...)`` builds a configuration. ``jenga demo`` (the command) runs the shipped toy model offline and
``jenga doctor`` prints what a bug report needs.

The public names are imported on first use (PEP 562), so ``import jenga.cli`` and ``jenga --help`` do not
pay for importing torch.
"""

from __future__ import annotations

import importlib
import logging
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

logging.getLogger("jenga").addHandler(logging.NullHandler())

# public name -> the module that defines it
_EXPORTS = {
    "block_sparse_attention": "attention",
    "BlockLists": "blocks",
    "dense_to_lists": "blocks",
    "lists_to_dense": "blocks",
    "CalibrationReport": "calibration",
    "calibrate": "calibration",
    "JengaConfig": "config",
    "Stage": "config",
    "block_adjacency": "curves",
    "curve_permutation": "curves",
    "enable_parallelism": "parallel",
    "TokenLayout": "layout",
    "token_layout": "layout",
    "is_patched": "patching",
    "patch": "patching",
    "patched": "patching",
    "selection_stats": "patching",
    "Supported": "patching",
    "supported": "patching",
    "unpatch": "patching",
    "select_blocks": "selection",
}

__all__ = [
    "BlockLists",
    "CalibrationReport",
    "JengaConfig",
    "Stage",
    "Supported",
    "TokenLayout",
    "block_adjacency",
    "block_sparse_attention",
    "calibrate",
    "curve_permutation",
    "dense_to_lists",
    "enable_parallelism",
    "is_patched",
    "lists_to_dense",
    "patch",
    "patched",
    "select_blocks",
    "selection_stats",
    "supported",
    "token_layout",
    "unpatch",
]


if TYPE_CHECKING:
    from .attention import block_sparse_attention
    from .blocks import BlockLists, dense_to_lists, lists_to_dense
    from .calibration import CalibrationReport, calibrate
    from .config import JengaConfig, Stage
    from .curves import block_adjacency, curve_permutation
    from .layout import TokenLayout, token_layout
    from .parallel import enable_parallelism
    from .patching import Supported, is_patched, patch, patched, selection_stats, supported, unpatch
    from .selection import select_blocks


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'jenga' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
