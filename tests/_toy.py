"""The shipped toy model as the calibration tests drive it: a pipeline and one prompt's call arguments."""

from __future__ import annotations

from typing import Any

import torch

from jenga.toy.data import Prompt
from jenga.toy.model import build_pipeline, load_pretrained


def toy_pipeline_and_call(frames: int = 4) -> tuple[Any, dict[str, Any], torch.nn.Module]:
    """``(pipe, call, encoder)``: the toy pipeline (progress bar off) and ``pipe(**call)`` arguments for "red disc
    right" at 32x32 with ``frames`` frames and CFG 4."""
    transformer, encoder = load_pretrained()
    pipe = build_pipeline(transformer)
    pipe.set_progress_bar_config(disable=True)
    with torch.no_grad():
        call = dict(prompt_embeds=encoder([Prompt.parse("red disc right")]), negative_prompt_embeds=encoder([None]),
                    height=32, width=32, num_frames=frames - 1, guidance_scale=4.0)
    return pipe, call, encoder
