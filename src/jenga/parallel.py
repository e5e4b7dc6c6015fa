"""Attention carving inside diffusers' context parallelism (Ulysses).

Design (see README "Several GPUs"):

- **Order before split.** The curve order is applied to the *full* sequence (RoPE tables, hidden states)
  before diffusers' context-parallel plan splits it, so each rank holds a contiguous shard of the
  *carved* sequence. diffusers' hooks and ours sit on the same submodules; :func:`attach` rebuilds each
  shared module's hook chain so that ours run on the full tensors (a ``post_forward`` that reorders runs
  inside the split, a ``pre_forward`` that reorders runs outside it), whichever of ``enable_parallelism``
  and ``jenga.patch`` came first.
- **Carve after the all-to-all.** Under Ulysses the all-to-all inside attention hands every rank the full
  sequence for ``H / degree`` heads, concatenated in rank order: the carved sequence itself. The carving
  processors call diffusers' templated context-parallel attention with a ``forward_op`` of ours, which runs
  block selection and the block-sparse kernel on exactly what one GPU would see for those heads
  (selection is per head, so the lists are the single-GPU lists). Joint text tokens (HunyuanVideo) come
  back interleaved per rank (video shard, text shard, ...): the op gathers them into (video, text), carves,
  and scatters back.
- **Undo after the gather.** The inverse order is applied after the plan's gather at ``proj_out`` (the
  output norm and projection act per token, so this equals undoing it before them).

Ring attention (``ring_degree > 1``) raises ``NotImplementedError``: each rank would need global block
lists over keys it never holds, and the kernel's LSE merge across ring steps is not built yet.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch
from diffusers.hooks import ModelHook

logger = logging.getLogger("jenga")

__all__ = ["ParallelState", "attach", "carve_attention_ulysses", "context_parallel_config", "enable_parallelism",
           "shard_bounds"]

PARALLEL_EXIT_HOOK = "jenga_parallel_exit"
_CP_PREFIXES = ("cp_input---", "cp_output---", "jenga_cp_")


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


def _check_supported(cp) -> None:
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
    _check_supported(cp)
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


# ----------------------------------------------------------------------------------------------------
# attention: diffusers' Ulysses all-to-all around our carving


def carve_attention_ulysses(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    runtime: Any,
    *,
    owner: Any,
    attention_mask: torch.Tensor | None = None,
    dense: bool = False,
) -> torch.Tensor:
    """Local ``[B, S_local, H, D]`` (this rank's carved video shard, then its text shard if any) in,
    local out; in between, diffusers' Ulysses all-to-all and :func:`jenga.adapters.base.carve_attention`
    on the full sequence for ``H / degree`` heads. ``attention_mask``: a bool key mask ``[B, 1, 1, S_local]``
    (valid prefix of the full text, HunyuanVideo)."""
    from diffusers.models.attention_dispatch import _templated_context_parallel_attention

    from .adapters.base import carve_attention

    state = runtime.parallel
    num_video = runtime.plan.num_tokens
    local_video = state.local_length(num_video)
    local_text = query.shape[1] - local_video

    def forward_op(ctx, q, k, v, attn_mask, dropout_p, is_causal, scale, enable_gqa, return_lse,
                   _save_ctx=True, _parallel_config=None):
        if return_lse:
            raise NotImplementedError("jenga's Ulysses carving returns no LSE")
        order = _video_then_text(state, num_video, q.shape[1], local_text, q.device)
        if order is not None:
            q, k, v = (x.index_select(1, order) for x in (q, k, v))
            if attn_mask is not None:
                attn_mask = attn_mask.index_select(-1, order)
        key_lengths = None
        if attn_mask is not None:
            key_lengths = attn_mask.reshape(attn_mask.shape[0], -1).sum(-1)
        out = carve_attention(q, k, v, runtime, owner=owner, key_lengths=key_lengths, dense=dense)
        if order is not None:
            out = out.index_select(1, torch.argsort(order))
        return out

    if state.world == 1:  # diffusers' dispatch runs no context-parallel op on one rank either
        return forward_op(None, query, key, value, attention_mask, 0.0, False, None, False, False)
    return _templated_context_parallel_attention(
        query, key, value, attention_mask, 0.0, False, None, False, False,
        forward_op=forward_op, backward_op=None, _parallel_config=state.config,
    )


def _video_then_text(state: ParallelState, num_video: int, total: int, local_text: int,
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


# ----------------------------------------------------------------------------------------------------
# hooks: order relative to diffusers' context-parallel hooks


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
    from ._hooks import EnterHook

    if isinstance(hook, EnterHook) and hook.on == "input":
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
    from . import _hooks

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


def enable_parallelism(target: Any, config: Any, *, cp_plan: dict | None = None) -> Any:
    """``transformer.enable_parallelism(config=..., cp_plan=...)`` for every transformer of ``target`` (a
    pipeline or a transformer), with the family's plan (HunyuanVideo has none in diffusers: jenga's), before
    or after :func:`jenga.patch`. ``config``: a ``ContextParallelConfig`` or ``ParallelConfig``."""
    from .adapters import adapter_for
    from .patching import _RECORD, _targets

    transformers, _ = _targets(target)
    for transformer in transformers:
        adapter = adapter_for(transformer)
        plan = cp_plan if cp_plan is not None else adapter.cp_plan(transformer)
        cp = getattr(config, "context_parallel_config", config)
        if cp is not None and _RECORD in transformer.__dict__:
            _check_supported(cp)  # before sharding: a patched transformer is left as it was
        transformer.enable_parallelism(config=config, cp_plan=plan)
        adapter.after_parallelism(transformer)
        record = transformer.__dict__.get(_RECORD)
        if record is not None:
            attach(transformer, record)
    return target

