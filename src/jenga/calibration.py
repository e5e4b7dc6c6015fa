"""``jenga.calibrate``: measure what carving keeps on *your* model, and pick the fastest config within a budget.

The speed-up of a preset depends on how many blocks its softmax-mass threshold ``p`` keeps on the model's
real attention (random weights keep about 90 % at p = 0.9, the toy model 49 %, the top-k floor 26 %), and
the quality on how much mass the kept blocks hold. :func:`calibrate` runs a short dense pass of the user's
pipeline (``steps`` denoising steps spread over the whole noise schedule, latent output, no decode),
captures the post-RoPE ``q, k, v`` of self-attention at sampled layers and steps (conditional branch, first
clip), and for every candidate ``(curve, drop rate, p)`` measures, on the fly:

- ``density``: kept share of the video key blocks (every query block, the sampled heads), with the exact
  selector and 3D adjacency a patch uses;
- ``recall``: share of the dense softmax mass inside the kept blocks;
- ``output_error``: relative L2 error of the carved attention output against the dense one (float32).

Memory stays bounded: heads are subsampled (``heads``), recall and error are computed one sampled query
block at a time (``query_blocks`` per head), so at most ``heads x block x N`` scores exist at once, never an
``N x N`` matrix; nothing of a layer is kept once its metrics are computed.

The pick: per ``(curve, p)`` (both global in :class:`~jenga.config.JengaConfig`), each stage of ``base`` gets
the highest drop rate whose measured layers all meet the budget (mean ``recall >= min_recall`` and/or mean
``output_error <= max_error`` over that stage's captured steps); a measured layer that no candidate satisfies
goes to ``dense_layers`` (JengaConfig has no per-layer drop rate: the per-layer best candidate is reported
in :attr:`CalibrationReport.layers` instead, with the density it would give); a stage where carving never
pays runs dense (drop rate 0). The fastest ``(curve, p)`` by predicted attention time wins.

``layer_thresholds=True`` instead gives every measured layer its own ``p`` per stage
(:attr:`JengaConfig.layer_cdf_thresholds`) and holds the budget for each stage's mean over the layers, the
budget a fixed preset is judged by: layers whose attention is concentrated reach a high recall with few blocks,
diffuse ones need many, so spending the kept blocks where they buy the most recall can meet the same mean
recall with fewer blocks than one ``p`` for all (:func:`_allocate`).

``min_psnr=DB`` judges the model's output instead of its attention (:func:`_search_output`): after the dense pass,
a greedy search lowers one layer's ``p`` at a time, each move a short patched pass whose final latents must stay
within ``DB`` of PSNR of the dense ones (same noise). On the toy model the per-layer attention metrics rank the layers
the wrong way round (``benchmarks/quality/layer_probe.py``); the output does not. It costs one pass per move, so
many generations' time, and the pick is as good as the calibration clips are representative (RESULTS.md: one clip
is not). ``raise_thresholds`` adds an exchange (a layer's ``p`` raised to buy the dB a cheaper lowering elsewhere
lacked) and ``min_psnr="base"`` budgets the preset's own PSNR: on four toy clips 3.9 % fewer blocks at the preset's
PSNR there, 2.1 dB less on held-out clips.

Predicted time: the dense pass measures, per layer, the stock self-attention time and the rest of the
transformer call. A carved layer's attention is predicted from the kernel's per-block rate: on an H200 the
measured TFLOP/s of ``benchmarks/RESULTS.md`` (:data:`KERNEL_TFLOPS`, per head dim); elsewhere the measured
dense time times ``density / KERNEL_VS_DENSE`` (the kernel runs a kept block at 0.82-0.89 of cuDNN's dense
rate on an H200, selector lists; 0.87 is used). The selector and permutation (1-12 % of the attention time,
RESULTS.md) are not included. On a CPU carving saves nothing (the ``torch`` backend masks SDPA): the predicted
times there are what the block counts imply on a GPU-like per-block cost, not what the CPU will run.

Limits: Wan-family transformers (HunyuanVideo's joint attention is not captured yet; of a two-expert Wan 2.2
pipeline only ``transformer`` is measured, not ``transformer_2``); text-to-video (the
first-frame rule of image-to-video is not applied to the candidates); all stages are measured at full
resolution (a progressive stage at scale < 1 gets the full-resolution figures); with ``steps`` calibration
steps the trajectory is coarser than the user's run, at the same fractions of the schedule.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .config import JengaConfig
from .curves import CURVES
from .layout import token_layout

__all__ = ["KERNEL_TFLOPS", "KERNEL_VS_DENSE", "LAYER_THRESHOLDS", "CalibrationReport", "Measurement", "calibrate"]

logger = logging.getLogger("jenga")

# Block-sparse kernel throughput (effective TFLOP/s = 4 B H N^2 D density / time), NVIDIA H200, from
# benchmarks/RESULTS.md (2026-11-28): head dim 128 at density 0.25, selector lists 472-488, random 469-493
# (490 used); head dim 64, Wan 1.3B shape, density 0.25 random 401.
KERNEL_TFLOPS: dict[str, dict[int, float]] = {"H200": {128: 490.0, 64: 401.0}}
# A kept block's time relative to cuDNN's dense per-block time (RESULTS.md, H200, "per-block vs cuDNN":
# 0.785-0.892; 0.87 typical of Wan shapes): used where no absolute rate is recorded for the device.
KERNEL_VS_DENSE = 0.87
DEFAULT_DROP_RATES = (0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95)
DEFAULT_THRESHOLDS = (0.0, 0.3, 0.5, 0.7, 0.9)
DEFAULT_HEADS, DEFAULT_QUERY_BLOCKS = 2, 8
# the candidates of ``layer_thresholds=True``: values above the presets' p too, so that a layer whose attention is
# concentrated can buy recall cheaply for a diffuse one that gives some up
LAYER_THRESHOLDS = (0.0, 0.3, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.93, 0.95, 0.97, 0.99)


class _DefaultRecall(float):
    """``min_recall``'s default, 0.95, told apart from a stated 0.95: ``min_psnr`` replaces the default
    attention budget but refuses a stated one (one criterion per calibration)."""

    def __repr__(self) -> str:
        return float.__repr__(self)


_DEFAULT_RECALL = _DefaultRecall(0.95)


@dataclass(frozen=True)
class Measurement:
    """One candidate on one captured (layer, step): means over the sampled heads (and query blocks)."""

    layer: int
    step: int
    progress: float
    curve: str
    drop_rate: float
    cdf_threshold: float
    density: float
    recall: float
    output_error: float


@dataclass
class CalibrationReport:
    """What :func:`calibrate` measured and picked. ``config`` is ready for ``jenga.patch``."""

    config: JengaConfig
    budget: dict[str, float | None]
    measurements: list[Measurement]
    stages: list[dict[str, Any]]  # per stage of the picked config: drop rate, mean density / recall / error
    layers: list[dict[str, Any]]  # per measured layer: dense or not, and its own best candidate per stage
    timing: dict[str, Any]
    grid: tuple[int, int, int]
    block_size: int
    meets_budget: bool = True
    notes: list[str] = field(default_factory=list)
    # ``min_psnr``: every patched pass of the search in order (the base config's first): the per-layer p tried,
    # kept density, PSNR against dense, whether it met the budget and was kept
    passes: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON data; ``config`` as :meth:`JengaConfig.to_dict` gives it."""
        return dict(config=self.config.to_dict(), budget=self.budget, stages=self.stages, layers=self.layers,
                    timing=self.timing, grid=list(self.grid), block_size=self.block_size,
                    meets_budget=self.meets_budget, notes=self.notes,
                    measurements=[dataclasses.asdict(m) for m in self.measurements], passes=self.passes)

    def table(self) -> str:
        """A plain-text table: per measured layer and stage, density / recall / error of the picked config
        (``min_psnr``: per pass of the search, what it tried, kept and scored)."""
        if self.budget.get("min_psnr") is not None:
            return self._output_table()
        cfg = self.config
        lines = [f"grid {self.grid[0]}x{self.grid[1]}x{self.grid[2]} tokens, block {self.block_size}; "
                 f"budget {_budget_text(self.budget)}; picked curve {cfg.curve}, p = {cfg.cdf_threshold}, "
                 f"drop rates {list(cfg.drop_rates)}, dense layers {list(cfg.dense_layers)}"
                 + (", a p per layer (column p)" if cfg.layer_cdf_thresholds else ""),
                 f"{'layer':>5} {'stage':>5} {'drop':>5} {'p':>5} {'density':>8} {'recall':>7} {'error':>7}  "
                 "own best (drop)"]
        for row in self.layers:
            for stage in row["stages"]:
                p = "-" if stage.get("cdf_threshold") is None else f"{stage['cdf_threshold']:.2f}"
                lines.append(f"{row['layer']:>5} {stage['stage']:>5} {stage['drop_rate']:>5.2f} {p:>5} "
                             f"{stage['density']:>8.3f} {stage['recall']:>7.3f} {stage['output_error']:>7.3f}  "
                             f"{_own_text(stage['own_best'])}")
        t = self.timing
        for stage in self.stages:
            base = stage.get("base")
            text = "" if base is None else (
                f"; base config (drop {base['drop_rate']}, p {base['cdf_threshold']}) density {base['density']:.3f} "
                f"recall {base['recall']:.3f}, {base['layers_meeting_budget']} of {len(self.layers)} layers in budget, "
                f"mean {'in' if base['mean_meets_budget'] else 'out of'} budget")
            lines.append(f"stage {stage['stage']}: picked density {stage['density']:.3f} recall {stage['recall']:.3f} "
                         f"error {stage['output_error']:.3f}{text}; per-layer (p, drop) would keep "
                         f"{stage['per_layer_settings']['density']:.3f}")
        lines.append(f"predicted per generation ({t['num_inference_steps']} steps): attention dense "
                     f"{t['attention_dense_s']:.3g} s -> {t['attention_picked_s']:.3g} s, end to end "
                     f"{t['generation_dense_s']:.3g} s -> {t['generation_picked_s']:.3g} s "
                     f"({t['generation_dense_s'] / max(t['generation_picked_s'], 1e-12):.2f}x; "
                     f"rate: {t['rate_source']})")
        lines.append(f"calibration took {t['calibration_s']:.3g} s = {100 * t['calibration_share']:.1f} % of one "
                     f"dense generation (measured dense pass, predicted full run)")
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)

    def _output_table(self) -> str:
        """The ``min_psnr`` search, one line per patched pass, then the pick against the base config."""
        b, t, cfg = self.budget, self.timing, self.config
        picked = {x: p[0] for x, p in cfg.layer_cdf_thresholds}
        lines = [f"grid {self.grid[0]}x{self.grid[1]}x{self.grid[2]} tokens, block {self.block_size}; budget PSNR >= "
                 f"{b['min_psnr']} dB of the final latents against dense (peak {b['psnr_peak']}, {t['steps']} steps, "
                 f"one seed); ladder of p {b['cdf_ladder']}; picked p {cfg.cdf_threshold} with per-layer "
                 f"{picked or 'none'}",
                 f"{'pass':>4} {'layer':>5} {'p':>5} {'density':>8} {'PSNR dB':>8}  result"]
        for row in self.passes:
            layer = "base" if row["layer"] is None else str(row["layer"])
            p = "-" if row["cdf_threshold"] is None else f"{row['cdf_threshold']:.2f}"
            raised = row["cdf_threshold"] is not None and row["cdf_threshold"] > cfg.cdf_threshold
            verdict = ("start" if row["layer"] is None else ("raised" if raised else "kept") if row["accepted"] else
                       "out of budget" if not row["meets_budget"] else "saves no blocks" if not row["saves_blocks"]
                       else "in budget, not taken")
            if row.get("picked"):
                verdict += " (picked)"
            lines.append(f"{row['pass']:>4} {layer:>5} {p:>5} {row['density']:>8.4f} {row['psnr_db']:>8.2f}  {verdict}")
        chosen = next((row for row in self.passes if row.get("picked")),
                      next(row for row in reversed(self.passes) if row["accepted"]))
        base = self.passes[0]
        lines.append(f"picked: kept density {chosen['density']:.4f} (base {base['density']:.4f}), PSNR "
                     f"{chosen['psnr_db']:.2f} dB (base {base['psnr_db']:.2f})")
        lines.append(f"calibration took {t['calibration_s']:.3g} s (1 dense + {len(self.passes)} patched passes of "
                     f"{t['steps']} steps) = {t['calibration_share']:.2f} x one dense {t['num_inference_steps']}-step "
                     f"generation (measured dense pass, predicted full run)")
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)

    def save_plot(self, path: Path | str) -> Path:
        """A small PNG (Pillow): per measured layer, the picked config's kept-block density and recall
        (``min_psnr``: its density and the base config's)."""
        from PIL import Image, ImageDraw

        path = Path(path)
        width, height, left, bottom, top = 480, 260, 44, 34, 24
        image = Image.new("RGB", (width, height), "white")
        draw = ImageDraw.Draw(image)
        plot_w, plot_h = width - left - 12, height - bottom - top
        draw.rectangle([left, top, left + plot_w, top + plot_h], outline="black")
        for frac in (0.0, 0.25, 0.5, 0.75, 1.0):
            y = top + plot_h * (1 - frac)
            draw.line([left - 4, y, left, y], fill="black")
            draw.text((4, y - 6), f"{frac:.2f}", fill="black")
        layers = self.layers
        n = max(len(layers), 1)
        bar = plot_w / n
        output = self.budget.get("min_psnr") is not None
        for i, row in enumerate(layers):
            if output:  # no recall measured: the base config's density in the second bar
                density, recall = row["density"], row["base_density"]
            else:
                density = sum(s["density"] for s in row["stages"]) / max(len(row["stages"]), 1)
                recall = sum(s["recall"] for s in row["stages"]) / max(len(row["stages"]), 1)
            x0 = left + i * bar + bar * 0.15
            draw.rectangle([x0, top + plot_h * (1 - density), x0 + bar * 0.35, top + plot_h], fill=(70, 110, 200))
            draw.rectangle([x0 + bar * 0.35, top + plot_h * (1 - recall), x0 + bar * 0.7, top + plot_h],
                           fill=(230, 140, 40))
            draw.text((x0, top + plot_h + 4), str(row["layer"]), fill="black")
        budget = self.budget.get("min_recall")
        if isinstance(budget, float):  # the recall budget as a line
            y = top + plot_h * (1 - budget)
            for x in range(left, left + plot_w, 8):
                draw.line([x, y, x + 4, y], fill=(200, 30, 30))
        draw.text((left, 4), "per layer: density (blue), base config's density (orange)" if output else
                  "per layer: density (blue), recall (orange), recall budget (red)", fill="black")
        draw.text((left + plot_w - 40, height - 14), "layer", fill="black")
        path.parent.mkdir(parents=True, exist_ok=True)
        image.save(path)
        return path


