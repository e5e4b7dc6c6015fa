"""Progressive resolution inside the ordinary ``pipe(...)`` call: early steps on a smaller latent.

The pipeline's own ``__call__`` runs once per stage (this module never re-implements a denoising loop):
:func:`plan_stages` gives each stage its steps, latent size and slice of one run-wide timestep grid; at a
switch the last clean estimate is upsampled and re-noised to the next stage's first sigma (:func:`renoise`).
Each stage gets a fresh scheduler copy with its shift, encoders run once (their results are replayed), the
step clock, progress bar and callbacks see global steps, and HunyuanVideo's text amplifier biases the text
keys of a low-resolution first stage. An interrupt in an early stage decodes the reached latents, as stock.
A stage's last latents come from the driver's step callback, or, for a pipeline without ``callback_on_step_end``
(HunyuanVideo 1.5), from its latent output; a call without ``height``/``width`` gets the adapter's default size.
The driver is attached per instance by swapping the pipeline's class for a cached subclass overriding only
``__call__``; ``unpatch`` restores the class. Every call it drives (also one stage, or none: a pipeline that
skips steps or takes a last frame) ends by resetting the patch's per-branch state, after an exception too.
Worked examples: ``tests/test_progressive.py``.

Known limit: HunyuanVideo I2V's ``prepare_latents`` blends given latents with the image latents
(``0.999 * x + 0.001 * image``), so each later stage starts from that blend, as its first stage does.
"""

from __future__ import annotations

import inspect
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from diffusers.callbacks import MultiPipelineCallbacks, PipelineCallback
from diffusers.utils.torch_utils import randn_tensor

from ._record import record_of
from .config import JengaConfig

__all__ = ["StagePlan", "drives_calls", "install_driver", "needs_driver", "plan_stages", "remove_driver", "renoise",
           "shift_sigmas"]

logger = logging.getLogger("jenga")

_STOCK_CLASS = "_jenga_stock_class"
_INTERRUPTED = "_jenga_interrupted"
_STAGED_CLASSES: dict[type, type] = {}


@dataclass(frozen=True)
class StagePlan:
    """One stage of a run: steps ``[start, end)`` at latent size ``latent_hw`` with scheduler ``shift``.

    ``t`` is the stage's slice of the unshifted run-wide grid ``1 - i / n`` (float64[end - start]).
    """

    index: int
    scale: float
    shift: float | None
    start: int
    end: int
    latent_hw: tuple[int, int]
    t: np.ndarray

    @property
    def num_steps(self) -> int:
        return self.end - self.start


def shift_sigmas(t: np.ndarray | torch.Tensor, shift: float) -> np.ndarray | torch.Tensor:
    """The flow-matching shift ``s * t / (1 + (s - 1) * t)`` (what the schedulers apply to passed sigmas)."""
    return shift * t / (1 + (shift - 1) * t)


def needs_driver(config: JengaConfig) -> bool:
    """Whether a pipeline patched with ``config`` must drive its calls (stages to run, or a shift to set)."""
    return len(_segments(config)) > 1 or any(stage.shift is not None for stage in config.stages)


def drives_calls(config: JengaConfig, pipeline: Any) -> bool:
    """Whether the driver wraps the calls of ``pipeline`` patched with ``config``: stages to run or a shift to set,
    a last frame to tell the carving about, or cached residuals (``skip_steps``) to drop when a call raises."""
    return needs_driver(config) or bool(config.skip_steps) or takes_last_frame(pipeline)


def takes_last_frame(pipeline: Any) -> bool:
    """Whether ``pipeline.__call__`` accepts a ``last_image`` (first-and-last-frame conditioning): its calls then
    go through the driver, which tells the carving to keep the last frame's blocks when one is given."""
    return "last_image" in inspect.signature(type(pipeline).__call__).parameters


def plan_stages(config: JengaConfig, num_steps: int, latent_hw: tuple[int, int], multiple: int) -> list[StagePlan]:
    """Stages of a ``num_steps`` run on a full latent of ``latent_hw``; sizes are multiples of ``multiple``.

    ``ValueError`` when a stage's size rounds to zero (scale too small for this resolution).
    """
    if num_steps < 1:
        raise ValueError(f"num_inference_steps must be >= 1, got {num_steps}")
    grid = 1.0 - np.arange(num_steps, dtype=np.float64) / num_steps
    spans = config.stage_steps(num_steps)
    plans: list[StagePlan] = []
    for scale, shift, first, last in _segments(config):
        start, end = spans[first][0], spans[last][1]
        if end <= start:
            continue  # shorter than one step at this step count
        size = []
        for full in latent_hw:
            side = full if scale == 1.0 else math.floor(scale * full / multiple + 0.5) * multiple
            if side < multiple:
                raise ValueError(
                    f"stage scale {scale} turns a latent side of {full} into {side} (below {multiple}, the "
                    "smallest latent size step of this pipeline): use a larger scale or a larger resolution"
                )
            size.append(side)
        plans.append(StagePlan(len(plans), scale, shift, start, end, (size[0], size[1]), grid[start:end]))
    return plans


