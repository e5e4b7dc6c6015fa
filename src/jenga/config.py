"""``JengaConfig``: every knob of attention carving, progressive resolution and step skipping, plus the
named presets of the reference implementation per model family.

The config holds data only. It is frozen and validated on construction: a bad value raises ``ValueError``
naming the field, the value and what is accepted. ``patch(pipe)`` without a config picks the model
family's ``"base"`` preset (see :func:`default_model_for`).

Schedules are fractions of the run, never step numbers: with 50 steps, ``dense_steps=0.1`` keeps steps
0-4 dense and a stage ending at ``0.5`` covers steps 0-24.

Example::

    cfg = JengaConfig.preset("turbo", model="hunyuan")
    cfg = JengaConfig(drop_rates=0.8, cdf_threshold=0.5, block_size=128, dense_steps=0.1)
    cfg = dataclasses.replace(cfg, curve="hilbert")  # validated again
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
import numbers
from dataclasses import dataclass
from typing import Any, NamedTuple

from ._checks import is_int
from .attention import BACKENDS, SUPPORTED_BLOCK_SIZES
from .curves import CURVES

__all__ = ["HUNYUAN_23_OF_50", "MODELS", "PRESETS", "SKIP_SCHEDULES", "UPSAMPLE_MODES", "JengaConfig", "Stage"]

UPSAMPLE_MODES = ("trilinear", "area")
# slack on comparisons of run fractions: progress from sigmas is inexact (1 - 900 / 1000 < 0.1)
PROGRESS_SLACK = 1e-9


class Stage(NamedTuple):
    """One progressive-resolution stage: it runs until ``until`` (a fraction of the steps) at ``scale``.

    ``scale`` shrinks the latent's height and width (1.0 = full resolution); ``shift`` is the flow-matching
    shift for the stage's sigmas (``None`` keeps the scheduler's own).
    """

    scale: float
    until: float
    shift: float | None = None

    def continues(self, previous: Stage) -> bool:
        """Same scale and shift as ``previous``: the trajectory goes on (no resize, no re-noise)."""
        return (self.scale, self.shift) == (previous.scale, previous.shift)


FULL_RESOLUTION = (Stage(1.0, 1.0, None),)


@dataclass(frozen=True)
class JengaConfig:
    """Attention carving, progressive-resolution and step-skipping settings, validated on construction.

    Attributes:
        drop_rates: per stage, the share of video key blocks a query block may drop (``[0, 1)``); a single
            float applies to every stage. Default ``0.75``.
        cdf_threshold: ``p``, the softmax mass of block scores the kept blocks must reach (``[0, 1]``).
            Default ``0.9``.
        block_size: tokens per block, one of the kernel's sizes (16, 32, 64, 128, 256). Default 128.
        curve: token order, ``"zorder"`` (default), ``"hilbert"`` or ``"raster"``.
        stages: progressive-resolution stages, ``(scale, until, shift)`` each: ``until`` strictly
            increasing and ending at 1.0, ``scale`` never decreasing and ending at 1.0. Default: one
            full-resolution stage. The stage of a step picks its drop rate; a change of scale or shift
            between stages makes the patched pipeline run the stages in turn (:mod:`jenga.progressive`).
        dense_steps: share of the first steps kept dense (``[0, 1]``). Default 0.
        dense_layers: transformer layer ids that always run dense attention. Default none.
        dense_threshold: a drop rate at or below this runs the stock dense attention (``None``: never, so
            drop rate 0 runs the block-sparse path with every block kept). Default 0.25.
        min_video_blocks: fewer video blocks than this run dense (tiny grids, short clips). Default 4.
        adjacency: keep the 3D neighbour blocks of each query block. Default True.
        condition: keep every text key block for every video query (joint attention). Default True.
        first_frame: image-to-video: keep the first latent frame's key blocks for every query.
            ``None`` (default) switches it on for image-to-video pipelines and image-conditioned transformers.
        text_amplifier: ``rho`` of the low-resolution text-attention bias (HunyuanVideo, stages below
            full resolution): ``rho * ln(N_full / N_stage)`` is added to the text-key logits. Default 0.
        skip_steps: fractions of the run whose steps reuse the previous computed step's residual, each in
            ``(0, 1)``, strictly increasing, never the start of a stage (see :mod:`jenga.skipping` for how
            fractions map to steps), or a named schedule (``"hunyuan-23-of-50"``, the reference HunyuanVideo
            schedule). Default none.
        upsample: latent interpolation at a stage switch, ``"trilinear"`` (default) or ``"area"``.
        backend: attention kernel, ``"auto"`` (Triton on CUDA, torch elsewhere), ``"triton"``, ``"torch"``
            or ``"flex"``.
        collect_stats: record every sparse layer's kept-block counts (see :func:`jenga.selection_stats`).
        layer_cdf_thresholds: per-layer ``p`` overriding ``cdf_threshold`` for those layers: a mapping
            ``{layer id: p}`` with ``p`` one float in ``[0, 1]`` or one per stage (what
            :func:`jenga.calibrate` with ``layer_thresholds=True`` picks: concentrated layers reach a recall
            with fewer blocks than diffuse ones). Normalised to sorted ``((layer, (p per stage, ...)), ...)``
            pairs (hashable, like every field); read a layer's value with :meth:`cdf_threshold_at`. A layer may
            not also be in ``dense_layers``. Default none. Regional compilation (blocks compiled one by one)
            shares a graph between layers with the same ``p`` and compiles one more per distinct value and stage:
            a calibrated config with many distinct values needs ``torch._dynamo.config.recompile_limit`` raised
            above 8 (on the tiny 10-layer Wan test model, 4 distinct values over 2 stages already exceed it).
    """

    drop_rates: tuple[float, ...] | float = 0.75
    cdf_threshold: float = 0.9
    block_size: int = 128
    curve: str = "zorder"
    stages: tuple[Stage, ...] = FULL_RESOLUTION
    dense_steps: float = 0.0
    dense_layers: tuple[int, ...] = ()
    dense_threshold: float | None = 0.25
    min_video_blocks: int = 4
    adjacency: bool = True
    condition: bool = True
    first_frame: bool | None = None
    text_amplifier: float = 0.0
    skip_steps: tuple[float, ...] = ()
    upsample: str = "trilinear"
    backend: str = "auto"
    collect_stats: bool = False
    layer_cdf_thresholds: tuple[tuple[int, tuple[float, ...]], ...] | dict[int, Any] | None = ()

    def __post_init__(self) -> None:
        stages = _check_stages(self.stages)
        set_ = lambda name, value: object.__setattr__(self, name, value)  # frozen: normalise once here
        set_("stages", stages)
        set_("drop_rates", _check_drop_rates(self.drop_rates, len(stages)))
        set_("cdf_threshold", _check_fraction("cdf_threshold", self.cdf_threshold, upper_open=False))
        if not is_int(self.block_size) or self.block_size not in SUPPORTED_BLOCK_SIZES:
            raise ValueError(f"block_size must be one of {SUPPORTED_BLOCK_SIZES}, got {self.block_size!r}")
        if self.curve not in CURVES:
            raise ValueError(f"curve must be one of {CURVES}, got {self.curve!r}")
        set_("dense_steps", _check_fraction("dense_steps", self.dense_steps, upper_open=False))
        set_("dense_layers", _check_layers(self.dense_layers))
        if self.dense_threshold is not None:
            set_("dense_threshold", _check_fraction("dense_threshold", self.dense_threshold, upper_open=True))
        if not is_int(self.min_video_blocks) or self.min_video_blocks < 1:
            raise ValueError(f"min_video_blocks must be an int >= 1, got {self.min_video_blocks!r}")
        for name in ("adjacency", "condition", "collect_stats"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be True or False, got {getattr(self, name)!r}")
        if self.first_frame is not None and not isinstance(self.first_frame, bool):
            raise ValueError(f"first_frame must be True, False or None (auto), got {self.first_frame!r}")
        if not _is_real(self.text_amplifier) or not 0.0 <= self.text_amplifier < math.inf:
            raise ValueError(f"text_amplifier (rho) must be a finite float >= 0, got {self.text_amplifier!r}")
        set_("text_amplifier", float(self.text_amplifier))
        if isinstance(self.skip_steps, str):
            set_("skip_steps", _named_skip_schedule(self.skip_steps, stages))
        set_("skip_steps", _check_skip_steps(self.skip_steps, stages))
        if self.upsample not in UPSAMPLE_MODES:
            raise ValueError(f"upsample must be one of {UPSAMPLE_MODES}, got {self.upsample!r}")
        if self.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {self.backend!r}")
        set_("layer_cdf_thresholds", _check_layer_thresholds(self.layer_cdf_thresholds, len(stages)))
        clash = sorted(set(self.dense_layers) & {layer for layer, _ in self.layer_cdf_thresholds})
        if clash:
            raise ValueError(f"layers {clash} are in both dense_layers and layer_cdf_thresholds: a dense layer keeps "
                             "every block, so its threshold would be ignored; remove them from one of the two")

    # -- derived facts used by the patch

    def stage_at(self, progress: float) -> int:
        """Index of the stage that runs at ``progress`` (share of the run already done, ``[0, 1]``)."""
        for index, stage in enumerate(self.stages):
            if progress < stage.until - PROGRESS_SLACK:
                return index
        return len(self.stages) - 1

    def stage_steps(self, num_steps: int) -> list[tuple[int, int]]:
        """Per stage, its steps ``[start, end)`` in a run of ``num_steps`` (:meth:`stage_of_step` reads them).

        A stage shorter than one step comes out empty, except the last (full-resolution) stage: it always
        gets at least the last step, so the run ends at the requested size however few the steps."""
        spans, start = [], 0
        for index, stage in enumerate(self.stages):
            last = index == len(self.stages) - 1
            until = math.ceil((stage.until - PROGRESS_SLACK) * num_steps)
            end = num_steps if last else max(start, min(num_steps - 1, until))
            spans.append((start, end))
            start = end
        return spans

    def stage_of_step(self, step: int, num_steps: int) -> int:
        """Index of the stage that runs step ``step`` of a ``num_steps`` run (as :meth:`stage_steps` cuts it)."""
        for index, (_, end) in enumerate(self.stage_steps(num_steps)):
            if step < end:
                return index
        return len(self.stages) - 1

    def switch_points(self) -> tuple[float, ...]:
        """Stage ends where the next stage changes scale or shift (a resize or re-noise happens there);
        stages that differ only in drop rate continue the same trajectory."""
        return tuple(_switch_points(self.stages))

    def switch_steps(self, num_steps: int) -> frozenset[int]:
        """Steps of a ``num_steps`` run that start a new resolution or shift (always computed)."""
        spans = self.stage_steps(num_steps)
        pairs = zip(self.stages, self.stages[1:], spans[1:], strict=False)
        return frozenset(span[0] for a, b, span in pairs if not b.continues(a))

    def skipped_steps(self, num_steps: int) -> frozenset[int]:
        """Steps of a ``num_steps`` run that reuse the cached residual (``skip_steps``; never step 0 nor a
        step of :meth:`switch_steps`). The rule: ``tests/test_skipping.py``."""
        return _skipped_steps(self, num_steps)

    def cdf_threshold_at(self, layer: int, stage: int) -> float:
        """The ``p`` of ``layer`` in ``stage``: its ``layer_cdf_thresholds`` entry, else ``cdf_threshold``."""
        for entry, thresholds in self.layer_cdf_thresholds:
            if entry == layer:
                return thresholds[stage]
        return self.cdf_threshold

    def carves(self, drop_rate: float) -> bool:
        """Whether a stage with this drop rate runs block-sparse attention at all (``dense_threshold=None``:
        always, even at drop rate 0, which keeps every block)."""
        return self.dense_threshold is None or drop_rate > self.dense_threshold

    @property
    def ever_sparse(self) -> bool:
        """False when no stage can carve: the patch then never reorders tokens (exact stock output)."""
        return self.dense_steps < 1.0 and any(self.carves(d) for d in self.drop_rates)

    # -- presets and round trips

    @classmethod
    def preset(cls, name: str = "base", model: str | None = None, **overrides: Any) -> JengaConfig:
        """The reference implementation's preset ``name`` for a model family, with optional overrides.

        ``model``: ``"hunyuan"`` (HunyuanVideo), ``"wan"`` (Wan 1.3B/5B, also VACE 1.3B), ``"wan-14b"`` (Wan 14B,
        A14B, VACE 14B); principled defaults without reference values: ``"skyreels-v2"`` / ``"skyreels-v2-14b"``
        (Wan's values), ``"cogvideox"``, ``"ltx"``,
        ``"hunyuan15"`` (HunyuanVideo 1.5: ``base``, ``turbo``, ``flash``).
        Without ``model`` the Wan (1.3B/5B) family's preset is returned and logged at INFO level, because the
        families' values differ; ``jenga.patch(pipe, "base")`` picks the family from the pipeline instead.
        Names: ``"base"`` and ``"turbo"`` for every family, ``"flash"`` and ``"3stage"`` for HunyuanVideo.
        """
        if model is None:
            model = "wan"
            logging.getLogger("jenga").info(
                "JengaConfig.preset(%r) without model=: using the 'wan' family's values (accepted families: %s)",
                name, ", ".join(PRESETS))
        if model not in PRESETS:
            raise ValueError(f"unknown model family {model!r}; accepted: {tuple(PRESETS)}")
        if name not in PRESETS[model]:
            raise ValueError(f"unknown preset {name!r} for model {model!r}; accepted: {tuple(PRESETS[model])}")
        return cls(**{**PRESETS[model][name], **overrides})

    def to_dict(self) -> dict[str, Any]:
        """Plain data (tuples as lists) that ``JengaConfig.from_dict`` turns back into an equal config."""
        data = dataclasses.asdict(self)
        data["stages"] = [list(s) for s in self.stages]
        for name in ("drop_rates", "dense_layers", "skip_steps"):
            data[name] = list(data[name])
        # JSON object keys are strings: layer ids as "3", read back by from_dict
        data["layer_cdf_thresholds"] = {str(layer): list(p) for layer, p in self.layer_cdf_thresholds}
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> JengaConfig:
        """Inverse of :meth:`to_dict`; unknown keys are an error."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown JengaConfig fields {unknown}; accepted: {sorted(known)}")
        thresholds = data.get("layer_cdf_thresholds")
        if isinstance(thresholds, dict):  # JSON gives the layer ids as strings
            data = {**data, "layer_cdf_thresholds": {_layer_key(k): v for k, v in thresholds.items()}}
        return cls(**data)


