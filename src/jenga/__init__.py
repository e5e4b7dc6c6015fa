"""jenga: training-free attention carving and progressive resolution for video diffusion transformers."""

from __future__ import annotations

import logging

from .attention import block_sparse_attention
from .blocks import BlockLists, dense_to_lists, lists_to_dense
from .config import JengaConfig, Stage
from .curves import block_adjacency, curve_permutation
from .layout import TokenLayout, token_layout
from .patching import is_patched, patch, patched, selection_stats, unpatch
from .selection import select_blocks

__version__ = "0.1.0"

logging.getLogger("jenga").addHandler(logging.NullHandler())

__all__ = [
    "BlockLists",
    "JengaConfig",
    "Stage",
    "TokenLayout",
    "block_adjacency",
    "block_sparse_attention",
    "curve_permutation",
    "dense_to_lists",
    "is_patched",
    "lists_to_dense",
    "patch",
    "patched",
    "select_blocks",
    "selection_stats",
    "token_layout",
    "unpatch",
]
