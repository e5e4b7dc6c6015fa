"""``jenga demo``: the toy video model that ships with jenga, run dense and carved on the same seed, offline.

The model (:mod:`jenga.toy`) is a small Wan transformer trained in pixel space on synthetic clips of coloured
discs and squares moving over a textured background, prompted by words ("a red disc moving right"). Nothing
here touches the network. The demo prints time, speed-up, blocks kept, PSNR between the two videos and what
the task score reads off each (is the prompted colour there, does it move the prompted way), and writes the
two videos side by side plus a picture of one block mask.

The block mask picture is exact: a pre-hook on one self-attention module re-runs the selector on the same
post-RoPE query and key the carving processor sees, with the same plan (drop rate, adjacency), so the lists
it draws are the lists that layer used.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ._record import record_of
from .blocks import BlockLists
from .config import JengaConfig
from .patching import patch, selection_stats, unpatch
from .selection import select_blocks

__all__ = ["SIZES", "DemoResult", "DemoSize", "build_pipeline", "replace_size", "run_demo", "summary"]

logger = logging.getLogger("jenga")


@dataclass(frozen=True)
class DemoSize:
    """Shape of the demo clip, the block size that cuts its token grid, and the step count."""

    frames: int
    height: int
    width: int
    block_size: int
    steps: int

    @property
    def grid(self) -> tuple[int, int, int]:
        """Token grid: pixel space, the transformer patches 1x2x2."""
        return (self.frames, self.height // 2, self.width // 2)

    @property
    def video_blocks(self) -> int:
        return math.ceil(math.prod(self.grid) / self.block_size)


SIZES = {
    # the model's full training size: 16 x 32 x 32 = 16,384 tokens = 128 blocks of 128 (a GPU takes seconds)
    "full": DemoSize(frames=16, height=64, width=64, block_size=128, steps=30),
    # 8 x 16 x 16 = 2,048 tokens = 32 blocks of 64: under a minute on 2 CPU cores
    "default": DemoSize(frames=8, height=32, width=32, block_size=64, steps=6),
    # 4 x 16 x 16 = 1,024 tokens = 32 blocks of 32: seconds on a CPU, for tests and smoke checks
    "small": DemoSize(frames=4, height=32, width=32, block_size=32, steps=4),
}
DEFAULT_PROMPT = "a red disc moving right"


@dataclass
class DemoResult:
    """What the demo measured and wrote."""

    size: DemoSize
    config: JengaConfig
    prompt: str
    device: str
    dense_seconds: float
    jenga_seconds: float
    kept_share: float
    sparse_layer_forwards: int
    psnr_db: float
    dense_reading: Any  # jenga.toy.score.ObjectReading of the dense video
    jenga_reading: Any
    files: list[Path]
    mask_matches: bool | None = None  # the pictured lists' counts equal what the layer recorded

    @property
    def speedup(self) -> float:
        return self.dense_seconds / self.jenga_seconds


def build_pipeline(device: torch.device, dtype: torch.dtype) -> tuple[Any, torch.nn.Module]:
    """The toy model's ``WanPipeline`` (shipped weights) and its prompt encoder."""
    from .toy.model import build_pipeline as toy_pipeline
    from .toy.model import load_pretrained

    transformer, prompts = load_pretrained(device=device, dtype=dtype)
    return toy_pipeline(transformer), prompts


