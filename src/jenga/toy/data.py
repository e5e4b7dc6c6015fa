"""Synthetic videos of coloured shapes moving over a textured background, and the prompts that describe them.

Every clip has one or two objects (a disc or a square, each its own colour) that move up, down, left or
right and pass over each other (the later object is drawn on top). Sizes and speeds are fractions of the
frame, so the same prompt means the same motion at every resolution. An object never reaches a wall in its
first :data:`CLEAR_FRAMES` frames (16, the longest training clip): the whole clip moves the prompted way.
Objects bounce off the walls only in longer clips.

Why no bounce within a clip (changed in issue 20): with the earlier data (faster objects, 5 clear frames) a
16-frame clip bounced about once, so its net displacement was near zero and the prompted direction showed
only in the phase of a back-and-forth; the model learned the axis in every clip but the sign in about half.
Now the sign is the whole clip's motion. A square's side is the disc's diameter (it was of equal area): the
shapes differ in area (4/pi) as well as in their corners, a signal a pixel-space MSE can see.

Pixels are in ``[-1, 1]``, ``[B, 3, T, H, W]``: the toy model works in pixel space.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

__all__ = [
    "CLEAR_FRAMES",
    "COLOURS",
    "DIRECTIONS",
    "SHAPES",
    "ObjectSpec",
    "Prompt",
    "all_single_prompts",
    "random_prompts",
    "render",
]

SHAPES = ("disc", "square")
COLOURS = {
    "red": (0.92, 0.16, 0.14),
    "green": (0.16, 0.78, 0.22),
    "blue": (0.18, 0.32, 0.95),
    "yellow": (0.95, 0.85, 0.12),
    "magenta": (0.88, 0.18, 0.85),
    "cyan": (0.12, 0.85, 0.90),
}
DIRECTIONS = {"up": (-1, 0), "down": (1, 0), "left": (0, -1), "right": (0, 1)}  # (dy, dx)
RADIUS = (0.09, 0.13)  # object radius, fraction of the shorter side
SPEED = (0.03, 0.045)  # pixels per frame, fraction of the shorter side: 16 frames fit in the frame
CLEAR_FRAMES = 16  # frames an object moves before it may first touch a wall


@dataclass(frozen=True)
class ObjectSpec:
    shape: str
    colour: str
    direction: str

    def __post_init__(self) -> None:
        for value, allowed in ((self.shape, SHAPES), (self.colour, COLOURS), (self.direction, DIRECTIONS)):
            if value not in allowed:
                raise ValueError(f"{value!r} is not one of {tuple(allowed)}")

    def __str__(self) -> str:
        return f"a {self.colour} {self.shape} moving {self.direction}"


@dataclass(frozen=True)
class Prompt:
    """What a clip shows: one or two objects (the first is the one a task score checks)."""

    objects: tuple[ObjectSpec, ...]

    def __post_init__(self) -> None:
        if not 1 <= len(self.objects) <= 2:
            raise ValueError(f"a prompt describes one or two objects, got {len(self.objects)}")

    def __str__(self) -> str:
        return " and ".join(map(str, self.objects))

    @classmethod
    def parse(cls, text: str) -> Prompt:
        """``"red disc right"`` or ``"a red disc moving right and a blue square moving up"``."""
        words = [w for w in text.lower().replace(",", " ").split() if w not in ("a", "an", "moving", "the")]
        parts: list[list[str]] = [[]]
        for word in words:
            if word == "and":
                parts.append([])
            else:
                parts[-1].append(word)
        objects = []
        for part in parts:
            if len(part) != 3:
                raise ValueError(f"cannot read {text!r}: each object is '<colour> <shape> <direction>', with "
                                 f"colours {tuple(COLOURS)}, shapes {SHAPES}, directions {tuple(DIRECTIONS)}")
            objects.append(ObjectSpec(part[1], part[0], part[2]))
        return cls(tuple(objects))


def all_single_prompts() -> list[Prompt]:
    """Every one-object prompt: 2 shapes x 6 colours x 4 directions = 48."""
    return [Prompt((ObjectSpec(s, c, d),)) for s in SHAPES for c in COLOURS for d in DIRECTIONS]


def random_prompts(count: int, generator: torch.Generator, two_objects: float = 0.4) -> list[Prompt]:
    """Random prompts; a share ``two_objects`` has a second object of another colour."""
    colours, directions = list(COLOURS), list(DIRECTIONS)

    def pick(n: int) -> int:
        return int(torch.randint(n, (1,), generator=generator))

    prompts = []
    for _ in range(count):
        first = ObjectSpec(SHAPES[pick(2)], colours[pick(6)], directions[pick(4)])
        objects = [first]
        if float(torch.rand((), generator=generator)) < two_objects:
            others = [c for c in colours if c != first.colour]
            objects.append(ObjectSpec(SHAPES[pick(2)], others[pick(5)], directions[pick(4)]))
        prompts.append(Prompt(tuple(objects)))
    return prompts


def _bounce(position: torch.Tensor, low: float, high: float) -> torch.Tensor:
    """Reflect an unbounded 1D trajectory into ``[low, high]``."""
    span = max(high - low, 1e-6)
    u = torch.remainder(position - low, 2 * span)
    return low + torch.where(u <= span, u, 2 * span - u)


def render(prompts: list[Prompt], frames: int, height: int, width: int, generator: torch.Generator,
           device: torch.device | str = "cpu", with_coverage: bool = False
           ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Clips for ``prompts``, ``[B, 3, frames, height, width]`` in ``[-1, 1]``; random placement, size, speed
    and background drawn from ``generator`` (a CPU generator: the same seed gives the same clips anywhere).

    ``with_coverage``: also two maps ``[B, 2, frames, height, width]`` in ``[0, 1]`` for weighting a training loss:
    channel 0 how much of each pixel the objects cover (they are a few percent of the pixels but all of the
    task), channel 1 the pixels where a square and a disc of the object's size differ (the corners of its
    bounding square: the only pixels that carry the shape word, under 1 % of a frame)."""
    if frames < 1 or height < 8 or width < 8:
        raise ValueError(f"need frames >= 1 and height, width >= 8, got {frames}x{height}x{width}")
    device = torch.device(device)
    side = min(height, width)
    batch = len(prompts)

    def rand(*shape: int) -> torch.Tensor:
        return torch.rand(*shape, generator=generator).to(device)

    # background: a grey level, a faint tint and three soft gratings, static over the clip
    yy = torch.arange(height, dtype=torch.float32, device=device).view(1, height, 1) + 0.5
    xx = torch.arange(width, dtype=torch.float32, device=device).view(1, 1, width) + 0.5
    background = 0.38 + 0.14 * rand(batch, 1, 1, 1) + 0.03 * (rand(batch, 3, 1, 1) - 0.5)
    for _ in range(3):
        angle = 2 * math.pi * rand(batch, 1, 1)
        period = side * (0.25 + 0.5 * rand(batch, 1, 1))
        phase = 2 * math.pi * rand(batch, 1, 1)
        wave = torch.sin(2 * math.pi * (torch.cos(angle) * xx + torch.sin(angle) * yy) / period + phase)
        background = background + 0.05 * wave.unsqueeze(1)
    video = background.unsqueeze(2).expand(batch, 3, frames, height, width).clone()
    coverage = torch.zeros(batch, 2, frames, height, width, device=device) if with_coverage else None

    t = torch.arange(frames, dtype=torch.float32, device=device).view(frames, 1, 1)
    for slot in range(2):
        for b, prompt in enumerate(prompts):
            if slot >= len(prompt.objects):
                continue
            obj = prompt.objects[slot]
            radius, speed, *starts = torch.rand(4, generator=generator).tolist()
            radius = side * (RADIUS[0] + (RADIUS[1] - RADIUS[0]) * radius)
            speed = side * (SPEED[0] + (SPEED[1] - SPEED[0]) * speed)
            dy, dx = DIRECTIONS[obj.direction]
            centre = []
            for axis, (step, extent) in enumerate(((dy, height), (dx, width))):
                low, high = radius, extent - radius
                if step > 0:
                    high = max(low, high - CLEAR_FRAMES * speed)
                elif step < 0:
                    low = min(high, low + CLEAR_FRAMES * speed)
                start = low + (high - low) * starts[axis]
                centre.append(_bounce(start + step * speed * t, radius, extent - radius))
            cy, cx = centre
            disc = (radius - torch.sqrt((yy - cy) ** 2 + (xx - cx) ** 2) + 0.5).clamp(0, 1)
            # a square whose side is the disc's diameter
            square = (radius - torch.maximum((yy - cy).abs(), (xx - cx).abs()) + 0.5).clamp(0, 1)
            alpha = disc if obj.shape == "disc" else square
            colour = torch.tensor(COLOURS[obj.colour], device=device).view(3, 1, 1, 1)
            video[b] = video[b] * (1 - alpha) + colour * alpha
            if coverage is not None:
                coverage[b, 0] = torch.maximum(coverage[b, 0], alpha)
                coverage[b, 1] = torch.maximum(coverage[b, 1], square - disc)
    video = video.clamp(0, 1) * 2 - 1
    return video if coverage is None else (video, coverage)
