"""One GPU, the context-parallel code path at full size: a one-rank Ulysses mesh (``ulysses_degree=1``).

``ContextParallelConfig`` refuses degree 1 in its constructor, so the config is built with degree 2 and set to
1 before ``enable_parallelism``: the plan's split and gather are then identities, and jenga takes its parallel
path (hooks ordered around diffusers', the order undone after ``proj_out``, carving through the Ulysses
``forward_op``) on one rank. Checked against the plain patched forward (same GPU, same kernel) on the full-size
Wan2.1-1.3B at 480p 81 f (32,760 tokens) and a full-width HunyuanVideo (2 + 2 blocks) at 720p 129 f.

Run: ``python -m pytest tests/gpu/test_parallel_gpu.py -q -s``; ``JENGA_SMALL_CHECK=1`` runs reduced sizes on the
CPU (gloo) to check the script. Writes ``$OUT/parallel_gpu.json`` when ``$OUT`` is set.
"""

from __future__ import annotations

import json
import os
import tempfile

import pytest
import torch
import torch.distributed as dist
from _wan13b import FULL_CONFIG, FULL_TEXT, SMALL, SMALL_CONFIG, SMALL_TEXT, cast_like_from_pretrained

if not torch.cuda.is_available() and not SMALL:
    pytest.skip("needs a CUDA GPU (or JENGA_SMALL_CHECK=1 for a reduced CPU run)", allow_module_level=True)

from diffusers import ContextParallelConfig, HunyuanVideoTransformer3DModel, WanTransformer3DModel  # noqa: E402

import jenga  # noqa: E402

DEVICE = torch.device("cpu" if SMALL else "cuda")
DTYPE = torch.float32 if SMALL else torch.bfloat16
RESULTS: dict[str, dict] = {}


@pytest.fixture(scope="module", autouse=True)
def one_rank_group():
    if SMALL:
        torch.accelerator.device_count = lambda: 1  # diffusers 0.42.1 divides by it (0 on a CPU)
    with tempfile.TemporaryDirectory() as tmp:
        dist.init_process_group("gloo" if SMALL else "nccl", init_method=f"file://{tmp}/init", rank=0, world_size=1)
        try:
            yield
        finally:
            dist.destroy_process_group()
    out = os.environ.get("OUT")
    if out:
        with open(os.path.join(out, "parallel_gpu.json"), "w") as f:
            json.dump(RESULTS, f, indent=1)


def _one_rank_config() -> ContextParallelConfig:
    config = ContextParallelConfig(ulysses_degree=2)
    config.ulysses_degree = 1
    return config


def _check(name: str, transformer: torch.nn.Module, inputs: dict) -> None:
    settings = dict(dense_steps=0.0, collect_stats=True, block_size=16 if SMALL else 128)

    def run() -> torch.Tensor:
        with torch.no_grad():
            return transformer(**inputs, return_dict=False)[0]

    jenga.patch(transformer, **settings)
    plain = run()
    plain_stats = jenga.selection_stats(transformer, clear=True)
    jenga.unpatch(transformer)
    jenga.enable_parallelism(transformer, _one_rank_config())
    jenga.patch(transformer, **settings)
    record = transformer.__dict__["_jenga_patch"]
    assert record.runtime.parallel is not None and record.runtime.parallel.world == 1
    sharded = run()
    stats = jenga.selection_stats(transformer, clear=True)
    jenga.unpatch(transformer)
    assert plain_stats and len(stats) == len(plain_stats), "carving did not run on the parallel path"
    for mine, ref in zip(stats, plain_stats, strict=True):
        assert torch.equal(mine.kv_count, ref.kv_count)
    error = (sharded.float() - plain.float()).abs().max().item()
    RESULTS[name] = dict(max_abs_diff=error, density=sum(s.density for s in stats) / len(stats),
                         shape=list(sharded.shape))
    print(f"{name}: parallel path vs plain patch max |diff| {error:.3g}, density {RESULTS[name]['density']:.3f}")
    torch.testing.assert_close(sharded, plain)


def test_wan_one_rank_ulysses_full_size():
    config, text = (SMALL_CONFIG, SMALL_TEXT) if SMALL else (FULL_CONFIG, FULL_TEXT)
    latent = (1, 16, 5, 16, 16) if SMALL else (1, 16, 21, 60, 104)  # 480p 81 f: 21 x 30 x 52 = 32,760 tokens
    torch.manual_seed(0)
    transformer = cast_like_from_pretrained(WanTransformer3DModel(**config), DTYPE).to(DEVICE).eval()
    gen = torch.Generator(device=DEVICE).manual_seed(1)
    inputs = dict(hidden_states=torch.randn(latent, generator=gen, device=DEVICE, dtype=DTYPE),
                  timestep=torch.tensor([800.0], device=DEVICE),
                  encoder_hidden_states=torch.randn(text, generator=gen, device=DEVICE, dtype=DTYPE))
    _check("wan2.1-1.3b-480p", transformer, inputs)


def test_hunyuan_one_rank_ulysses_full_width():
    if SMALL:
        config = dict(in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=32, num_layers=1,
                      num_single_layers=1, num_refiner_layers=1, text_embed_dim=16, pooled_projection_dim=8,
                      rope_axes_dim=(8, 12, 12))
        latent, text_len, text_dim, pooled = (1, 4, 3, 16, 16), 10, 16, 8
    else:  # full width and text; 2 dual- and 2 single-stream blocks instead of 20 + 40
        config = dict(num_layers=2, num_single_layers=2)
        latent, text_len, text_dim, pooled = (1, 16, 33, 90, 160), 256, 4096, 768  # 720p 129 f
    torch.manual_seed(0)
    transformer = HunyuanVideoTransformer3DModel(**config).to(DEVICE, DTYPE).eval()
    gen = torch.Generator(device=DEVICE).manual_seed(1)
    mask = torch.zeros(1, text_len, dtype=torch.int64, device=DEVICE)
    mask[:, : text_len // 3] = 1
    inputs = dict(hidden_states=torch.randn(latent, generator=gen, device=DEVICE, dtype=DTYPE),
                  timestep=torch.tensor([800], device=DEVICE),
                  encoder_hidden_states=torch.randn(1, text_len, text_dim, generator=gen, device=DEVICE, dtype=DTYPE),
                  encoder_attention_mask=mask,
                  pooled_projections=torch.randn(1, pooled, generator=gen, device=DEVICE, dtype=DTYPE),
                  guidance=torch.tensor([6000.0], device=DEVICE, dtype=DTYPE))
    _check("hunyuanvideo-720p-129f-4-blocks", transformer, inputs)
