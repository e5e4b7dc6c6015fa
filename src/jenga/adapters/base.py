"""What a model-family adapter tells the patch, and the carving call every sparse processor shares.

An adapter holds the per-model facts: which attention modules go sparse and their layer ids, where the
token order is applied (RoPE module, time embedding, first block or patch embedder, output norm) and under
which argument names, the patch size, the pipelines it serves, the pixel multiple those pipelines check,
and how to recognise image conditioning. The hooks and processors do the work.

A new family: subclass :class:`ModelAdapter`, set the class attributes, implement the methods that raise
``NotImplementedError``, and register an instance in :mod:`jenga.adapters`. What each block of
:meth:`ModelAdapter.block_stack` takes and returns (for step skipping) comes from diffusers'
``TransformerBlockRegistry``; a block class diffusers does not register needs a
``TransformerBlockRegistry.register(cls, TransformerBlockMetadata(...))`` in the adapter's module.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from ..attention import block_sparse_attention
from ..blocks import BlockLists, dense_to_lists
from ..selection import select_blocks

__all__ = ["AttentionSite", "CarvingProcessor", "HookSites", "ModelAdapter", "TokenGrid", "carve_attention"]


class CarvingProcessor:
    """What every carving processor shares: the stock processor it falls back to, its layer id, the
    per-forward runtime, and whether the layer is kept dense.

    diffusers sets ``_attention_backend`` / ``_parallel_config`` on processors; they are forwarded to the
    stock processor, which is the one that runs dense attention.
    """

    def __init__(self, stock: Any, layer: int, runtime: Any, dense: bool) -> None:
        self.stock = stock
        self.layer = layer
        self.runtime = runtime
        self.dense = dense
        # this forward's ``(kv_count, key_blocks, video_blocks)`` when statistics are collected, filed with the
        # layer and step by ``CarvingRuntime.end_forward``: traced code only sets it, so torch.compile neither
        # specialises on the layer nor on a list length (blocks compiled one by one share their graphs)
        self.pending_stats: tuple[torch.Tensor, int, int] | None = None
        # this layer's own p per stage (JengaConfig.layer_cdf_thresholds), None: the global p. A value on the
        # processor, not a lookup by layer id, so that regionally compiled blocks with the same p share a graph
        self.cdf_thresholds: tuple[float, ...] | None = dict(runtime.config.layer_cdf_thresholds).get(layer)

    @property
    def _attention_backend(self):
        return getattr(self.stock, "_attention_backend", None)  # older processors (CogVideoX) have neither

    @_attention_backend.setter
    def _attention_backend(self, value) -> None:
        self.stock._attention_backend = value

    @property
    def _parallel_config(self):
        return getattr(self.stock, "_parallel_config", None)

    @_parallel_config.setter
    def _parallel_config(self, value) -> None:
        self.stock._parallel_config = value

    def warm_up_on_dense_step(self, attn: torch.nn.Module, hidden_states: torch.Tensor, *, text_tokens: int = 0,
                              key_lengths: bool = False) -> None:
        """On a dense step before carved ones (``plan.warm_up``), start compiling what the carved steps will
        launch for this attention (:mod:`jenga._warm_up`): queries made from ``hidden_states`` plus
        ``text_tokens`` joined after them, with per-sample key lengths if the carved call will pass them."""
        if torch.compiler.is_compiling() or self.dense or not self.runtime.plan.warm_up:
            return  # (compiling first: a graph must not guard on the plan's flag)
        like = query_like(attn, hidden_states)
        if like is None:
            return
        (batch, seq, heads, head_dim), dtype, device = like
        seq += text_tokens
        self.runtime.warm_up_kernels(((batch, seq, heads, head_dim), dtype, device), self, key_lengths=key_lengths,
                                     key_bias=text_key_bias(self.runtime, seq))

    def __repr__(self) -> str:
        mode = "dense" if self.dense else "carving"
        return f"{type(self).__name__}(layer={self.layer}, {mode}, stock={type(self.stock).__name__})"


@dataclass(frozen=True)
class AttentionSite:
    """One attention module that gets a carving processor."""

    layer: int
    path: str
    module: torch.nn.Module


@dataclass(frozen=True)
class HookSites:
    """Submodules the per-forward hooks attach to (never the transformer itself, which offloading wraps).

    ``rope`` is the first module of every forward whose inputs give the token grid
    (:meth:`ModelAdapter.token_grid`; by default the latent ``[B, C, F, H, W]``, argument ``rope_arg``); its
    output goes through :meth:`ModelAdapter.reorder_rope`. ``clock`` sees the timestep (``clock_arg``); with
    ``clock_first`` it runs before ``rope`` (CogVideoX embeds the timestep before the patches), so the step it
    reads is applied once the forward's plan starts. ``enter`` yields (``enter_on="output"``) or takes
    (``"input"``, argument ``enter_arg``) the row-major hidden states; ``exit`` takes them after the last
    block (``exit_arg``). Each tensor is read from the keyword of that name, else the first positional
    argument.
    """

    rope: torch.nn.Module
    clock: torch.nn.Module
    enter: torch.nn.Module
    enter_on: str
    exit: torch.nn.Module
    exit_arg: str
    rope_arg: str = "hidden_states"
    clock_arg: str = "timestep"
    enter_arg: str = "hidden_states"
    clock_first: bool = False


@dataclass(frozen=True)
class TokenGrid:
    """The token grid of one forward, read from the inputs of the ``rope`` hook site.

    ``extra_tokens`` tokens precede the grid in the hidden states (LTX-Video's conditioning latents at other
    frame positions): the carved order moves them after the grid, where every attention keeps them like
    text tokens (always-kept keys, dense queries).
    """

    grid: tuple[int, int, int]
    device: torch.device
    extra_tokens: int = 0


class ModelAdapter:
    """Per-model-family facts; one instance per supported transformer class (see ``jenga.adapters``)."""

    name: str = ""
    transformer_class: type = object
    # diffusers pipeline class names this family runs in (``jenga.supported()``); the image-to-video ones
    # also appear in ``image_to_video_pipelines`` (they turn ``first_frame=None`` on)
    pipelines: tuple[str, ...] = ()
    image_to_video_pipelines: tuple[str, ...] = ()
    # the pipelines' ``check_inputs`` want pixel height and width divisible by this (progressive stages keep it)
    pixel_multiple: int = 16

    def preset_model(self, transformer: torch.nn.Module) -> str:
        """The preset family (``JengaConfig.preset(model=...)``) matching this checkpoint."""
        raise NotImplementedError

    def patch_size(self, transformer: torch.nn.Module) -> tuple[int, int, int]:
        raise NotImplementedError

    def attention_sites(self, transformer: torch.nn.Module) -> list[AttentionSite]:
        raise NotImplementedError

    def num_layers(self, transformer: torch.nn.Module) -> int:
        return len(self.attention_sites(transformer))

    def hook_sites(self, transformer: torch.nn.Module) -> HookSites:
        raise NotImplementedError

    def make_processor(self, stock: Any, site: AttentionSite, runtime: Any, dense: bool) -> Any:
        raise NotImplementedError

    def block_stack(self, transformer: torch.nn.Module) -> list[torch.nn.Module]:
        """The transformer blocks in the order the forward runs them (what step skipping bypasses); each
        block's class must be in diffusers' ``TransformerBlockRegistry`` (see the module docstring)."""
        raise NotImplementedError

    def image_conditioned(self, transformer: torch.nn.Module) -> bool:
        """Whether a bare transformer is an image-to-video checkpoint (for ``first_frame=None``)."""
        return False

    # why progressive resolution cannot run through this family's pipelines (None: it can); a patch whose
    # config needs the stage driver raises NotImplementedError with this reason
    progressive_unsupported: str | None = None

    def token_grid(self, args: tuple, kwargs: dict, patch_size: tuple[int, int, int],
                   arg_name: str = "hidden_states") -> TokenGrid | None:
        """The grid of this forward from the ``rope`` site's inputs (None: none can be read, the forward stays
        stock); default: the latent ``[B, C, F, H, W]``, keyword ``arg_name`` (``HookSites.rope_arg``) or first
        positional argument."""
        latent = kwargs[arg_name] if arg_name in kwargs else args[0]
        pt, ph, pw = patch_size
        return TokenGrid((latent.shape[2] // pt, latent.shape[3] // ph, latent.shape[4] // pw), latent.device)

    def early_warm_up(self, runtime: Any, transformer: torch.nn.Module, batch: int, rope_output: Any,
                      stage: int) -> None:
        """At the first forward's RoPE (:meth:`CarvingRuntime.early_warm_up`), start compiling what the first
        attention and the carved steps of ``stage`` (the first that carves) will run, for ``batch`` latents;
        default: nothing (the first dense attention starts the warm-up: ``CarvingProcessor.warm_up_on_dense_step``)."""

    def needs_first_frame_prefix(self, transformer: torch.nn.Module) -> bool:
        """Whether the model indexes the first frame as a token prefix (so the order must keep it)."""
        return False

    def reorder_rope(self, output: Any, reorder) -> Any:
        """Apply ``reorder(tensor, dim)`` to the token dimension of the RoPE module's output."""
        raise NotImplementedError

    def reorder_time(self, output: Any, reorder, num_tokens: int) -> Any:
        """Per-token outputs of the time embedding (Wan 2.2 TI2V) follow the order; default: none.
        ``num_tokens`` is the length of the reordered sequence."""
        return output

    # context parallelism (jenga.parallel)

    # whether jenga carves this family inside diffusers' context parallelism (Ulysses); a family without it is
    # refused by ``jenga.enable_parallelism`` and by ``jenga.patch`` of a transformer already sharded
    context_parallel: bool = False

    def cp_plan(self, transformer: torch.nn.Module) -> dict | None:
        """The context-parallel plan ``jenga.enable_parallelism`` passes (None: the model's own ``_cp_plan``)."""
        return None

    def after_parallelism(self, transformer: torch.nn.Module) -> None:
        """Hooks the family's plan needs beyond diffusers' split and gather (registered once, kept)."""

    def parallel_exit_module(self, transformer: torch.nn.Module) -> torch.nn.Module:
        """The module whose output the plan gathers (full sequence, carved order, per token)."""
        raise NotImplementedError

    def extra_hooks(self, transformer: torch.nn.Module, runtime: Any) -> list[tuple[torch.nn.Module, Any, str]]:
        """Further ``(module, hook, name)`` the family needs for the carved order (tensors the forward builds
        row-major after the enter site, e.g. SkyReels-V2's per-token modulation, VACE's control tokens);
        registered after the four standard hooks, removed by ``unpatch``. Default: none."""
        return []

    def step_from_timesteps(self, pipeline_name: str | None) -> bool:
        """Whether the step clock must follow the timestep values instead of the pipeline's scheduler (a
        pipeline whose scheduler does not step, e.g. per-frame schedules). Default: no."""
        return False

    def stage_arguments(self, pipeline_name: str, call: dict[str, Any]) -> dict[str, Any]:
        """The call arguments of one progressive stage (``height``/``width`` already the stage's): inputs given
        at pixel size that the pipeline does not resize itself get resized here. Default: unchanged."""
        return call

    def check_pipeline(self, pipeline_name: str | None, config: Any) -> None:
        """Raise ``ValueError`` when ``config`` asks for something this pipeline's call cannot do (stages,
        step skipping). Default: everything applies."""

    def default_pixel_size(self, pipeline: Any) -> tuple[int, int] | None:
        """The pipeline's pixel ``(height, width)`` when a call passes none (progressive stages need the full
        size); ``None``: the pipeline has no default (the call must pass them)."""
        return None


