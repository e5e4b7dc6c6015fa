"""What a patched transformer knows of diffusers' context parallelism: the shard arithmetic and the checks.

Below the adapters and the hooks (which read it); :mod:`jenga.parallel` holds the design and the public verb.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

__all__ = ["ParallelState", "check_attached", "check_grid", "check_supported", "context_parallel_config",
           "shard_bounds", "state_of", "video_then_text", "video_tokens_seen"]


@dataclass
class ParallelState:
    """The context-parallel facts one patched transformer needs (set by :func:`attach`)."""

    config: Any  # diffusers ParallelConfig
    world: int
    rank: int
    anything: bool  # ulysses_anything: uneven shards (torch.tensor_split sizes)

    def bounds(self, n: int, rank: int | None = None) -> tuple[int, int]:
        return shard_bounds(n, self.world, self.rank if rank is None else rank, self.anything)

    def local_length(self, n: int) -> int:
        start, stop = self.bounds(n)
        return stop - start


def shard_bounds(n: int, world: int, rank: int, anything: bool) -> tuple[int, int]:
    """``[start, stop)`` of rank ``rank``'s shard of ``n`` tokens, as diffusers' sharders cut them
    (``chunk`` of equal parts, or ``tensor_split`` with ``ulysses_anything``)."""
    if not anything:
        size = n // world
        return rank * size, (rank + 1) * size
    base, extra = divmod(n, world)
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


def context_parallel_config(parallel_config: Any):
    """The set-up ``ContextParallelConfig`` inside a processor's or model's ``_parallel_config``, else None
    (a one-rank mesh counts: it runs the parallel code path with identity split, gather and all-to-all)."""
    if parallel_config is None:
        return None
    cp = getattr(parallel_config, "context_parallel_config", None)
    if cp is None or cp._world_size is None:
        return None
    return cp


def check_supported(cp) -> None:
    if cp.ring_degree > 1:
        raise NotImplementedError(
            f"jenga carving under ring attention (ring_degree={cp.ring_degree}) is not implemented: use "
            "ContextParallelConfig(ulysses_degree=N) (ring_degree=1), or jenga.unpatch() for stock ring attention"
        )


def state_of(transformer: torch.nn.Module) -> ParallelState | None:
    """The :class:`ParallelState` of a transformer with context parallelism enabled, else None."""
    config = getattr(transformer, "_parallel_config", None)
    cp = context_parallel_config(config)
    if cp is None:
        return None
    check_supported(cp)
    import torch.distributed as dist

    rank = dist.get_rank(cp._flattened_mesh.get_group())
    return ParallelState(config, cp.ulysses_degree, rank, bool(cp.ulysses_anything))


def check_attached(runtime: Any) -> None:
    """Called at the start of every patched forward: context parallelism enabled behind jenga's back (with
    the transformer's own ``enable_parallelism`` after ``jenga.patch``) is a clear error, not a bad index."""
    if runtime.parallel is not None or not runtime.processors:
        return
    if context_parallel_config(runtime.processors[0][1]._parallel_config) is not None:
        raise RuntimeError(
            "context parallelism was enabled on this transformer after jenga.patch(): use "
            "jenga.enable_parallelism(pipe, config) (any order with jenga.patch), or call the transformer's "
            "enable_parallelism() before jenga.patch()"
        )


def check_grid(runtime: Any, num_tokens: int) -> None:
    """Equal shards need a token count the degree divides (diffusers asserts it): say so clearly."""
    state = runtime.parallel
    if state is not None and not state.anything and num_tokens % state.world:
        raise ValueError(
            f"{num_tokens} video tokens do not divide by ulysses_degree={state.world}: use "
            f"ContextParallelConfig(ulysses_degree={state.world}, ulysses_anything=True) for uneven shards "
            "(e.g. Wan 480p or the low-resolution stages of a progressive preset)"
        )


def video_tokens_seen(runtime: Any, local: int) -> int:
    """The full video length a processor holding ``local`` video tokens of this forward stands for."""
    state, plan = runtime.parallel, runtime.plan
    if state is not None and plan.active and local == state.local_length(plan.num_tokens):
        return plan.num_tokens
    return local


def video_then_text(state: ParallelState, num_video: int, total: int, local_text: int,
                     device: torch.device) -> torch.Tensor | None:
    """Index putting the gathered ``[v_0, t_0, v_1, t_1, ...]`` (rank order) into ``[video, text]``;
    None when there is no text (the gathered sequence is already the carved sequence)."""
    num_text = total - num_video
    if num_text == 0 and local_text == 0:
        return None
    video, text, base = [], [], 0
    for rank in range(state.world):
        v0, v1 = state.bounds(num_video, rank)
        t0, t1 = state.bounds(num_text, rank)
        video.append(torch.arange(base, base + v1 - v0))
        base += v1 - v0
        text.append(torch.arange(base, base + t1 - t0))
        base += t1 - t0
    return torch.cat(video + text).to(device)
