"""jenga: training-free attention carving and progressive resolution for video diffusion transformers."""

from __future__ import annotations

import logging

from .attention import block_sparse_attention
from .blocks import BlockLists, dense_to_lists, lists_to_dense
from .curves import block_adjacency, curve_permutation
from .selection import select_blocks

__version__ = "0.1.0"

logging.getLogger("jenga").addHandler(logging.NullHandler())

__all__ = [
    "BlockLists",
    "block_adjacency",
    "block_sparse_attention",
    "curve_permutation",
    "dense_to_lists",
    "lists_to_dense",
    "select_blocks",
]
