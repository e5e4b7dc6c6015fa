"""Quality of jenga on the trained toy model: generation fidelity and task score, and the curve ablation.

    python benchmarks/quality/evaluate.py --weights W.safetensors --out quality.json   # GPU
    python benchmarks/quality/evaluate.py --tiny --weights W.safetensors --out /tmp/q.json  # CPU check

Generation level: the 48 one-object prompts (every shape x colour x direction), one batch, the same seed
for every variant, Wan-style guidance through a stock ``WanPipeline``. Variants: dense (stock), carving at
the Wan Base preset (drop 0.75 / 0.85, p = 0.9) and at its top-k floor (p = 0), progressive resolution
alone (Turbo's 0.75 -> 1.0 stages with carving off), and the full Turbo preset plus the 23-of-50 step skip
schedule. Per variant: PSNR and SSIM against dense, the task score, the measured block density.

Statistics (issue 20): every task figure comes with its standard error and a 95 % Wilson interval; each
variant also gets the paired difference to dense (same prompts, same noise) with its standard error and 95 %
interval. One score's standard error is at most 100 * sqrt(0.25 / n) points: n = 624 clips (``--repeats 13``)
gives <= 2.0 points at any success rate (1.4 near 85 %). Generation runs in chunks of ``--chunk`` clips, chunk
``i`` with seed ``seed + i``, so the clips are the same whatever the variant, process or GPU.

Calibrated config (``--calibrated calibrated.json``, from ``jenga calibrate --toy --size full``): one more
variant, ``calibrated``. Spread over GPUs: ``--variants`` picks the variants this process generates and
``--videos DIR`` stores each one's clips there; ``--from-videos DIR`` then scores everything stored (PSNR and
SSIM against the stored dense clips), generating nothing.

Attention level: during a dense generation, the post-RoPE q, k, v of self-attention at several layers and
steps (conditional branch) are carved with each curve (zorder, hilbert, raster) at the same kept-block
budget (top-k only, no adjacency, so every curve keeps exactly the same number of blocks): recall = share of
the dense softmax mass inside the kept blocks, and the relative L2 error of the carved output, in float32.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

import jenga
from jenga.adapters.wan import self_attention_qkv
from jenga.toy.data import all_single_prompts, render
from jenga.toy.model import build_pipeline, load_pretrained, quiet_frame_rounding
from jenga.toy.score import psnr, read_object, ssim

CURVES = ("zorder", "hilbert", "raster")


@dataclasses.dataclass(frozen=True)
class Size:
    frames: int
    side: int
    block: int
    steps: int
    prompts: int
    layers: tuple[int, ...]
    capture_steps: tuple[int, ...]


FULL = Size(frames=16, side=64, block=128, steps=50, prompts=48, layers=(0, 2, 4, 5), capture_steps=(5, 25, 45))
TINY = Size(frames=4, side=32, block=64, steps=2, prompts=2, layers=(0, 5), capture_steps=(1,))


def variants(block: int, calibrated: Path | None = None) -> dict[str, jenga.JengaConfig | None]:
    base = jenga.JengaConfig.preset("base", model="wan", block_size=block, collect_stats=True)
    turbo = jenga.JengaConfig.preset("turbo", model="wan", block_size=block, collect_stats=True)
    skip = jenga.JengaConfig.preset("flash", model="hunyuan").skip_steps
    return {
        "dense": None,
        "carving": base,
        "carving-floor": dataclasses.replace(base, cdf_threshold=0.0),
        "prores": dataclasses.replace(turbo, drop_rates=(0.0, 0.0)),
        "full": dataclasses.replace(turbo, skip_steps=skip),
        "full-floor": dataclasses.replace(turbo, skip_steps=skip, cdf_threshold=0.0),
        **({} if calibrated is None else {"calibrated": load_calibrated(calibrated, block)}),
    }


def load_calibrated(path: Path, block: int) -> jenga.JengaConfig:
    """A ``jenga calibrate`` config (JSON of ``JengaConfig.to_dict``) with statistics collection on."""
    cfg = jenga.JengaConfig.from_dict(json.loads(Path(path).read_text()))
    if cfg.block_size != block:
        raise ValueError(f"{path}: block_size {cfg.block_size}, but this evaluation cuts {block}-token blocks; "
                         "calibrate at the same size (jenga calibrate --toy --size full for the full size)")
    return dataclasses.replace(cfg, collect_stats=True)


def proportion(successes: int, n: int) -> dict[str, float]:
    """A share in percent with its standard error and the 95 % Wilson interval (sound near 0 and 100 %)."""
    z = 1.959964
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return dict(value=round(100 * p, 2), se=round(100 * math.sqrt(p * (1 - p) / n), 2),
                ci95=[round(100 * (centre - half), 2), round(100 * (centre + half), 2)], n=n)


def paired_difference(variant: list[bool], dense: list[bool]) -> dict[str, float]:
    """Variant minus dense on the same clips, percent points, with its standard error and normal 95 % interval."""
    d = [float(a) - float(b) for a, b in zip(variant, dense, strict=True)]
    n = len(d)
    mean = sum(d) / n
    var = sum((x - mean) ** 2 for x in d) / max(n - 1, 1)
    se = math.sqrt(var / n)
    return dict(value=round(100 * mean, 2), se=round(100 * se, 2),
                ci95=[round(100 * (mean - 1.959964 * se), 2), round(100 * (mean + 1.959964 * se), 2)], n=n)


def readings(videos: torch.Tensor, prompts: list) -> dict[str, list[bool]]:
    """Per clip: task (colour present and moving the prompted way), colour, direction, shape, single (one blob of
    the colour in the first frame: no copies)."""
    found = [read_object(clip, prompt) for clip, prompt in zip(videos, prompts, strict=True)]
    return dict(task=[r.correct for r in found], colour=[r.present for r in found],
                direction=[r.direction_ok for r in found], shape=[r.shape_ok for r in found],
                single=[r.blobs == 1 for r in found])


def score_entry(clips: dict[str, list[bool]], dense: dict[str, list[bool]] | None) -> dict[str, Any]:
    entry: dict[str, Any] = {"task": {k: proportion(sum(v), len(v)) for k, v in clips.items()}}
    if dense is not None:
        entry["vs_dense"] = {k: paired_difference(v, dense[k]) for k, v in clips.items()}
    return entry


def generate(pipe: Any, prompts_module: torch.nn.Module, prompts: list, size: Size, seed: int,
             guidance: float, chunk: int | None = None) -> torch.Tensor:
    """Clips for ``prompts``; with ``chunk``, ``chunk`` clips per pipeline call, call ``i`` seeded ``seed + i``."""
    if chunk is not None and len(prompts) > chunk:
        parts = [generate(pipe, prompts_module, prompts[i : i + chunk], size, seed + i // chunk, guidance)
                 for i in range(0, len(prompts), chunk)]
        return torch.cat(parts)
    device = pipe.transformer.device
    with torch.no_grad(), quiet_frame_rounding():
        embeds = prompts_module(prompts)
        negative = prompts_module([None] * len(prompts))
        out = pipe(prompt_embeds=embeds, negative_prompt_embeds=negative, height=size.side, width=size.side,
                   num_frames=size.frames - 1, num_inference_steps=size.steps, guidance_scale=guidance,
                   generator=torch.Generator(device).manual_seed(seed), output_type="latent", return_dict=False)[0]
    return out.float().clamp(-1, 1)


def generation_level(pipe, prompts_module, size: Size, seed: int, guidance: float, log, repeats: int = 1,
                     names: list[str] | None = None, calibrated: Path | None = None, chunk: int | None = None,
                     videos_dir: Path | None = None) -> dict[str, Any]:
    """``repeats`` copies of the prompt set, each copy with its own noise, so the task score resolves
    100 / (48 x repeats) points. ``names``: the variants to generate (default all); ``videos_dir``: store them."""
    prompts = eval_prompts(size, repeats)
    device = pipe.transformer.device
    truth = render(prompts, size.frames, size.side, size.side, torch.Generator().manual_seed(seed), device)
    results: dict[str, Any] = {"rendered-clips": score_entry(readings(truth, prompts), None)}
    table = variants(size.block, calibrated)
    names = list(table) if names is None else names
    unknown = sorted(set(names) - set(table))
    if unknown:
        raise ValueError(f"unknown variants {unknown}; accepted: {list(table)} (calibrated needs --calibrated)")
    dense, dense_clips = None, None
    for name in names:
        cfg = table[name]
        if cfg is not None and any(round(stage.scale * size.side) % 16 for stage in cfg.stages):
            # WanPipeline.check_inputs wants height and width divisible by 16 (8 x 2 for Wan's own VAE)
            results[name] = {"skipped": f"a stage of {size.side} px would not be a multiple of 16 px"}
            log(f"{name:14s} skipped: stage size not a multiple of 16 px")
            continue
        if cfg is not None:
            jenga.patch(pipe, cfg)
        sync(device)
        start = time.perf_counter()
        try:
            videos = generate(pipe, prompts_module, prompts, size, seed, guidance, chunk)
        finally:
            sync(device)
            stats = jenga.selection_stats(pipe) if cfg is not None else []
            if cfg is not None:
                jenga.unpatch(pipe)
        seconds = time.perf_counter() - start
        if videos_dir is not None:
            save_videos(videos_dir, name, videos)
        if name == "dense":
            dense, dense_clips = videos, readings(videos, prompts)
        entry = variant_entry(videos, prompts, dense, dense_clips if dense is not None else None)
        entry["seconds"] = round(seconds, 3)
        if stats:
            by_grid: dict[int, list[float]] = {}
            for layer in stats:
                by_grid.setdefault(int(layer.kv_count.shape[-1]), []).append(layer.density)
            entry["block_density"] = {f"{qb} query blocks": round(statistics.fmean(v), 4) for qb, v in by_grid.items()}
        if cfg is not None:
            entry["config"] = cfg.to_dict()
        results[name] = entry
        log(f"{name:14s} {summary_line(entry)}")
    return results


def eval_prompts(size: Size, repeats: int) -> list:
    return (all_single_prompts()[: size.prompts] if size.prompts < 48 else all_single_prompts()) * repeats


def variant_entry(videos: torch.Tensor, prompts: list, dense: torch.Tensor | None,
                  dense_clips: dict[str, list[bool]] | None) -> dict[str, Any]:
    """Task score with intervals; against dense (when given and not the same clips): PSNR, SSIM, paired
    difference of every score."""
    same = dense is videos
    entry = score_entry(readings(videos, prompts), None if same else dense_clips)
    if dense is not None and not same:
        entry["psnr_db"] = round(float(psnr(dense, videos).mean()), 2)
        entry["ssim"] = round(float(ssim(dense, videos).mean()), 4)
    return entry


def summary_line(entry: dict[str, Any]) -> str:
    task = entry["task"]
    parts = [f"{k} {v['value']:.1f} ± {v['se']:.1f} [{v['ci95'][0]:.1f}, {v['ci95'][1]:.1f}]" for k, v in task.items()]
    if "vs_dense" in entry:
        d = entry["vs_dense"]["task"]
        parts.append(f"task - dense {d['value']:+.1f} ± {d['se']:.1f}")
    for key in ("psnr_db", "ssim", "block_density", "seconds"):
        if key in entry:
            parts.append(f"{key} {entry[key]}")
    return "; ".join(parts)


def save_videos(folder: Path, name: str, videos: torch.Tensor) -> None:
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    save_file({"videos": videos.half().cpu().contiguous()}, str(folder / f"{name}.safetensors"))


def from_videos(folder: Path, size: Size, seed: int, repeats: int, log) -> dict[str, Any]:
    """Score every variant stored in ``folder`` (by ``--videos``) against the stored dense clips."""
    from safetensors.torch import load_file

    prompts = eval_prompts(size, repeats)
    stored = {p.stem: load_file(str(p))["videos"].float() for p in sorted(folder.glob("*.safetensors"))}
    if "dense" not in stored:
        raise ValueError(f"{folder} holds no dense.safetensors: generate the dense variant with --videos too")
    if any(v.shape[0] != len(prompts) for v in stored.values()):
        raise ValueError(f"stored clips {[tuple(v.shape) for v in stored.values()]} do not match {len(prompts)} "
                         f"prompts (--repeats {repeats}) at this size")
    truth = render(prompts, size.frames, size.side, size.side, torch.Generator().manual_seed(seed))
    results: dict[str, Any] = {"rendered-clips": score_entry(readings(truth, prompts), None)}
    dense = stored["dense"]
    dense_clips = readings(dense, prompts)
    for name in ["dense", *[n for n in stored if n != "dense"]]:
        results[name] = variant_entry(stored[name], prompts, dense, dense_clips)
        log(f"{name:14s} {summary_line(results[name])}")
    return results


class Capture:
    """Post-RoPE q, k, v of ``attn1`` at chosen layers, on the conditional call of chosen steps (batch 0)."""

    def __init__(self, transformer: torch.nn.Module, layers: tuple[int, ...], steps: tuple[int, ...]) -> None:
        self.calls = 0
        self.steps, self.records = set(steps), []
        self.handles = [transformer.register_forward_pre_hook(self._count, with_kwargs=True)]
        for layer in layers:
            attn = transformer.blocks[layer].attn1
            self.handles.append(attn.register_forward_pre_hook(self._make_hook(layer)))
        self.grid: tuple[int, int, int] | None = None

    def _count(self, module, args, kwargs) -> None:
        self.calls += 1
        hidden = args[0] if args else kwargs["hidden_states"]
        p = module.config.patch_size
        self.grid = (hidden.shape[2] // p[0], hidden.shape[3] // p[1], hidden.shape[4] // p[2])

    def _make_hook(self, layer: int):
        def hook(attn, args) -> None:
            index = self.calls - 1
            if index % 2 or index // 2 not in self.steps:
                return
            hidden, rotary = args[0][:1], args[3]
            with torch.no_grad():
                q, k, v = self_attention_qkv(attn, hidden, rotary)
            self.records.append(dict(layer=layer, step=index // 2, grid=self.grid, q=q.float(), k=k.float(),
                                     v=v.float()))
        return hook

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


def carve_metrics(q, k, v, keep_mask: torch.Tensor, block: int, chunk_blocks: int = 8) -> tuple[float, float]:
    """Recall of the dense softmax mass inside the kept blocks and the carved output's relative L2 error.
    q, k, v: ``[1, N, H, D]`` float32 in curve order; keep_mask ``[1, H, Qb, Kb]``."""
    n, heads, dim = q.shape[1:]
    qt, kt, vt = (t[0].transpose(0, 1) for t in (q, k, v))  # [H, N, D]
    mass_kept, rows, err, ref = 0.0, 0, 0.0, 0.0
    key_block = torch.arange(n, device=q.device) // block
    for start in range(0, keep_mask.shape[2], chunk_blocks):
        stop = min(start + chunk_blocks, keep_mask.shape[2])
        lo, hi = start * block, min(stop * block, n)
        scores = qt[:, lo:hi] @ kt.transpose(1, 2) / math.sqrt(dim)  # [H, rows, N]
        probs = scores.softmax(-1)
        dense_out = probs @ vt
        row_block = torch.arange(lo, hi, device=q.device) // block
        allowed = keep_mask[0][:, row_block][:, :, key_block]  # [H, rows, N]
        mass_kept += float((probs * allowed).sum())
        rows += heads * (hi - lo)
        carved = scores.masked_fill(~allowed, float("-inf")).softmax(-1) @ vt
        err += float((carved - dense_out).pow(2).sum())
        ref += float(dense_out.pow(2).sum())
    return mass_kept / rows, math.sqrt(err / ref)


def attention_level(pipe, prompts_module, size: Size, seed: int, guidance: float, keeps: tuple[float, ...],
                    log) -> dict[str, Any]:
    prompts = all_single_prompts()[:: max(1, 48 // 4)][:2]
    capture = Capture(pipe.transformer, size.layers, size.capture_steps)
    try:
        generate(pipe, prompts_module, prompts, size, seed, guidance)
    finally:
        capture.remove()
    rows = []
    for record in capture.records:
        for curve in CURVES:
            perm, _ = jenga.curve_permutation(record["grid"], curve, device=record["q"].device,
                                              block_size=size.block)
            q, k, v = (record[x][:, perm] for x in ("q", "k", "v"))
            for keep in keeps:
                lists = jenga.select_blocks(q, k, drop_rate=1.0 - keep, cdf_threshold=0.0, block_size=size.block)
                mask = lists.to_dense()
                recall, rel_l2 = carve_metrics(q, k, v, mask, size.block)
                rows.append(dict(layer=record["layer"], step=record["step"], curve=curve, keep=keep,
                                 density=round(float(mask.float().mean()), 4), recall=round(recall, 4),
                                 rel_l2=round(rel_l2, 4)))
    summary: dict[str, Any] = {}
    for curve in CURVES:
        for keep in keeps:
            sel = [r for r in rows if r["curve"] == curve and r["keep"] == keep]
            summary[f"{curve}@{keep}"] = dict(recall=round(statistics.fmean(r["recall"] for r in sel), 4),
                                              rel_l2=round(statistics.fmean(r["rel_l2"] for r in sel), 4),
                                              cases=len(sel))
            log(f"{curve:8s} keep {keep:.3f}: {json.dumps(summary[f'{curve}@{keep}'])}")
    return dict(summary=summary, rows=rows)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", type=Path, default=None, help="default: the weights shipped with jenga")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--guidance", type=float, default=4.0)
    parser.add_argument("--repeats", type=int, default=1,
                        help="copies of the 48 prompts, each with its own noise (task score resolution 100/(48 R))")
    parser.add_argument("--keeps", nargs="+", type=float, default=[0.25, 0.125])
    parser.add_argument("--skip-attention", action="store_true")
    parser.add_argument("--skip-generation", action="store_true", help="only the attention level (curve ablation)")
    parser.add_argument("--frames", type=int, default=None, help="override the clip length (default 16; tiny 4)")
    parser.add_argument("--side", type=int, default=None,
                        help="override the frame side in pixels, a multiple of 16 (default 64; tiny 32): e.g. 48 "
                             "gives a 24-token-wide grid, which 128-token raster blocks do not tile in whole rows")
    parser.add_argument("--steps", type=int, default=None,
                        help="override the step count; attention is captured at 10 %%, 50 %% and 90 %% of it")
    parser.add_argument("--tiny", action="store_true", help="CPU check at a small size")
    parser.add_argument("--calibrated", type=Path, default=None,
                        help="a `jenga calibrate` config JSON: adds the variant 'calibrated'")
    parser.add_argument("--variants", nargs="+", default=None,
                        help="variants to generate (default all): dense carving carving-floor prores full full-floor "
                             "[calibrated]; PSNR needs dense in the same process, or use --videos / --from-videos")
    parser.add_argument("--chunk", type=int, default=96, help="clips per pipeline call (default 96)")
    parser.add_argument("--videos", type=Path, default=None, help="store each generated variant's clips here")
    parser.add_argument("--from-videos", type=Path, default=None,
                        help="generate nothing: score the variants stored in this folder (with the same --repeats)")
    args = parser.parse_args(argv)
    if args.skip_generation and args.skip_attention:
        parser.error("--skip-generation and --skip-attention together leave nothing to measure")
    size = TINY if args.tiny else FULL
    if any(v is not None and v < 1 for v in (args.frames, args.side, args.steps)) or args.repeats < 1:
        parser.error("--frames, --side, --steps and --repeats must be positive")
    if args.side is not None and args.side % 16:
        parser.error(f"--side must be a multiple of 16 (WanPipeline's check), got {args.side}")
    size = dataclasses.replace(size, frames=args.frames or size.frames, side=args.side or size.side)
    if args.steps is not None:
        capture = tuple(sorted({min(args.steps - 1, round(args.steps * f)) for f in (0.1, 0.5, 0.9)}))
        size = dataclasses.replace(size, steps=args.steps, capture_steps=capture)
    if args.chunk < 1:
        parser.error("--chunk must be positive")
    if args.from_videos is not None:
        result = dict(size=dataclasses.asdict(size), seed=args.seed, repeats=args.repeats,
                      date=time.strftime("%Y-%m-%d"),
                      generation=from_videos(args.from_videos, size, args.seed, args.repeats, print))
        args.out.write_text(json.dumps(result, indent=1))
        print(f"wrote {args.out}")
        return 0
    device = torch.device("cuda" if torch.cuda.is_available() and not args.tiny else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    kwargs = {} if args.weights is None else {"path": args.weights}
    transformer, prompts_module = load_pretrained(device=device, dtype=dtype, **kwargs)
    pipe = build_pipeline(transformer)
    pipe.set_progress_bar_config(disable=True)

    def log(msg: str) -> None:
        print(msg, flush=True)

    card = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    result: dict[str, Any] = dict(card=card, size=dataclasses.asdict(size), seed=args.seed, guidance=args.guidance,
                                  dtype=str(dtype), date=time.strftime("%Y-%m-%d"))
    result["repeats"] = args.repeats
    if not args.skip_generation:
        result["generation"] = generation_level(pipe, prompts_module, size, args.seed, args.guidance, log,
                                                args.repeats, args.variants, args.calibrated, args.chunk, args.videos)
        args.out.write_text(json.dumps(result, indent=1))
    if not args.skip_attention:
        result["attention"] = attention_level(pipe, prompts_module, size, args.seed, args.guidance,
                                              tuple(args.keeps), log)
        args.out.write_text(json.dumps(result, indent=1))
    log(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
