"""Token layouts: where each video token of a latent grid sits in the carved (block-sparse) sequence.

Index contract (``dtype[shape]``) for a grid ``(T, H, W)``, ``N = T * H * W``, ``Vb = ceil(N / block_size)``:

- ``perm: int64[N]`` -- row-major index of the i-th carved token: ``x_carved = x_rowmajor[:, perm]``.
- ``inverse: int64[N]`` -- carved position of each row-major token: ``x_rowmajor = x_carved[:, inverse]``.
- ``adjacency: bool[Vb, Vb]`` -- carved blocks i and j hold 3D neighbours (26-neighbourhood); symmetric,
  True diagonal.
- ``first_frame: bool[Vb]`` -- carved blocks that hold at least one token of latent frame 0.
- ``last_frame: bool[Vb]`` -- carved blocks that hold at least one token of the last latent frame.

Two orders:

- ``curve``: the whole grid along one space-filling curve (:func:`jenga.curves.curve_permutation`, whose
  Z-order tiles are aligned with ``block_size``).
- ``first-frame prefix``: frame 0 along the curve of its ``(1, H, W)`` plane, then frames ``1..T-1`` along
  the curve of ``(T - 1, H, W)``. The first ``H * W`` carved tokens stay frame 0, which HunyuanVideo's
  ``token_replace`` image conditioning relies on, and frame 0 fills only ``ceil(H * W / block_size)``
  blocks: in a whole-grid Z-order a 128-token block spans 4 frames, so frame 0 touches about ``4 / T`` of
  all blocks instead of ``1 / T``, and "always keep the first frame" would keep four times too much.
- ``first-frame prefix + last-frame suffix`` (first-and-last-frame conditioning, e.g. Wan FLF2V): frame 0,
  then frames ``1..T-2``, then frame ``T-1``, each along its own curve, for the same reason at both ends.

Layouts are cached per (grid, block size, curve, order, device); treat their tensors as read-only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import torch

from ._checks import is_int
from .curves import adjacency_of_order, block_adjacency, curve_permutation

__all__ = ["TokenLayout", "token_layout"]

Grid = tuple[int, int, int]


@dataclass(frozen=True)
class TokenLayout:
    """The carved order of one latent grid and the block tables that go with it (module docstring)."""

    grid: Grid
    block_size: int
    curve: str
    first_frame_prefix: bool
    perm: torch.Tensor
    inverse: torch.Tensor
    adjacency: torch.Tensor
    first_frame: torch.Tensor
    last_frame: torch.Tensor
    last_frame_suffix: bool = False

    @property
    def num_tokens(self) -> int:
        return math.prod(self.grid)

    @property
    def num_blocks(self) -> int:
        return math.ceil(self.num_tokens / self.block_size)

    def to_carved(self, x: torch.Tensor, dim: int = 1) -> torch.Tensor:
        """Gather the token dimension ``dim`` of a row-major tensor into carved order."""
        return x.index_select(dim, self.perm)

    def to_rowmajor(self, x: torch.Tensor, dim: int = 1) -> torch.Tensor:
        """Undo :meth:`to_carved`."""
        return x.index_select(dim, self.inverse)

    def __repr__(self) -> str:
        order = "first-frame prefix + " if self.first_frame_prefix else ""
        order += "last-frame suffix + " if self.last_frame_suffix else ""
        return (
            f"TokenLayout(grid={self.grid}, order={order}{self.curve}, block_size={self.block_size}, "
            f"blocks={self.num_blocks})"
        )


def token_layout(
    grid: tuple[int, int, int],
    *,
    block_size: int,
    curve: str = "zorder",
    first_frame_prefix: bool = False,
    last_frame_suffix: bool = False,
    device: torch.device | str | None = None,
) -> TokenLayout:
    """The cached :class:`TokenLayout` of ``grid`` on ``device`` (CPU when ``None``); ``last_frame_suffix``
    needs ``first_frame_prefix`` (first-and-last-frame conditioning)."""
    grid = tuple(int(s) for s in grid)
    if len(grid) != 3 or min(grid) < 1:
        raise ValueError(f"grid must be 3 positive ints (T, H, W), got {grid!r}")
    if not is_int(block_size) or block_size < 1:
        raise ValueError(f"block_size must be a positive int, got {block_size!r}")
    if last_frame_suffix and not first_frame_prefix:
        raise ValueError("last_frame_suffix=True needs first_frame_prefix=True")
    key = "cpu" if device is None else str(torch.device(device))
    return _layout_on(grid, block_size, curve, bool(first_frame_prefix), bool(last_frame_suffix), key)


@lru_cache(maxsize=32)
def _layout_on(grid: Grid, block_size: int, curve: str, prefix: bool, suffix: bool, device: str) -> TokenLayout:
    """One copy per device so a forward never re-uploads the tables."""
    perm, inverse, adjacency, first, last = _layout_cpu(grid, block_size, curve, prefix, suffix)
    return TokenLayout(grid, block_size, curve, prefix, perm.to(device), inverse.to(device),
                       adjacency.to(device), first.to(device), last.to(device), suffix)


@lru_cache(maxsize=32)
def _layout_cpu(grid: Grid, block_size: int, curve: str, prefix: bool, suffix: bool = False):
    t, h, w = grid
    n = t * h * w
    if prefix:
        suffix = suffix and t > 2  # with 1 or 2 frames the prefix order already isolates the last frame
        head, _ = curve_permutation((1, h, w), curve, block_size=block_size)
        parts = [head]
        middle = t - 1 - int(suffix)
        if middle > 0:
            tail, _ = curve_permutation((middle, h, w), curve, block_size=block_size)
            parts.append(tail + h * w)
        if suffix:
            last, _ = curve_permutation((1, h, w), curve, block_size=block_size)
            parts.append(last + (t - 1) * h * w)
        perm = torch.cat(parts)
        inverse = torch.empty_like(perm)
        inverse[perm] = torch.arange(n, dtype=torch.int64)
        adjacency = adjacency_of_order(grid, inverse, block_size)
    else:
        perm, inverse = curve_permutation(grid, curve, block_size=block_size)
        adjacency = block_adjacency(grid, block_size, curve)
    num_blocks = math.ceil(n / block_size)
    first = torch.zeros(num_blocks, dtype=torch.bool)
    first[torch.unique(inverse[: h * w] // block_size)] = True
    last = torch.zeros(num_blocks, dtype=torch.bool)
    last[torch.unique(inverse[(t - 1) * h * w :] // block_size)] = True
    return perm, inverse, adjacency, first, last
