"""FlashAttention-4's block-sparse forward (CuTe DSL, SM90 path) against jenga's kernel and cuDNN, same lists.

FA4 is the strongest installable block-sparse peer on Hopper: its SM90 forward takes FlexAttention-style
block lists with 128 × 128 tiles, which match our blocks. Every listed block is full, so the lists go in
as FA4's *full* blocks (no mask_mod evaluated), the way its own users would pass them.

    python benchmarks/fa4_peer.py --out $OUT/fa4-peer.json        # GPU; FA4 importable (see RESULTS.md)

Per shape and density: the median time of each kernel (`triton.testing.do_bench`), our per-block share
of cuDNN's dense rate (cuDNN time × density / time), and the largest difference of FA4's output from ours
(a check that both computed the same thing). Ours is called as jenga's carved layers call it, without the
public call's list check (one host synchronisation per call, which FA4 does not do either). The JSON is
rewritten after every shape.
"""

from __future__ import annotations

import argparse
import json
import math
import time

import torch
from _common import append_row

SHAPES = {  # name: (heads, tokens)
    "wan1.3b-480p": (12, 32_760),
    "wan1.3b-480p-x128": (12, 32_768),
    "wan14b-720p": (40, 75_600),
    "hunyuan-720p": (24, 119_056),
    "hunyuan-720p-x128": (24, 119_040),
}


def random_lists(heads: int, blocks: int, density: float, seed: int, device: str):
    """kv_index int32[1, H, Qb, Kb] (ascending first kv_count entries), kv_count int32[1, H, Qb]."""
    generator = torch.Generator(device="cpu").manual_seed(seed)
    keep = max(1, round(density * blocks))
    scores = torch.rand(heads, blocks, blocks, generator=generator)
    chosen = scores.topk(keep, dim=-1).indices.sort(dim=-1).values
    index = torch.zeros(1, heads, blocks, blocks, dtype=torch.int32)
    index[0, :, :, :keep] = chosen.to(torch.int32)
    count = torch.full((1, heads, blocks), keep, dtype=torch.int32)
    return index.to(device), count.to(device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    parser.add_argument("--densities", nargs="+", type=float, default=[1.0, 0.25, 0.10])
    parser.add_argument("--head-dim", type=int, default=128)
    parser.add_argument("--out", default="fa4-peer.json")
    args = parser.parse_args()

    import triton
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.nn.functional import scaled_dot_product_attention

    import jenga

    record: dict = {"card": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__,
                    "head_dim": args.head_dim, "dtype": "bfloat16", "rows": []}
    try:
        import flash_attn.cute as fa4_module
        from flash_attn.cute import flash_attn_func
        from flash_attn.cute.block_sparsity import BlockSparseTensorsTorch

        record["flash_attn_4"] = getattr(fa4_module, "__version__", "unknown")
    except Exception as error:  # noqa: BLE001 - any import failure is the recorded reason
        flash_attn_func = None
        record["flash_attn_4"] = f"not importable: {type(error).__name__}: {error}"
    print(json.dumps({k: v for k, v in record.items() if k != "rows"}), flush=True)

    for name in args.shapes:
        heads, tokens = SHAPES[name]
        blocks = math.ceil(tokens / 128)
        q, k, v = (torch.randn(1, tokens, heads, args.head_dim, device="cuda", dtype=torch.bfloat16)
                   for _ in range(3))
        transposed = [x.transpose(1, 2).contiguous() for x in (q, k, v)]  # cuDNN at its best: [B, H, N, D]
        with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
            cudnn_ms = triton.testing.do_bench(
                lambda transposed=transposed: scaled_dot_product_attention(*transposed), warmup=50, rep=300)
        del transposed
        for density in args.densities:
            index, count = random_lists(heads, blocks, density, seed=blocks + round(density * 100), device="cuda")
            kept = count.double().sum().item() / (heads * blocks * blocks)
            row = {"shape": name, "heads": heads, "tokens": tokens, "density": kept, "cudnn_dense_ms": cudnn_ms}
            first = time.perf_counter()
            ours = jenga.block_sparse_attention(q, k, v, index, count, check_indices=False)
            torch.cuda.synchronize()
            row["jenga_first_call_s"] = time.perf_counter() - first
            row["jenga_ms"] = triton.testing.do_bench(
                lambda q=q, k=k, v=v, index=index, count=count: jenga.block_sparse_attention(
                    q, k, v, index, count, check_indices=False), warmup=50, rep=300)
            row["jenga_share_of_cudnn"] = cudnn_ms * kept / row["jenga_ms"]
            if flash_attn_func is not None:
                sparse = BlockSparseTensorsTorch(
                    mask_block_cnt=torch.zeros_like(count), mask_block_idx=torch.zeros_like(index),
                    full_block_cnt=count, full_block_idx=index, block_size=(128, 128))
                try:
                    first = time.perf_counter()
                    theirs = flash_attn_func(q, k, v, block_sparse_tensors=sparse)
                    theirs = theirs[0] if isinstance(theirs, tuple) else theirs
                    torch.cuda.synchronize()
                    row["fa4_first_call_s"] = time.perf_counter() - first
                    row["fa4_max_abs_diff_vs_jenga"] = (theirs.float() - ours.float()).abs().max().item()
                    row["fa4_ms"] = triton.testing.do_bench(
                        lambda q=q, k=k, v=v, sparse=sparse: flash_attn_func(q, k, v, block_sparse_tensors=sparse),
                        warmup=50, rep=300)
                    row["fa4_share_of_cudnn"] = cudnn_ms * kept / row["fa4_ms"]
                    row["jenga_vs_fa4"] = row["fa4_ms"] / row["jenga_ms"]
                except Exception as error:  # noqa: BLE001 - recorded, the other rows go on
                    row["fa4_error"] = f"{type(error).__name__}: {str(error)[:400]}"
            append_row(record, row, args.out)
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
