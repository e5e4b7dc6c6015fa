"""A 50-step Turbo-style run of a full-size Wan2.1-T2V-1.3B pipeline (random bf16 weights, 480p, 81 frames).

Run on a GPU machine: ``python -m pytest tests/gpu/test_progressive_gpu.py -q -s``. Three runs of the same
``WanPipeline`` (UniPC with flow sigmas, shift 3 as Wan 480p ships; CFG as two forwards per step; random
prompt embeddings; ``output_type="latent"``, no VAE): stock, the Wan ``turbo`` preset (carving + 0.75 ->
1.0 progressive resolution switching half-way), and the same plus the HunyuanVideo 23-of-50 skip
schedule. Reports, per run and per stage: the latent grid, the number of steps, the median and total
step time, plus the transformer-call and block-stack counts; prints JSON and writes
``$OUT/progressive_gpu.json`` when ``$OUT`` is set. Random weights give nearly uniform block scores, so
``p = 0.9`` keeps most blocks: the timings show the resolution and skipping effects more than carving.

``JENGA_SMALL_CHECK=1`` runs the same script at a reduced size on the CPU, to check the script itself.
"""

from __future__ import annotations

import json
import os
import statistics
import time

import pytest
import torch
from _wan13b import FULL_CONFIG, FULL_TEXT, SMALL, SMALL_CONFIG, SMALL_TEXT, cast_like_from_pretrained

if not torch.cuda.is_available() and not SMALL:
    pytest.skip("needs a CUDA GPU (or JENGA_SMALL_CHECK=1 for a reduced CPU run)", allow_module_level=True)

from diffusers import UniPCMultistepScheduler, WanPipeline, WanTransformer3DModel  # noqa: E402

import jenga  # noqa: E402

FULL_CALL = dict(height=480, width=832, num_frames=81, num_inference_steps=50)  # latent 21 x 60 x 104

SMALL_CALL = dict(height=128, width=128, num_frames=17, num_inference_steps=8)  # latent 5 x 16 x 16




class StepTimer:
    """Per step: wall time from the step's first transformer forward to ``callback_on_step_end`` (device
    synchronised at both ends), the latent grid, and counts of transformer forwards and block-stack runs."""

    def __init__(self, pipe: WanPipeline, device: torch.device) -> None:
        self.device = device
        self.steps: list[dict] = []
        self.forwards = 0
        self.block_runs = 0
        self._start: float | None = None
        self._grid: tuple[int, ...] = ()
        pipe.transformer.register_forward_pre_hook(self._on_forward, with_kwargs=True)
        # a submodule inside the first block: it runs only when the block stack really runs (not skipped)
        pipe.transformer.blocks[0].ffn.register_forward_pre_hook(self._on_block)

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def _on_forward(self, module, args, kwargs) -> None:
        self.forwards += 1
        if self._start is None:
            self._sync()
            self._start = time.perf_counter()
            self._grid = tuple((args[0] if args else kwargs["hidden_states"]).shape[2:])

    def _on_block(self, module, args) -> None:
        self.block_runs += 1

    def callback(self, pipe, step: int, timestep, tensors: dict) -> dict:
        self._sync()
        self.steps.append({"step": step, "grid": self._grid, "s": time.perf_counter() - self._start})
        self._start = None
        return {}

    def summary(self) -> dict:
        stages: dict[tuple[int, ...], list[float]] = {}
        for s in self.steps:
            stages.setdefault(s["grid"], []).append(s["s"])
        return {
            "transformer_calls": self.forwards,
            "block_stack_runs": self.block_runs,
            "total_s": round(sum(s["s"] for s in self.steps), 3),
            "stages": [
                {"latent_grid": list(grid), "steps": len(times), "median_step_s": round(statistics.median(times), 4),
                 "total_s": round(sum(times), 3)}
                for grid, times in stages.items()
            ],
            "global_steps_seen": [s["step"] for s in self.steps],
        }


