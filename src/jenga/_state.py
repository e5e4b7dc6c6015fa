"""Per-transformer runtime state of a patch: the forward plan the processors read, and the step clock.

One :class:`CarvingRuntime` per patched transformer. Its :class:`ForwardPlan` is rebuilt at the start of
every forward (by the hook on the RoPE module, the first thing both model families run), so nothing from
an earlier forward -- the other CFG branch, or a call that raised half-way -- can leak into the next one.
Two things outlive a forward, both per CFG branch and cleared with the pipeline's stateful hooks (at the end
of every call, and by the stage driver also after an exception): the fallback step counter (in the clock
hook) and the block-stack residuals that step skipping reuses (``CarvingRuntime.residuals``).

The step comes, in this order, from the diffusers cache context (``transformer.cache_context(name,
step_index=..., num_inference_steps=...)``, as WanPipeline passes it), from the scheduler of the patched
pipeline (``step_index`` over ``len(timesteps)``, no host synchronisation), or, for a bare transformer in a
custom loop, by counting timestep changes per branch with progress ``1 - t / 1000`` (one host read).
"""

from __future__ import annotations

import logging
import math
import weakref
from dataclasses import dataclass, field, fields
from typing import Any

import torch

from .backends import triton_available
from .config import PROGRESS_SLACK, JengaConfig
from .layout import TokenLayout, token_layout

logger = logging.getLogger("jenga")

# flow-matching models are trained on timesteps in [0, 1000]: t / 1000 is the noise level
_NUM_TRAIN_TIMESTEPS = 1000.0


@dataclass
class LayerStats:
    """What one sparse layer kept in one forward (recorded when ``collect_stats`` is on).

    ``kv_count`` is ``int32[B, H, Qb]`` as the selector returned it; ``video_blocks`` of the
    ``key_blocks`` are video (the rest hold text, always kept).
    """

    step: int
    layer: int
    branch: str | None
    kv_count: torch.Tensor
    key_blocks: int
    video_blocks: int

    @property
    def density(self) -> float:
        """Share of (query block, key block) pairs computed (host synchronisation)."""
        return (self.kv_count.float().mean() / self.key_blocks).item()


@dataclass
class ForwardPlan:
    """What the attention processors of one transformer need during one forward.

    ``layout`` is None when the tokens stay row-major (grid too small, or no stage ever carves): every
    layer then runs the stock processor and the output is exactly the stock output.
    """

    active: bool = False
    num_tokens: int = 0
    layout: TokenLayout | None = None
    sparse: bool = False
    drop_rate: float = 0.0
    step: int = 0
    total: int = 0
    progress: float = 0.0
    branch: str | None = None
    skip: bool = False
    skip_key: Any = None
    # step skipping: the cached residual this forward adds (when ``skip``), and the one it computed; the
    # traced code only reads and sets these attributes, so torch.compile guards on no branch key
    residual: torch.Tensor | None = None
    new_residual: torch.Tensor | None = None
    adjacency: torch.Tensor | None = None
    always_keep: torch.Tensor | None = None
    backend: str = "torch"

    def carves(self, num_tokens: int) -> bool:
        """True when a processor seeing ``num_tokens`` video tokens should run block-sparse attention.

        The token count guards against a stale plan: a processor called outside a forward of this grid
        falls back to the stock processor.
        """
        return self.active and self.sparse and num_tokens == self.num_tokens


@dataclass
class BranchClock:
    """Fallback step counter for one CFG branch: distinct timesteps seen in this run."""

    step: int = -1
    last_timestep: float | None = None

    def tick(self, timestep: float) -> int:
        if self.last_timestep is None or timestep > self.last_timestep:
            self.step = 0  # a noisier timestep than the last one starts a new run
        elif timestep != self.last_timestep:
            self.step += 1
        self.last_timestep = timestep
        return self.step

    def reset(self) -> None:
        self.step, self.last_timestep = -1, None


