"""Wan's query/key preparation (RMSNorm across heads + interleaved RoPE) per layer: stock eager ops against
jenga's fused Triton kernel, at the real shapes (GPU).

    python benchmarks/qk_prep.py --out results/qk-prep.json

Times one tensor (queries or keys) per measurement, random bf16 data, after warm-up, median. Also checks the
fused result against the stock ops (maximum difference and the share of identical values).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import bench, card_name, git_commit  # noqa: E402

from jenga.adapters.wan import _rotate_pairs  # noqa: E402
from jenga.kernels.triton_qk_prep import rms_norm_rope_triton  # noqa: E402

# (name, heads, head dim, latent grid of the 81-frame video)
SHAPES = {"wan1.3b": (12, 128, (21, 30, 52)), "wan14b": (40, 128, (21, 45, 80))}


def run_shape(name: str, budget_ms: float) -> dict:
    heads, head_dim, grid = SHAPES[name]
    seq, channels = math.prod(grid), heads * head_dim
    x = torch.randn(1, seq, channels, device="cuda", dtype=torch.bfloat16)
    norm = torch.nn.RMSNorm(channels, eps=1e-6).to("cuda", torch.bfloat16)
    with torch.no_grad():
        norm.weight.copy_(torch.rand(channels, device="cuda") + 0.5)
    angles = torch.rand(1, seq, 1, head_dim, device="cuda") * 6.28
    cos, sin = angles.cos(), angles.sin()

    def stock():
        return _rotate_pairs(norm(x).unflatten(2, (heads, -1)), cos, sin)

    def fused():
        return rms_norm_rope_triton(x, norm.weight, 1e-6, cos, sin).unflatten(2, (heads, -1))

    with torch.no_grad():
        ref, out = stock(), fused()
        diff = (out.float() - ref.float()).abs()
        ms_stock, ms_fused = bench(stock, budget_ms), bench(fused, budget_ms)
    moved = 2 * x.numel() * x.element_size()  # read once, write once: the least any implementation moves
    return dict(shape=name, tokens=seq, channels=channels, stock_ms=round(ms_stock, 4), fused_ms=round(ms_fused, 4),
                speedup=round(ms_stock / ms_fused, 2), fused_gb_per_s=round(moved / ms_fused / 1e6, 1),
                max_abs_diff=float(diff.max()), identical_share=round(float((diff == 0).float().mean()), 4))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    parser.add_argument("--budget-ms", type=float, default=200.0)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("qk_prep.py needs a CUDA GPU", file=sys.stderr)
        return 2
    start = time.time()
    rows = []
    for name in args.shapes:
        row = run_shape(name, args.budget_ms)
        rows.append(row)
        print(f"{name:8s} stock {row['stock_ms']:8.3f} ms  fused {row['fused_ms']:7.3f} ms  "
              f"({row['speedup']}x, {row['fused_gb_per_s']} GB/s)  max diff {row['max_abs_diff']:.3g}, "
              f"identical {row['identical_share']:.2%}", flush=True)
    meta = dict(card=card_name(), torch=torch.__version__, commit=git_commit(), date=time.strftime("%Y-%m-%d"),
                seconds=round(time.time() - start))
    out = args.out or Path(__file__).parent / "results" / f"qk-prep-{card_name()}.json"
    out.write_text(json.dumps(dict(meta=meta, rows=rows), indent=1))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
