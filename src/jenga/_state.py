"""Per-transformer runtime state of a patch: the forward plan the processors read, and per CFG branch state.

One :class:`CarvingRuntime` per patched transformer. Its :class:`ForwardPlan` is rebuilt at the start of
every forward (by the hook on the RoPE module, the first thing both model families run), so nothing from
an earlier forward -- the other CFG branch, or a call that raised half-way -- can leak into the next one.
What outlives a forward is one :class:`BranchState` per CFG branch (the fallback step counter, and the
block-stack residual that step skipping reuses with the step it came from), held by the clock hook's
:class:`BranchStates` (a diffusers ``StateManager``): resetting the pipeline's stateful hooks clears all of it,
at the end of every call and, through the stage driver, also after an exception.

The step comes, in this order, from the diffusers cache context (``transformer.cache_context(name,
step_index=..., num_inference_steps=...)``, as WanPipeline passes it), from the scheduler of the patched
pipeline (``step_index`` over ``len(timesteps)``, no host synchronisation), or, for a bare transformer in a
custom loop, by counting timestep changes per branch with progress ``1 - t / 1000`` (one host read).
"""

from __future__ import annotations

import logging
import math
import threading
import weakref
from dataclasses import dataclass, field, fields
from typing import Any

import torch
from diffusers.hooks.hooks import BaseState, StateManager

from . import _warm_up
from ._warm_up import KernelWarmUp, warm_up_enabled
from .backends import triton_available
from .config import PROGRESS_SLACK, JengaConfig
from .layout import TokenLayout, token_layout

logger = logging.getLogger("jenga")

# flow-matching models are trained on timesteps in [0, 1000]: t / 1000 is the noise level
_NUM_TRAIN_TIMESTEPS = 1000.0
# guards the check-and-claim of a runtime's forward by one thread (module-level: a lock cannot be deep-copied)
_OWNER_LOCK = threading.Lock()


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


class BranchState(BaseState):
    """What one CFG branch carries from one forward to the next inside a pipeline call.

    ``step`` / ``last_timestep``: the fallback clock (distinct timesteps seen, for forwards whose step neither a
    cache context nor a scheduler gives). ``residual``: the block-stack residual (output - input of the whole
    stack) of the branch's last computed step, which its skipped steps add; ``residual_step``: that step.
    """

    def __init__(self) -> None:
        self.reset()

    def tick(self, timestep: float) -> int:
        """The step of a forward at ``timestep``: the count of distinct timesteps seen in this run."""
        if self.last_timestep is None or timestep > self.last_timestep:
            self.step = 0  # a noisier timestep than the last one starts a new run
        elif timestep != self.last_timestep:
            self.step += 1
        self.last_timestep = timestep
        return self.step

    def reset(self) -> None:
        self.step: int = -1
        self.last_timestep: float | None = None
        self.residual: torch.Tensor | None = None
        self.residual_step: int = -1

    def __repr__(self) -> str:
        shape = None if self.residual is None else tuple(self.residual.shape)
        return (f"BranchState(step={self.step}, last_timestep={self.last_timestep}, residual={shape}, "
                f"residual_step={self.residual_step})")


class BranchStates(StateManager):
    """The clock hook's :class:`BranchState` of each CFG branch; ``reset`` (diffusers' stateful-hook reset) clears
    them all.

    diffusers' ``cache_context(name)`` names the branch (WanPipeline: ``"cond"``, ``"uncond"``). Forwards without
    a cache context (HunyuanVideo pipelines, custom loops) have no name: the k-th forward of a step is branch k,
    and branch 0's clock counts the steps for all of them (the step is read before the branch is known; the
    forwards of one step share its timestep).
    """

    def __init__(self) -> None:
        super().__init__(BranchState)
        self.order: tuple[int, int] = (-1, 0)  # without a cache context: (step of the last forward, its index)

    def clock(self) -> BranchState:
        """The state whose fallback clock reads this forward's step."""
        return self.get_state() if self._context is not None else self._unnamed(0)

    def branch(self, step: int) -> tuple[str | int, BranchState]:
        """This forward's branch key and state; called once per forward, after its step is read."""
        if self._context is not None:
            return self._context.name, self.get_state()
        index = self.order[1] + 1 if self.order[0] == step else 0
        self.order = (step, index)
        return index, self._unnamed(index)

    def _unnamed(self, index: int) -> BranchState:
        # kept beside the named states (int keys; cache-context names are str), so reset clears them too
        state = self._state_cache.get(index)
        if state is None:
            state = self._state_cache[index] = BranchState()
        return state

    def reset(self, *args: Any, **kwargs: Any) -> None:
        super().reset(*args, **kwargs)
        self.order = (-1, 0)