# ----------------------------------------------------------------------------------------------------
# validation helpers: each names the field, the value and what is accepted


# a skip fraction this close to the midpoint between two steps skips neither (a tie)
_SKIP_TIE = 1e-6


@functools.lru_cache(maxsize=64)
def _skipped_steps(config: JengaConfig, num_steps: int) -> frozenset[int]:
    """Step ``i`` is skipped when a fraction lies closer to ``i / n`` than both half a step of the run and
    half the smallest spacing of ``skip_steps`` (so a coarse run does not skip everything)."""
    starts = config.switch_steps(num_steps)
    fractions = config.skip_steps
    reach = 0.5 / num_steps
    if len(fractions) > 1:
        reach = min(reach, min(b - a for a, b in zip(fractions, fractions[1:], strict=False)) / 2)
    out = set()
    for fraction in fractions:
        step = round(fraction * num_steps)
        if abs(fraction - step / num_steps) < reach - _SKIP_TIE and 0 < step < num_steps and step not in starts:
            out.add(step)
    return frozenset(out)


def _is_real(value: object) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _check_fraction(name: str, value: object, *, upper_open: bool) -> float:
    upper_ok = (lambda v: v < 1.0) if upper_open else (lambda v: v <= 1.0)
    if not _is_real(value) or not (value >= 0.0 and upper_ok(value)):
        interval = "[0, 1)" if upper_open else "[0, 1]"
        hint = " (a fraction of the run: 0.1 keeps the first 10% of the steps dense)" if name == "dense_steps" else ""
        raise ValueError(f"{name} must be a float in {interval}{hint}, got {value!r}")
    return float(value)


