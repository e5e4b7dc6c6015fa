"""Block lists: the contract between the block selector and the attention kernels.

Tokens are cut into blocks of ``block_size`` consecutive tokens (the last block may be partial).
For queries of length ``Nq`` and keys of length ``Nk`` there are ``Qb = ceil(Nq / block_size)`` query
blocks and ``Kb = ceil(Nk / block_size)`` key blocks. A block mask is stored FlexAttention-style:

- ``kv_count``: ``int32[B, H, Qb]`` -- how many key blocks query block ``q`` attends to.
- ``kv_index``: ``int32[B, H, Qb, Kcap]`` -- the first ``kv_count[b, h, q]`` entries are the key block
  ids, strictly ascending, each in ``[0, Kb)``. Entries past the count are padding (jenga writes 0)
  and are never read.

``B`` and ``H`` may be 1 in both tensors to share one mask across the batch or the heads. Rebuilding the
dense mask is the reference loop::

    for b, h, q:
        for i in range(kv_count[b, h, q]):
            dense[b, h, q, kv_index[b, h, q, i]] = True
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class BlockLists:
    """A block mask as per-query-block lists of key blocks (see the module docstring)."""

    kv_index: torch.Tensor
    kv_count: torch.Tensor
    num_key_blocks: int

    def to_dense(self) -> torch.Tensor:
        """``bool[B, H, Qb, Kb]``: True where query block q attends to key block k."""
        return lists_to_dense(self.kv_index, self.kv_count, self.num_key_blocks)

    def density(self) -> torch.Tensor:
        """Share of (query block, key block) pairs computed, as a 0-d float tensor."""
        return self.kv_count.float().mean() / self.num_key_blocks

    def __repr__(self) -> str:
        b, h, qb, kcap = self.kv_index.shape
        return (
            f"BlockLists(batch={b}, heads={h}, query_blocks={qb}, key_blocks={self.num_key_blocks}, "
            f"capacity={kcap}, density={self.density().item():.3f})"
        )


def dense_to_lists(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``bool[..., Qb, Kb]`` block mask -> ``(kv_index int32[..., Qb, Kb], kv_count int32[..., Qb])``.

    Stays on the device with no host synchronisation: every kept block is scattered to its rank
    among the kept blocks of its row (a cumulative sum), dropped blocks go to a spare column.
    """
    if mask.dtype != torch.bool:
        raise TypeError(f"block mask must be bool, got {mask.dtype}")
    kb = mask.shape[-1]
    rank = mask.to(torch.int32).cumsum(-1, dtype=torch.int32)
    kv_count = rank[..., -1].contiguous()
    target = torch.where(mask, rank - 1, kb).to(torch.int64)
    ids = torch.arange(kb, device=mask.device, dtype=torch.int32).expand_as(rank)
    kv_index = torch.zeros((*mask.shape[:-1], kb + 1), device=mask.device, dtype=torch.int32)
    kv_index.scatter_(-1, target, ids)
    kv_index = kv_index[..., :kb]
    # The spare column took the dropped ids; padding past the count is reset to 0 for determinism.
    valid = torch.arange(kb, device=mask.device) < kv_count.unsqueeze(-1)
    return torch.where(valid, kv_index, 0).contiguous(), kv_count


def lists_to_dense(kv_index: torch.Tensor, kv_count: torch.Tensor, num_key_blocks: int) -> torch.Tensor:
    """Inverse of :func:`dense_to_lists`: ``bool[B, H, Qb, num_key_blocks]``."""
    kcap = kv_index.shape[-1]
    valid = torch.arange(kcap, device=kv_index.device) < kv_count.unsqueeze(-1)
    dense = torch.zeros((*kv_index.shape[:-1], num_key_blocks + 1), dtype=torch.bool, device=kv_index.device)
    target = torch.where(valid, kv_index.to(torch.int64), num_key_blocks)
    dense.scatter_(-1, target, True)
    return dense[..., :num_key_blocks]
