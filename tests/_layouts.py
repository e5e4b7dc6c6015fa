"""The same values in another memory layout: what a user may pass the kernels and the selector."""

from __future__ import annotations

import torch

LAYOUTS = ("contiguous", "last_stride_2", "heads_major", "dim_major", "slice")


def in_layout(t: torch.Tensor, kind: str) -> torch.Tensor:
    """``t`` (``[B, N, H, D]``) as a view with the same values: ``last_stride_2`` (every other element of a wider
    tensor), ``heads_major`` (``[B, H, N, D]`` storage), ``dim_major`` (the head dim outermost: last stride
    ``B * N * H``), ``slice`` (a token window of a longer tensor) or ``contiguous`` (``t`` itself)."""
    if kind == "contiguous":
        return t
    if kind == "last_stride_2":
        wide = torch.zeros(*t.shape[:-1], 2 * t.shape[-1], dtype=t.dtype, device=t.device)
        wide[..., ::2] = t
        return wide[..., ::2]
    if kind == "heads_major":
        return t.transpose(1, 2).contiguous().transpose(1, 2)
    if kind == "dim_major":
        return t.permute(3, 0, 1, 2).contiguous().permute(1, 2, 3, 0)
    if kind == "slice":
        longer = torch.zeros(t.shape[0], t.shape[1] + 3, *t.shape[2:], dtype=t.dtype, device=t.device)
        longer[:, 2 : 2 + t.shape[1]] = t
        return longer[:, 2 : 2 + t.shape[1]]
    raise ValueError(f"unknown layout {kind!r}; accepted: {LAYOUTS}")
