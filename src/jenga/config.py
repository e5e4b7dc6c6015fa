"""``JengaConfig``: every knob of attention carving (and, as validated data, of the next features), plus
the named presets of the reference implementation per model family.

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
import math
import numbers
from dataclasses import dataclass
from typing import Any, NamedTuple

from .attention import BACKENDS, SUPPORTED_BLOCK_SIZES
from .curves import CURVES

__all__ = ["MODELS", "PRESETS", "JengaConfig", "Stage"]


class Stage(NamedTuple):
    """One progressive-resolution stage: it runs until ``until`` (a fraction of the steps) at ``scale``.

    ``scale`` shrinks the latent's height and width (1.0 = full resolution); ``shift`` is the flow-matching
    shift for the stage's sigmas (``None`` keeps the scheduler's own).
    """

    scale: float
    until: float
    shift: float | None = None


FULL_RESOLUTION = (Stage(1.0, 1.0, None),)


@dataclass(frozen=True)
class JengaConfig:
    """Attention carving settings. Every field is validated on construction.

    Attributes:
        drop_rates: per stage, the share of video key blocks a query block may drop (``[0, 1)``); a single
            float applies to every stage. Default ``0.75``.
        cdf_threshold: ``p``, the softmax mass of block scores the kept blocks must reach (``[0, 1]``).
            Default ``0.9``.
        block_size: tokens per block, one of the kernel's sizes (16, 32, 64, 128, 256). Default 128.
        curve: token order, ``"zorder"`` (default), ``"hilbert"`` or ``"raster"``.
        stages: progressive-resolution stages, ``(scale, until, shift)`` each, ``until`` strictly
            increasing and ending at 1.0 with scale 1.0. Default: one full-resolution stage. The stage of
            a step picks its drop rate; resizing is the next feature (validated here, not yet applied).
        dense_steps: share of the first steps kept dense (``[0, 1]``). Default 0.
        dense_layers: transformer layer ids that always run dense attention. Default none.
        dense_threshold: a drop rate at or below this runs the stock dense attention (``None``: never, so
            drop rate 0 runs the block-sparse path with every block kept). Default 0.25.
        min_video_blocks: fewer video blocks than this run dense (tiny grids, short clips). Default 4.
        adjacency: keep the 3D neighbour blocks of each query block. Default True.
        condition: keep every text key block for every video query (joint attention). Default True.
        first_frame: image-to-video: keep the first latent frame's key blocks for every query.
            ``None`` (default) switches it on for image-to-video pipelines and image-conditioned transformers.
        text_amplifier: ``rho`` of the low-resolution text-attention bias (next feature). Default 0.
        skip_steps: fractions of the run whose steps reuse the previous residual (next feature), each in
            ``(0, 1)``, strictly increasing. Default none.
        backend: attention kernel, ``"auto"`` (Triton on CUDA, torch elsewhere), ``"triton"``, ``"torch"``
            or ``"flex"``.
        collect_stats: record every sparse layer's kept-block counts (see :func:`jenga.selection_stats`).
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
    backend: str = "auto"
    collect_stats: bool = False

    def __post_init__(self) -> None:
        stages = _check_stages(self.stages)
        set_ = lambda name, value: object.__setattr__(self, name, value)  # frozen: normalise once here
        set_("stages", stages)
        set_("drop_rates", _check_drop_rates(self.drop_rates, len(stages)))
        set_("cdf_threshold", _check_fraction("cdf_threshold", self.cdf_threshold, upper_open=False))
        if not _is_int(self.block_size) or self.block_size not in SUPPORTED_BLOCK_SIZES:
            raise ValueError(f"block_size must be one of {SUPPORTED_BLOCK_SIZES}, got {self.block_size!r}")
        if self.curve not in CURVES:
            raise ValueError(f"curve must be one of {CURVES}, got {self.curve!r}")
        set_("dense_steps", _check_fraction("dense_steps", self.dense_steps, upper_open=False))
        set_("dense_layers", _check_layers(self.dense_layers))
        if self.dense_threshold is not None:
            set_("dense_threshold", _check_fraction("dense_threshold", self.dense_threshold, upper_open=True))
        if not _is_int(self.min_video_blocks) or self.min_video_blocks < 1:
            raise ValueError(f"min_video_blocks must be an int >= 1, got {self.min_video_blocks!r}")
        for name in ("adjacency", "condition", "collect_stats"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be True or False, got {getattr(self, name)!r}")
        if self.first_frame is not None and not isinstance(self.first_frame, bool):
            raise ValueError(f"first_frame must be True, False or None (auto), got {self.first_frame!r}")
        if not _is_real(self.text_amplifier) or not 0.0 <= self.text_amplifier < math.inf:
            raise ValueError(f"text_amplifier (rho) must be a finite float >= 0, got {self.text_amplifier!r}")
        set_("text_amplifier", float(self.text_amplifier))
        set_("skip_steps", _check_skip_steps(self.skip_steps))
        if self.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {self.backend!r}")

    # -- derived facts used by the patch

    def stage_at(self, progress: float) -> int:
        """Index of the stage that runs at ``progress`` (share of the run already done, ``[0, 1]``)."""
        for index, stage in enumerate(self.stages):
            if progress < stage.until - 1e-9:  # slack for progress computed from sigmas
                return index
        return len(self.stages) - 1

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
    def preset(cls, name: str = "base", model: str = "wan", **overrides: Any) -> JengaConfig:
        """The reference implementation's preset ``name`` for a model family, with optional overrides.

        ``model``: ``"hunyuan"`` (HunyuanVideo), ``"wan"`` (Wan 1.3B/5B) or ``"wan-14b"`` (Wan 14B, A14B).
        Names: ``"base"`` and ``"turbo"`` for every family, ``"flash"`` and ``"3stage"`` for HunyuanVideo.
        """
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
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> JengaConfig:
        """Inverse of :meth:`to_dict`; unknown keys are an error."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown JengaConfig fields {unknown}; accepted: {sorted(known)}")
        return cls(**data)


# ----------------------------------------------------------------------------------------------------
# validation helpers: each names the field, the value and what is accepted


def _is_int(value: object) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


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
    if out[-1].scale != 1.0:
        raise ValueError(f"the last stage must run at full resolution (scale 1.0), got {out[-1].scale}")
    return tuple(out)


def _check_drop_rates(drop_rates: object, num_stages: int) -> tuple[float, ...]:
    rates = (drop_rates,) * num_stages if _is_real(drop_rates) else drop_rates
    if not isinstance(rates, (tuple, list)) or len(rates) != num_stages:
        raise ValueError(
            f"drop_rates must be one float or one per stage ({num_stages} stages), got {drop_rates!r}"
        )
    for rate in rates:
        if not _is_real(rate) or not 0.0 <= rate < 1.0:
            raise ValueError(f"each drop rate must be a float in [0, 1), got {rate!r} in {drop_rates!r}")
    return tuple(float(r) for r in rates)


def _check_layers(layers: object) -> tuple[int, ...]:
    if not isinstance(layers, (tuple, list, set, frozenset)) or not all(_is_int(x) and x >= 0 for x in layers):
        raise ValueError(f"dense_layers must be a collection of layer ids (ints >= 0), got {layers!r}")
    return tuple(sorted({int(x) for x in layers}))


def _check_skip_steps(skip: object) -> tuple[float, ...]:
    if not isinstance(skip, (tuple, list)) or not all(_is_real(x) and 0.0 < x < 1.0 for x in skip):
        raise ValueError(
            f"skip_steps must be fractions of the run in (0, 1) (the first step always runs), got {skip!r}"
        )
    values = tuple(float(x) for x in skip)
    if any(b <= a for a, b in zip(values, values[1:], strict=False)):
        raise ValueError(f"skip_steps must increase strictly, got {values}")
    return values


# ----------------------------------------------------------------------------------------------------
# presets (reference values, see shared/reference/algorithm.md)

# HunyuanVideo computes 23 of 50 steps; the other 27 reuse the previous residual. Stored as fractions.
_HUNYUAN_COMPUTED = {0, 1, 2, 3, 4, 7, 10, 13, 16, 19, 22, 25, 26, 29, 32, 35, 38, 41, 43, 45, 46, 47, 49}
_HUNYUAN_SKIP = tuple(i / 50 for i in range(50) if i not in _HUNYUAN_COMPUTED)


def _hunyuan(drops, p, scales, ends, shifts) -> dict[str, Any]:
    stages = tuple(Stage(s, e, h) for s, e, h in zip(scales, ends, shifts, strict=True))
    return {"drop_rates": drops, "cdf_threshold": p, "stages": stages, "text_amplifier": 0.5,
            "skip_steps": _HUNYUAN_SKIP}


def _wan(drops, p, first_scale, shift) -> dict[str, Any]:
    # The Wan presets carry two drop rates without ProRes: read as two full-resolution halves of the run.
    stages = (Stage(first_scale, 0.5, shift), Stage(1.0, 1.0, shift))
    return {"drop_rates": drops, "cdf_threshold": p, "stages": stages, "dense_steps": 0.1}


PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "hunyuan": {
        "base": _hunyuan((0.75, 0.85), 0.3, (1.0, 1.0), (0.5, 1.0), (7.0, 7.0)),
        "turbo": _hunyuan((0.7, 0.8), 0.3, (0.75, 1.0), (0.5, 1.0), (7.0, 9.0)),
        "flash": _hunyuan((0.8, 0.95), 0.5, (0.75, 1.0), (0.5, 1.0), (7.0, 9.0)),
        "3stage": _hunyuan((0.75, 0.85, 0.85), 0.3, (0.5, 0.75, 1.0), (0.3, 0.5, 1.0), (7.0, 9.0, 11.0)),
    },
    "wan": {
        "base": _wan((0.75, 0.85), 0.9, 1.0, 8.0),
        "turbo": _wan((0.75, 0.85), 0.9, 0.75, 8.0),
    },
    "wan-14b": {
        "base": _wan((0.7, 0.8), 0.8, 1.0, None),
        "turbo": _wan((0.7, 0.8), 0.8, 0.75, None),
    },
}
MODELS = tuple(PRESETS)