def calibrate(
    pipe: Any,
    *,
    base: JengaConfig | str | None = None,
    min_recall: float | str | None = _DEFAULT_RECALL,
    max_error: float | str | None = None,
    min_psnr: float | str | None = None,
    psnr_peak: float = 2.0,
    max_passes: int = 24,
    raise_thresholds: Sequence[float] = (),
    steps: int = 6,
    num_inference_steps: int = 50,
    layers: Sequence[int] | None = None,
    heads: int = DEFAULT_HEADS,
    query_blocks: int = DEFAULT_QUERY_BLOCKS,
    drop_rates: Sequence[float] = DEFAULT_DROP_RATES,
    cdf_thresholds: Sequence[float] | None = None,
    curves: Sequence[str] | None = None,
    per_layer: bool = True,
    layer_thresholds: bool = False,
    seed: int = 0,
    **call_kwargs: Any,
) -> CalibrationReport:
    """Run a short dense pass of ``pipe`` and return the fastest config meeting the quality budget.

    Args:
        pipe: an unpatched Wan-family diffusers pipeline (or its transformer's owner with ``.transformer``).
        base: the config to tune (a :class:`JengaConfig` or a preset name of the model family; default
            ``"base"``): its stages, dense steps and other fields stay; drop rates, ``p``, curve and dense
            layers are chosen.
        min_recall: budget on the mean attention-mass recall per layer and stage (``None``: no recall budget);
            ``"base"``: each stage's mean recall under ``base`` itself, on the same captures (implies
            ``per_layer=False``): the config that keeps fewest blocks at the base config's quality.
        max_error: budget on the mean relative output error per layer and stage (``None``: none); ``"base"``:
            each stage's mean error under ``base`` on the same captures (implies ``per_layer=False``).
        min_psnr: budget on the model's *output* instead of the attention metrics (dB): the PSNR of a patched
            pass's final latents against the dense pass's (same noise, ``steps`` steps; a batch of clips: the mean of
            each clip's PSNR; several prompts judge a move better than one), found by a search over
            per-layer ``p`` (:func:`_search_output`: each layer's ``p`` lowered down the ``cdf_thresholds`` ladder,
            one rung at a time, the change saving most kept blocks per dB first, kept only
            while the output meets the budget). Per-layer attention metrics rank the layers' carving wrongly on
            the toy model (benchmarks/RESULTS.md, issue 20): what the output loses is what the budget is about.
            Excludes ``min_recall`` / ``max_error`` and the attention candidates' arguments; costs one pass per
            step of the search (``max_passes``), so several generations' time, not a fraction of one.
            ``"base"``: the base config's own mean PSNR on the calibration clips: the config that keeps fewest blocks
            at the preset's quality (needs ``raise_thresholds``: every lowering move costs some PSNR).
        psnr_peak: the peak of ``min_psnr``'s PSNR: 2.0, the span of latents in ``[-1, 1]`` (pixel-space models such
            as the toy, where it is the image PSNR on the ``[0, 1]`` scale); for VAE latents (about unit variance)
            the dB are a convention: read the base config's own PSNR in ``report.passes[0]`` and state the budget
            below it.
        max_passes: with ``min_psnr``, the most patched passes (the base config's included; the dense one not).
        raise_thresholds: with ``min_psnr``, ``p`` values above base's that the search may *raise* a layer to when no
            lowering move fits the budget, paired with a lowering move whose missing dB the rise buys for fewer
            blocks than the move saves (an exchange: on the toy model the first layers lose several dB for a few
            blocks, the last one gives up many blocks for about one). Default: none.
        steps: denoising steps of the calibration pass (spread over the whole schedule).
        num_inference_steps: steps of the run you plan, for the predicted times.
        layers: transformer layers to measure (default: all).
        heads: heads sampled per layer (evenly spread); query_blocks: query blocks per head for recall/error.
        drop_rates, cdf_thresholds, curves: the candidates (``cdf_thresholds`` default
            :data:`DEFAULT_THRESHOLDS`, with ``layer_thresholds`` :data:`LAYER_THRESHOLDS`; curves default:
            ``base``'s). With ``min_psnr`` only ``cdf_thresholds`` counts: its values below ``base``'s ``p`` are
            the ladder (default 0.7, 0.5, 0.3, 0 below the presets' 0.9).
        per_layer: the budget holds for every measured layer (layers that cannot meet it run dense); ``False``:
            for the mean over the layers of each stage (no dense layers), the way a fixed preset is judged.
        layer_thresholds: give every measured layer its own ``p`` per stage
            (:attr:`JengaConfig.layer_cdf_thresholds`) under the stage-mean budget (implies ``per_layer=False``):
            per stage and candidate drop rate, a greedy allocation (:func:`_allocate`: with one budget on each
            layer's convex hull of (density, recall), raising first the layers that gain the most per kept block)
            until the stage means meet every budget given, then a local search of one- and two-layer changes
            removes what the last step overshot; the drop rate with the lowest mean density wins, never more
            blocks than the best single ``p``. ``min_recall="base", max_error="base"``: the preset's own mean
            recall and mean error both, the strictest reading of "the preset's quality".
        seed: seed of the noise of the calibration pass.
        call_kwargs: the pipeline call's own arguments (``prompt`` or ``prompt_embeds``, ``height``,
            ``width``, ``num_frames``, ``guidance_scale``...).
    """
    from .patching import _targets, is_patched

    if min_psnr is not None:
        _check_output_arguments(min_psnr, psnr_peak, max_passes, min_recall, max_error, drop_rates, curves, per_layer,
                                layer_thresholds, heads, query_blocks, raise_thresholds)
    elif tuple(raise_thresholds):
        raise ValueError("raise_thresholds belongs to the output search: give min_psnr too")
    if isinstance(min_recall, _DefaultRecall):
        min_recall = None if min_psnr is not None else float(min_recall)
    if min_recall is None and max_error is None and min_psnr is None:
        raise ValueError("give a quality budget: min_recall (e.g. 0.95) and/or max_error (e.g. 0.1), or min_psnr "
                         "(e.g. 35, on the output)")
    if not isinstance(layer_thresholds, bool):
        raise ValueError(f"layer_thresholds must be True or False, got {layer_thresholds!r}")
    if min_recall == "base" or max_error == "base" or layer_thresholds:
        per_layer = False
    if min_recall is not None and min_recall != "base" and (isinstance(min_recall, str) or not 0.0 < min_recall <= 1.0):
        raise ValueError(f"min_recall must be in (0, 1], 'base' or None, got {min_recall!r}")
    if max_error is not None and max_error != "base" and (isinstance(max_error, str) or not max_error > 0.0):
        raise ValueError(f"max_error must be > 0 (a relative L2 error), 'base' or None, got {max_error!r}")
    for name, value in (("steps", steps), ("num_inference_steps", num_inference_steps), ("heads", heads),
                        ("query_blocks", query_blocks)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    if {"output_type", "generator"} & set(call_kwargs):
        raise ValueError("calibrate sets the pipeline's output_type (latent) and generator (from seed=); drop them "
                         "(steps= is the calibration pass, num_inference_steps= the run you plan)")
    transformers, _ = _targets(pipe, "jenga.calibrate")
    if is_patched(pipe):
        raise ValueError("calibrate needs the stock pipeline (it measures dense attention): jenga.unpatch(pipe) first")
    transformer = transformers[0]
    if not hasattr(transformer, "blocks") or not hasattr(transformer.blocks[0], "attn1"):
        raise ValueError(f"calibrate supports Wan-family transformers (blocks[i].attn1), got "
                         f"{type(transformer).__name__}")
    cfg = _base_config(base)
    if cfg.layer_cdf_thresholds:
        raise ValueError("base has layer_cdf_thresholds: calibrate measures and picks p itself (per layer with "
                         "layer_thresholds=True); pass a base without them")
    num_layers = len(transformer.blocks)
    layers = tuple(range(num_layers)) if layers is None else tuple(sorted({int(x) for x in layers}))
    if not layers or any(not 0 <= x < num_layers for x in layers):
        raise ValueError(f"layers must be ids in [0, {num_layers}), got {layers!r}")
    if min_psnr is not None:
        ladder = _ladder(cfg, DEFAULT_THRESHOLDS if cdf_thresholds is None else cdf_thresholds)
        rises = tuple(sorted({float(p) for p in raise_thresholds}))
        if any(not cfg.cdf_threshold < p <= 1.0 for p in rises):
            raise ValueError(f"raise_thresholds must be above base's p {cfg.cdf_threshold} and at most 1, got "
                             f"{tuple(raise_thresholds)!r}")
        if min_psnr == "base" and not rises:
            raise ValueError("min_psnr='base' (the base config's own PSNR) needs raise_thresholds (e.g. (0.95, 0.98)): "
                             "every lowering move alone costs PSNR")
        budget_db = None if min_psnr == "base" else float(min_psnr)
        return _search_output(pipe, transformer, cfg, budget_db, float(psnr_peak), max_passes, ladder, rises, layers,
                              steps, num_inference_steps, seed, call_kwargs)
    curves = tuple(curves) if curves is not None else (cfg.curve,)
    bad = [c for c in curves if c not in CURVES]
    if bad or not curves:
        raise ValueError(f"curves must be a non-empty subset of {CURVES}, got {curves!r}")
    rates = {float(r) for r in drop_rates}
    if not rates or any(not 0.0 < r < 1.0 for r in rates):
        raise ValueError(f"drop_rates must be floats in (0, 1), got {drop_rates!r}")
    rates = {r for r in rates if cfg.carves(r)}
    if not rates:
        raise ValueError(f"every drop rate in {drop_rates!r} is at or below dense_threshold={cfg.dense_threshold} "
                         "(those run dense): give higher ones")
    rates = tuple(sorted(rates | {r for r in cfg.drop_rates if cfg.carves(r)}))  # base's own, for comparison
    if cdf_thresholds is None:
        cdf_thresholds = LAYER_THRESHOLDS if layer_thresholds else DEFAULT_THRESHOLDS
    thresholds = {float(p) for p in cdf_thresholds}
    if not thresholds or any(not 0.0 <= p <= 1.0 for p in thresholds):
        raise ValueError(f"cdf_thresholds must be floats in [0, 1], got {cdf_thresholds!r}")
    thresholds = tuple(sorted(thresholds | {cfg.cdf_threshold}))
    if min_recall == "base" and cfg.curve not in curves:
        curves = (cfg.curve, *curves)

    started = time.perf_counter()
    probe = _Probe(transformer, layers, cfg, curves, rates, thresholds, heads, query_blocks, steps, seed)
    try:
        device = transformer.device
        generator = torch.Generator(device).manual_seed(seed)
        with torch.no_grad():
            pipe(**call_kwargs, num_inference_steps=steps, output_type="latent", generator=generator)
    finally:
        probe.remove()
    if not probe.measurements:
        raise RuntimeError("the calibration pass captured nothing: no self-attention call reached the sampled layers")
    calibration_s = time.perf_counter() - started
    return _pick(cfg, probe, min_recall, max_error, num_inference_steps, calibration_s, layers, num_layers, per_layer,
                 layer_thresholds)


def _base_config(base: JengaConfig | str | None) -> JengaConfig:
    if base is None:
        return JengaConfig.preset("base", model="wan")
    if isinstance(base, str):
        return JengaConfig.preset(base, model="wan")
    if not isinstance(base, JengaConfig):
        raise ValueError(f"base must be a JengaConfig, a preset name or None, got {type(base).__name__}")
    return base


def _check_output_arguments(min_psnr, psnr_peak, max_passes, min_recall, max_error, drop_rates, curves, per_layer,
                            layer_thresholds, heads, query_blocks, raise_thresholds) -> None:
    """``min_psnr``'s own arguments, and none of the attention budget's (they would be silently unused)."""
    def real(value: object) -> bool:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)

    if not real(min_psnr) and min_psnr != "base":
        raise ValueError(f"min_psnr must be a finite number of dB (e.g. 35) or 'base', got {min_psnr!r}")
    if isinstance(raise_thresholds, (str, bytes)) or not all(real(p) for p in raise_thresholds):
        raise ValueError(f"raise_thresholds must be numbers in (base p, 1], got {raise_thresholds!r}")
    if not real(psnr_peak) or psnr_peak <= 0:
        raise ValueError(f"psnr_peak must be a finite number > 0 (2.0: latents in [-1, 1]), got {psnr_peak!r}")
    if not isinstance(max_passes, int) or isinstance(max_passes, bool) or max_passes < 1:
        raise ValueError(f"max_passes must be an int >= 1 (patched passes, the base config's included), got "
                         f"{max_passes!r}")
    stated = [name for name, given in (
        ("min_recall", min_recall is not None and not isinstance(min_recall, _DefaultRecall)),
        ("max_error", max_error is not None), ("curves", curves is not None),
        ("drop_rates", tuple(drop_rates) != DEFAULT_DROP_RATES), ("per_layer", per_layer is not True),
        ("layer_thresholds", layer_thresholds is not False), ("heads", heads != DEFAULT_HEADS),
        ("query_blocks", query_blocks != DEFAULT_QUERY_BLOCKS)) if given]
    if stated:
        raise ValueError(f"min_psnr budgets the output and searches per-layer p itself: drop {', '.join(stated)} "
                         "(arguments of the attention-metric calibration)")