def renoise(clean: torch.Tensor, latent_hw: tuple[int, int], sigma: float, generator: Any, mode: str) -> torch.Tensor:
    """Upsample a clean latent ``[B, C, F, H, W]`` to ``latent_hw`` and noise it to ``sigma`` (flow matching)."""
    size = (clean.shape[2], *latent_hw)
    up = torch.nn.functional.interpolate(clean.float(), size=size, mode=mode)
    noise = randn_tensor(up.shape, generator=generator, device=up.device, dtype=up.dtype)
    return (1.0 - sigma) * up + sigma * noise


# ----------------------------------------------------------------------------------------------------
# the per-instance driver


def install_driver(pipeline: Any) -> None:
    """Swap ``pipeline``'s class for its staged subclass (per instance; :func:`remove_driver` undoes it)."""
    cls = type(pipeline)
    if _STOCK_CLASS in cls.__dict__:
        return
    staged = _STAGED_CLASSES.get(cls)
    if staged is None:
        staged = type(cls.__name__, (cls,), {"__call__": _staged_call, "interrupt": property(_interrupted),
                                             "__module__": cls.__module__, "__qualname__": cls.__qualname__,
                                             "__doc__": cls.__doc__, _STOCK_CLASS: cls})
        _STAGED_CLASSES[cls] = staged
    pipeline.__class__ = staged


def remove_driver(pipeline: Any) -> None:
    cls = type(pipeline)
    if _STOCK_CLASS in cls.__dict__:
        pipeline.__class__ = cls.__dict__[_STOCK_CLASS]


def _interrupted(self) -> bool:
    """``pipe.interrupt``: also true through the last stage once an earlier stage was interrupted (each
    pipeline call clears ``_interrupt`` when it starts)."""
    return bool(self.__dict__.get("_interrupt", False) or self.__dict__.get(_INTERRUPTED, False))


def _staged_call(self, *args: Any, **kwargs: Any) -> Any:
    """``pipe(...)`` of a patched pipeline: every stage in turn, one result at the requested size."""
    stock = type(self).__dict__[_STOCK_CLASS].__call__
    # a transformer swapped for torch.compile's wrapper after patching keeps its record on the original
    transformers = (getattr(self, "transformer", None), getattr(self, "transformer_2", None))
    records = [record_of(t) for t in transformers]
    records = [r for r in records if r is not None]
    if not records:
        return stock(self, *args, **kwargs)
    bound = inspect.signature(stock).bind(self, *args, **kwargs)
    bound.apply_defaults()
    params = dict(bound.arguments)
    params.pop("self")
    for name, param in inspect.signature(stock).parameters.items():
        if param.kind is inspect.Parameter.VAR_KEYWORD:
            params.update(params.pop(name))
    # first-and-last-frame conditioning (Wan FLF2V): the last latent frame's blocks are kept like the first's
    last_frame = params.get("last_image") is not None
    for record in records:
        record.runtime.last_frame = last_frame
    try:
        if not needs_driver(records[0].config):
            return stock(self, *args, **kwargs)
        return _run_stages(self, stock, records, params)
    finally:
        for record in records:
            record.runtime.last_frame = False
            record.reset_state()  # after an exception too: the next call starts with no state of this one


