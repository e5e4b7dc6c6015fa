"""Which layers of the toy model can carve harder at no cost in the clips? (issue 20)

    python benchmarks/quality/layer_probe.py --out layer-probe.json                      # every layer at p 0.5
    python benchmarks/quality/layer_probe.py --layers 5 --p 0 0.3 --out layer-probe-5.json

The Wan ``base`` preset, then the preset with one layer's mass threshold ``p`` lowered (``layer_cdf_thresholds``),
each generating the same one-object clips as ``calibrate_layers.py`` (toy default size unless ``--size``, one
seed, CFG 4): PSNR / SSIM against dense and the kept-block density. Per-layer attention metrics (recall, output
error) say which layer keeps mass with few blocks; this says what a layer's carving costs the generated clips,
which is what a calibration budget stands in for.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from calibrate_layers import generate, measured, spread_prompts  # noqa: E402

import jenga  # noqa: E402
from jenga.demo import SIZES  # noqa: E402
from jenga.toy.model import build_pipeline, load_pretrained  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=tuple(SIZES), default="default")
    parser.add_argument("--clips", type=int, default=12, help="one-object prompts spread over the 48")
    parser.add_argument("--layers", type=int, nargs="+", default=None, help="layers to lower (default: all)")
    parser.add_argument("--p", type=float, nargs="+", default=[0.5], help="the lowered p values (default 0.5)")
    parser.add_argument("--no-preset", action="store_true", help="skip the preset's own row")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    size = SIZES[args.size]
    transformer, encoder = load_pretrained()
    pipe = build_pipeline(transformer)
    pipe.set_progress_bar_config(disable=True)
    base = jenga.JengaConfig.preset("base", model="wan", block_size=size.block_size)
    layers = args.layers if args.layers is not None else list(range(len(transformer.blocks)))
    prompts = spread_prompts(args.clips)
    dense = generate(pipe, encoder, prompts, size, args.seed)
    variants = {} if args.no_preset else {"preset": base}
    variants.update({f"layer{x}-p{p}": dataclasses.replace(base, layer_cdf_thresholds={x: p})
                     for x in layers for p in args.p})
    rows: dict = {}
    for name, cfg in variants.items():
        start = time.perf_counter()
        g = measured(pipe, encoder, prompts, size, args.seed, cfg, dense)
        rows[name] = dict(kept_density=g["kept_density"], psnr_db=g["psnr_db"], ssim=g["ssim"],
                          kept_density_per_layer=g["kept_density_per_layer"],
                          seconds=round(time.perf_counter() - start, 1))
        print(f"{name:14s} kept {g['kept_density']:.4f}  PSNR {g['psnr_db']['mean']:.2f} dB (min "
              f"{g['psnr_db']['min']:.2f})  SSIM {g['ssim']['mean']:.4f}", flush=True)
        args.out.write_text(json.dumps(dict(size=dataclasses.asdict(size), seed=args.seed, device="cpu"
                                            if not torch.cuda.is_available() else torch.cuda.get_device_name(),
                                            clips=[str(p) for p in prompts], rows=rows), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