def test_wan_1_3b_turbo_50_steps_per_stage_times():
    device = torch.device("cpu" if SMALL else "cuda")
    dtype = torch.float32 if SMALL else torch.bfloat16
    config, call, text_shape = (SMALL_CONFIG, SMALL_CALL, SMALL_TEXT) if SMALL else (
        FULL_CONFIG, FULL_CALL, FULL_TEXT)
    steps = call["num_inference_steps"]
    torch.manual_seed(0)
    with torch.device(device):
        transformer = WanTransformer3DModel(**config)
    transformer = cast_like_from_pretrained(transformer, dtype).eval()
    scheduler = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0)
    pipe = WanPipeline(tokenizer=None, text_encoder=None, vae=None, scheduler=scheduler, transformer=transformer)
    pipe.set_progress_bar_config(disable=True)
    gen = torch.Generator().manual_seed(1)
    prompt = torch.randn(text_shape, generator=gen).to(device, dtype)
    negative = torch.randn(text_shape, generator=gen).to(device, dtype)

    overrides = dict(block_size=32, backend="torch") if SMALL else {}
    turbo = jenga.JengaConfig.preset("turbo", model="wan", **overrides)
    skip = jenga.JengaConfig.preset("turbo", model="hunyuan").skip_steps  # the 23-of-50 reference schedule
    runs = {"stock": None, "turbo": turbo, "turbo_skip": jenga.JengaConfig.preset(
        "turbo", model="wan", skip_steps=skip, **overrides)}

    results, latents = {}, {}
    for name, cfg in runs.items():
        if cfg is not None:
            jenga.patch(pipe, cfg)
        timer = StepTimer(pipe, device)
        with torch.no_grad():
            out = pipe(prompt_embeds=prompt, negative_prompt_embeds=negative, guidance_scale=5.0,
                       generator=torch.Generator(device).manual_seed(0), output_type="latent", return_dict=False,
                       callback_on_step_end=timer.callback, **call)[0]
        results[name] = timer.summary()
        latents[name] = out
        if cfg is not None:
            jenga.unpatch(pipe)
        transformer._forward_pre_hooks.clear()
        transformer.blocks[0].ffn._forward_pre_hooks.clear()

    for name in ("turbo", "turbo_skip"):
        results[name]["speedup_vs_stock"] = round(results["stock"]["total_s"] / results[name]["total_s"], 3)
    full_grid = list(latents["stock"].shape[2:])
    result = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "model": "Wan2.1-T2V-1.3B config, random weights" if not SMALL else "reduced Wan config (CPU check)",
        "dtype": str(dtype), "scheduler": "UniPC flow sigmas, shift 3", "call": call, "full_latent": full_grid,
        "configs": {name: (cfg.to_dict() if cfg is not None else None) for name, cfg in runs.items()},
        "runs": results,
    }
    print("\nwan progressive run:", json.dumps(result))
    if os.environ.get("OUT"):
        with open(os.path.join(os.environ["OUT"], "progressive_gpu.json"), "w") as f:
            json.dump(result, f, indent=2)

    half = steps // 2
    for name, r in results.items():
        assert torch.isfinite(latents[name]).all(), name
        assert list(latents[name].shape[2:]) == full_grid, name
        assert r["global_steps_seen"] == list(range(steps)), name
        assert r["transformer_calls"] == 2 * steps, name  # CFG: cond and uncond forwards, skipped or not
    assert [s["steps"] for s in results["turbo"]["stages"]] == [half, steps - half]
    low, high = (s["latent_grid"] for s in results["turbo"]["stages"])
    assert low[0] == high[0] and low[1] < high[1] and low[2] < high[2] and low[1] % 2 == low[2] % 2 == 0
    assert results["turbo"]["block_stack_runs"] == 2 * steps
    if not SMALL:  # the reference schedule: 23 computed steps of 50 (step 25, a stage start, is one of them)
        assert results["turbo_skip"]["block_stack_runs"] == 2 * 23
    else:
        assert results["turbo_skip"]["block_stack_runs"] < 2 * steps