@dataclass
class ForwardPlan:
    """What the attention processors of one transformer need during one forward.

    ``layout`` is None when the tokens stay row-major (grid too small, or no stage ever carves): every
    layer then runs the stock processor and the output is exactly the stock output.
    """

    active: bool = False
    num_tokens: int = 0
    layout: TokenLayout | None = None
    # tokens before the grid in the hidden states (LTX conditioning latents), moved after it in carved order;
    # ``perm`` / ``inverse`` reorder the whole sequence (the layout's own when there are none)
    extra_tokens: int = 0
    perm: torch.Tensor | None = None
    inverse: torch.Tensor | None = None
    sparse: bool = False
    drop_rate: float = 0.0
    stage: int = 0  # the stage of this step (picks per-layer thresholds, JengaConfig.cdf_threshold_at)
    step: int = 0
    total: int = 0
    progress: float = 0.0
    branch: str | None = None
    skip: bool = False
    skip_key: Any = None  # the branch's name, or without a cache context its index within the step
    branch_state: BranchState | None = None  # where end_forward files the residual this forward computes
    # step skipping: the cached residual this forward adds (when ``skip``), and the one it computed; the
    # traced code only reads and sets these attributes, so torch.compile guards on no branch key
    residual: torch.Tensor | None = None
    new_residual: torch.Tensor | None = None
    adjacency: torch.Tensor | None = None
    always_keep: torch.Tensor | None = None
    backend: str = "torch"
    # a dense step of a stage that will carve: the dense attention starts compiling the carved kernels
    warm_up: bool = False

    def carves(self, num_tokens: int) -> bool:
        """True when a processor seeing ``num_tokens`` video tokens should run block-sparse attention.

        The token count guards against a stale plan: a processor called outside a forward of this grid
        falls back to the stock processor.
        """
        return self.active and self.sparse and num_tokens == self.num_tokens


@dataclass(frozen=True)
class _NoGrid:
    grid: tuple[int, int, int] = (0, 0, 0)
    device: str = "cpu"
    extra_tokens: int = 0


_NO_GRID = _NoGrid()
_SEQUENCE_ORDERS: dict[tuple[int, int], tuple[TokenLayout, torch.Tensor, torch.Tensor]] = {}


