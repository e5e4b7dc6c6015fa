"""Same-run A/B of the Gluon kernel's schedules against the Triton kernel and cuDNN, on the real shapes.

    python benchmarks/gluon_ab.py --out $OUT/gluon-ab.json      # Hopper GPU only

Per shape: cuDNN dense (SDPA, contiguous ``[B, H, N, D]``); then per density the same random lists (exactly
round(density · Kb) key blocks per query block) through the portable Triton kernel
(``jenga.block_sparse_attention`` with ``JENGA_GLUON=0``, the shipped tile table) and every Gluon schedule
(``jenga.kernels.gluon_block_sparse.SCHEDULES``); ``--key-bias`` gives every column the same key bias. Each
Gluon output is checked against the Triton kernel's (relative L2 error, outputs poisoned with NaN before); a
schedule that fails or is wrong is recorded and not timed. Median of ``triton.testing.do_bench``, random inputs
(bf16 unless ``--dtype float16``). The JSON is rewritten after every row.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time

import torch
from _common import append_row
from fa4_peer import SHAPES, random_lists


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", nargs="+", default=["wan1.3b-480p", "wan14b-720p", "hunyuan-720p"],
                        choices=list(SHAPES))
    parser.add_argument("--densities", nargs="+", type=float, default=[1.0, 0.25, 0.10])
    parser.add_argument("--head-dim", type=int, default=128)
    parser.add_argument("--dtype", choices=["bfloat16", "float16"], default="bfloat16")
    parser.add_argument("--schedules", nargs="+", default=None,
                        help="default: all; NAME runs with JENGA_GLUON_TMA_OUT=0 (masked stores of O), NAME+tma-out "
                             "with the TMA store of O (the default)")
    parser.add_argument("--rep", type=int, default=200, help="do_bench's rep (ms)")
    parser.add_argument("--key-bias", nargs=2, type=float, default=None, metavar=("TEXT_TOKENS", "VALUE"),
                        help="every column adds VALUE to the last TEXT_TOKENS keys' logits (HunyuanVideo's text "
                             "amplifier at a low-resolution stage)")
    parser.add_argument("--out", default="gluon-ab.json")
    args = parser.parse_args()

    import triton
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.nn.functional import scaled_dot_product_attention

    import jenga
    from jenga.kernels.gluon_block_sparse import SCHEDULES, block_sparse_attention_gluon

    os.environ["JENGA_GLUON"] = "0"  # the "triton" column is the portable kernel; the schedules are launched directly
    schedules = args.schedules or list(SCHEDULES)
    record: dict = {"card": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__,
                    "head_dim": args.head_dim, "dtype": args.dtype, "schedules": schedules, "key_bias": args.key_bias,
                    "rows": []}
    print(json.dumps({k: v for k, v in record.items() if k != "rows"}), flush=True)

    def bench(fn) -> float:
        return triton.testing.do_bench(fn, warmup=25, rep=args.rep)

    for name in args.shapes:
        heads, tokens = SHAPES[name]
        blocks = math.ceil(tokens / 128)
        q, k, v = (torch.randn(1, tokens, heads, args.head_dim, device="cuda", dtype=getattr(torch, args.dtype))
                   for _ in range(3))
        transposed = [x.transpose(1, 2).contiguous() for x in (q, k, v)]
        with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
            cudnn_ms = bench(lambda transposed=transposed: scaled_dot_product_attention(*transposed))
        del transposed
        bias = None if args.key_bias is None else (tokens - int(args.key_bias[0]), args.key_bias[1])
        extra = {} if bias is None else {"key_bias": bias}
        for density in args.densities:
            index, count = random_lists(heads, blocks, density, seed=blocks + round(density * 100), device="cuda")
            kept = count.double().sum().item() / (heads * blocks * blocks)
            row = {"shape": name, "heads": heads, "tokens": tokens, "density": kept, "cudnn_dense_ms": cudnn_ms}
            ours = jenga.block_sparse_attention(q, k, v, index, count, check_indices=False, key_bias=bias)
            row["triton_ms"] = bench(lambda q=q, k=k, v=v, index=index, count=count, bias=bias: (
                jenga.block_sparse_attention(q, k, v, index, count, check_indices=False, key_bias=bias)))
            row["triton_share_of_cudnn"] = cudnn_ms * kept / row["triton_ms"]
            def launch(q, k, v, index, count, schedule, out=None, extra=extra):
                name, _, variant = schedule.partition("+")  # every variant sets the switch, so all pay the same
                os.environ["JENGA_GLUON_TMA_OUT"] = "1" if variant == "tma-out" else "0"
                return block_sparse_attention_gluon(q, k, v, index, count, 128, None, False, out=out, schedule=name,
                                                    **extra)

            for schedule in schedules:
                out = torch.full_like(q, float("nan"))
                try:
                    first = time.perf_counter()
                    launch(q, k, v, index, count, schedule, out=out)
                    torch.cuda.synchronize()
                    row[f"{schedule}_first_call_s"] = time.perf_counter() - first
                    err = ((out.float() - ours.float()).norm() / ours.float().norm()).item()
                    row[f"{schedule}_rel_err_vs_triton"] = err
                    if not math.isfinite(err) or err > 2e-2:
                        row[f"{schedule}_error"] = f"wrong output (relative error {err:.3g})"
                        continue
                    row[f"{schedule}_ms"] = bench(
                        lambda q=q, k=k, v=v, index=index, count=count, schedule=schedule: launch(
                            q, k, v, index, count, schedule))
                    row[f"{schedule}_share_of_cudnn"] = cudnn_ms * kept / row[f"{schedule}_ms"]
                    row[f"{schedule}_vs_triton"] = row["triton_ms"] / row[f"{schedule}_ms"]
                except Exception as error:  # noqa: BLE001 - recorded, the other schedules go on
                    row[f"{schedule}_error"] = f"{type(error).__name__}: {str(error)[:300]}"
            append_row(record, row, args.out)
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