def _check_stages(stages: object) -> tuple[Stage, ...]:
    if not isinstance(stages, (tuple, list)) or not stages:
        raise ValueError(f"stages must be a non-empty tuple of (scale, until, shift), got {stages!r}")
    out = []
    for i, stage in enumerate(stages):
        if not isinstance(stage, (tuple, list)) or len(stage) not in (2, 3):
            raise ValueError(f"stages[{i}] must be (scale, until[, shift]), got {stage!r}")
        scale, until, shift = (*stage, None) if len(stage) == 2 else stage
        if not _is_real(scale) or not 0.0 < scale <= 1.0:
            raise ValueError(f"stages[{i}] scale must be in (0, 1], got {scale!r}")
        if not _is_real(until) or not 0.0 < until <= 1.0:
            raise ValueError(f"stages[{i}] until (fraction of the steps) must be in (0, 1], got {until!r}")
        if shift is not None and (not _is_real(shift) or not 0.0 < shift < math.inf):
            raise ValueError(f"stages[{i}] shift must be a positive float or None, got {shift!r}")
        out.append(Stage(float(scale), float(until), None if shift is None else float(shift)))
    ends = [s.until for s in out]
    if any(b <= a for a, b in zip(ends, ends[1:], strict=False)) or ends[-1] != 1.0:
        raise ValueError(f"stage ends must increase strictly and finish at 1.0, got {ends}")
    scales = [s.scale for s in out]
    if any(b < a for a, b in zip(scales, scales[1:], strict=False)):
        raise ValueError(f"stage scales must not decrease (low resolution first), got {scales}")
    if out[-1].scale != 1.0:
        raise ValueError(f"the last stage must run at full resolution (scale 1.0), got {out[-1].scale}")
    return tuple(out)


