"""``jenga.patch(pipe)``: attention carving inside diffusers video pipelines; ``unpatch`` undoes it exactly.

What a patch attaches to each transformer (``pipe.transformer`` and, for Wan 2.2 A14B, ``transformer_2``):

- a carving processor on every self-attention module (Wan ``attn1``; HunyuanVideo dual- and single-stream
  ``attn``), wrapping the stock processor it falls back to;
- four named hooks on submodules (:mod:`jenga._hooks`) that apply the carved token order once per forward
  and tell the processors the grid and the step;
- with ``skip_steps``, a ``jenga_skip`` hook on every transformer block (:mod:`jenga.skipping`).

A pipeline patched with stages that differ in scale or shift gets the stage driver
(:mod:`jenga.progressive`): its class is swapped, for this instance only, for a subclass whose
``__call__`` runs the stages in turn; ``unpatch`` puts the original class back.

Nothing runs, moves or changes until the pipeline does: no weights touched, no device moves. ``unpatch``
puts the original processor objects back, removes the hooks and every attribute the patch added.

Example::

    pipe = jenga.patch(pipe)                      # the family's "base" preset
    video = pipe(prompt, num_inference_steps=50).frames
    jenga.unpatch(pipe)

    with jenga.patched(pipe, "turbo", block_size=128):
        ...
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections.abc import Iterator
from typing import Any, NamedTuple

import torch

from . import _hooks, progressive, skipping
from ._parallel_hooks import attach as attach_parallel
from ._record import RECORD_ATTR, PatchRecord, record_of
from ._state import CarvingRuntime, LayerStats
from .adapters import ModelAdapter, adapter_for, supported_pipelines, supported_transformers
from .config import JengaConfig

__all__ = ["Supported", "is_patched", "patch", "patched", "selection_stats", "supported", "unpatch"]

logger = logging.getLogger("jenga")



class Supported(NamedTuple):
    """What :func:`supported` returns: diffusers class names jenga can patch."""

    pipelines: tuple[str, ...]
    transformers: tuple[str, ...]


def supported() -> Supported:
    """Every pipeline and transformer class name jenga patches (from the registered model adapters)."""
    return Supported(supported_pipelines(), supported_transformers())


def patch(
    target: Any,
    config: JengaConfig | str | None = None,
    *,
    scheduler: Any = None,
    **overrides: Any,
) -> Any:
    """Make ``target`` (a Wan/HunyuanVideo pipeline or bare transformer) run block-sparse self-attention.

    Args:
        target: a pipeline (its ``transformer`` and ``transformer_2`` are patched) or a transformer.
        config: a :class:`JengaConfig`, a preset name of the model's family, or ``None`` for its
            ``"base"`` preset.
        scheduler: for a bare transformer in a custom loop, the scheduler whose ``step_index`` gives the
            step (a pipeline's own scheduler is read at each forward, so swapping it is fine).
        overrides: config fields replacing those of ``config`` (validated).

    Returns ``target``. Patching again with an equal config is a no-op; with another config it is a
    ``RuntimeError`` (unpatch first).
    """
    transformers, pipeline = _targets(target)
    adapters = [adapter_for(t) for t in transformers]
    cfg = _resolve_config(config, overrides, adapters[0], transformers[0])
    for transformer, adapter in zip(transformers, adapters, strict=True):
        _check_layers(cfg, adapter, transformer)
        if pipeline is not None and adapter.progressive_unsupported and progressive.needs_driver(cfg):
            raise NotImplementedError(
                f"{type(pipeline).__name__}: this config needs progressive resolution or a stage shift "
                f"(stages {list(cfg.stages)}), which does not apply here: {adapter.progressive_unsupported}. "
                "Use one full-resolution stage without a shift (stages=((1.0, 1.0),)); carving and skip_steps apply"
            )

    records = [record_of(transformer) for transformer in transformers]
    if any(r is not None for r in records):
        if all(r is not None and r.same_patch(cfg, pipeline, scheduler) for r in records):
            logger.debug("jenga: %s is already patched with this config", type(target).__name__)
            return target
        raise RuntimeError(
            f"{type(target).__name__} is already patched with another config or pipeline; "
            "call jenga.unpatch() before patching again"
        )

    done: list[torch.nn.Module] = []
    try:
        for transformer, adapter in zip(transformers, adapters, strict=True):
            _install(transformer, adapter, cfg, pipeline, scheduler)
            done.append(transformer)
        if pipeline is not None and progressive.drives_calls(cfg, pipeline):
            progressive.install_driver(pipeline)
        elif pipeline is None and any(stage.scale < 1.0 for stage in cfg.stages):
            logger.warning(
                "jenga: a bare transformer does not resize: stages below full resolution only run inside a "
                "patched pipeline's call (a custom loop can use jenga.progressive.plan_stages and renoise)"
            )
    except Exception:
        for transformer in done:
            _uninstall(transformer)
        raise
    return target


def unpatch(target: Any) -> Any:
    """Undo :func:`patch`: original processors back, hooks and added attributes removed. Returns ``target``.

    Unpatching something that is not patched does nothing.
    """
    transformers, _ = _targets(target, "jenga.unpatch")
    for transformer in transformers:
        _uninstall(transformer)
    return target


@contextlib.contextmanager
def patched(target: Any, config: JengaConfig | str | None = None, **kwargs: Any) -> Iterator[Any]:
    """``with jenga.patched(pipe, ...):`` patch for the block, unpatch on exit (also on exceptions)."""
    _targets(target, "jenga.patched")  # an unsupported target is named as passed to patched()
    if is_patched(target):
        raise RuntimeError(f"{type(target).__name__} is already patched; jenga.patched() must own its patch")
    patch(target, config, **kwargs)
    try:
        yield target
    finally:
        unpatch(target)


def is_patched(target: Any) -> bool:
    """Whether ``target`` (a supported pipeline or transformer) carries jenga's patch."""
    transformers, _ = _targets(target, "jenga.is_patched")
    return any(record_of(t) is not None for t in transformers)


def selection_stats(target: Any, clear: bool = False) -> list[LayerStats]:
    """Kept-block counts of every sparse layer run so far (needs ``collect_stats=True``)."""
    transformers, _ = _targets(target, "jenga.selection_stats")
    out: list[LayerStats] = []
    for transformer in transformers:
        record = record_of(transformer)
        if record is None:
            continue
        out.extend(record.runtime.stats)
        if clear:
            record.runtime.stats.clear()
    return out


# ----------------------------------------------------------------------------------------------------
# internals


def _targets(target: Any, caller: str = "jenga.patch") -> tuple[list[torch.nn.Module], Any]:
    """The transformers to patch and the pipeline (or None); ``TypeError`` naming ``caller`` (the public
    function the user called) for anything unsupported."""
    if isinstance(target, torch.nn.Module):
        return [_unwrap(target)], None
    if hasattr(target, "components") and hasattr(target, "scheduler"):
        found = [getattr(target, name, None) for name in ("transformer", "transformer_2")]
        transformers = [_unwrap(t) for t in found if t is not None]
        if not transformers:
            raise TypeError(
                f"{type(target).__name__} has no transformer to patch; supported pipelines: "
                f"{', '.join(supported_pipelines())} (any pipeline built on {', '.join(supported_transformers())})"
            )
        for transformer in transformers:
            try:
                adapter_for(transformer)
            except TypeError as err:
                raise TypeError(f"{type(target).__name__}: {err}") from None
        return transformers, target
    raise TypeError(
        f"{caller} expects a diffusers pipeline or transformer, got {type(target).__name__}; supported "
        f"pipelines: {', '.join(supported_pipelines())}; transformers: {', '.join(supported_transformers())}"
    )


def _unwrap(module: torch.nn.Module) -> torch.nn.Module:
    """The module inside ``torch.compile``'s wrapper (patching works on the original instance)."""
    return getattr(module, "_orig_mod", module)


def _resolve_config(config, overrides, adapter: ModelAdapter, transformer: torch.nn.Module) -> JengaConfig:
    if config is None:
        base = JengaConfig.preset("base", model=adapter.preset_model(transformer))
    elif isinstance(config, str):
        base = JengaConfig.preset(config, model=adapter.preset_model(transformer))
    elif isinstance(config, JengaConfig):
        base = config
    else:
        raise TypeError(f"config must be a JengaConfig, a preset name or None, got {type(config).__name__}")
    if not overrides:
        return base
    fields = {f.name for f in dataclasses.fields(JengaConfig)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise ValueError(f"unknown JengaConfig fields {unknown}; accepted: {sorted(fields)}")
    return dataclasses.replace(base, **overrides)


def _check_layers(cfg: JengaConfig, adapter: ModelAdapter, transformer: torch.nn.Module) -> None:
    num_layers = adapter.num_layers(transformer)
    for name, layers in (("dense_layers", cfg.dense_layers),
                         ("layer_cdf_thresholds", [layer for layer, _ in cfg.layer_cdf_thresholds])):
        bad = [layer for layer in layers if layer >= num_layers]
        if bad:
            raise ValueError(f"{name} {bad} out of range: {type(transformer).__name__} has layers "
                             f"0..{num_layers - 1}")


def _install(transformer, adapter: ModelAdapter, cfg: JengaConfig, pipeline: Any, scheduler: Any) -> None:
    pipeline_name = type(pipeline).__name__ if pipeline is not None else None
    adapter.check_pipeline(pipeline_name, cfg)
    i2v_pipeline = pipeline is not None and pipeline_name in adapter.image_to_video_pipelines
    first_frame = cfg.first_frame
    if first_frame is None:
        first_frame = i2v_pipeline or adapter.image_conditioned(transformer)
    runtime = CarvingRuntime(
        cfg,
        adapter.patch_size(transformer),
        first_frame=first_frame,
        first_frame_prefix=first_frame or adapter.needs_first_frame_prefix(transformer),
        pipeline=pipeline,
        scheduler=scheduler,
        step_from_timesteps=adapter.step_from_timesteps(pipeline_name),
    )
    record = PatchRecord(cfg, adapter, runtime, processors=[], hooks=[])
    transformer.__dict__[RECORD_ATTR] = record  # before the first change, so a failure can be undone
    try:
        for site in adapter.attention_sites(transformer):
            stock = site.module.processor
            carving = adapter.make_processor(stock, site, runtime, dense=site.layer in cfg.dense_layers)
            site.module.set_processor(carving)
            record.processors.append((site.module, stock))
            runtime.processors.append((site.layer, carving))
        if cfg.skip_steps:  # first: inside the token-order hooks, so residuals are in the blocks' order
            blocks = adapter.block_stack(transformer)
            skipping.check_no_block_cache(blocks)
            for block in blocks:  # before any hook: a block diffusers has no metadata for fails here
                skipping.block_metadata(block)
            runtime.skip_blocks = blocks  # checked again at every forward (skipping.check_skip_stack)
            for index, block in enumerate(blocks):
                hook = skipping.BlockSkipHook(runtime, blocks, first=index == 0, last=index == len(blocks) - 1)
                had_registry, had_forward = _hooks.register(block, hook, skipping.SKIP_HOOK)
                record.hooks.append((block, skipping.SKIP_HOOK, had_registry, had_forward))
        sites = adapter.hook_sites(transformer)
        for module, hook, name in (
            (sites.rope, _hooks.LayoutHook(runtime, adapter, sites.rope_arg, transformer), _hooks.LAYOUT_HOOK),
            (sites.clock, _hooks.ClockHook(runtime, adapter, sites.clock_arg, first=sites.clock_first),
             _hooks.CLOCK_HOOK),
            (sites.enter, _hooks.EnterHook(runtime, sites.enter_on, sites.enter_arg), _hooks.ENTER_HOOK),
            (sites.exit, _hooks.ExitHook(runtime, sites.exit_arg), _hooks.EXIT_HOOK),
        ):
            had_registry, had_forward = _hooks.register(module, hook, name)
            record.hooks.append((module, name, had_registry, had_forward))
        for module, hook, name in adapter.extra_hooks(transformer, runtime):
            had_registry, had_forward = _hooks.register(module, hook, name)
            record.hooks.append((module, name, had_registry, had_forward))
        attach_parallel(transformer, record)
        _invalidate_hook_cache(transformer)
    except Exception:
        _uninstall(transformer)
        raise
    logger.debug("jenga: patched %s: %r", type(transformer).__name__, record)


def _uninstall(transformer: torch.nn.Module) -> None:
    record = transformer.__dict__.pop(RECORD_ATTR, None)
    if record is None:
        return
    pipeline = record.runtime.pipeline_object()
    if pipeline is not None:
        progressive.remove_driver(pipeline)
    for module, stock in record.processors:
        module.set_processor(stock)
    for module, name, had_registry, had_forward in reversed(record.hooks):
        _hooks.unregister(module, name, had_registry, had_forward)
    record.runtime.reset()
    _invalidate_hook_cache(transformer)


def _invalidate_hook_cache(transformer: torch.nn.Module) -> None:
    """diffusers caches each model's list of hook registries (for ``cache_context``); ours just changed."""
    registry = transformer.__dict__.get("_diffusers_hook")
    if registry is not None:
        registry.invalidate_child_registries_cache()
