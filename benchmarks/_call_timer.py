"""Timing a pipeline's transformer calls (``pipeline.py``): each call's kind (stage, dense or carved, computed
or skipped) is known from the schedule before it runs; composed mode times each kind a few times and replays its
last output for the rest."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

import jenga


@dataclass
class Call:
    """One transformer call of a run."""

    index: int
    step: int
    kind: tuple
    shape: tuple[int, ...]
    computed: bool
    seconds: float
    sparse: bool | None = None
    skip: bool | None = None
    # carved attention layers that ran in this call (jenga files one LayerStats per layer that ran the block-
    # sparse kernel); None without a jenga patch collecting statistics. Work done, not time: load-proof
    carved_layers: int | None = None


class CallTimer:
    """Wraps ``module.forward`` (the compiled wrapper's too): times each call; in composed mode returns the
    last output of a kind again once that kind has its samples.

    The kind of a call is known before it runs, from the schedule: step = call index // calls per step, then
    the config's stage, dense-step range and skip set at that step, plus the latent shape.
    """

    def __init__(self, module: torch.nn.Module, cfg: jenga.JengaConfig | None, steps: int, branches: int,
                 replay: bool, warmup: int, samples: int, sync: Callable[[], None], plan: Callable[[], Any],
                 carved: Callable[[], int | None] | None = None) -> None:
        self.module, self.cfg, self.steps, self.branches = module, cfg, steps, branches
        self.replay, self.warmup, self.samples, self.sync, self.plan = replay, warmup, samples, sync, plan
        self.carved = carved or (lambda: None)
        self.skipped = _skipped_steps(cfg, steps)
        self.calls: list[Call] = []
        self.outputs: dict[tuple, Any] = {}
        self.computed: dict[tuple, int] = {}
        self._saved = module.__dict__.get("forward")
        self._inner = module.forward

    def __enter__(self) -> CallTimer:
        self.module.forward = self._forward
        return self

    def __exit__(self, *exc: object) -> None:
        if self._saved is None:
            del self.module.forward
        else:
            self.module.forward = self._saved

    def kind_of(self, step: int, shape: tuple[int, ...]) -> tuple:
        if self.cfg is None:
            return (shape, "stock")
        progress = step / self.steps
        dense = progress < self.cfg.dense_steps - 1e-9 or not self.cfg.carves(
            self.cfg.drop_rates[self.cfg.stage_at(progress)])
        return (shape, f"stage{self.cfg.stage_at(progress)}", "dense" if dense else "sparse",
                "skipped" if step in self.skipped else "computed")

    def _forward(self, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        index = len(self.calls)
        step = index // self.branches
        shape = tuple(hidden_states.shape)
        kind = self.kind_of(step, shape)
        done = self.computed.get(kind, 0)
        if self.replay and done >= self.warmup + self.samples and kind in self.outputs:
            start = time.perf_counter()
            out = _clone(self.outputs[kind])
            self.calls.append(Call(index, step, kind, shape, False, time.perf_counter() - start))
            return out
        carved_before = self.carved()
        self.sync()
        start = time.perf_counter()
        out = self._inner(hidden_states, *args, **kwargs)
        self.sync()
        seconds = time.perf_counter() - start
        plan, carved_after = self.plan(), self.carved()
        carved = None if carved_before is None or carved_after is None else carved_after - carved_before
        self.calls.append(Call(index, step, kind, shape, True, seconds, getattr(plan, "sparse", None),
                               getattr(plan, "skip", None), carved))
        self.computed[kind] = done + 1
        if self.replay:
            self.outputs[kind] = out
        return out

    def kind_medians(self) -> dict[tuple, float]:
        """Median seconds per kind over its timed (post-warm-up) computed calls."""
        timed: dict[tuple, list[float]] = {}
        seen: dict[tuple, int] = {}
        for call in self.calls:
            if not call.computed:
                continue
            seen[call.kind] = seen.get(call.kind, 0) + 1
            if seen[call.kind] > self.warmup or not self.replay:
                timed.setdefault(call.kind, []).append(call.seconds)
        for call in self.calls:  # a kind seen fewer times than its warm-up: its only (warm) figures
            if call.computed and call.kind not in timed:
                timed.setdefault(call.kind, []).append(call.seconds)
        return {kind: statistics.median(times) for kind, times in timed.items()}


def _clone(out: Any) -> Any:
    if isinstance(out, torch.Tensor):
        return out.clone()
    if isinstance(out, tuple):
        return tuple(_clone(x) for x in out)
    return out


def _skipped_steps(cfg: jenga.JengaConfig | None, steps: int) -> frozenset[int]:
    """The steps the config skips, by jenga's own rule when this jenga has step skipping."""
    if cfg is None or not cfg.skip_steps:
        return frozenset()
    if hasattr(cfg, "skipped_steps"):
        return cfg.skipped_steps(steps)
    try:  # a jenga before the rule moved to JengaConfig
        from jenga.skipping import skipped_steps
    except ImportError:  # a jenga before step skipping: nothing is skipped, and the output says so
        return frozenset()
    return skipped_steps(cfg, steps)


def plan_reader(transformer: torch.nn.Module) -> Callable[[], Any]:
    """jenga's plan of the last forward (the patch record is jenga's internal state: read, never changed)."""
    def read() -> Any:
        record = transformer.__dict__.get("_jenga_patch")
        return None if record is None else record.runtime.plan
    return read


def carved_layer_counter(transformer: torch.nn.Module) -> Callable[[], int | None]:
    """How many carved-layer records (LayerStats) jenga has filed so far: the difference over a call is the
    number of attention layers that really ran block-sparse in it. None when unpatched or without
    ``collect_stats`` (no records, so no evidence either way)."""
    def count() -> int | None:
        record = transformer.__dict__.get("_jenga_patch")
        if record is None or not record.runtime.config.collect_stats:
            return None
        return len(record.runtime.stats)
    return count