def _switch_points(stages: tuple[Stage, ...]) -> list[float]:
    """Stage ends where scale or shift changes (see :meth:`JengaConfig.switch_points`)."""
    return [a.until for a, b in zip(stages, stages[1:], strict=False) if not b.continues(a)]


def _check_drop_rates(drop_rates: object, num_stages: int) -> tuple[float, ...]:
    rates = (drop_rates,) * num_stages if _is_real(drop_rates) else drop_rates
    if not isinstance(rates, (tuple, list)) or len(rates) != num_stages:
        raise ValueError(
            f"drop_rates must be one float or one per stage ({num_stages} stages), got {drop_rates!r}"
        )
    for rate in rates:
        if not _is_real(rate) or not 0.0 <= rate < 1.0:
            where = f" in {drop_rates!r}" if isinstance(drop_rates, (tuple, list)) else ""
            raise ValueError(f"each drop rate must be a float in [0, 1), got {rate!r}{where}")
    return tuple(float(r) for r in rates)


def _check_layers(layers: object) -> tuple[int, ...]:
    if not isinstance(layers, (tuple, list, set, frozenset)) or not all(is_int(x) and x >= 0 for x in layers):
        raise ValueError(f"dense_layers must be a collection of layer ids (ints >= 0), got {layers!r}")
    return tuple(sorted({int(x) for x in layers}))