def _run_stages(pipe: Any, stock: Callable, records: list[Any], params: dict[str, Any]) -> Any:
    cfg: JengaConfig = records[0].config
    runtimes = [r.runtime for r in records]
    for name in ("sigmas", "timesteps"):
        if params.get(name) is not None:
            raise ValueError(f"{name}= cannot be combined with jenga stages: the stages define the schedule "
                             "(set the shifts in JengaConfig.stages)")
    num_steps = int(params["num_inference_steps"])
    if params.get("height") is None or params.get("width") is None:
        default = records[0].adapter.default_pixel_size(pipe)
        if default is None:
            raise ValueError(f"{type(pipe).__name__} with jenga stages needs height= and width=")
        params["height"], params["width"] = default
    height, width = int(params["height"]), int(params["width"])
    vae_scale = int(pipe.vae_scale_factor_spatial)
    # the pipelines' check_inputs want pixel sizes divisible by the adapter's pixel_multiple (16): with Wan's
    # and HunyuanVideo's VAEs (x8) that is any even latent size, with a pixel-space "VAE" (x1) a latent multiple of 16
    pixel = records[0].adapter.pixel_multiple
    latent_multiple = pixel // vae_scale if vae_scale and pixel % vae_scale == 0 else 1
    multiple = math.lcm(2, latent_multiple, *runtimes[0].patch_size[1:])
    full_hw = (height // vae_scale, width // vae_scale)
    plans = plan_stages(cfg, num_steps, full_hw, multiple)
    original = pipe.scheduler
    _check_scheduler(original, staged=len(plans) > 1)

    user_latents = params.get("latents")
    if user_latents is not None and tuple(user_latents.shape[-2:]) != plans[0].latent_hw:
        raise ValueError(f"latents= of spatial size {tuple(user_latents.shape[-2:])} do not match the first "
                         f"stage's latent size {plans[0].latent_hw} (scale {plans[0].scale} of {full_hw})")
    # a pipeline without step callbacks (HunyuanVideo 1.5) returns a stage's latents as its latent output,
    # all frames (its conditioning is channel-concatenated, not part of the latents)
    takes_callback = "callback_on_step_end" in inspect.signature(stock).parameters
    callback = params.get("callback_on_step_end")
    if isinstance(callback, (PipelineCallback, MultiPipelineCallbacks)):
        params["callback_on_step_end_tensor_inputs"] = callback.tensor_inputs
    user_inputs = list(params.get("callback_on_step_end_tensor_inputs") or [])
    if takes_callback:
        params["callback_on_step_end_tensor_inputs"] = list(dict.fromkeys([*user_inputs, "latents"]))
    generator = params.get("generator")
    total_tokens = full_hw[0] * full_hw[1]

    bar = type(pipe).progress_bar(pipe, total=num_steps)
    pipe.__dict__["progress_bar"] = lambda iterable=None, total=None: _StageBar(bar)
    memo = _EncoderMemo(pipe)
    latents = user_latents
    captured: dict[str, torch.Tensor] = {}
    try:
        schedulers = [_stage_scheduler(original, plan, single=len(plans) == 1) for plan in plans]
        for scheduler in schedulers[:-1]:
            final_sigma = float(scheduler.sigmas[-1])
            if final_sigma != 0.0:
                raise NotImplementedError(
                    f"{type(scheduler).__name__} ends its schedule at sigma {final_sigma}, not 0: a stage's "
                    "clean latent would not be available (use final_sigmas_type='zero')"
                )
        for plan, scheduler in zip(plans, schedulers, strict=True):
            last = plan.index == len(plans) - 1
            if pipe.__dict__.get(_INTERRUPTED) and not last:
                continue  # interrupted: straight to the last call, which only decodes
            stage_tokens = plan.latent_hw[0] * plan.latent_hw[1]
            bias = 0.0
            if plan.index == 0 and cfg.text_amplifier > 0 and stage_tokens < total_tokens:
                bias = cfg.text_amplifier * math.log(total_tokens / stage_tokens)
            for runtime in runtimes:
                runtime.window = (plan.start, num_steps)
                runtime.text_bias = bias
            call = dict(params)
            call.update(height=plan.latent_hw[0] * vae_scale, width=plan.latent_hw[1] * vae_scale,
                        num_inference_steps=plan.num_steps, latents=latents)
            if takes_callback:
                call["callback_on_step_end"] = _StepCallback(callback, user_inputs, plan.start, captured)
            if not last:
                call.update(output_type="latent", return_dict=False)
                call = records[0].adapter.stage_arguments(type(pipe).__name__, call)
            pipe.__dict__["scheduler"] = scheduler  # not setattr: the pipeline's config must not change
            logger.debug("jenga: stage %d, steps %d-%d at latent %s, shift %s, text bias %.3f", plan.index,
                         plan.start, plan.end - 1, plan.latent_hw, plan.shift, bias)
            output = stock(pipe, **call)
            memo.freeze()
            if last:
                return output
            reached = captured.pop("latents", latents) if takes_callback else output[0]
            if pipe.__dict__.get("_interrupt", False):
                # stock semantics: the interrupted latents are returned as they are, here at the final size
                pipe.__dict__[_INTERRUPTED] = True
                size = (reached.shape[2], *plans[-1].latent_hw)
                latents = torch.nn.functional.interpolate(reached.float(), size=size, mode=cfg.upsample)
                continue
            nxt = plans[plan.index + 1]
            sigma = float(schedulers[nxt.index].sigmas[0])
            with torch.no_grad():  # the latents after the stage's last step, all frames (not the output)
                latents = renoise(reached, nxt.latent_hw, sigma, generator, cfg.upsample)
        raise AssertionError("unreachable: the last stage returns")
    finally:
        pipe.__dict__["scheduler"] = original
        pipe.__dict__.pop("progress_bar", None)
        pipe.__dict__.pop(_INTERRUPTED, None)
        memo.restore()
        bar.close()
        for runtime in runtimes:
            runtime.window = None
            runtime.text_bias = 0.0


def _segments(config: JengaConfig) -> list[tuple[float, float | None, int, int]]:
    """Runs of consecutive config stages with equal scale and shift: ``(scale, shift, first, last)``."""
    out: list[tuple[float, float | None, int, int]] = []
    for index, stage in enumerate(config.stages):
        if out and stage.continues(config.stages[index - 1]):
            out[-1] = (*out[-1][:3], index)
        else:
            out.append((stage.scale, stage.shift, index, index))
    return out


def _shift_key(scheduler: Any) -> str:
    config = scheduler.config
    if "flow_shift" in config:
        return "flow_shift"
    if "shift" in config:
        return "shift"
    raise NotImplementedError(
        f"jenga stages need a flow-matching scheduler with a shift, got {type(scheduler).__name__}"
    )


def _check_scheduler(scheduler: Any, *, staged: bool) -> None:
    config = scheduler.config
    if config.get("use_dynamic_shifting", False):
        raise NotImplementedError(f"{type(scheduler).__name__} uses dynamic shifting: jenga stages set a fixed "
                                  "shift per stage; build the scheduler with use_dynamic_shifting=False")
    if staged and "use_flow_sigmas" in config and not config.use_flow_sigmas:
        raise NotImplementedError(f"{type(scheduler).__name__} without use_flow_sigmas=True cannot take the "
                                  "stages' sigma schedules")
    _shift_key(scheduler)


def _stage_scheduler(original: Any, plan: StagePlan, *, single: bool) -> Any:
    """A fresh scheduler with the stage's shift; with several stages its ``set_timesteps`` installs the
    stage's grid whatever the pipeline passes."""
    overrides = {} if plan.shift is None else {_shift_key(original): plan.shift}
    scheduler = type(original).from_config(original.config, **overrides)
    if single:
        return scheduler
    stage_t = np.array(plan.t, dtype=np.float64)
    cls_set = type(scheduler).set_timesteps

    def set_timesteps(num_inference_steps=None, device=None, sigmas=None, **kwargs):
        cls_set(scheduler, device=device, sigmas=stage_t.copy())

    scheduler.set_timesteps = set_timesteps
    scheduler.set_timesteps(device="cpu")  # now: sigmas[0] gives the re-noise level of this stage
    return scheduler


class _StepCallback:
    """The ``callback_on_step_end`` of a stage call: the user's callback at the global step index (seeing
    only the tensors it asked for), then the step's final latents kept for the switch."""

    def __init__(self, callback: Any, tensor_inputs: list[str], offset: int, captured: dict) -> None:
        self.callback = callback
        self.tensor_inputs = tensor_inputs
        self.offset = offset
        self.captured = captured

    def __call__(self, pipe: Any, step: int, timestep: Any, tensors: dict) -> dict:
        outputs: dict = {}
        if self.callback is not None:
            mine = {name: tensors[name] for name in self.tensor_inputs if name in tensors}
            outputs = self.callback(pipe, self.offset + step, timestep, mine) or {}
        self.captured["latents"] = outputs.get("latents", tensors["latents"])
        return outputs


class _StageBar:
    """What a stage's ``with self.progress_bar(total=...)`` gets: updates go to the run's one bar."""

    def __init__(self, bar: Any) -> None:
        self.bar = bar

    def __enter__(self) -> _StageBar:
        return self

    def __exit__(self, *exc: object) -> bool:
        return False

    def update(self, n: int = 1) -> None:
        self.bar.update(n)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.bar, name)