def _sequence_order(layout: TokenLayout, extra: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(perm, inverse)`` of a sequence of ``extra`` tokens followed by ``layout``'s grid: the grid in carved
    order first, then the extra tokens in their order (where attention keeps them like text). Cached per
    layout object (which is itself cached) and count."""
    if extra == 0:
        return layout.perm, layout.inverse
    key = (id(layout), extra)
    hit = _SEQUENCE_ORDERS.get(key)
    if hit is not None and hit[0] is layout:
        return hit[1], hit[2]
    device = layout.perm.device
    perm = torch.cat([layout.perm + extra, torch.arange(extra, device=device)])
    inverse = torch.empty_like(perm)
    inverse[perm] = torch.arange(perm.numel(), device=device)
    if len(_SEQUENCE_ORDERS) >= 32:
        _SEQUENCE_ORDERS.clear()
    _SEQUENCE_ORDERS[key] = (layout, perm, inverse)
    return perm, inverse


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
    skip_blocks: list[torch.nn.Module] | None = field(default=None, repr=False)  # the stack skipping bypasses
    # ``(layer, processor)`` of every carving processor: their ``pending_stats`` become LayerStats at end_forward
    processors: list[tuple[int, Any]] = field(default_factory=list, repr=False)
    # context parallelism (jenga.parallel.ParallelState) when the transformer runs under Ulysses, else None
    parallel: Any = field(default=None, repr=False)
    # ``set_step`` arguments of a clock that runs before the plan starts (``HookSites.clock_first``)
    pending_clock: tuple | None = field(default=None, repr=False)
    # CPU copy of a scheduler's timesteps, for schedulers without ``step_index`` (CogVideoX's DDIM / DPM)
    _timestep_table: tuple[Any, list[float]] | None = field(default=None, repr=False)
    _last_reason: str | None = field(default=None, repr=False)
    regional_compile_warned: bool = field(default=False, repr=False)  # jenga.skipping.check_skip_stack
    _outside_warned: bool = field(default=False, repr=False)
    _owner: int | None = field(default=None, repr=False)  # thread id of the forward under way, else None
    kernel_warm_up: KernelWarmUp = field(default_factory=KernelWarmUp, repr=False)
    _early_warm_up_done: bool = field(default=False, repr=False)  # early_warm_up: once per runtime

    def __post_init__(self) -> None:
        # a weak reference: the pipeline owns the transformer, not the other way round
        if self.pipeline is not None and not isinstance(self.pipeline, weakref.ref):
            self.pipeline = weakref.ref(self.pipeline)

    def __deepcopy__(self, memo: dict) -> CarvingRuntime:
        """Refused: diffusers' hooks on the copied modules would still call the original's hooks (their forward
        wrappers are closures, which ``copy.deepcopy`` shares), so the copy would drive this runtime."""
        raise TypeError(
            "a jenga-patched pipeline or transformer cannot be deep-copied (the copy's hooks would drive the "
            "original's patch): jenga.unpatch(pipe), copy.deepcopy(pipe), then jenga.patch() each of them"
        )

    # -- called by the hooks (never traced: plain Python bookkeeping)

    @torch.compiler.disable
    def begin_forward(self, tokens: Any) -> TokenLayout | None:
        """Start a forward on a :class:`~jenga.adapters.base.TokenGrid`: layout and tables; dense until the clock
        (or, when the clock ran first, with the step it read)."""
        self._claim()
        cfg = self.config
        if tokens is None:  # the adapter could not read a grid from the inputs: stock attention, stock order
            self._note("dense: no token grid in this forward's inputs")
            tokens = _NO_GRID
        grid, device, extra = tokens.grid, tokens.device, tokens.extra_tokens
        num_tokens = math.prod(grid)
        layout = None
        if tokens is _NO_GRID:
            pass
        elif not cfg.ever_sparse:
            self._note("dense: no stage of the config carves (drop rates at or below dense_threshold)")
        elif math.ceil(num_tokens / cfg.block_size) < cfg.min_video_blocks:
            self._note(f"dense: grid {grid} has fewer than {cfg.min_video_blocks} blocks of {cfg.block_size}")
        else:
            both_ends = self.first_frame and self.last_frame
            layout = token_layout(grid, block_size=cfg.block_size, curve=cfg.curve,
                                  first_frame_prefix=self.first_frame_prefix, last_frame_suffix=both_ends,
                                  device=device)
        backend = cfg.backend
        if backend == "auto":
            backend = "triton" if torch.device(device).type == "cuda" and triton_available() else "torch"
        plan = self.plan
        plan.active, plan.num_tokens, plan.layout, plan.sparse = True, num_tokens, layout, False
        plan.extra_tokens = extra
        plan.perm, plan.inverse = (None, None) if layout is None else _sequence_order(layout, extra)
        plan.adjacency = layout.adjacency if layout is not None and cfg.adjacency else None
        plan.always_keep = None
        plan.residual = plan.new_residual = plan.branch_state = None
        if cfg.collect_stats:
            self._clear_pending_stats()
        if layout is not None and self.first_frame:
            plan.always_keep = layout.first_frame | layout.last_frame if self.last_frame else layout.first_frame
        plan.backend = backend
        if self.pending_clock is not None:  # the clock ran before this forward's plan existed (clock_first)
            pending, self.pending_clock = self.pending_clock, None
            self.set_step(*pending)
        return layout

    @torch.compiler.disable
    def set_step(self, context: Any, timestep: torch.Tensor | None, branches: BranchStates) -> None:
        """Read the step, pick the stage, decide whether this forward carves and (step skipping) whether it adds
        its branch's cached residual. ``branches`` is the clock hook's state of the CFG branches."""
        step, progress, total, stage_start = self._read_clock(context, timestep, branches)
        cfg, plan = self.config, self.plan
        stage = cfg.stage_of_step(step, total) if total > 0 else cfg.stage_at(progress)
        drop_rate = cfg.drop_rates[stage]
        plan.step, plan.total, plan.progress, plan.drop_rate = step, total, progress, drop_rate
        plan.stage = stage
        plan.branch = getattr(context, "name", None)
        plan.skip, plan.residual, plan.branch_state, plan.warm_up = False, None, None, False
        if cfg.skip_steps:
            plan.skip_key, state = branches.branch(step)
            plan.branch_state = state
            cached = state.residual
            plan.skip = (not stage_start and total > 0 and cached is not None and not self._called_elsewhere()
                         and step in cfg.skipped_steps(total))
            plan.residual = cached if plan.skip else None
            if plan.skip:
                self._note(f"skip: step {step} of branch {plan.skip_key!r} adds the residual of step "
                           f"{state.residual_step}")
        if plan.layout is None:
            plan.sparse = False
        elif progress < cfg.dense_steps - PROGRESS_SLACK:
            plan.sparse = False
            plan.warm_up = cfg.carves(drop_rate) and self.parallel is None and warm_up_enabled()
            self._note(f"dense: step {step} is inside dense_steps={cfg.dense_steps}")
        elif not cfg.carves(drop_rate):
            plan.sparse = False
            self._note(f"dense: drop rate {drop_rate} <= dense_threshold {cfg.dense_threshold}")
        else:
            plan.sparse = True
            self.kernel_warm_up.wait()  # the carved kernels' compile started by a dense step, if under way
            per_layer = f" (per-layer p for layers {[x for x, _ in cfg.layer_cdf_thresholds]})" \
                if cfg.layer_cdf_thresholds else ""
            self._note(f"sparse: drop rate {drop_rate}, p {cfg.cdf_threshold}{per_layer}")

    @torch.compiler.disable
    def warm_up_kernels(self, query_like: tuple[tuple[int, ...], torch.dtype, torch.device], owner: Any, *,
                        key_lengths: bool = False, key_bias: tuple[int, float] | None = None,
                        stage: int | None = None) -> None:
        """From a dense step's attention (``plan.warm_up``): compile what this stage's carved steps will run,
        on background threads (:mod:`jenga._warm_up`), for queries of ``(shape, dtype, device)``, with
        per-sample key lengths when ``key_lengths`` and ``key_bias`` as the carved call passes them. Once per
        forward: the flag is cleared, so the later layers of the step do not ask again. ``stage``: that stage's
        drop rate and ``p`` instead of this step's (:meth:`early_warm_up`, before the clock has read the step)."""
        plan, cfg = self.plan, self.config
        plan.warm_up = False
        drop_rate = plan.drop_rate if stage is None else cfg.drop_rates[stage]
        stage = plan.stage if stage is None else stage
        thresholds = owner.cdf_thresholds
        p = cfg.cdf_threshold if thresholds is None else thresholds[stage]
        self.kernel_warm_up.start(*query_like, drop_rate=drop_rate, cdf_threshold=p, block_size=cfg.block_size,
                                  num_video=plan.num_tokens, adjacency=plan.adjacency,
                                  always_keep=plan.always_keep, backend=plan.backend, key_lengths=key_lengths,
                                  key_bias=key_bias)

    @torch.compiler.disable
    def early_warm_up(self, adapter: Any, transformer: torch.nn.Module | None, batch: int, rope_output: Any) -> None:
        """At the first forward's RoPE, let the adapter start compiling what its first attention and carved steps
        will run (:meth:`~jenga.adapters.base.ModelAdapter.early_warm_up`). In a fresh process the patch
        embedding's and condition embedder's first calls (cuDNN and cuBLAS set-up) come before the first attention:
        about 0.8 s on an H200 that the compiles now overlap. Once per patch; later shapes warm at their dense
        steps as before."""
        plan, cfg = self.plan, self.config
        if self._early_warm_up_done or transformer is None or plan.layout is None or self.parallel is not None:
            return
        self._early_warm_up_done = True
        stage = next((i for i, r in enumerate(cfg.drop_rates) if cfg.carves(r)), None)
        if (stage is None or cfg.dense_steps <= 0 or not warm_up_enabled() or torch.compiler.is_compiling()
                or not _warm_up.early_start_applies(plan.layout.perm.device)):
            return
        adapter.early_warm_up(self, transformer, batch, rope_output, stage)

    @torch.compiler.disable
    def end_forward(self) -> None:
        """After the block stack: keep its residual for later skipped steps, file the layer statistics."""
        plan = self.plan
        plan.active = False
        self._owner = None
        state = plan.branch_state
        if plan.new_residual is not None and state is not None:
            state.residual, state.residual_step = plan.new_residual, plan.step
        plan.residual = plan.new_residual = plan.branch_state = None
        if self.config.collect_stats:
            for layer, processor in self.processors:
                if processor.pending_stats is not None:
                    self.stats.append(LayerStats(plan.step, layer, plan.branch, *processor.pending_stats))
                    processor.pending_stats = None

    def _claim(self) -> None:
        """Take the forward plan for this thread. One plan per transformer: a forward starting on another
        thread while one runs would overwrite it, so it is refused. A forward of this thread that raised
        half-way (its plan still active) is simply restarted."""
        me = threading.get_ident()
        with _OWNER_LOCK:
            owner = self._owner
            if self.plan.active and owner is not None and owner != me and _thread_alive(owner):
                raise RuntimeError(
                    "jenga: this patched transformer is already running a forward on another thread; a patched "
                    "transformer runs one forward at a time (its per-forward plan is shared by its layers). Give "
                    "each thread its own transformer (load or unpatch-copy-patch one per thread)"
                )
            self._owner = me

    def reset(self) -> None:
        """Forget the last forward (in place: compiled processors keep reading the same plan object)."""
        for f in fields(ForwardPlan):
            setattr(self.plan, f.name, f.default)
        self.pending_clock = None
        self._timestep_table = None
        self._clear_pending_stats()
        self._last_reason = None
        self._owner = None

    # -- internals

    def _read_clock(self, context: Any, timestep: torch.Tensor | None, branches: BranchStates):
        """``(step, progress, total steps or 0 when unknown, whether the step starts a stage)``.

        Inside a progressive run the call's local index is shifted by the driver's ``window``."""
        index, total = self._local_clock(context, timestep)
        if index is None:
            if timestep is None:
                return 0, 0.0, 0, True
            t = float(timestep.detach().flatten().max())  # the one host read of the fallback clock
            progress = min(max(1.0 - t / _NUM_TRAIN_TIMESTEPS, 0.0), 1.0)
            step = branches.clock().tick(t)
            return step, progress, 0, step == 0
        if self.window is not None:
            offset, total = self.window
            step = offset + index
            return step, min(step / total, 1.0), total, index == 0
        return index, min(index / total, 1.0), total, index == 0 or index in self.config.switch_steps(total)

    def _local_clock(self, context: Any, timestep: torch.Tensor | None) -> tuple[int | None, int]:
        if self.step_from_timesteps:
            return None, 0
        step_index = getattr(context, "step_index", None)
        total = getattr(context, "num_inference_steps", None)
        if step_index is not None and total:
            return step_index, total
        if self._called_elsewhere():  # the patched pipeline's scheduler says nothing about this call
            return None, 0
        scheduler = self._scheduler()
        timesteps = getattr(scheduler, "timesteps", None)
        if timesteps is not None and len(timesteps) > 0:
            if not hasattr(scheduler, "step_index"):
                return self._index_of_timestep(timesteps, timestep), len(timesteps)
            index = getattr(scheduler, "step_index", None)
            if index is None:
                index = getattr(scheduler, "begin_index", None) or 0
            return index, len(timesteps)
        return None, 0

    def _called_elsewhere(self) -> bool:
        """True when the transformer of a patched pipeline runs outside that pipeline's denoising loop (another
        pipeline built from its components, or a custom loop): diffusers pipelines set ``_current_timestep``
        for the duration of each step. Carving then still applies, with the step from the cache context or
        counted from the timesteps; step skipping and the stages stay with the patched pipeline (logged once)."""
        pipe = self.pipeline_object()
        if pipe is None or self.scheduler is not None or getattr(pipe, "_current_timestep", None) is not None:
            return False
        if not self._outside_warned and (self.config.skip_steps or len(self.config.stages) > 1):
            self._outside_warned = True
            logger.warning(
                "jenga: the transformer patched with %s runs outside that pipeline's call (another pipeline or a "
                "custom loop): carving applies there, step skipping and progressive stages only inside the patched "
                "pipeline's own calls", type(pipe).__name__)
        return True

    def _index_of_timestep(self, timesteps: Any, timestep: torch.Tensor | None) -> int | None:
        """The step of ``timestep`` in a schedule that does not count its steps (DDIM-style schedulers): the
        position of the nearest scheduled timestep (one host read of the timestep per forward)."""
        if timestep is None:
            return None
        table = self._timestep_table
        if table is None or table[0] is not timesteps:
            table = (timesteps, [float(t) for t in torch.as_tensor(timesteps).detach().flatten().cpu()])
            self._timestep_table = table
        t = float(timestep.detach().flatten().max())
        values = table[1]
        return min(range(len(values)), key=lambda i: abs(values[i] - t))

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


def _thread_alive(ident: int) -> bool:
    """Whether the thread with this id still runs (a forward it left half-way does not block others)."""
    return any(t.ident == ident for t in threading.enumerate())