def _layer_key(key: object) -> object:
    """A layer id read back from JSON (``"3"``); anything else is left for the validation to name."""
    return int(key) if isinstance(key, str) and key.isdigit() else key


def _check_layer_thresholds(value: object, num_stages: int) -> tuple[tuple[int, tuple[float, ...]], ...]:
    """``{layer: p or (p per stage)}`` (or the normalised pairs) as sorted ``((layer, (p, ...)), ...)``."""
    accepted = (f"a mapping {{layer id (int >= 0): p in [0, 1] or one p per stage ({num_stages} stages)}}, "
                "or None")
    if value is None:
        return ()
    if isinstance(value, dict):
        items = list(value.items())
    elif isinstance(value, (tuple, list)) and all(isinstance(i, (tuple, list)) and len(i) == 2 for i in value):
        items = [tuple(i) for i in value]
    else:
        raise ValueError(f"layer_cdf_thresholds must be {accepted}, got {value!r}")
    out: dict[int, tuple[float, ...]] = {}
    for layer, p in items:
        if not is_int(layer) or layer < 0:
            raise ValueError(f"layer_cdf_thresholds: layer ids must be ints >= 0, got {layer!r}; accepted: {accepted}")
        if int(layer) in out:
            raise ValueError(f"layer_cdf_thresholds: layer {layer} is given twice")
        per_stage = (p,) * num_stages if _is_real(p) else p
        if not isinstance(per_stage, (tuple, list)) or len(per_stage) != num_stages:
            raise ValueError(f"layer_cdf_thresholds[{layer}] must be one p or one per stage ({num_stages} stages), "
                             f"got {p!r}")
        for x in per_stage:
            if not _is_real(x) or not 0.0 <= x <= 1.0:
                raise ValueError(f"layer_cdf_thresholds[{layer}]: each p must be a float in [0, 1], got {x!r}")
        out[int(layer)] = tuple(float(x) for x in per_stage)
    return tuple(sorted(out.items()))


