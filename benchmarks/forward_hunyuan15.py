"""One transformer forward of HunyuanVideo 1.5 (8.3B, 54 dual-stream blocks) at 480p and 720p, 121 frames, random
bf16 weights: stock diffusers against jenga carving at the top-k floor (p = 0) and at the preset's p.

Run on a CUDA GPU (nothing is downloaded)::

    python benchmarks/forward_hunyuan15.py --out $OUT/forward-hunyuan15.json
    python benchmarks/forward_hunyuan15.py --specs hunyuan15-480p --repeats 5
    python benchmarks/forward_hunyuan15.py --tiny --out /tmp/f.json     # the same code path on a CPU, tiny configs

The specs (kept in this file so it merges apart from ``forward.py`` / ``_video_specs.py``; move ``SPECS`` there
when both are on main) are the class defaults of ``HunyuanVideo15Transformer3DModel`` (the 480p/720p
checkpoints' architecture: 16 heads x 128, 54 layers, in 65 = 32 latent + 32 condition + 1 mask channels) with
``target_size`` 640 / 960 and ``task_type="t2v"``; the size is each pipeline's default call: 848x480 and
1280x720 (the 16:9 bucket of the target size), 121 frames, i.e. 31 x 30 x 53 = 49,290 and 31 x 45 x 80 = 111,600
video tokens. The inputs are what ``HunyuanVideo15Pipeline`` passes per guider branch (batch 1: the guider runs
the conditional and unconditional predictions as two forwards): 1000 Qwen2.5-VL tokens of which ``valid_text``
are valid, 256 ByT5 tokens (no quoted glyph text: all padding), 729 zero image tokens (T2V: masked), so 1,985
condition tokens follow the video in every attention.

Stock runs with cuDNN attention first in SDPA's priority list; its processor passes a dense ``[B, 1, S, S]``
bool mask (query and key padding), which SDPA serves with a mask-capable kernel, as users get it. jenga runs the
``hunyuan15`` ``base`` preset (drop rate 0.75 in the first half; ``skip_steps=()`` so the timed forward computes)
at timestep 700 on the bare transformer. That carving took effect is checked: the kept-block density of every
layer comes from jenga's statistics in an untimed forward. Random weights give near-flat block scores, so the
preset's p keeps far more blocks than a trained model would: the floor column is what a trained model approaches.
Writes ``--out`` (merged with what is there) and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import platform
import statistics
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

import jenga

TIMESTEP = 700.0  # progress 0.3: the first half's drop rate


@dataclass(frozen=True)
class Spec:
    name: str
    config: dict[str, Any]
    height: int
    width: int
    frames: int
    text_tokens: int = 1000  # Qwen2.5-VL, padded to max length
    valid_text: int = 120
    text_2_tokens: int = 256  # ByT5
    image_tokens: int = 729  # SigLIP, zeros in T2V
    block_size: int | None = None  # None: the preset's

    @property
    def grid(self) -> tuple[int, int, int]:
        return (self.frames - 1) // 4 + 1, self.height // 16, self.width // 16

    @property
    def video_tokens(self) -> int:
        return math.prod(self.grid)

    @property
    def condition_tokens(self) -> int:
        return self.text_tokens + self.text_2_tokens + self.image_tokens


SPECS = {
    "hunyuan15-480p": Spec("hunyuan15-480p", dict(target_size=640, task_type="t2v"), 480, 848, 121),
    "hunyuan15-720p": Spec("hunyuan15-720p", dict(target_size=960, task_type="t2v"), 720, 1280, 121),
}
_TINY = dict(in_channels=9, out_channels=4, num_attention_heads=2, attention_head_dim=32, num_layers=2,
             num_refiner_layers=1, mlp_ratio=2.0, text_embed_dim=24, text_embed_2_dim=20, image_embed_dim=16,
             rope_axes_dim=(8, 12, 12), target_size=128, task_type="t2v")
TINY_SPECS = {
    name: dataclasses.replace(spec, config=_TINY, height=128, width=128 + 64 * i, frames=9, text_tokens=12,
                              valid_text=8, text_2_tokens=6, image_tokens=16, block_size=16)
    for i, (name, spec) in enumerate(SPECS.items())
}


def build_transformer(spec: Spec, device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    from diffusers import HunyuanVideo15Transformer3DModel

    torch.manual_seed(0)
    with torch.device(device):
        model = HunyuanVideo15Transformer3DModel(**spec.config)
    return model.to(dtype).eval()


def forward_inputs(spec: Spec, transformer: torch.nn.Module, device: torch.device,
                   dtype: torch.dtype) -> dict[str, Any]:
    """One guider branch of ``HunyuanVideo15Pipeline`` (batch 1): latent + zero condition latents + zero mask."""
    cfg = transformer.config
    gen = torch.Generator(device).manual_seed(1)
    frames, height, width = spec.grid
    latent_channels = cfg.out_channels
    latents = torch.randn(1, latent_channels, frames, height, width, generator=gen, device=device, dtype=dtype)
    condition = torch.zeros(1, cfg.in_channels - latent_channels, frames, height, width, device=device, dtype=dtype)
    mask = torch.zeros(1, spec.text_tokens, device=device, dtype=dtype)
    mask[:, : spec.valid_text] = 1
    return dict(
        hidden_states=torch.cat([latents, condition], dim=1),
        timestep=torch.full((1,), TIMESTEP, device=device, dtype=dtype),
        encoder_hidden_states=torch.randn(1, spec.text_tokens, cfg.text_embed_dim, generator=gen, device=device,
                                          dtype=dtype),
        encoder_attention_mask=mask,
        encoder_hidden_states_2=torch.zeros(1, spec.text_2_tokens, cfg.text_embed_2_dim, device=device, dtype=dtype),
        encoder_attention_mask_2=torch.zeros(1, spec.text_2_tokens, device=device, dtype=dtype),
        image_embeds=torch.zeros(1, spec.image_tokens, cfg.image_embed_dim, device=device, dtype=dtype),
        return_dict=False,
    )


def carving_config(spec: Spec, cdf_threshold: float | None, tiny: bool) -> jenga.JengaConfig:
    overrides: dict[str, Any] = {"skip_steps": ()}
    if cdf_threshold is not None:
        overrides["cdf_threshold"] = cdf_threshold
    if spec.block_size is not None:
        overrides["block_size"] = spec.block_size
    if tiny:
        overrides.update(backend="torch", min_video_blocks=1)
    return jenga.JengaConfig.preset("base", model="hunyuan15", **overrides)


@contextlib.contextmanager
def sdpa_backend(cuda: bool) -> Iterator[None]:
    """cuDNN attention first, the others after it for the calls it cannot take (as ``pipeline.py``)."""
    if not cuda:
        yield
        return
    from torch.nn.attention import SDPBackend, sdpa_kernel

    order = [SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION,
             SDPBackend.MATH]
    with sdpa_kernel(order, set_priority=True):
        yield


def time_forward(transformer: torch.nn.Module, inputs: dict[str, Any], repeats: int, warmup: int) -> list[float]:
    cuda = inputs["hidden_states"].is_cuda
    times = []
    with torch.no_grad():
        for index in range(warmup + repeats):
            if cuda:
                torch.cuda.synchronize()
            start = time.perf_counter()
            transformer(**inputs)
            if cuda:
                torch.cuda.synchronize()
            if index >= warmup:
                times.append(time.perf_counter() - start)
    return times


def density(transformer: torch.nn.Module, inputs: dict[str, Any], cfg: jenga.JengaConfig) -> dict[str, float]:
    """Kept-block density over the layers of one untimed patched forward; ``RuntimeError`` if nothing carved."""
    jenga.patch(transformer, cfg, collect_stats=True)
    try:
        with torch.no_grad():
            transformer(**inputs)
        stats = jenga.selection_stats(transformer)
    finally:
        jenga.unpatch(transformer)
    if not stats:
        raise RuntimeError(f"jenga did not carve (no layer statistics) with {cfg}")
    values = [s.density for s in stats]
    return {"mean": statistics.fmean(values), "min": min(values), "max": max(values), "layers": len(values)}


def run_spec(spec: Spec, args: argparse.Namespace, device: torch.device, dtype: torch.dtype) -> dict[str, Any]:
    transformer = build_transformer(spec, device, dtype)
    inputs = forward_inputs(spec, transformer, device, dtype)
    result: dict[str, Any] = {"grid": list(spec.grid), "video_tokens": spec.video_tokens,
                              "condition_tokens": spec.condition_tokens, "valid_text": spec.valid_text,
                              "size": f"{spec.width}x{spec.height}x{spec.frames}", "batch": 1, "columns": {}}
    cuda = device.type == "cuda"
    with sdpa_backend(cuda):
        for name, p in {"stock": None, "jenga-floor": 0.0, "jenga-preset": None}.items():
            if cuda:
                torch.cuda.reset_peak_memory_stats()
            entry: dict[str, Any] = {}
            if name != "stock":
                cfg = carving_config(spec, p, args.tiny)
                entry.update(cdf_threshold=cfg.cdf_threshold, drop_rate=cfg.drop_rates[0], block_size=cfg.block_size,
                             density=density(transformer, inputs, cfg))
                jenga.patch(transformer, cfg)
            try:
                times = time_forward(transformer, inputs, args.repeats, args.warmup)
            finally:
                jenga.unpatch(transformer)
            entry.update(seconds=statistics.median(times), samples=times)
            if cuda:
                entry["peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
            result["columns"][name] = entry
            print(f"  {spec.name} {name}: {entry['seconds']:.4f} s", file=sys.stderr, flush=True)
    stock = result["columns"]["stock"]["seconds"]
    for entry in result["columns"].values():
        entry["speedup"] = stock / entry["seconds"]
    del transformer
    if cuda:
        torch.cuda.empty_cache()
    return result


def table(results: dict[str, dict]) -> str:
    lines = ["| model | size (video + condition tokens) | stock | jenga p = 0 (density) | jenga preset p (density) |",
             "|---|---|---|---|---|"]
    for name, r in results.items():
        c = r["columns"]
        cells = [f"{c['stock']['seconds']:.3f} s"]
        for key in ("jenga-floor", "jenga-preset"):
            e = c[key]
            cells.append(f"{e['seconds']:.3f} s, {e['speedup']:.2f}x ({e['density']['mean']:.2f}, "
                         f"p {e['cdf_threshold']})")
        lines.append(f"| {name} | {r['size']} ({r['video_tokens']} + {r['condition_tokens']}) | "
                     + " | ".join(cells) + " |")
    return "\n".join(lines)


def _git_commit() -> str:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _common import git_commit

    return git_commit()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--specs", nargs="+", default=None, help=f"of {sorted(SPECS)} (default: all)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--tiny", action="store_true", help="tiny configs on the CPU (checks the code path)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    specs = TINY_SPECS if args.tiny else SPECS
    names = args.specs or list(specs)
    unknown = sorted(set(names) - set(specs))
    if unknown:
        parser.error(f"unknown specs {unknown}; accepted: {sorted(specs)}")
    if args.repeats < 1 or args.warmup < 0:
        parser.error("--repeats must be >= 1 and --warmup >= 0")
    if not args.tiny and not torch.cuda.is_available():
        parser.error("full-size runs need a CUDA GPU (use --tiny on a CPU)")
    device = torch.device("cpu" if args.tiny else "cuda")
    dtype = torch.float32 if args.tiny else torch.bfloat16
    card = "cpu-tiny" if args.tiny else torch.cuda.get_device_name().replace(" ", "-")
    out = args.out or Path(__file__).resolve().parent / "results" / f"forward-hunyuan15-{card}.json"
    report = json.loads(out.read_text()) if out.exists() else {"models": {}}
    import diffusers

    report.update(commit=_git_commit(), card=card, torch=torch.__version__, diffusers=diffusers.__version__,
                  python=platform.python_version(), timestep=TIMESTEP, weights="random", dtype=str(dtype))
    results = {}
    for name in names:
        results[name] = run_spec(specs[name], args, device, dtype)
        report["models"][name] = results[name]
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=1))
    print(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