def run_demo(
    out_dir: Path,
    size: DemoSize = SIZES["default"],
    prompt: str = DEFAULT_PROMPT,
    preset: str = "base",
    cdf_threshold: float | None = None,
    device: str = "auto",
    seed: int = 0,
    progress: bool = True,
    say: Callable[[str], None] = logger.info,
) -> DemoResult:
    """Load the toy pipeline, run it dense and patched on the same seed, write the pictures, report."""
    from .toy.data import Prompt
    from .toy.model import quiet_frame_rounding
    from .toy.score import read_object

    parsed = Prompt.parse(prompt)
    dev = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else
                       "cpu" if device == "auto" else device)
    dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
    pipe, prompts = build_pipeline(dev, dtype)
    pipe.set_progress_bar_config(disable=not progress, leave=False)

    overrides: dict[str, Any] = dict(block_size=size.block_size, collect_stats=True)
    if cdf_threshold is not None:
        overrides["cdf_threshold"] = cdf_threshold
    config = JengaConfig.preset(preset, model="wan", **overrides)
    with torch.no_grad():
        embeds, negative = prompts([parsed]), prompts([None])

    def generate(steps: int, output_type: str = "np") -> np.ndarray:
        with torch.no_grad(), quiet_frame_rounding():  # num_frames - 1: see quiet_frame_rounding
            frames = pipe(prompt_embeds=embeds, negative_prompt_embeds=negative, height=size.height,
                          width=size.width, num_frames=size.frames - 1, num_inference_steps=steps,
                          guidance_scale=4.0, generator=torch.Generator().manual_seed(seed),
                          output_type=output_type).frames
        return np.asarray(frames[0].float().cpu() if output_type == "latent" else frames[0], dtype=np.float32)

    def timed(steps: int) -> tuple[float, np.ndarray]:
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        start = time.perf_counter()
        frames = generate(steps)
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        return time.perf_counter() - start, frames

    layers = len(pipe.transformer.blocks)
    say(f"demo pipeline: the toy Wan model shipped with jenga ({layers} layers, trained on moving shapes), "
        f"prompt {str(parsed)!r}, {size.frames} frames {size.width}x{size.height} -> token grid {size.grid} = "
        f"{size.video_blocks} blocks of {size.block_size}; {size.steps} steps, CFG on, {dev.type} {dtype}")
    reduced = _first_stage_sides(config, size)
    if reduced == (size.height, size.width) and config.stages[0].scale < 1.0:
        say(f"note: the {preset} preset's {config.stages[0].scale:g} first stage rounds back to "
            f"{size.width}x{size.height} at this size (WanPipeline needs multiples of 16), so only its drop "
            "rates and dense steps apply; --size full runs the first stage at reduced resolution")
    # warm-up, one step without decoding: first-call allocations would otherwise count against the dense run
    generate(1, "latent")
    dense_seconds, dense = timed(size.steps)
    say(f"dense (stock diffusers): {dense_seconds:.2f} s")

    capture = _MaskCapture(pipe.transformer, layer=layers - 1)
    patch(pipe, config)
    try:
        generate(1, "latent")
        selection_stats(pipe, clear=True)
        capture.attach()
        jenga_seconds, carved = timed(size.steps)
        capture.detach()
        stats = selection_stats(pipe)
    finally:
        capture.detach()
        unpatch(pipe)
    say(f"jenga ({preset} preset, {_describe(config)}): {jenga_seconds:.2f} s")

    kept = [float(s.kv_count.float().mean()) / s.key_blocks for s in stats]
    kept_share = float(np.mean(kept)) if kept else 1.0

    def reading(frames: np.ndarray) -> Any:  # [T, H, W, 3] in [0, 1] -> [3, T, H, W] in [-1, 1]
        return read_object(torch.from_numpy(frames).permute(3, 0, 1, 2) * 2 - 1, parsed)

    result = DemoResult(size, config, str(parsed), str(dev), dense_seconds, jenga_seconds, kept_share, len(stats),
                        _psnr(dense, carved), reading(dense), reading(carved), [])
    out_dir.mkdir(parents=True, exist_ok=True)
    labels = (f"dense {dense_seconds:.1f} s", f"jenga {jenga_seconds:.1f} s")
    result.files += _write_side_by_side(out_dir, dense, carved, labels)
    if capture.lists is not None:
        recorded = [s.kv_count for s in stats if s.layer == capture.layer]
        result.mask_matches = bool(recorded) and torch.equal(recorded[-1], capture.lists.kv_count)
        title = (f"jenga block mask: layer {capture.layer} of {layers}, last sparse step, {preset} preset, "
                 f"{size.video_blocks} blocks of {size.block_size}")
        result.files.append(_write_mask(out_dir / "block_mask.png", capture.lists, title))
    return result