def _check_skip_steps(skip: object, stages: tuple[Stage, ...]) -> tuple[float, ...]:
    if not isinstance(skip, (tuple, list)) or not all(_is_real(x) and 0.0 < x < 1.0 for x in skip):
        raise ValueError(
            f"skip_steps must be fractions of the run in (0, 1) (the first step always runs), got {skip!r}"
        )
    values = tuple(float(x) for x in skip)
    if any(b <= a for a, b in zip(values, values[1:], strict=False)):
        raise ValueError(f"skip_steps must increase strictly, got {values}")
    starts = _switch_points(stages)
    clash = [x for x in values if any(abs(x - start) < PROGRESS_SLACK for start in starts)]
    if clash:
        raise ValueError(f"skip_steps {clash} fall on the first step of a stage (stage starts {starts}); the "
                         "first step of every stage is always computed: remove them")
    return values


# ----------------------------------------------------------------------------------------------------
# presets (reference values, see shared/reference/algorithm.md)

# The reference HunyuanVideo schedule: the steps it computes out of 50 (the other 27 reuse the previous
# residual). Configs store it as fractions of the run (``i / 50``), so it scales to any step count.
HUNYUAN_23_OF_50 = (0, 1, 2, 3, 4, 7, 10, 13, 16, 19, 22, 25, 26, 29, 32, 35, 38, 41, 43, 45, 46, 47, 49)


# named step-skip schedules: ``skip_steps="hunyuan-23-of-50"`` (computed step ids out of the count)
SKIP_SCHEDULES: dict[str, tuple[tuple[int, ...], int]] = {"hunyuan-23-of-50": (HUNYUAN_23_OF_50, 50)}


def _named_skip_schedule(name: str, stages: tuple[Stage, ...]) -> tuple[float, ...]:
    """A named schedule as skip fractions; the first step of every stage stays computed (so the 3-stage
    HunyuanVideo preset computes step 15 too: 24 of 50)."""
    if name not in SKIP_SCHEDULES:
        raise ValueError(f"unknown skip_steps schedule {name!r}; accepted: {tuple(SKIP_SCHEDULES)} or fractions")
    computed, total = SKIP_SCHEDULES[name]
    starts = {round(until * total) for until in _switch_points(stages)}
    return tuple(i / total for i in range(total) if i not in computed and i not in starts)


def _hunyuan(drops, p, scales, ends, shifts) -> dict[str, Any]:
    # every published HunyuanVideo speed-up skips steps: the presets carry the reference schedule (pass
    # skip_steps=() to measure carving and resolution alone)
    stages = tuple(Stage(s, e, h) for s, e, h in zip(scales, ends, shifts, strict=True))
    return {"drop_rates": drops, "cdf_threshold": p, "stages": stages, "text_amplifier": 0.5,
            "skip_steps": _named_skip_schedule("hunyuan-23-of-50", stages)}


def _wan(drops, p, first_scale) -> dict[str, Any]:
    # The Wan presets carry two drop rates without ProRes: read as two full-resolution halves of the run.
    # The reference sampled Wan 1.3B at shift 8; the presets keep the pipeline's own scheduler shift (set
    # ``flow_shift`` / ``shift`` on the scheduler, or a stage shift, to change it), so ``patch(pipe)``
    # never changes the noise schedule of a single-resolution run.
    stages = (Stage(first_scale, 0.5, None), Stage(1.0, 1.0, None))
    return {"drop_rates": drops, "cdf_threshold": p, "stages": stages, "dense_steps": 0.1}


def _principled(drops, p, block_size: int = 128, skip: bool = False, **extra: Any) -> dict[str, Any]:
    """Families without published reference values (CogVideoX, LTX-Video): the Wan reference's keep budget
    (drop rates 0.75 then 0.85 over two halves of the run, p 0.9, the first 10 % of the steps dense) at one
    full-resolution stage, since their pipelines cannot resize (see the adapters). ``turbo`` adds the
    HunyuanVideo 23-of-50 skip schedule, unvalidated on these models."""
    stages = (Stage(1.0, 0.5, None), Stage(1.0, 1.0, None))
    config = {"drop_rates": drops, "cdf_threshold": p, "stages": stages, "dense_steps": 0.1, "block_size": block_size,
              **extra}
    if skip:
        config["skip_steps"] = _named_skip_schedule("hunyuan-23-of-50", stages)
    return config


