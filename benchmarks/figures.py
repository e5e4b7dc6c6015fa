"""The README's "how it works" figure, from the library itself (CPU, about 20 s):

    python benchmarks/figures.py --out docs/how-it-works.png

Left: the 128-token blocks of a 16 x 32 x 32 token grid (the toy model's 16 frames of 64x64 pixels), one
colour per block, shown on frame 0 and frame 1: Z-order blocks are compact 4 x 4 x 8 bricks that span four
frames, raster blocks are strips of 4 rows inside one frame. Right: the block mask jenga's selector builds
for head 0 of one layer of the trained toy model (Wan ``base`` preset: top-k floor 25 %, p = 0.9, 3D
adjacency) on a half-noised clip of "a red disc moving right": white = computed, dark = skipped.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

import jenga
from jenga.adapters.wan import self_attention_qkv
from jenga.toy.data import Prompt, render
from jenga.toy.model import load_pretrained

GRID = (16, 32, 32)
BLOCK = 128
CELL = 5


def block_colours(curve: str, frame: int) -> np.ndarray:
    """``uint8[H, W, 3]``: the block of each token of one frame, as a colour."""
    layout = jenga.token_layout(GRID, block_size=BLOCK, curve=curve)
    blocks = (layout.inverse // BLOCK).view(GRID)[frame].numpy()
    rng = np.random.default_rng(7)
    palette = rng.integers(40, 230, (layout.num_blocks, 3), dtype=np.uint8)
    return palette[blocks]


class _Stop(Exception):
    pass


def toy_mask(layer: int = 3) -> np.ndarray:
    """``bool[Qb, Kb]`` selected by jenga for head 0 of ``layer`` of the toy model (one forward, stopped there)."""
    transformer, prompts = load_pretrained()
    prompt = [Prompt.parse("a red disc moving right")]
    clip = render(prompt, GRID[0], 2 * GRID[1], 2 * GRID[2], torch.Generator().manual_seed(0))
    sigma = 0.5
    noisy = (1 - sigma) * clip + sigma * torch.randn(clip.shape, generator=torch.Generator().manual_seed(1))
    captured = {}

    def hook(attn, args):
        hidden, rotary = args[0], args[3]
        captured["qk"] = self_attention_qkv(attn, hidden, rotary)[:2]
        raise _Stop

    handle = transformer.blocks[layer].attn1.register_forward_pre_hook(hook)
    try:
        with torch.no_grad():
            transformer(noisy, timestep=torch.tensor([sigma * 1000]), encoder_hidden_states=prompts(prompt))
    except _Stop:
        pass
    finally:
        handle.remove()
    layout = jenga.token_layout(GRID, block_size=BLOCK, curve="zorder")
    q, k = (layout.to_carved(t) for t in captured["qk"])
    cfg = jenga.JengaConfig.preset("base", model="wan")
    lists = jenga.select_blocks(q, k, drop_rate=cfg.drop_rates[0], cdf_threshold=cfg.cdf_threshold,
                                block_size=BLOCK, adjacency=layout.adjacency)
    return lists.to_dense()[0, 0].numpy()


def compose(out: Path) -> Path:
    zorder = [block_colours("zorder", f) for f in (0, 1)]
    raster = [block_colours("raster", f) for f in (0, 1)]
    mask = toy_mask()
    pad, label = 12, 18
    tile = GRID[1] * CELL  # one frame, square
    left_w = 2 * tile + pad
    mask_px = 3
    mask_side = mask.shape[0] * mask_px
    width = pad + left_w + 2 * pad + mask_side + pad
    height = pad + max(2 * (tile + label) + pad, mask_side + label) + pad
    canvas = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    y = pad
    for name, frames in (("Z-order blocks (frames 0, 1)", zorder), ("raster blocks (frames 0, 1)", raster)):
        draw.text((pad, y), name, fill=(0, 0, 0))
        for i, frame in enumerate(frames):
            image = Image.fromarray(frame).resize((tile, tile), Image.NEAREST)
            canvas.paste(image, (pad + i * (tile + pad), y + label))
        y += tile + label + pad
    x = pad + left_w + 2 * pad
    kept = mask.mean()
    draw.text((x, pad), f"toy model, layer 3, head 0: {100 * kept:.0f}% of blocks computed", fill=(0, 0, 0))
    picture = np.where(mask, 255, 30).astype(np.uint8)
    canvas.paste(Image.fromarray(picture).resize((mask_side, mask_side), Image.NEAREST).convert("RGB"),
                 (x, pad + label))
    out.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(out)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("docs/how-it-works.png"))
    args = parser.parse_args(argv)
    print(f"wrote {compose(args.out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