def _first_stage_sides(config: JengaConfig, size: DemoSize) -> tuple[int, int]:
    """Pixel height and width of the first stage, rounded to multiples of 16 as ``jenga.progressive`` does for
    the toy's pixel-space pipeline."""
    scale = config.stages[0].scale
    height, width = (side if scale == 1.0 else math.floor(scale * side / 16 + 0.5) * 16
                     for side in (size.height, size.width))
    return height, width


def _describe(config: JengaConfig) -> str:
    rates = "/".join(f"{d:g}" for d in config.drop_rates)
    return (f"drop rates {rates}, p {config.cdf_threshold:g}, block {config.block_size}, "
            f"dense steps {config.dense_steps:g}")


def _psnr(reference: np.ndarray, other: np.ndarray) -> float:
    """PSNR in dB of two videos in [0, 1] (inf when identical)."""
    mse = float(np.mean((reference.astype(np.float64) - other.astype(np.float64)) ** 2))
    return math.inf if mse == 0.0 else 10.0 * math.log10(1.0 / mse)


class _MaskCapture:
    """Records the block lists one layer's carving processor uses, by re-running the selector on the same
    inputs (deterministic, so the lists are identical). Keeps the last sparse forward's lists."""

    def __init__(self, transformer: torch.nn.Module, layer: int) -> None:
        self.transformer = transformer
        self.layer = layer
        self.attn = transformer.blocks[layer].attn1
        self.handle: Any = None
        self.lists: BlockLists | None = None

    def attach(self) -> None:
        self.handle = self.attn.register_forward_pre_hook(self._hook)

    def detach(self) -> None:
        if self.handle is not None:
            self.handle.remove()
            self.handle = None

    def _hook(self, attn: torch.nn.Module, args: tuple) -> None:
        from .adapters.wan import self_attention_qkv

        record = record_of(self.transformer)
        if record is None:
            return
        hidden, rotary = args[0], args[3]
        plan, cfg = record.runtime.plan, record.runtime.config
        if not plan.carves(hidden.shape[1]):
            return
        with torch.no_grad():
            q, k, _ = self_attention_qkv(attn, hidden, rotary)
            self.lists = select_blocks(q, k, drop_rate=plan.drop_rate,
                                       cdf_threshold=cfg.cdf_threshold_at(self.layer, plan.stage),
                                       block_size=cfg.block_size, adjacency=plan.adjacency,
                                       always_keep=plan.always_keep)