# LTX-Video's 1:32 x 1:8 VAE leaves short sequences (704x480x161: 21 x 15 x 22 = 6,930 tokens): with 128-token
# blocks the 3D neighbours alone are 31 % of the key blocks (55 blocks), with 64-token blocks 18 % (109), so
# the presets use 64; drop rates at or below 0.5 run dense, where the kept share (floor plus neighbours) would
# pass about 60 % and the selector and reordering no longer pay at these lengths.
_LTX = {"block_size": 64, "dense_threshold": 0.5}

def _hunyuan15(drops, p, scales, ends) -> dict[str, Any]:
    # HunyuanVideo 1.5 has no published reference values: a principled default, HunyuanVideo's keep budget
    # (the same joint video + condition attention; drop rates, p, text amplifier and the 23-of-50 skip
    # schedule of the matching HunyuanVideo preset), but every stage keeps the pipeline's own scheduler shift
    # (the reference's shifts 7 / 9 were tuned for HunyuanVideo 1.0's schedule, not 1.5's checkpoints)
    return _hunyuan(drops, p, scales, ends, (None,) * len(scales))


PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "hunyuan": {
        "base": _hunyuan((0.75, 0.85), 0.3, (1.0, 1.0), (0.5, 1.0), (7.0, 7.0)),
        "turbo": _hunyuan((0.7, 0.8), 0.3, (0.75, 1.0), (0.5, 1.0), (7.0, 9.0)),
        "flash": _hunyuan((0.8, 0.95), 0.5, (0.75, 1.0), (0.5, 1.0), (7.0, 9.0)),
        "3stage": _hunyuan((0.75, 0.85, 0.85), 0.3, (0.5, 0.75, 1.0), (0.3, 0.5, 1.0), (7.0, 9.0, 11.0)),
    },
    "wan": {
        "base": _wan((0.75, 0.85), 0.9, 1.0),
        "turbo": _wan((0.75, 0.85), 0.9, 0.75),
    },
    "wan-14b": {
        "base": _wan((0.7, 0.8), 0.8, 1.0),
        "turbo": _wan((0.7, 0.8), 0.8, 0.75),
    },
    # principled defaults, no reference values (see _principled)
    "cogvideox": {
        "base": _principled((0.75, 0.85), 0.9),
        "turbo": _principled((0.75, 0.85), 0.9, skip=True),
    },
    "ltx": {
        "base": _principled((0.75, 0.85), 0.9, **_LTX),
        "turbo": _principled((0.75, 0.85), 0.9, skip=True, **_LTX),
    },
    # SkyReels-V2 (no published reference values): Wan 2.1's architecture fine-tuned, so the principled
    # default is Wan's keep budget for the same width (1.3B: top-k floor 25 % / 15 % of the video blocks,
    # p = 0.9; 14B: 30 % / 20 %, p = 0.8) and Wan's dense first 10 % of the steps. Wan VACE and Wan
    # video-to-video use the Wan presets themselves (Wan checkpoints).
    "skyreels-v2": {
        "base": _wan((0.75, 0.85), 0.9, 1.0),
        "turbo": _wan((0.75, 0.85), 0.9, 0.75),
    },
    "skyreels-v2-14b": {
        "base": _wan((0.7, 0.8), 0.8, 1.0),
        "turbo": _wan((0.7, 0.8), 0.8, 0.75),
    },
    # principled defaults, no reference values (see _hunyuan15)
    "hunyuan15": {
        "base": _hunyuan15((0.75, 0.85), 0.3, (1.0, 1.0), (0.5, 1.0)),
        "turbo": _hunyuan15((0.7, 0.8), 0.3, (0.75, 1.0), (0.5, 1.0)),
        "flash": _hunyuan15((0.8, 0.95), 0.5, (0.75, 1.0), (0.5, 1.0)),
    },
}
MODELS = tuple(PRESETS)
