"""Full-size Wan2.1-T2V-1.3B transformer forward (random bf16 weights, 480p, 81 frames): stock vs jenga.

Run on a GPU machine: ``python -m pytest tests/gpu/test_wan_full_size.py -q -s``. Prints the step times
and their ratio, and writes them to ``$OUT/wan_full_size.json`` when ``$OUT`` is set. The patched forward
is one sparse step of the Wan "base" preset (step 10 of 50: drop rate 0.75, p 0.9), then the same with
``p = 0`` (the top-k floor alone), since random weights give nearly uniform block scores.

``JENGA_SMALL_CHECK=1`` runs the same script at a reduced size on the CPU, to check the script itself.
"""

from __future__ import annotations

import json
import math
import os
import statistics
import time

import pytest
import torch
from _wan13b import FULL_CONFIG, FULL_TEXT, SMALL, SMALL_CONFIG, SMALL_TEXT, cast_like_from_pretrained

if not torch.cuda.is_available() and not SMALL:
    pytest.skip("needs a CUDA GPU (or JENGA_SMALL_CHECK=1 for a reduced CPU run)", allow_module_level=True)

from diffusers import WanTransformer3DModel  # noqa: E402

import jenga  # noqa: E402

FULL_LATENT = (1, 16, 21, 60, 104)  # 480p (832 x 480), 81 frames -> 21 x 30 x 52 = 32,760 tokens

SMALL_LATENT = (1, 16, 5, 16, 16)  # 5 x 8 x 8 = 320 tokens

STEP, STEPS = 10, 50  # a sparse step of the base preset: past dense_steps (10%), first stage (drop 0.75)
WARMUP, REPEATS = 2, 5




def _time(fn, device: torch.device) -> tuple[float, torch.Tensor]:
    """Median wall time (ms) of ``fn`` after warm-up, and its last output."""
    out = None
    for _ in range(WARMUP):
        out = fn()
    times = []
    for _ in range(REPEATS):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        out = fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times), out


def test_wan_1_3b_full_size_forward_patched_vs_stock():
    device = torch.device("cpu" if SMALL else "cuda")
    dtype = torch.float32 if SMALL else torch.bfloat16
    config, latent_shape, text_shape = (SMALL_CONFIG, SMALL_LATENT, SMALL_TEXT) if SMALL else (
        FULL_CONFIG, FULL_LATENT, FULL_TEXT)
    torch.manual_seed(0)
    with torch.device(device):
        model = WanTransformer3DModel(**config)
    model = cast_like_from_pretrained(model, dtype).eval()
    latent = torch.randn(latent_shape, device=device, dtype=dtype)
    text = torch.randn(text_shape, device=device, dtype=dtype)
    timestep = torch.tensor([700.0], device=device)

    def forward() -> torch.Tensor:
        with torch.no_grad(), model.cache_context("cond", step_index=STEP, num_inference_steps=STEPS):
            return model(latent, timestep, text, return_dict=False)[0]

    stock_ms, stock = _time(forward, device)
    overrides = dict(block_size=32, backend="torch") if SMALL else {}
    runs = {}
    # the preset as published, then its top-k floor alone (p = 0): with random weights the pooled block
    # scores are nearly uniform, so p = 0.9 keeps about 90% of the blocks; trained models are far peakier
    for name, extra in (("base", {}), ("base_topk_only", {"cdf_threshold": 0.0})):
        cfg = jenga.JengaConfig.preset("base", model="wan", collect_stats=True, **overrides, **extra)
        jenga.patch(model, cfg)
        jenga_ms, carved = _time(forward, device)
        stats = jenga.selection_stats(model)
        last = stats[-config["num_layers"]:]  # the last forward's layers
        runs[name] = dict(
            cfg=cfg, ms=jenga_ms, out=carved, forwards=len(stats) // config["num_layers"],
            density=sum(s.density for s in last) / len(last), backend=model._jenga_patch.runtime.plan.backend,
        )
        jenga.unpatch(model)
    restored = forward()

    grid = tuple(s // p for s, p in zip(latent_shape[2:], config["patch_size"], strict=True))
    result = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "model": "Wan2.1-T2V-1.3B config, random weights" if not SMALL else "reduced Wan config (CPU check)",
        "dtype": str(dtype), "grid": grid, "tokens": math.prod(grid), "step": f"{STEP}/{STEPS}",
        "stock_ms": round(stock_ms, 2), "warmup": WARMUP, "repeats": REPEATS,
    }
    for name, r in runs.items():
        rel_err = ((r["out"].float() - stock.float()).norm() / stock.float().norm()).item()
        result[name] = {
            "block_size": r["cfg"].block_size, "backend": r["backend"], "drop_rate": r["cfg"].drop_rates[0],
            "cdf_threshold": r["cfg"].cdf_threshold, "jenga_ms": round(r["ms"], 2),
            "speedup": round(stock_ms / r["ms"], 3), "block_density": round(r["density"], 4),
            "relative_l2_vs_stock": round(rel_err, 4),
        }
    print("\nwan full-size forward:", json.dumps(result))
    if os.environ.get("OUT"):
        with open(os.path.join(os.environ["OUT"], "wan_full_size.json"), "w") as f:
            json.dump(result, f, indent=2)

    assert torch.isfinite(stock).all()
    for r in runs.values():
        assert torch.isfinite(r["out"]).all()
        assert r["forwards"] == WARMUP + REPEATS, "every layer of every forward carves"
    assert all(r["density"] < 1.0 for r in runs.values()), "the selector dropped nothing"
    if not SMALL:  # 256 video blocks: a quarter kept by top-k, plus the 3D neighbours
        assert runs["base_topk_only"]["density"] < 0.75
    assert torch.equal(restored, stock) or (restored.float() - stock.float()).abs().max().item() < 1e-2