def _to_uint8(frames: np.ndarray) -> np.ndarray:
    return (np.clip(frames, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def _font(size: int) -> Any:
    """Pillow's bundled font at ``size`` pixels (a fixed small bitmap font on Pillow without FreeType)."""
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # Pillow < 10.1, or no FreeType
        return ImageFont.load_default()


def _labelled_frames(dense: np.ndarray, carved: np.ndarray, labels: tuple[str, str], scale: int) -> list[Any]:
    """dense | jenga per frame, each video scaled up ``scale`` times (nearest) under its label."""
    from PIL import Image, ImageDraw

    frames, height, width = dense.shape[:3]
    tile_w, tile_h, gap, band = width * scale, height * scale, 8, 22
    font = _font(14)
    images = []
    for t in range(frames):
        canvas = Image.new("RGB", (2 * tile_w + gap, band + tile_h), "white")
        draw = ImageDraw.Draw(canvas)
        for i, (video, label) in enumerate(zip((dense, carved), labels, strict=True)):
            tile = Image.fromarray(_to_uint8(video[t])).resize((tile_w, tile_h), Image.NEAREST)
            x = i * (tile_w + gap)
            canvas.paste(tile, (x, band))
            draw.text((x + 2, 3), label, fill="black", font=font)
        images.append(canvas)
    return images


def _write_side_by_side(out_dir: Path, dense: np.ndarray, carved: np.ndarray, labels: tuple[str, str] = ("dense",
                        "jenga"), fps: int = 8, scale: int = 4) -> list[Path]:
    """dense | jenga, frame by frame, scaled up and labelled: a GIF (Pillow) and an MP4 when imageio can."""
    images = _labelled_frames(dense, carved, labels, scale)
    gif = out_dir / "dense_vs_jenga.gif"
    images[0].save(gif, save_all=True, append_images=images[1:], duration=int(1000 / fps), loop=0)
    written = [gif]
    try:
        import imageio.v2 as imageio  # optional: the "video" extra

        mp4 = out_dir / "dense_vs_jenga.mp4"
        # macro_block_size=1: the side-by-side width is not a multiple of 16; no resize warnings
        imageio.mimwrite(mp4, [np.asarray(image) for image in images], fps=fps, macro_block_size=1)
        written.append(mp4)
    except ImportError:
        logger.info("jenga demo: imageio not installed, no MP4 (pip install 'jenga-video[video]')")
    except (OSError, RuntimeError) as err:  # imageio without an ffmpeg backend
        logger.info("jenga demo: could not write the MP4 (%s)", err)
    return written


KEPT, DROPPED = 255, 24  # grey levels of the block mask picture


def _write_mask(path: Path, lists: BlockLists, title: str, cell: int = 12) -> Path:
    """Every head's kept (query block, key block) pairs of batch 0, side by side under a title and a legend:
    white kept, dark dropped; rows are query blocks, columns key blocks."""
    from PIL import Image, ImageDraw

    dense = lists.to_dense()[0].cpu().numpy()  # [H, Qb, Kb]
    heads, rows, cols = dense.shape
    sep = 1
    grid = np.full((rows, heads * cols + (heads - 1) * sep), 128, dtype=np.uint8)
    for h in range(heads):
        start = h * (cols + sep)
        grid[:, start:start + cols] = np.where(dense[h], KEPT, DROPPED)
    panel = Image.fromarray(grid).resize((grid.shape[1] * cell, rows * cell), Image.NEAREST)
    font, small = _font(15), _font(12)
    top = 76  # title, subtitle, legend and head labels above the panel
    canvas = Image.new("L", (max(panel.width, 560) + 16, panel.height + top + 8), 255)
    draw = ImageDraw.Draw(canvas)
    draw.text((8, 4), title, fill=0, font=font)
    draw.text((8, 22), f"{heads} heads side by side; rows: query blocks, columns: key blocks", fill=0, font=small)
    x = 8
    for value, label in ((KEPT, "kept (computed)"), (DROPPED, "dropped (skipped)")):
        draw.rectangle((x, 40, x + 12, 52), fill=value, outline=0)
        draw.text((x + 18, 39), label, fill=0, font=small)
        x += 150
    canvas.paste(panel, (8, top))
    for h in range(heads):
        left = 8 + h * (cols + sep) * cell
        draw.text((left, top - 16), f"head {h}", fill=0, font=small)
        draw.rectangle((left - 1, top - 1, left + cols * cell, top + rows * cell), outline=96)
    canvas.save(path)
    return path


def summary(result: DemoResult) -> list[str]:
    """The lines ``jenga demo`` prints after the run."""
    size = result.size

    def told(reading: Any) -> str:
        colour = "colour present" if reading.present else "colour MISSING"
        moves = "moves the prompted way" if reading.direction_ok else "does NOT move the prompted way"
        return f"{colour}, {moves}"

    lines = [
        f"speed-up: {result.speedup:.2f}x (dense {result.dense_seconds:.2f} s, jenga {result.jenga_seconds:.2f} s, "
        f"{result.device})",
        f"blocks kept: {100 * result.kept_share:.1f}% of (query block, key block) pairs on average over "
        f"{result.sparse_layer_forwards} sparse layer-forwards ({size.video_blocks} video blocks per clip)",
        f"closeness: PSNR {result.psnr_db:.1f} dB of the jenga video against the dense one",
        f"task reading of {result.prompt!r}: dense: {told(result.dense_reading)}; "
        f"jenga: {told(result.jenga_reading)}",
        "note: the toy model is small and briefly trained (benchmarks/RESULTS.md, quality section); timings on a "
        "CPU or at this size say nothing about a GPU at full size.",
    ]
    if result.mask_matches is False:
        lines.append("warning: the block mask picture does not match the lists the layer used")
    lines += [f"wrote {path}" for path in result.files]
    return lines


def replace_size(size: DemoSize, **changes: Any) -> DemoSize:
    """A copy of ``size`` with some fields changed (for the CLI's ``--steps``)."""
    return dataclasses.replace(size, **changes)