def _ladder(cfg: JengaConfig, values: Sequence[float]) -> tuple[float, ...]:
    """The ``p`` values a ``min_psnr`` search lowers a layer through: those below ``cfg``'s, highest first."""
    thresholds = {float(p) for p in values}
    if not thresholds or any(not 0.0 <= p <= 1.0 for p in thresholds):
        raise ValueError(f"cdf_thresholds must be floats in [0, 1], got {values!r}")
    ladder = tuple(sorted((p for p in thresholds if p < cfg.cdf_threshold), reverse=True))
    if not ladder:
        raise ValueError(f"cdf_thresholds: min_psnr only lowers p from base's {cfg.cdf_threshold}; give values below "
                         f"it, got {values!r}")
    return ladder


def _latents(out: Any) -> torch.Tensor:
    """The final latents of a pipeline call with ``output_type="latent"`` (an output object or a tuple)."""
    latents = out.frames if hasattr(out, "frames") else out[0]
    return latents.detach().float()


def _search_output(pipe: Any, transformer: torch.nn.Module, cfg: JengaConfig, min_psnr: float | None, peak: float,
                   max_passes: int, ladder: tuple[float, ...], rises: tuple[float, ...], layers: tuple[int, ...],
                   steps: int, num_steps: int, seed: int, call_kwargs: dict[str, Any]) -> CalibrationReport:
    """``calibrate(min_psnr=...)``: a dense pass, then a lazy greedy search over per-layer ``p``
    (``min_psnr=None``: the budget is the base config's own PSNR, measured by the first patched pass).

    A move lowers one layer's ``p`` by one rung of ``ladder``; it is judged by a patched pass (same noise) and
    scored by the kept density it saves per dB of the budget it spends (a floor of 0.01 dB keeps near-free moves
    comparable, and a move that gains PSNR counts as near-free). The PSNR is each clip's (batch element's) against
    its dense twin, averaged over the batch: the mean over clips is what a preset is judged by, and a PSNR of the
    pooled error would be set by the worst clip alone.
    Every searched layer's first move is measured against the base config; then the layer of best score is
    re-measured against the config as it stands and taken if it still scores best (lazy greedy, Minoux 1978: an
    earlier score is an estimate, so a move costs one pass, not one per layer, while scores keep their order). A
    move that leaves the budget or saves no blocks closes its layer (lower rungs carve more).
    With ``rises`` (``p`` values above base's), once no lowering move fits, an exchange: each never-lowered layer's
    rise is measured once (one pass each, an estimate from then on), and a rise is paired with a lowering move that
    failed: the pair of largest estimated saving among those whose rise buys the dB the move lacked. The rise is
    taken (re-measured first if the config changed since) and the move measured again against it. Below the budget
    (base misses it) the rise of most dB per added block is taken, and once in budget every lowering move reopens.
    A layer is only ever lowered or only ever raised. Stops when nothing is
    open or after ``max_passes`` patched passes (then the best move measured against the config as it stands is
    taken, if any). The pick is the accepted config of fewest kept blocks that meets the budget (base if none does):
    without ``rises`` it never keeps more blocks than base on these clips.
    """
    from .patching import patch, selection_stats, unpatch

    device = transformer.device
    started = time.perf_counter()

    def run(config: JengaConfig | None) -> tuple[torch.Tensor, list]:
        if config is not None:
            patch(pipe, dataclasses.replace(config, collect_stats=True))
        try:
            with torch.no_grad():
                out = pipe(**call_kwargs, num_inference_steps=steps, output_type="latent",
                           generator=torch.Generator(device).manual_seed(seed))
            return _latents(out), selection_stats(pipe) if config is not None else []
        finally:
            if config is not None:
                unpatch(pipe)

    reference, _ = run(None)
    dense_s = time.perf_counter() - started
    patch_size = tuple(transformer.config.patch_size)
    grid = tuple(int(n) // int(q) for n, q in zip(reference.shape[-3:], patch_size, strict=True))
    passes: list[dict[str, Any]] = []
    budget = {"db": min_psnr}  # min_psnr=None: set from the base pass

    def judge(thresholds: dict[int, float], layer: int | None, current: dict[str, Any] | None) -> dict[str, Any]:
        begun = time.perf_counter()
        latents, stats = run(dataclasses.replace(cfg, layer_cdf_thresholds=thresholds))
        if not stats:
            raise RuntimeError(f"the calibration pass ran no sparse layer (its {steps} steps all dense?): raise steps")
        mse = (latents - reference).pow(2).flatten(1).mean(1)  # per clip
        per_clip = (10 * torch.log10(peak**2 / mse.double().clamp_min(1e-30))).tolist()
        psnr = sum(per_clip) / len(per_clip)
        if budget["db"] is None:
            budget["db"] = psnr
        per_layer: dict[int, list[float]] = {}
        per_stage: dict[int, list[float]] = {}
        for st in stats:
            density = st.density
            per_layer.setdefault(st.layer, []).append(density)
            per_stage.setdefault(cfg.stage_at(st.step / steps), []).append(density)
        row = {"pass": len(passes), "layer": layer, "cdf_threshold": None if layer is None else thresholds[layer],
               "layer_cdf_thresholds": dict(sorted(thresholds.items())),
               "density": round(sum(map(sum, per_layer.values())) / len(stats), 6),
               "psnr_db": round(psnr, 3), "psnr_db_per_clip": [round(x, 3) for x in per_clip],
               "meets_budget": psnr >= budget["db"], "accepted": False,
               "seconds": round(time.perf_counter() - begun, 3),
               "kept_density_per_layer": {x: round(sum(v) / len(v), 4) for x, v in sorted(per_layer.items())},
               "kept_density_per_stage": {s: round(sum(v) / len(v), 4) for s, v in sorted(per_stage.items())}}
        row["saves_blocks"] = current is None or row["density"] < current["density"]
        passes.append(row)
        what = "base config" if layer is None else f"layer {layer} p -> {thresholds[layer]}"
        logger.info("calibrate min_psnr=%.3f: pass %d/%d, %s: kept density %.4f, PSNR %.2f dB (%s)", budget["db"],
                    len(passes), max_passes, what, row["density"], row["psnr_db"],
                    "in budget" if row["meets_budget"] else "out of budget")
        return row

    def accept(row: dict[str, Any]) -> dict[str, Any]:
        row["accepted"] = True
        return row

    notes: list[str] = []
    try:
        current = base = accept(judge({}, None, None))
        searched = [x for x in layers if x not in cfg.dense_layers]
        rung = {x: 0 for x in searched}  # the ladder index each layer lowers to next
        up = {x: 0 for x in searched}  # the rises index each layer is raised to next
        closed: set[int] = set()
        scores: dict[int, float] = {}  # layer -> score of its last measured move (an estimate once stale)
        fresh: dict[int, dict[str, Any]] = {}  # layer -> its move measured against ``current``
        if not base["meets_budget"] and not rises:
            rung = {}
            notes.append(f"the base config misses the budget on the calibration clips ({base['psnr_db']:.2f} dB < "
                         f"{budget['db']} dB): min_psnr only lowers p, so base is returned; loosen the budget, start "
                         "from a denser base or give raise_thresholds")
        elif not base["meets_budget"]:
            closed.update(rung)  # every lowering move would miss it too: raise first

        def open_layers() -> list[int]:
            return [x for x in rung if x not in closed and rung[x] < len(ladder) and up.get(x, 0) == 0]

        lowering: dict[int, tuple[float, float]] = {}  # layer -> (blocks saved, dB lost) of its failed move
        rising: dict[int, dict[str, Any]] = {}  # layer -> its rise, measured against the config in "against"

        def measure_rise(layer: int) -> dict[str, Any]:
            row = judge({**current["layer_cdf_thresholds"], layer: rises[up[layer]]}, layer, current)
            row["against"] = dict(current["layer_cdf_thresholds"])  # the estimate is the change from that config
            row["rise"] = (row["density"] - current["density"], row["psnr_db"] - current["psnr_db"])
            rising[layer] = row
            return row

        def exchange() -> bool:
            """Pair a rise with a lowering move that failed: the pair whose estimated saving (the move's blocks
            less the rise's) is largest among those whose rise is estimated to buy the dB the move lacked
            (gains add up, as the passes measure them). The rise is re-measured if the config changed since,
            taken, then the move is measured again. Below the budget (base misses it), the rise of most dB per
            added block is taken instead. False when no pair (or rise) is left."""
            nonlocal current
            raisable = [x for x in up if up[x] < len(rises) and rung.get(x, 0) == 0]
            for layer in raisable:
                if layer not in rising and len(passes) < max_passes:
                    measure_rise(layer)
            estimates = {x: r["rise"] for x, r in rising.items() if x in raisable}  # (blocks added, dB gained)
            headroom = current["psnr_db"] - budget["db"]
            if not current["meets_budget"]:
                pairs = {(y, None): gain / max(added, 1e-4) for y, (added, gain) in estimates.items() if gain > 0}
            else:
                pairs = {(y, x): saved - estimates[y][0] for x, (saved, lost) in lowering.items()
                         for y in estimates if y != x and up.get(x, 0) == 0 and rung[x] < len(ladder)
                         and estimates[y][1] >= lost - headroom and saved > estimates[y][0]}
            if not pairs or len(passes) >= max_passes:
                return False
            y, x = max(pairs, key=pairs.get)
            row = rising[y]
            if row["against"] != current["layer_cdf_thresholds"]:  # stale: measure it as the config stands
                row = measure_rise(y)
                gain, added = row["psnr_db"] - current["psnr_db"], row["density"] - current["density"]
                if gain <= 0 or (x is not None and (gain < lowering[x][1] - headroom or lowering[x][0] <= added)):
                    return True  # the estimate is updated: the next round pairs with it
            del rising[y]
            current = accept(row)
            up[y] += 1
            scores.clear(), fresh.clear()
            if x is not None:
                del lowering[x]
                closed.discard(x)  # the lowering loop measures it next, against the raised config
            elif current["meets_budget"]:
                closed.clear()  # climbed into the budget: every lowering move is open again
            return True

        while True:
            if not open_layers():
                if not rises or len(passes) >= max_passes or not exchange():
                    break
                continue
            candidates = open_layers()
            pending = [x for x in candidates if x not in scores]
            layer = pending[0] if pending else max(candidates, key=lambda x: scores[x])
            if not pending and layer in fresh:  # measured against the config as it stands, still the best: take it
                current = accept(fresh[layer])
                rung[layer] += 1
                fresh.clear()  # every other move was measured against the config before this one
                continue
            if len(passes) >= max_passes:
                notes.append(f"the search stopped at max_passes={max_passes} with layers {candidates} still open: "
                             "raise max_passes for a config that may keep fewer blocks")
                if fresh:  # moves measured against the config as it stands are sound: the best of them is taken
                    current = accept(fresh[max(fresh, key=lambda x: scores[x])])
                break
            thresholds = {**current["layer_cdf_thresholds"], layer: ladder[rung[layer]]}
            row = judge(thresholds, layer, current)
            if not (row["meets_budget"] and row["saves_blocks"]):
                closed.add(layer)
                if row["saves_blocks"]:  # what it would save and what it lacked: a pair for a rise (exchange)
                    lowering[layer] = (current["density"] - row["density"], current["psnr_db"] - row["psnr_db"])
                continue
            scores[layer] = (current["density"] - row["density"]) / max(current["psnr_db"] - row["psnr_db"], 0.01)
            fresh[layer] = row
    finally:
        unpatch(pipe)  # each pass unpatches; this covers an interrupt between patch and its try
    in_budget = [row for row in passes if row["accepted"] and row["meets_budget"]]
    current = min(in_budget, key=lambda row: row["density"]) if in_budget else base
    current["picked"] = True
    if rises and not in_budget:
        notes.append(f"no config the search accepted meets {budget['db']:.3f} dB (base: {base['psnr_db']:.2f} dB): "
                     "base is returned")
    calibration_s = time.perf_counter() - started
    thresholds = current["layer_cdf_thresholds"]
    picked = dataclasses.replace(cfg, layer_cdf_thresholds=thresholds)
    layer_rows = [dict(layer=x, cdf_threshold=thresholds.get(x, cfg.cdf_threshold), searched=x in layers,
                       dense=x in cfg.dense_layers, density=current["kept_density_per_layer"].get(x, 1.0),
                       base_density=base["kept_density_per_layer"].get(x, 1.0))
                  for x in range(len(transformer.blocks))]
    stage_rows = [dict(stage=s, density=d, base_density=base["kept_density_per_stage"].get(s))
                  for s, d in current["kept_density_per_stage"].items()]
    generation_dense_s = dense_s * num_steps / steps
    timing = dict(steps=steps, num_inference_steps=num_steps, dense_pass_s=dense_s, patched_passes=len(passes),
                  patched_pass_s=sum(r["seconds"] for r in passes) / len(passes), calibration_s=calibration_s,
                  generation_dense_s=generation_dense_s,
                  calibration_share=calibration_s / max(generation_dense_s, 1e-12),
                  note="share of a dense num_inference_steps run predicted from the measured dense pass (its time "
                       "scales with the steps); one pass per move of the search, each a whole short generation")
    report_budget = dict(min_psnr=round(budget["db"], 3) if min_psnr is None else min_psnr, psnr_peak=peak,
                         cdf_ladder=list(ladder), max_passes=max_passes)
    if rises:
        report_budget.update(raise_ladder=list(rises), min_psnr_from="base" if min_psnr is None else "stated")
    notes.append("judged on the calibration call's clips and seed only: check the pick on other prompts")
    return CalibrationReport(picked, report_budget, [], stage_rows, layer_rows, timing, grid, cfg.block_size,
                             bool(current["meets_budget"]), notes, passes)


class _Probe:
    """Hooks of the calibration pass: step clock, per-layer dense attention timing, on-the-fly metrics."""

    def __init__(self, transformer, layers, cfg, curves, rates, thresholds, heads, query_blocks, steps, seed):
        self.cfg, self.curves, self.rates, self.thresholds = cfg, curves, rates, thresholds
        self.heads, self.query_blocks, self.steps = heads, query_blocks, steps
        self.generator = torch.Generator().manual_seed(seed)
        self.patch_size = tuple(transformer.config.patch_size)
        self.step, self.last_timestep, self.first_call = -1, None, False
        self.grid: tuple[int, int, int] | None = None
        self.measurements: list[Measurement] = []
        self.call_seconds: list[float] = []  # per transformer call, excluding the probe's own work
        self.attention_seconds: dict[int, list[float]] = {}  # per layer, dense self-attention per call
        self.head_dim = 0
        self.num_heads = 0
        self.overhead = 0.0
        self._call_start = 0.0
        self._attn_start = 0.0
        self.device = transformer.device
        self.handles = [transformer.register_forward_pre_hook(self._before_call, with_kwargs=True),
                        transformer.register_forward_hook(self._after_call)]
        for index, block in enumerate(transformer.blocks):
            self.handles.append(block.attn1.register_forward_pre_hook(self._before_attention))
            self.handles.append(block.attn1.register_forward_hook(self._make_after_attention(index, index in layers)))

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def _before_call(self, module, args, kwargs) -> None:
        hidden = args[0] if args else kwargs["hidden_states"]
        timestep = kwargs.get("timestep", args[1] if len(args) > 1 else None)
        value = None if timestep is None else float(timestep.flatten()[0])
        self.first_call = value != self.last_timestep
        if self.first_call:
            self.step += 1
            self.last_timestep = value
        p = self.patch_size
        self.grid = (hidden.shape[2] // p[0], hidden.shape[3] // p[1], hidden.shape[4] // p[2])
        self.overhead = 0.0
        self._sync()
        self._call_start = time.perf_counter()

    def _after_call(self, module, args, output) -> None:
        self._sync()
        self.call_seconds.append(time.perf_counter() - self._call_start - self.overhead)

    def _before_attention(self, module, args) -> None:
        self._sync()
        self._attn_start = time.perf_counter()

    def _make_after_attention(self, layer: int, measured: bool):
        def hook(attn, args, output) -> None:
            self._sync()
            done = time.perf_counter()
            self.attention_seconds.setdefault(layer, []).append(done - self._attn_start)
            if measured and self.first_call:
                self._measure(layer, attn, args)
            self.overhead += time.perf_counter() - done
        return hook

    def _measure(self, layer: int, attn, args) -> None:
        from .adapters.wan import self_attention_qkv

        hidden, rotary = args[0][:1], args[3] if len(args) > 3 else None
        q, k, v = self_attention_qkv(attn, hidden, rotary)
        total_heads, self.head_dim = q.shape[2], q.shape[3]
        self.num_heads = total_heads
        picked = _spread(total_heads, self.heads, self.generator)
        q, k, v = (t[:, :, picked].float() for t in (q, k, v))
        progress = self.step / self.steps
        block = self.cfg.block_size
        for curve in self.curves:
            layout = token_layout(self.grid, block_size=block, curve=curve, device=q.device)
            qc, kc, vc = (t.index_select(1, layout.perm) for t in (q, k, v))
            candidates = [(p, rate) for p in self.thresholds for rate in self.rates]
            masks = _candidate_masks(qc, kc, block, layout.adjacency, candidates)  # [C, h, Qb, Kb]
            recall, error = _mass_and_error(qc, kc, vc, masks, block, self.query_blocks, self.generator)
            density = masks.flatten(1).float().mean(1)
            rows = zip(candidates, density.tolist(), recall.tolist(), error.tolist(), strict=True)  # one host read each
            for (p, rate), kept, mass, err in rows:
                self.measurements.append(Measurement(layer, self.step, progress, curve, rate, p, kept, mass, err))


def _spread(total: int, count: int, generator: torch.Generator) -> list[int]:
    """``count`` of ``range(total)`` evenly spread, with a seeded offset (all when ``count >= total``)."""
    if count >= total:
        return list(range(total))
    offset = int(torch.randint(total, (1,), generator=generator))
    return sorted({(offset + round(i * total / count)) % total for i in range(count)})


def _candidate_masks(q, k, block: int, adjacency, candidates) -> torch.Tensor:
    """``bool[C, h, Qb, Kb]``: the kept blocks of each ``(p, drop rate)`` candidate, by the selector's own
    rules (:func:`jenga.selection.select_blocks`, torch reference), pooled scores computed once."""
    from .blocks import lists_to_dense
    from .selection import _mass_limit, _select_lists_torch, pool_blocks

    n, dim = q.shape[1], q.shape[3]
    video_blocks = math.ceil(n / block)
    probs = torch.softmax(pool_blocks(q, block, n) @ pool_blocks(k, block, n).transpose(-1, -2) / math.sqrt(dim), -1)
    masks = []
    for p, rate in candidates:
        top_k = max(1, math.floor((1.0 - rate) * video_blocks))
        kv_index, kv_count = _select_lists_torch(probs, adjacency, None, video_blocks, video_blocks, top_k,
                                                 _mass_limit(p))
        masks.append(lists_to_dense(kv_index, kv_count, video_blocks)[0])
    return torch.stack(masks)


def _mass_and_error(q, k, v, masks, block: int, query_blocks: int, generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Per candidate, recall and relative L2 error over sampled query blocks; ``q, k, v`` float32
    ``[1, N, h, D]`` in curve order, ``masks`` ``bool[C, h, Qb, Kb]``. One query block at a time: its scores
    ``[h, block, N]`` are summed per key block (mass ``[h, block, Kb]`` and value sums ``[h, block, Kb, D]``),
    so every candidate's carved output is a masked sum of those, never a second softmax."""
    n, dim = q.shape[1], q.shape[3]
    count, heads, _, key_blocks = masks.shape
    qt, kt, vt = (t[0].transpose(0, 1) for t in (q, k, v))  # [h, N, D]
    pad = key_blocks * block - n
    mass = torch.zeros(count, dtype=torch.float64, device=q.device)  # summed with device tensors below
    err = torch.zeros(count, dtype=torch.float64, device=q.device)
    ref, rows = 0.0, 0
    for qb in _spread(masks.shape[2], query_blocks, generator):
        lo, hi = qb * block, min((qb + 1) * block, n)
        probs = (qt[:, lo:hi] @ kt.transpose(1, 2) / math.sqrt(dim)).softmax(-1)  # [h, r, N]
        dense = probs @ vt  # [h, r, D]
        padded = torch.nn.functional.pad(probs, (0, pad))
        block_mass = padded.unflatten(-1, (key_blocks, block)).sum(-1)  # [h, r, Kb]
        block_out = torch.einsum("hrkb,hkbd->hrkd", padded.unflatten(-1, (key_blocks, block)),
                                 torch.nn.functional.pad(vt, (0, 0, 0, pad)).unflatten(1, (key_blocks, block)))
        keep = masks[:, :, qb].float()  # [C, h, Kb]
        kept_mass = torch.einsum("chk,hrk->chr", keep, block_mass)  # [C, h, r]
        carved = torch.einsum("chk,hrkd->chrd", keep, block_out) / kept_mass.clamp_min(1e-30).unsqueeze(-1)
        mass += kept_mass.sum((1, 2)).double()
        err += (carved - dense).pow(2).sum((1, 2, 3)).double()
        ref += float(dense.pow(2).sum())
        rows += heads * (hi - lo)
    return mass / rows, (err / max(ref, 1e-30)).sqrt()


def _meets(recall: float, error: float, min_recall: float | None, max_error: float | None) -> bool:
    return (min_recall is None or recall >= min_recall - 1e-12) and (max_error is None or error <= max_error + 1e-12)


def _pick(cfg, probe: _Probe, min_recall, max_error, num_steps: int, calibration_s: float, layers, num_layers,
          per_layer: bool = True, layer_thresholds: bool = False):
    """Choose per (curve, p) the per-stage drop rates and dense layers, then the fastest (curve, p); with
    ``layer_thresholds``, per curve the per-stage drop rates and every measured layer's own ``p``."""
    stages = len(cfg.stages)
    # (curve, p, stage, layer, rate) -> mean (density, recall, error) over the stage's captured steps
    groups: dict[tuple, list[Measurement]] = {}
    stage_steps: dict[int, set[int]] = {s: set() for s in range(stages)}
    for m in probe.measurements:
        if m.progress < cfg.dense_steps - 1e-9:
            continue  # those steps run dense whatever the pick
        stage = cfg.stage_at(m.progress)
        stage_steps[stage].add(m.step)
        groups.setdefault((m.curve, m.cdf_threshold, stage, m.layer, m.drop_rate), []).append(m)
    mean = {key: tuple(sum(getattr(m, f) for m in ms) / len(ms) for f in ("density", "recall", "output_error"))
            for key, ms in groups.items()}
    measured_stages = [s for s in range(stages) if stage_steps[s]]
    notes = []
    if len(measured_stages) < stages:
        notes.append(f"stages {[s for s in range(stages) if s not in measured_stages]} got no captured step "
                     f"(raise steps); they keep base's drop rates")

    def ok(c, p, s, layer, rate):
        d, r, e = mean[(c, p, s, layer, rate)]
        return _meets(r, e, recall_budget(s), error_budget(s))

    def stage_mean(c, p, s, rate, f):
        return sum(mean[(c, p, s, x, rate)][f] for x in layers) / len(layers)

    def base_budget(budget, s, field: int, dense_value: float):
        """``budget`` as given, or for ``"base"`` the base config's own stage mean of ``field`` (1: recall,
        2: output error; ``dense_value`` where base runs the stage dense)."""
        if budget != "base":
            return budget
        if not cfg.carves(cfg.drop_rates[s]):
            return dense_value
        return stage_mean(cfg.curve, cfg.cdf_threshold, s, cfg.drop_rates[s], field)

    def recall_budget(s):
        return base_budget(min_recall, s, 1, 1.0)

    def error_budget(s):
        return base_budget(max_error, s, 2, 0.0)

    def plan_for(c, p):
        if not per_layer:  # the budget on each stage's mean over the layers
            chosen = {}
            for s in measured_stages:
                fits = [(stage_mean(c, p, s, r, 0), -r) for r in probe.rates
                        if _meets(stage_mean(c, p, s, r, 1), stage_mean(c, p, s, r, 2), recall_budget(s),
                                  error_budget(s))]
                chosen[s] = -min(fits)[1] if fits and min(fits)[0] < 1 / KERNEL_VS_DENSE else 0.0
            cost = sum(len(stage_steps[s]) * (stage_mean(c, p, s, chosen[s], 0) if chosen[s] else 1 / KERNEL_VS_DENSE)
                       for s in measured_stages)
            return cost, chosen, set()
        dense_layers: set[int] = set()
        chosen: dict[int, float] = {}
        for _ in range(2):  # second pass: re-pick with the dense layers of the first fixed
            for s in measured_stages:
                best = None
                for rate in probe.rates:
                    failing = {x for x in layers if x not in dense_layers and not ok(c, p, s, x, rate)}
                    cost = sum(mean[(c, p, s, x, rate)][0] for x in layers if x not in dense_layers | failing)
                    cost += (len(failing) + len(dense_layers)) / KERNEL_VS_DENSE
                    if best is None or cost < best[0] - 1e-12 or (abs(cost - best[0]) <= 1e-12 and rate > best[1]):
                        best = (cost, rate, failing)
                dense_cost = len(layers) / KERNEL_VS_DENSE
                if best[0] >= dense_cost - 1e-12:
                    chosen[s], failing = 0.0, set()
                else:
                    chosen[s], failing = best[1], best[2]
                dense_layers |= failing
        cost = 0.0
        for s in measured_stages:
            n = len(stage_steps[s])
            rate = chosen[s]
            for x in layers:
                carved = rate > 0 and x not in dense_layers
                cost += n * (mean[(c, p, s, x, rate)][0] if carved else 1.0 / KERNEL_VS_DENSE)
        return cost, chosen, dense_layers

    free = [x for x in layers if x not in cfg.dense_layers]  # base's dense layers stay dense: (1, 1, 0) in a mean

    def plan_layers(c):
        """Per stage, the drop rate and per-layer p of least mean density whose stage mean meets the budget."""
        chosen: dict[int, float] = {}
        layer_p: dict[tuple[int, int], float] = {}
        cost, fixed = 0.0, len(layers) - len(free)
        for s in measured_stages:
            # qualities summed over the free layers: recall (a dense layer adds 1), minus the error (it adds 0)
            qualities, needs = [], []
            if min_recall is not None:
                qualities.append(lambda cell: cell[1])
                needs.append(recall_budget(s) * len(layers) - fixed)
            if max_error is not None:
                qualities.append(lambda cell: -cell[2])
                needs.append(-error_budget(s) * len(layers))
            best = None
            for rate in probe.rates:
                options = [[(mean[(c, q, s, x, rate)][0], tuple(f(mean[(c, q, s, x, rate)]) for f in qualities), q)
                            for q in probe.thresholds] for x in free]
                picks = _allocate(options, tuple(needs))
                if picks is None:
                    continue
                density = (sum(options[i][j][0] for i, j in enumerate(picks)) + fixed) / len(layers)
                if best is None or density < best[0] - 1e-12 or (abs(density - best[0]) <= 1e-12 and rate > best[1]):
                    best = (density, rate, [options[i][j][2] for i, j in enumerate(picks)])
            if best is None or best[0] >= 1 / KERNEL_VS_DENSE - 1e-12:  # carving cannot meet it, or never pays
                chosen[s] = 0.0
                cost += len(stage_steps[s]) / KERNEL_VS_DENSE
                continue
            chosen[s] = best[1]
            layer_p.update({(x, s): q for x, q in zip(free, best[2], strict=True)})
            cost += len(stage_steps[s]) * best[0]
        return cost, chosen, set(), layer_p

    best = None
    for c in probe.curves:
        for p in (cfg.cdf_threshold,) if layer_thresholds else probe.thresholds:
            cost, chosen, dense_layers, layer_p = plan_layers(c) if layer_thresholds else (*plan_for(c, p), {})
            if best is None or cost < best[0] - 1e-12:
                best = (cost, c, p, chosen, dense_layers, layer_p)
    _, curve, p, chosen, dense_layers, layer_p = best
    rates = tuple(chosen.get(s, cfg.drop_rates[s]) for s in range(stages))
    all_dense = set(cfg.dense_layers) | dense_layers
    mapping = {x: tuple(layer_p.get((x, s), p) for s in range(stages)) for x in free if layer_p}
    picked = dataclasses.replace(cfg, curve=curve, cdf_threshold=p, drop_rates=rates,
                                 dense_layers=tuple(sorted(all_dense)), layer_cdf_thresholds=mapping)

    def p_at(x: int, s: int) -> float:
        return layer_p.get((x, s), p)
    if len(layers) < num_layers:
        notes.append(f"layers {sorted(set(range(num_layers)) - set(layers))} were not measured: they follow the "
                     "picked drop rates without a check")
    stage_rows, layer_rows, meets_all = [], [], True
    for x in layers:
        row = {"layer": x, "dense": x in picked.dense_layers, "stages": []}
        for s in measured_stages:
            rate = chosen[s]
            carved = rate > 0 and x not in picked.dense_layers
            d, r, e = mean[(curve, p_at(x, s), s, x, rate)] if carved else (1.0, 1.0, 0.0)
            meets_all &= _meets(r, e, recall_budget(s), error_budget(s))
            own = [(mean[(curve, p, s, x, q)][0], q) for q in probe.rates if ok(curve, p, s, x, q)]
            own_best = None if not own else dict(drop_rate=min(own)[1], density=round(min(own)[0], 4))
            row["stages"].append(dict(stage=s, drop_rate=rate if carved else 0.0,
                                      cdf_threshold=p_at(x, s) if carved else None, density=round(d, 4),
                                      recall=round(r, 4), output_error=round(e, 4), own_best=own_best))
        layer_rows.append(row)
    exact: dict[int, tuple[float, float, float]] = {}  # unrounded stage means of the pick
    for s in measured_stages:
        cells = [mean[(curve, p_at(x, s), s, x, chosen[s])] if chosen[s] > 0 and x not in picked.dense_layers
                 else (1.0, 1.0, 0.0) for x in layers]
        exact[s] = tuple(sum(c[i] for c in cells) / len(cells) for i in range(3))
        row = dict(stage=s, drop_rate=rates[s], steps_captured=sorted(stage_steps[s]),
                   **{f: round(exact[s][i], 4) for i, f in enumerate(("density", "recall", "output_error"))})
        row["per_layer_settings"] = _per_layer_settings(mean, cfg, curve, s, layers, min_recall, max_error)
        if layer_thresholds and chosen[s] > 0:  # the allocation: each layer's p in this stage
            row["cdf_thresholds"] = {x: layer_p[(x, s)] for x in free}
        base_key = (cfg.curve, cfg.cdf_threshold, s)
        if all((*base_key, x, cfg.drop_rates[s]) in mean for x in layers):
            # the uncalibrated config on the same captures: what the pick is compared with
            cells = [mean[(*base_key, x, cfg.drop_rates[s])] for x in layers]
            row["base"] = dict(drop_rate=cfg.drop_rates[s], cdf_threshold=cfg.cdf_threshold,
                               density=round(sum(c[0] for c in cells) / len(cells), 4),
                               recall=round(sum(c[1] for c in cells) / len(cells), 4),
                               output_error=round(sum(c[2] for c in cells) / len(cells), 4),
                               layers_meeting_budget=sum(_meets(c[1], c[2], recall_budget(s), error_budget(s))
                                                         for c in cells))
            row["base"]["mean_meets_budget"] = _meets(sum(c[1] for c in cells) / len(cells),
                                                      sum(c[2] for c in cells) / len(cells), recall_budget(s),
                                                      error_budget(s))
        stage_rows.append(row)
    if not per_layer:  # judged on the stage means
        meets_all = all(_meets(exact[s][1], exact[s][2], recall_budget(s), error_budget(s)) for s in measured_stages)
        for row in stage_rows:
            if min_recall is not None:
                row["min_recall"] = round(recall_budget(row["stage"]), 4)
            if max_error is not None:
                row["max_error"] = round(error_budget(row["stage"]), 4)
    if not meets_all:
        notes.append("some layer misses the budget under the picked config" if per_layer else
                     "some stage misses the budget under the picked config")
    timing = _predict(picked, probe, layer_rows, num_steps, calibration_s, num_layers)
    budget = {"min_recall": min_recall, "max_error": max_error, "per_layer": per_layer,
              "layer_thresholds": layer_thresholds}
    return CalibrationReport(picked, budget, probe.measurements, stage_rows, layer_rows, timing, probe.grid,
                             cfg.block_size, meets_all, notes)


Option = tuple[float, tuple[float, ...], float]  # (density, qualities, p) of one candidate on one layer


def _allocate(options: list[list[Option]], needs: tuple[float, ...]) -> list[int] | None:
    """One option per layer (its index in ``options[i]``) with the least total density whose total of every
    quality ``c`` reaches ``needs[c]`` (recall, or minus the error); ``None`` when the greedy finds none.

    One quality: greedy on each layer's upper convex hull of (density, quality): from every layer's sparsest
    option, take the hull step of the highest quality gain per kept block until the total reaches the need
    (optimal for the convex relaxation of this multiple-choice knapsack). Several: from the sparsest options,
    the change of highest shortfall reduction (each quality's shortfall relative to its first) per kept block.
    Then one- and two-layer changes among all options that lower the density and keep every total (the last
    greedy step overshoots); finally never more than the best option index shared by every layer (one ``p`` for
    all, the preset's kind of config; the options of every layer come in the same ``p`` order)."""
    count = len(needs)
    if any(sum(max(o[1][c] for o in opts) for opts in options) < needs[c] - 1e-12 for c in range(count)):
        return None
    picks = _greedy_hull(options, needs[0]) if count == 1 else _greedy_shortfall(options, needs)
    if picks is not None:
        picks = _improve(options, picks, needs)

    def density(chosen: list[int]) -> float:
        return sum(options[i][j][0] for i, j in enumerate(chosen))

    for j in range(min(len(opts) for opts in options)):
        uniform = [j] * len(options)
        fits = all(sum(o[j][1][c] for o in options) >= needs[c] - 1e-12 for c in range(count))
        if fits and (picks is None or density(uniform) < density(picks) - 1e-12):
            picks = uniform
    return picks


def _greedy_hull(options: list[list[Option]], need: float) -> list[int]:
    """One quality: hull steps of the highest gain per kept block until the total reaches ``need``."""
    hulls = [_upper_hull(opts) for opts in options]
    at = [0] * len(options)
    quality = lambda i, k: options[i][hulls[i][k]][1][0]  # noqa: E731
    total = sum(quality(i, 0) for i in range(len(options)))
    while total < need - 1e-12:
        steps = [((quality(i, at[i] + 1) - quality(i, at[i]))
                  / (options[i][hull[at[i] + 1]][0] - options[i][hull[at[i]]][0]), i)
                 for i, hull in enumerate(hulls) if at[i] + 1 < len(hull)]
        _, i = max(steps)  # never empty: every hull ends at its layer's best quality, and those reach ``need``
        total += quality(i, at[i] + 1) - quality(i, at[i])
        at[i] += 1
    return [hull[a] for hull, a in zip(hulls, at, strict=True)]


def _greedy_shortfall(options: list[list[Option]], needs: tuple[float, ...]) -> list[int] | None:
    """Several qualities: from the sparsest options, the change of highest relative shortfall reduction per
    kept block (a change that lowers the shortfall without adding blocks first) until no quality falls short."""
    count = len(needs)
    picks = [min(range(len(opts)), key=lambda j, opts=opts: (opts[j][0], [-q for q in opts[j][1]])) for opts in options]
    totals = [sum(options[i][j][1][c] for i, j in enumerate(picks)) for c in range(count)]
    scale = [max(needs[c] - totals[c], 1e-12) for c in range(count)]

    def shortfall(t: list[float]) -> float:
        return sum(max(0.0, needs[c] - t[c]) / scale[c] for c in range(count))

    while shortfall(totals) > 1e-12:
        best = None
        for i, opts in enumerate(options):
            current = opts[picks[i]]
            for j, o in enumerate(opts):
                after = [totals[c] + o[1][c] - current[1][c] for c in range(count)]
                gain = shortfall(totals) - shortfall(after)
                if gain <= 1e-15:
                    continue
                added = o[0] - current[0]
                rate = math.inf if added <= 0 else gain / added
                if best is None or rate > best[0]:
                    best = (rate, i, j, after)
        if best is None:
            return None
        _, i, j, totals = best
        picks[i] = j
    return picks


def _upper_hull(options: list[Option]) -> list[int]:
    """Indices of the options on the upper convex hull of (density, first quality), density ascending: the
    Pareto front (more density only for more quality), without the points below a chord."""
    order = sorted(range(len(options)), key=lambda j: (options[j][0], -options[j][1][0]))
    front: list[int] = []
    for j in order:
        if not front or options[j][1][0] > options[front[-1]][1][0]:
            front.append(j)
    hull: list[int] = []
    for j in front:
        while len(hull) >= 2:
            (da, (qa, *_), _), (db, (qb, *_), _), (dc, (qc, *_), _) = options[hull[-2]], options[hull[-1]], options[j]
            if (qb - qa) * (dc - da) > (qc - qa) * (db - da):
                break  # the middle point lies above the chord: it stays
            hull.pop()
        hull.append(j)
    return hull


def _improve(options: list[list[Option]], picks: list[int], needs: tuple[float, ...]) -> list[int]:
    """Local search: the best density-lowering change of one layer's option, or of two layers' at once, that
    keeps every total at its need, until none is left."""
    picks = list(picks)
    count = len(needs)
    totals = [sum(options[i][j][1][c] for i, j in enumerate(picks)) for c in range(count)]

    def fits(*gains: tuple[float, ...]) -> bool:
        return all(totals[c] + sum(g[c] for g in gains) >= needs[c] - 1e-12 for c in range(count))

    for _ in range(8 * len(options) + 8):
        best: tuple[float, tuple] = (1e-12, ())
        moves = [[(options[i][picks[i]][0] - o[0], tuple(a - b for a, b in zip(o[1], options[i][picks[i]][1],
                                                                                  strict=True)), j)
                  for j, o in enumerate(options[i]) if j != picks[i]] for i in range(len(options))]
        for i, layer_moves in enumerate(moves):
            for saving, gain, j in layer_moves:
                if saving > best[0] and fits(gain):
                    best = (saving, ((i, j, gain),))
            for i2 in range(i + 1, len(options)):
                for saving, gain, j in layer_moves:
                    for saving2, gain2, j2 in moves[i2]:
                        if saving + saving2 > best[0] and fits(gain, gain2):
                            best = (saving + saving2, ((i, j, gain), (i2, j2, gain2)))
        if not best[1]:
            return picks
        for i, j, gain in best[1]:
            picks[i] = j
            totals = [t + g for t, g in zip(totals, gain, strict=True)]
    return picks


def _per_layer_settings(mean, cfg: JengaConfig, curve: str, stage: int, layers, min_recall, max_error):
    """What per-layer ``(p, drop rate)`` would keep in ``stage`` with every layer held to the budget on its own
    (reported, not applied: ``JengaConfig`` has per-stage drop rates, and per-layer ``p`` is what
    ``layer_thresholds=True`` allocates under the stage mean): per layer the fewest blocks meeting the layer's budget,
    the base config's own recall (and error, ``max_error="base"``) of that layer for ``"base"``. A layer that nothing
    satisfies counts dense."""
    rows, densities = [], []
    for x in layers:
        if min_recall == "base":
            key = (cfg.curve, cfg.cdf_threshold, stage, x, cfg.drop_rates[stage])
            target = mean[key][1] if cfg.carves(cfg.drop_rates[stage]) and key in mean else 1.0
        else:
            target = min_recall
        error_target = max_error
        if max_error == "base":
            key = (cfg.curve, cfg.cdf_threshold, stage, x, cfg.drop_rates[stage])
            error_target = mean[key][2] if cfg.carves(cfg.drop_rates[stage]) and key in mean else 0.0
        fits = [(d, p, rate) for (c, p, s, layer, rate), (d, r, e) in mean.items()
                if c == curve and s == stage and layer == x and _meets(r, e, target, error_target)]
        d, p, rate = min(fits) if fits else (1.0, None, 0.0)
        densities.append(d)
        rows.append(dict(layer=x, cdf_threshold=p, drop_rate=rate, density=round(d, 4)))
    # the mean of the unrounded densities, rounded as the stage rows are (a mean of rounded ones can exceed them)
    return dict(density=round(sum(densities) / len(densities), 4), layers=rows)


def _predict(cfg: JengaConfig, probe: _Probe, layer_rows, num_steps: int, calibration_s: float, num_layers: int):
    """Predicted attention and end-to-end seconds of a ``num_steps`` run, dense and with ``cfg``."""
    calls = len(probe.call_seconds)
    calls_per_step = calls / max(probe.step + 1, 1)
    attn_dense = {x: sum(v) / len(v) for x, v in probe.attention_seconds.items()}  # seconds per call
    all_attention = sum(attn_dense.values())
    rest = max(sum(probe.call_seconds) / calls - all_attention, 0.0)
    rate_source = f"measured dense attention x density / {KERNEL_VS_DENSE} (kernel per-block rate vs dense)"
    tflops = None
    if probe.device.type == "cuda":
        name = torch.cuda.get_device_name(probe.device)
        for key, table in KERNEL_TFLOPS.items():
            if key in name and probe.head_dim in table:
                tflops = table[probe.head_dim]
                rate_source = f"{key} kernel {tflops} TFLOP/s at head dim {probe.head_dim} (benchmarks/RESULTS.md)"
    else:
        rate_source += "; CPU: carving saves nothing here, GPU-like per-block cost assumed"
    n_tokens = math.prod(probe.grid)
    per_layer_density = {}
    for row in layer_rows:
        per_layer_density[row["layer"]] = {st["stage"]: st["density"] for st in row["stages"]}
    mean_density = {}
    for s in range(len(cfg.stages)):
        values = [d[s] for d in per_layer_density.values() if s in d]
        mean_density[s] = sum(values) / len(values) if values else 1.0

    def sparse_time(layer: int, density: float) -> float:
        if tflops is not None:
            return 4 * probe.num_heads * n_tokens**2 * probe.head_dim * density / (tflops * 1e12)
        return attn_dense[layer] * density / KERNEL_VS_DENSE

    dense_steps = math.ceil(cfg.dense_steps * num_steps - 1e-9)
    picked_attention = 0.0
    for step in range(num_steps):
        progress = step / num_steps
        stage = cfg.stage_at(progress)
        rate = cfg.drop_rates[stage]
        for x in range(num_layers):
            if step < dense_steps or not cfg.carves(rate) or x in cfg.dense_layers:
                picked_attention += attn_dense[x]
            else:
                density = per_layer_density.get(x, {}).get(stage, mean_density[stage])
                picked_attention += sparse_time(x, density)
    picked_attention *= calls_per_step
    dense_attention = all_attention * num_steps * calls_per_step
    rest_total = rest * num_steps * calls_per_step
    generation_dense = dense_attention + rest_total
    return dict(num_inference_steps=num_steps, calls_per_step=calls_per_step, rate_source=rate_source,
                attention_dense_s=dense_attention, attention_picked_s=picked_attention,
                generation_dense_s=generation_dense, generation_picked_s=picked_attention + rest_total,
                dense_call_s=sum(probe.call_seconds) / calls, calibration_s=calibration_s,
                calibration_share=calibration_s / max(generation_dense, 1e-12),
                note="selector and permutation time not included; transformer time only (no text encoder, no VAE)")


def _budget_text(budget: dict[str, float | None]) -> str:
    parts = []
    if budget.get("min_recall") is not None:
        parts.append(f"recall >= {budget['min_recall']}")
    if budget.get("max_error") is not None:
        parts.append(f"output error <= {budget['max_error']}")
    where = "per layer" if budget.get("per_layer", True) else "stage mean over layers"
    if budget.get("layer_thresholds"):
        where += ", a p per layer"
    return " and ".join(parts) + f" ({where})"


def _own_text(own: dict | None) -> str:
    return "none meets the budget" if own is None else f"{own['drop_rate']:.2f} (density {own['density']:.3f})"
