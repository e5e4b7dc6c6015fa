"""How good a generated clip is: fidelity to a reference (PSNR, SSIM) and a task score read off the frames.

The task score checks the prompt's first object: is there a blob of its colour, and does that blob move in
the prompted direction over the first ``CLEAR_FRAMES`` frames (16, a whole training clip, before any wall
bounce)? Shape (disc or square) is read too, from how much of its bounding box the largest blob of that colour
fills in the first frame, and reported on its own, as is whether that frame shows a single such blob.

Why the largest blob (issue 20): a generated clip may show the object more than once (copies, or pieces at the
frame's edge). Read over every pixel of the colour, one bounding box spanned the copies and the gaps between them,
so a well-drawn square read as an empty box: on the shipped weights the fill then separated squares from discs
worse than chance (AUROC 0.34-0.54), while the largest blob's fill separates them at AUROC 0.99. The copies are a
failure of their own, counted apart (``single``), not hidden in the shape.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .data import CLEAR_FRAMES, COLOURS, DIRECTIONS, RADIUS, SPEED, Prompt

__all__ = ["ObjectReading", "psnr", "read_object", "ssim", "task_score"]

COLOUR_DISTANCE = 0.3  # RGB distance in [0, 1] units that still counts as the prompted colour
MIN_AREA = 0.3  # share of the smallest object's area a blob needs to count as present
SQUARE_FILL = 0.89  # fill of its bounding box above which a blob reads as a square (disc: pi/4)


def _as_unit(video: torch.Tensor) -> torch.Tensor:
    if video.dim() != 5 or video.shape[1] != 3:
        raise ValueError(f"expected videos [B, 3, T, H, W] in [-1, 1], got shape {tuple(video.shape)}")
    return ((video.float() + 1) / 2).clamp(0, 1)


def psnr(reference: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
    """Peak signal-to-noise ratio in dB per clip (``[B, 3, T, H, W]`` in ``[-1, 1]``; peak = the [0, 1] range)."""
    a, b = _as_unit(reference), _as_unit(other)
    mse = (a - b).pow(2).flatten(1).mean(1)
    return 10 * torch.log10(1 / mse.clamp_min(1e-12))


def ssim(reference: torch.Tensor, other: torch.Tensor, window: int = 7, sigma: float = 1.5) -> torch.Tensor:
    """Mean structural similarity per clip, per frame and channel with a Gaussian window (Wang et al. 2004:
    C1 = (0.01)^2, C2 = (0.03)^2 on the [0, 1] range), windows fully inside the frame."""
    a, b = _as_unit(reference), _as_unit(other)
    batch = a.shape[0]
    a = a.transpose(1, 2).reshape(-1, 1, *a.shape[-2:]).double()
    b = b.transpose(1, 2).reshape(-1, 1, *b.shape[-2:]).double()
    if min(a.shape[-2:]) < window:
        raise ValueError(f"frames of {tuple(a.shape[-2:])} are smaller than the SSIM window {window}")
    x = torch.arange(window, dtype=torch.float64, device=a.device) - (window - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    g = g / g.sum()
    kernel = (g[:, None] * g[None, :]).view(1, 1, window, window)

    def blur(t: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.conv2d(t, kernel)

    mu_a, mu_b = blur(a), blur(b)
    var_a = blur(a * a) - mu_a**2
    var_b = blur(b * b) - mu_b**2
    cov = blur(a * b) - mu_a * mu_b
    c1, c2 = 0.01**2, 0.03**2
    value = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return value.view(batch, -1).mean(1).float()


@dataclass(frozen=True)
class ObjectReading:
    """What the frames show of one prompted object."""

    present: bool
    direction_ok: bool
    axis_ok: bool  # moves along the prompted axis, either way: learned motion even where the sign is wrong
    shape_ok: bool
    displacement: tuple[float, float]  # (dy, dx) of the blob's centroid over the first frames, pixels
    fill: float = float("nan")  # share of its bounding box the first frame's largest blob fills (disc pi/4, square 1)
    blobs: int = 0  # blobs of the colour in the first frame at least MIN_AREA of the smallest object's area

    @property
    def correct(self) -> bool:
        """Colour present and moving the prompted way (the task score's criterion)."""
        return self.present and self.direction_ok


def read_object(clip: torch.Tensor, prompt: Prompt) -> ObjectReading:
    """Read the prompt's first object off one clip ``[3, T, H, W]`` in ``[-1, 1]``."""
    unit = _as_unit(clip.unsqueeze(0))[0]
    obj = prompt.objects[0]
    frames, height, width = unit.shape[1:]
    side = min(height, width)
    colour = torch.tensor(COLOURS[obj.colour], device=unit.device).view(3, 1, 1, 1)
    mask = (unit - colour).norm(dim=0) < COLOUR_DISTANCE  # [T, H, W]
    area = mask.flatten(1).sum(1).float()
    present_frames = area >= MIN_AREA * math.pi * (RADIUS[0] * side) ** 2
    last = min(CLEAR_FRAMES - 1, frames - 1)
    if not bool(present_frames[: last + 1].all()) or last < 1:
        return ObjectReading(present=bool(present_frames.float().mean() >= 0.5), direction_ok=False, axis_ok=False,
                             shape_ok=False, displacement=(0.0, 0.0))
    yy = torch.arange(height, device=unit.device, dtype=torch.float32).view(1, height, 1)
    xx = torch.arange(width, device=unit.device, dtype=torch.float32).view(1, 1, width)
    weights = mask.float()
    cy = (weights * yy).flatten(1).sum(1) / area.clamp_min(1)
    cx = (weights * xx).flatten(1).sum(1) / area.clamp_min(1)
    dy, dx = float(cy[last] - cy[0]), float(cx[last] - cx[0])
    want_y, want_x = DIRECTIONS[obj.direction]
    along = dy * want_y + dx * want_x
    across = abs(dy * want_x) + abs(dx * want_y)
    travel = 0.5 * SPEED[0] * side * last  # half the slowest object's path over the frames read
    axis_ok = abs(along) >= travel and abs(along) > across
    direction_ok = axis_ok and along > 0
    largest, blobs = _largest_blob(mask[0], min_area=float(MIN_AREA * math.pi * (RADIUS[0] * side) ** 2))
    rows, cols = largest.any(1).nonzero(), largest.any(0).nonzero()
    box = (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)
    fill = float(largest.sum() / box)
    shape_ok = (fill > SQUARE_FILL) == (obj.shape == "square")
    return ObjectReading(present=True, direction_ok=bool(direction_ok), axis_ok=bool(axis_ok), shape_ok=bool(shape_ok),
                         displacement=(dy, dx), fill=fill, blobs=blobs)


def _largest_blob(mask: torch.Tensor, min_area: float) -> tuple[torch.Tensor, int]:
    """The largest 8-connected blob of a non-empty ``[H, W]`` mask, and how many blobs reach ``min_area`` pixels.
    Labels spread as the maximum over each pixel's 3 x 3 neighbourhood until nothing changes (a blob's diameter
    in steps: a few dozen at these sizes)."""
    height, width = mask.shape
    keep = mask.float()
    labels = torch.arange(1, height * width + 1, device=mask.device, dtype=torch.float32).view(height, width) * keep
    for _ in range(height * width):
        spread = F.max_pool2d(labels[None, None], 3, stride=1, padding=1)[0, 0] * keep
        if torch.equal(spread, labels):
            break
        labels = spread
    ids, areas = labels[mask].unique(return_counts=True)
    return labels == ids[areas.argmax()], int((areas >= min_area).sum())


def task_score(videos: torch.Tensor, prompts: list[Prompt]) -> dict[str, float]:
    """Percentages over the clips: ``task`` (colour present and direction right), each part alone, and ``single``
    (the first frame shows exactly one blob of the colour: no copies)."""
    if len(prompts) != videos.shape[0]:
        raise ValueError(f"{videos.shape[0]} clips but {len(prompts)} prompts")
    readings = [read_object(clip, prompt) for clip, prompt in zip(videos, prompts, strict=True)]
    n = len(readings)
    return {
        "task": 100 * sum(r.correct for r in readings) / n,
        "colour": 100 * sum(r.present for r in readings) / n,
        "direction": 100 * sum(r.direction_ok for r in readings) / n,
        "shape": 100 * sum(r.shape_ok for r in readings) / n,
        "single": 100 * sum(r.blobs == 1 for r in readings) / n,
    }
