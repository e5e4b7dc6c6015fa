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

from typing import Any

from ._parallel_hooks import attach
from ._parallel_state import ParallelState, check_supported, context_parallel_config, shard_bounds
from ._record import record_of
from .adapters import adapter_for, check_context_parallel
from .adapters.ulysses import carve_attention_ulysses
from .patching import _targets

__all__ = ["ParallelState", "attach", "carve_attention_ulysses", "context_parallel_config", "enable_parallelism",
           "shard_bounds"]


def enable_parallelism(target: Any, config: Any, *, cp_plan: dict | None = None) -> Any:
    """``transformer.enable_parallelism(config=..., cp_plan=...)`` for every transformer of ``target`` (a
    pipeline or a transformer), with the family's plan (HunyuanVideo has none in diffusers: jenga's), before
    or after :func:`jenga.patch`. ``config``: a ``ContextParallelConfig`` or ``ParallelConfig``."""
    transformers, _ = _targets(target, "jenga.enable_parallelism")
    for transformer in transformers:  # every one checked before any is sharded
        check_context_parallel(transformer)
    for transformer in transformers:
        adapter = adapter_for(transformer)
        plan = cp_plan if cp_plan is not None else adapter.cp_plan(transformer)
        cp = getattr(config, "context_parallel_config", config)
        if cp is not None and record_of(transformer) is not None:
            check_supported(cp)  # before sharding: a patched transformer is left as it was
        transformer.enable_parallelism(config=config, cp_plan=plan)
        adapter.after_parallelism(transformer)
        record = record_of(transformer)
        if record is not None:
            attach(transformer, record)
    return target