class _EncoderMemo:
    """Per instance, for one staged call: the first stage's text/image encodings, replayed in call order
    to the later stages (HunyuanVideo encodes the positive and negative prompts in two calls)."""

    _NAMES = ("encode_prompt", "encode_image")

    def __init__(self, pipe: Any) -> None:
        self.pipe = pipe
        self.results: dict[str, list[Any]] = {name: [] for name in self._NAMES}
        self.calls: dict[str, int] = dict.fromkeys(self._NAMES, 0)
        self.frozen = False
        for name in self._NAMES:
            if callable(getattr(type(pipe), name, None)):
                pipe.__dict__[name] = self._wrap(name, getattr(type(pipe), name).__get__(pipe))

    def _wrap(self, name: str, method: Callable) -> Callable:
        def encode(*args: Any, **kwargs: Any) -> Any:
            done = self.results[name]
            if self.frozen and self.calls[name] < len(done):
                self.calls[name] += 1
                return done[self.calls[name] - 1]
            result = method(*args, **kwargs)
            if not self.frozen:
                done.append(result)
            return result

        return encode

    def freeze(self) -> None:
        """After a stage: later stages replay the recorded results from the first call on."""
        self.frozen = True
        self.calls = dict.fromkeys(self._NAMES, 0)

    def restore(self) -> None:
        for name in self._NAMES:
            self.pipe.__dict__.pop(name, None)