_COMPUTE_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def query_like(attn: torch.nn.Module, hidden_states: torch.Tensor) -> tuple[tuple[int, ...], torch.dtype,
                                                                           torch.device] | None:
    """Shape ``[B, N, H, D]``, dtype and device of the queries ``attn`` makes from ``hidden_states``; None where
    that cannot be read (no ``inner_dim`` or query projection). Quantised projections (integer weights) give the
    activations' dtype, and so do float8 weights (layerwise casting stores them so between forwards)."""
    batch, seq, _ = hidden_states.shape
    return query_like_of(attn, batch, seq, hidden_states.dtype, hidden_states.device)


def query_like_of(attn: torch.nn.Module, batch: int, seq: int, input_dtype: torch.dtype,
                  device: torch.device) -> tuple[tuple[int, ...], torch.dtype, torch.device] | None:
    """:func:`query_like` for ``batch`` x ``seq`` tokens of ``input_dtype`` on ``device``, without the tensor."""
    weight = getattr(getattr(attn, "to_q", None), "weight", None)
    inner = getattr(attn, "inner_dim", None) or (weight.shape[0] if weight is not None else None)
    if not inner or not getattr(attn, "heads", None):
        return None
    if torch.is_autocast_enabled(device.type):
        dtype = torch.get_autocast_dtype(device.type)
    else:
        dtype = weight.dtype if weight is not None and weight.dtype in _COMPUTE_DTYPES else input_dtype
    return (batch, seq, attn.heads, inner // attn.heads), dtype, device


def text_key_bias(runtime: Any, seq: int) -> tuple[int, float] | None:
    """``(first text key, bias)`` for a carved call over ``seq`` tokens (video, then any text) while the text
    amplifier (``runtime.text_bias``) is on; None otherwise."""
    bias, num_video = runtime.text_bias, runtime.plan.num_tokens
    return (num_video, bias) if bias and seq > num_video else None


def carve_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    runtime: Any,
    *,
    owner: CarvingProcessor,
    key_lengths: torch.Tensor | None = None,
    dense: bool = False,
) -> torch.Tensor:
    """Block selection from post-RoPE ``q, k`` ``[B, N, H, D]`` (carved video tokens, then any text
    tokens) and block-sparse attention over the kept blocks. Torch ops only: no host synchronisation,
    no graph break.

    With ``runtime.text_bias`` set (the text amplifier of a low-resolution stage) the text-key logits get
    that bias; a ``dense`` layer or a forward that does not carve then keeps every block (dense attention
    with the bias)."""
    plan, cfg = runtime.plan, runtime.config
    num_video = plan.num_tokens
    seq = q.shape[1]
    block = cfg.block_size
    key_bias = text_key_bias(runtime, seq)
    if dense or not plan.carves(num_video):
        num_q, num_k = math.ceil(seq / block), math.ceil(k.shape[1] / block)
        kv_index = torch.arange(num_k, dtype=torch.int32, device=q.device).expand(1, 1, num_q, num_k)
        kv_count = torch.full((1, 1, num_q), num_k, dtype=torch.int32, device=q.device)
        return block_sparse_attention(q, k, v, kv_index, kv_count, block_size=block, key_lengths=key_lengths,
                                      key_bias=key_bias, backend=plan.backend, check_indices=False)
    # a layer's own p (JengaConfig.layer_cdf_thresholds) by the stage; other layers read neither
    thresholds = owner.cdf_thresholds
    p = cfg.cdf_threshold if thresholds is None else thresholds[plan.stage]
    if cfg.condition or seq == num_video:
        lists = select_blocks(
            q, k, drop_rate=plan.drop_rate, cdf_threshold=p, block_size=block,
            num_video_tokens=num_video if seq > num_video else None,
            adjacency=plan.adjacency, always_keep=plan.always_keep,
        )
    else:
        lists = _select_without_condition(q, k, plan, p, block)
    if cfg.collect_stats:
        # filed with the layer and step at the end of the forward: reading plan.step here would make
        # torch.compile specialise the graph on it and recompile every step
        owner.pending_stats = (lists.kv_count.detach(), lists.num_key_blocks, math.ceil(num_video / block))
    return block_sparse_attention(
        q, k, v, lists.kv_index, lists.kv_count, block_size=block, key_lengths=key_lengths, key_bias=key_bias,
        backend=plan.backend, check_indices=False,
    )


def _select_without_condition(q, k, plan, cdf_threshold: float, block: int) -> BlockLists:
    """Ablation ``condition=False``: text key blocks compete on importance like video blocks instead
    of being always kept; text query blocks still attend densely."""
    num_video = plan.num_tokens
    num_blocks = math.ceil(q.shape[1] / block)
    video_blocks = math.ceil(num_video / block)
    pad = num_blocks - video_blocks
    adjacency = plan.adjacency
    if adjacency is not None:
        adjacency = torch.nn.functional.pad(adjacency, (0, pad, 0, pad)) | torch.eye(
            num_blocks, dtype=torch.bool, device=q.device)
    always_keep = plan.always_keep
    if always_keep is not None:
        always_keep = torch.nn.functional.pad(always_keep, (0, pad))
    lists = select_blocks(q, k, drop_rate=plan.drop_rate, cdf_threshold=cdf_threshold, block_size=block,
                          adjacency=adjacency, always_keep=always_keep)
    keep = lists.to_dense()
    text_rows = torch.arange(num_blocks, device=q.device) >= num_video // block
    keep = keep | text_rows.view(1, 1, -1, 1)
    return BlockLists(*dense_to_lists(keep), num_key_blocks=num_blocks)