@dataclass
class CarvingRuntime:
    """Shared by the hooks and processors of one patched transformer."""

    config: JengaConfig
    patch_size: tuple[int, int, int]
    first_frame: bool
    first_frame_prefix: bool
    pipeline: Any = None
    last_frame: bool = False  # set around a pipeline call given a last frame (with first_frame: keep both ends)
    scheduler: Any = None
    # the step comes from the timestep values (pipelines whose own scheduler does not step, e.g. SkyReels-V2
    # diffusion forcing with one scheduler per frame): progress 1 - max(t) / 1000, steps counted per branch
    step_from_timesteps: bool = False
    plan: ForwardPlan = field(default_factory=ForwardPlan)
    stats: list[LayerStats] = field(default_factory=list)
    # set by the progressive driver around each stage call (jenga.progressive), else None / 0
    window: tuple[int, int] | None = None  # (global index of the call's first step, steps of the whole run)
    text_bias: float = 0.0  # added to the text-key logits (HunyuanVideo amplifier, low-resolution stages)
    # step skipping (jenga.skipping): block-stack residual of the last computed step, per CFG branch
    residuals: dict[Any, torch.Tensor] = field(default_factory=dict, repr=False)
    skip_blocks: list[torch.nn.Module] | None = field(default=None, repr=False)  # the stack skipping bypasses
    # ``(layer, processor)`` of every carving processor: their ``pending_stats`` become LayerStats at end_forward
    processors: list[tuple[int, Any]] = field(default_factory=list, repr=False)
    # context parallelism (jenga.parallel.ParallelState) when the transformer runs under Ulysses, else None
    parallel: Any = field(default=None, repr=False)
    _ordinal: tuple[int, int] = field(default=(-1, 0), repr=False)
    _last_reason: str | None = field(default=None, repr=False)
    regional_compile_warned: bool = field(default=False, repr=False)  # jenga.skipping.check_skip_stack

    def __post_init__(self) -> None:
        # a weak reference: the pipeline owns the transformer, not the other way round
        if self.pipeline is not None and not isinstance(self.pipeline, weakref.ref):
            self.pipeline = weakref.ref(self.pipeline)

    # -- called by the hooks (never traced: plain Python bookkeeping)

    @torch.compiler.disable
    def begin_forward(self, latent: torch.Tensor) -> TokenLayout | None:
        """Start a forward for a latent ``[B, C, F, H, W]``: grid, layout and tables; dense until the clock."""
        cfg = self.config
        pt, ph, pw = self.patch_size
        grid = (latent.shape[2] // pt, latent.shape[3] // ph, latent.shape[4] // pw)
        num_tokens = math.prod(grid)
        layout = None
        if not cfg.ever_sparse:
            self._note("dense: no stage of the config carves (drop rates at or below dense_threshold)")
        elif math.ceil(num_tokens / cfg.block_size) < cfg.min_video_blocks:
            self._note(f"dense: grid {grid} has fewer than {cfg.min_video_blocks} blocks of {cfg.block_size}")
        else:
            both_ends = self.first_frame and self.last_frame
            layout = token_layout(grid, block_size=cfg.block_size, curve=cfg.curve,
                                  first_frame_prefix=self.first_frame_prefix, last_frame_suffix=both_ends,
                                  device=latent.device)
        backend = cfg.backend
        if backend == "auto":
            backend = "triton" if latent.is_cuda and triton_available() else "torch"
        plan = self.plan
        plan.active, plan.num_tokens, plan.layout, plan.sparse = True, num_tokens, layout, False
        plan.adjacency = layout.adjacency if layout is not None and cfg.adjacency else None
        plan.always_keep = None
        plan.residual = plan.new_residual = None
        if cfg.collect_stats:
            self._clear_pending_stats()
        if layout is not None and self.first_frame:
            plan.always_keep = layout.first_frame | layout.last_frame if self.last_frame else layout.first_frame
        plan.backend = backend
        return layout

    @torch.compiler.disable
    def set_step(self, context: Any, timestep: torch.Tensor | None, branch_clock: BranchClock) -> None:
        """Read the step, pick the stage and decide whether this forward carves."""
        step, progress, total, stage_start = self._read_clock(context, timestep, branch_clock)
        cfg, plan = self.config, self.plan
        drop_rate = cfg.drop_rates[cfg.stage_at(progress)]
        plan.step, plan.total, plan.progress, plan.drop_rate = step, total, progress, drop_rate
        plan.branch = getattr(context, "name", None)
        plan.skip, plan.residual = False, None
        if cfg.skip_steps:
            # without a branch name (custom loops), the k-th forward of a step is branch k
            ordinal = self._ordinal[1] + 1 if self._ordinal[0] == step else 0
            self._ordinal = (step, ordinal)
            plan.skip_key = plan.branch if plan.branch is not None else ordinal
            cached = self.residuals.get(plan.skip_key)
            plan.skip = (not stage_start and total > 0 and cached is not None
                         and step in cfg.skipped_steps(total))
            plan.residual = cached if plan.skip else None
        if plan.layout is None:
            plan.sparse = False
        elif progress < cfg.dense_steps - PROGRESS_SLACK:
            plan.sparse = False
            self._note(f"dense: step {step} is inside dense_steps={cfg.dense_steps}")
        elif not cfg.carves(drop_rate):
            plan.sparse = False
            self._note(f"dense: drop rate {drop_rate} <= dense_threshold {cfg.dense_threshold}")
        else:
            plan.sparse = True
            self._note(f"sparse: drop rate {drop_rate}, p {cfg.cdf_threshold}")

    @torch.compiler.disable
    def end_forward(self) -> None:
        """After the block stack: keep its residual for later skipped steps, file the layer statistics."""
        plan = self.plan
        plan.active = False
        if plan.new_residual is not None:
            self.residuals[plan.skip_key] = plan.new_residual
            plan.new_residual = None
        plan.residual = None
        if self.config.collect_stats:
            for layer, processor in self.processors:
                if processor.pending_stats is not None:
                    self.stats.append(LayerStats(plan.step, layer, plan.branch, *processor.pending_stats))
                    processor.pending_stats = None

    def reset(self) -> None:
        """Forget the last forward (in place: compiled processors keep reading the same plan object)."""
        for f in fields(ForwardPlan):
            setattr(self.plan, f.name, f.default)
        self.residuals.clear()
        self._clear_pending_stats()
        self._ordinal = (-1, 0)
        self._last_reason = None

    # -- internals

    def _read_clock(self, context: Any, timestep: torch.Tensor | None, branch_clock: BranchClock):
        """``(step, progress, total steps or 0 when unknown, whether the step starts a stage)``.

        Inside a progressive run the call's local index is shifted by the driver's ``window``."""
        index, total = self._local_clock(context)
        if index is None:
            if timestep is None:
                return 0, 0.0, 0, True
            t = float(timestep.detach().flatten().max())  # the one host read of the fallback clock
            progress = min(max(1.0 - t / _NUM_TRAIN_TIMESTEPS, 0.0), 1.0)
            step = branch_clock.tick(t)
            return step, progress, 0, step == 0
        if self.window is not None:
            offset, total = self.window
            step = offset + index
            return step, min(step / total, 1.0), total, index == 0
        return index, min(index / total, 1.0), total, index == 0 or index in self.config.switch_steps(total)

    def _local_clock(self, context: Any) -> tuple[int | None, int]:
        if self.step_from_timesteps:
            return None, 0
        step_index = getattr(context, "step_index", None)
        total = getattr(context, "num_inference_steps", None)
        if step_index is not None and total:
            return step_index, total
        scheduler = self._scheduler()
        timesteps = getattr(scheduler, "timesteps", None)
        if timesteps is not None and len(timesteps) > 0:
            index = getattr(scheduler, "step_index", None)
            if index is None:
                index = getattr(scheduler, "begin_index", None) or 0
            return index, len(timesteps)
        return None, 0

    def pipeline_object(self) -> Any:
        """The patched pipeline, or None (a bare transformer, or a pipeline since deleted)."""
        return self.pipeline() if self.pipeline is not None else None

    def _scheduler(self) -> Any:
        if self.scheduler is not None:
            return self.scheduler
        return getattr(self.pipeline_object(), "scheduler", None)

    def _clear_pending_stats(self) -> None:
        """Drop what a forward that never reached its end (an exception half-way) left on the processors."""
        for _, processor in self.processors:
            processor.pending_stats = None

    def _note(self, reason: str) -> None:
        """Debug log on changes only, so a 50-step run logs a handful of lines, not one per forward."""
        if reason != self._last_reason:
            logger.debug("jenga: %s", reason)
            self._last_reason = reason
