"""One transformer forward of the Wan-derived families (SkyReels-V2, Wan VACE) at full size: stock vs jenga.

Random bf16 weights built from the published configs on the GPU (nothing is downloaded); the specs table
(``SPECS``) sits beside Wan's in ``benchmarks/pipeline.py`` (kept in this file so the two merge apart).
Per spec, the same inputs and seed, one process::

    python benchmarks/forward_wan_family.py --out $OUT/forward-wan-family.json
    python benchmarks/forward_wan_family.py --specs vace1.3b --samples 3
    python benchmarks/forward_wan_family.py --tiny --out /tmp/f.json     # the code path on a CPU, tiny configs

Columns: ``stock`` (diffusers' processors, SDPA), ``jenga-floor`` (the family's ``base`` preset with p = 0:
only the top-k floor ``(1 - drop rate)`` of the video blocks, plus adjacency), ``jenga-preset-p`` (the same
with the preset's p). jenga runs with ``dense_steps=0`` so the timed forward carves; the drop rate is the
preset's at the forward's timestep (``t = 500``: the second half of the run). SkyReels-V2 runs its
diffusion-forcing forward (per-frame timesteps, the per-token modulation gathered into the carved order);
VACE carves its main and control blocks. Random weights give flat block scores, so ``jenga-preset-p`` keeps
far more blocks than a trained model would: the floor column is the speed a trained model approaches.
Median of ``--samples`` timed forwards after ``--warmup``; the block density of one more forward.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from _common import card_name, git_commit

import jenga

_WAN = dict(patch_size=(1, 2, 2), in_channels=16, out_channels=16, text_dim=4096, freq_dim=256,
            cross_attn_norm=True, qk_norm="rms_norm_across_heads", eps=1e-6, rope_max_seq_len=1024)
_SMALL = dict(num_attention_heads=12, attention_head_dim=128, ffn_dim=8960, num_layers=30)
_LARGE = dict(num_attention_heads=40, attention_head_dim=128, ffn_dim=13824, num_layers=40)


@dataclass(frozen=True)
class Spec:
    """One architecture at its common resolution."""

    name: str
    family: str  # "skyreels-v2" (diffusion-forcing forward) or "wan-vace"
    preset_model: str
    config: dict[str, Any]
    height: int
    width: int
    frames: int
    text_tokens: int = 512
    text_dim: int = 4096
    block_size: int = 128

    @property
    def latent(self) -> tuple[int, int, int, int]:
        return (16, (self.frames - 1) // 4 + 1, self.height // 8, self.width // 8)


SPECS = {
    # Skywork/SkyReels-V2-DF-1.3B-540P-Diffusers: Wan 2.1 1.3B's transformer; 544 x 960, 97 frames
    "skyreels1.3b": Spec("skyreels1.3b", "skyreels-v2", "skyreels-v2", {**_WAN, **_SMALL}, 544, 960, 97),
    # Skywork/SkyReels-V2-DF-14B-540P-Diffusers
    "skyreels14b": Spec("skyreels14b", "skyreels-v2", "skyreels-v2-14b", {**_WAN, **_LARGE}, 544, 960, 97),
    # Wan-AI/Wan2.1-VACE-1.3B-diffusers: control hints after every second of the 30 blocks; 480 x 832, 81 frames
    "vace1.3b": Spec("vace1.3b", "wan-vace", "wan", {**_WAN, **_SMALL, "vace_layers": list(range(0, 30, 2)),
                                                      "vace_in_channels": 96}, 480, 832, 81),
}
_TINY = dict(num_attention_heads=2, attention_head_dim=32, ffn_dim=64, num_layers=3, text_dim=32, rope_max_seq_len=32)
TINY_SPECS = {
    "skyreels1.3b": dataclasses.replace(SPECS["skyreels1.3b"], config={**_WAN, **_TINY}, height=128, width=160,
                                        frames=9, text_tokens=12, text_dim=32, block_size=16),
    "vace1.3b": dataclasses.replace(SPECS["vace1.3b"], config={**_WAN, **_TINY, "vace_layers": [0, 2],
                                                               "vace_in_channels": 96},
                                    height=128, width=160, frames=9, text_tokens=12, text_dim=32, block_size=16),
}
COLUMNS = ("stock", "jenga-floor", "jenga-preset-p")
TIMESTEP = 500.0


def build_transformer(spec: Spec, device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    """Random weights allocated in ``dtype`` on ``device``; the modules diffusers keeps in float32, float32."""
    from diffusers import SkyReelsV2Transformer3DModel, WanVACETransformer3DModel

    cls = SkyReelsV2Transformer3DModel if spec.family == "skyreels-v2" else WanVACETransformer3DModel
    torch.manual_seed(0)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = cls(**spec.config)
    finally:
        torch.set_default_dtype(previous)
    keep = set(getattr(model, "_keep_in_fp32_modules", None) or ())
    for name, module in model.named_modules():
        if keep & set(name.split(".")):
            module.float()
    return model.eval().requires_grad_(False)


def forward_inputs(spec: Spec, device: torch.device, dtype: torch.dtype) -> dict[str, Any]:
    gen = torch.Generator(device).manual_seed(0)
    channels, frames, height, width = spec.latent
    kwargs: dict[str, Any] = dict(
        hidden_states=torch.randn(1, channels, frames, height, width, generator=gen, device=device, dtype=dtype),
        encoder_hidden_states=torch.randn(1, spec.text_tokens, spec.text_dim, generator=gen, device=device,
                                          dtype=dtype),
        return_dict=False,
    )
    if spec.family == "skyreels-v2":  # diffusion forcing: one timestep per latent frame
        kwargs.update(timestep=torch.full((1, frames), TIMESTEP, device=device), enable_diffusion_forcing=True)
    else:  # VACE: control latents (video 32 + mask 64 channels)
        kwargs.update(timestep=torch.full((1,), TIMESTEP, device=device),
                      control_hidden_states=torch.randn(1, 96, frames, height, width, generator=gen, device=device,
                                                        dtype=dtype))
    return kwargs


def column_config(column: str, spec: Spec, backend: str) -> jenga.JengaConfig | None:
    if column == "stock":
        return None
    preset = jenga.JengaConfig.preset("base", model=spec.preset_model)
    p = 0.0 if column == "jenga-floor" else preset.cdf_threshold
    return dataclasses.replace(preset, cdf_threshold=p, dense_steps=0.0, block_size=spec.block_size,
                               backend=backend)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_column(model: torch.nn.Module, spec: Spec, column: str, inputs: dict[str, Any], args: argparse.Namespace,
                device: torch.device) -> dict[str, Any]:
    cfg = column_config(column, spec, "torch" if args.tiny else "auto")
    if cfg is not None:
        jenga.patch(model, cfg)
    try:
        with torch.no_grad():
            for _ in range(args.warmup):
                model(**inputs)
            times = []
            for _ in range(args.samples):
                _sync(device)
                start = time.perf_counter()
                out = model(**inputs)[0]
                _sync(device)
                times.append(time.perf_counter() - start)
            result: dict[str, Any] = {"seconds": statistics.median(times), "samples": times,
                                      "finite": bool(torch.isfinite(out).all())}
            if cfg is not None:
                jenga.unpatch(model)
                jenga.patch(model, dataclasses.replace(cfg, collect_stats=True))
                model(**inputs)
                stats = jenga.selection_stats(model)
                if not stats:
                    raise RuntimeError(f"{spec.name} {column}: the forward did not carve (no selection statistics)")
                result.update(drop_rate=float(model._jenga_patch.runtime.plan.drop_rate), p=cfg.cdf_threshold,
                              carved_layers=len(stats), density=sum(s.density for s in stats) / len(stats))
    finally:
        jenga.unpatch(model)
    if device.type == "cuda":
        result["peak_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
        torch.cuda.reset_peak_memory_stats(device)
    return result


def markdown(results: dict[str, Any]) -> str:
    lines = ["| spec | column | forward | speed-up vs stock | drop rate | p | block density |",
             "|---|---|---|---|---|---|---|"]
    for name, entry in results.items():
        stock = entry["columns"]["stock"]["seconds"]
        for column, r in entry["columns"].items():
            density = f"{r['density']:.3f}" if "density" in r else "1"
            lines.append(f"| {name} | {column} | {r['seconds'] * 1e3:.1f} ms | {stock / r['seconds']:.2f}x | "
                         f"{r.get('drop_rate', '-')} | {r.get('p', '-')} | {density} |")
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--specs", nargs="+", help=f"default: all of {tuple(SPECS)}")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--samples", type=int, default=5)
    parser.add_argument("--tiny", action="store_true", help="tiny configs on the CPU (float32): the code path only")
    parser.add_argument("--out", type=Path,
                        help="JSON output (default benchmarks/results/forward-wan-family-<card>.json)")
    args = parser.parse_args(argv)
    table = TINY_SPECS if args.tiny else SPECS
    args.specs = args.specs or list(table)
    unknown = [s for s in args.specs if s not in table]
    if unknown:
        parser.error(f"unknown specs {unknown}; accepted: {tuple(table)}")
    if args.warmup < 0 or args.samples < 1:
        parser.error("--warmup must be >= 0 and --samples >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not args.tiny and not torch.cuda.is_available():
        print("benchmarks/forward_wan_family.py needs a CUDA GPU (or --tiny for a CPU check)", file=sys.stderr)
        return 2
    device = torch.device("cpu" if args.tiny else "cuda")
    dtype = torch.float32 if args.tiny else torch.bfloat16
    table = TINY_SPECS if args.tiny else SPECS
    results: dict[str, Any] = {}
    for name in args.specs:
        spec = table[name]
        model = build_transformer(spec, device, dtype)
        inputs = forward_inputs(spec, device, dtype)
        columns = {}
        for column in COLUMNS:
            columns[column] = time_column(model, spec, column, inputs, args, device)
            print(f"{name} {column}: {columns[column]['seconds'] * 1e3:.1f} ms", file=sys.stderr, flush=True)
        results[name] = {"latent": spec.latent, "height": spec.height, "width": spec.width, "frames": spec.frames,
                         "tokens": spec.latent[1] * spec.latent[2] * spec.latent[3] // 4, "columns": columns}
        del model, inputs
        if device.type == "cuda":
            torch.cuda.empty_cache()
    card = "cpu-tiny" if args.tiny else card_name()
    out = args.out or Path(__file__).parent / "results" / f"forward-wan-family-{card}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"card": card, "commit": git_commit(), "torch": torch.__version__, "timestep": TIMESTEP,
            "warmup": args.warmup, "samples": args.samples}
    out.write_text(json.dumps({"meta": meta, "specs": results}, indent=1))
    print(markdown(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
