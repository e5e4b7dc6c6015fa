"""Registers and spill stack of the block-sparse kernel per tile config, compiled for sm_90 without a GPU.

Triton compiles the kernel for an H100 target on any machine (it ships ptxas and cuobjdump); the cubin's
resource usage tells which configs run out of registers (255 per thread) and spill to local memory, which
costs far more than any tile-shape difference. No timing: that needs the GPU (``benchmarks/attention.py``).

    python benchmarks/kernel_registers.py                 # bf16, head dim 128, the autotuner's configs
    python benchmarks/kernel_registers.py --head-dim 64 --out regs.json
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import triton
from triton.backends.compiler import GPUTarget

from jenga.kernels.triton_block_sparse import _block_sparse_fwd, _configs

_POINTERS = {"Q": "*bf16", "K": "*bf16", "V": "*bf16", "Out": "*bf16", "Lse": "*fp32", "Part": "*fp32",
             "PartLse": "*fp32", "KvIndex": "*i32", "KvCount": "*i32", "KeyLengths": "*i32",
             "Order": "*i32"}
_FLOATS = ("qk_scale", "bias_log2")


def cuobjdump() -> str:
    return os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")


def resource_usage(config: dict, head_dim: int, use_tma: bool, capability: int = 90) -> dict:
    """Compile one variant (no key lengths, no bias, no LSE, one launch) and read its registers and stack."""
    tiles = {k: v for k, v in config.items() if k not in ("num_warps", "num_stages")}
    constants = dict(HEAD_DIM=head_dim, KV_BLOCK=128, HAS_KEY_LENGTHS=False, HAS_BIAS=False, WRITE_LSE=False,
                     UPCAST=False, IEEE=False, USE_TMA=use_tma, SPLIT=False, MERGE_IN=False, FINAL=True,
                     LONGEST_FIRST=False, **tiles)
    signature = {}
    for name in _block_sparse_fwd.arg_names:
        if name in constants:
            signature[name] = "constexpr"
        elif name in _POINTERS:
            signature[name] = _POINTERS[name]
        else:
            signature[name] = "fp32" if name in _FLOATS else "i32"
    source = triton.compiler.ASTSource(fn=_block_sparse_fwd, signature=signature, constexprs=constants)
    kernel = triton.compile(source, target=GPUTarget("cuda", capability, 32),
                            options=dict(num_warps=config["num_warps"], num_stages=config["num_stages"]))
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "kernel.cubin"
        path.write_bytes(kernel.asm["cubin"])
        report = subprocess.run([cuobjdump(), "-res-usage", str(path)], capture_output=True, text=True,
                                check=True).stdout
    registers = re.search(r"REG:(\d+)", report)
    stack = re.search(r"STACK:(\d+)", report)
    if registers is None or stack is None:
        raise RuntimeError(f"no resource usage in cuobjdump's report: {report[:300]!r}")
    return dict(registers=int(registers.group(1)), stack_bytes=int(stack.group(1)),
                shared_bytes=int(kernel.metadata.shared))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--head-dim", type=int, default=128)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    if not os.path.exists(cuobjdump()):
        print(f"this Triton has no cuobjdump at {cuobjdump()}", file=sys.stderr)
        return 2
    print(f"triton {triton.__version__}, sm_90, bf16, head dim {args.head_dim}")
    rows = []
    for cfg in _configs():
        config = dict(cfg.kwargs, num_warps=cfg.num_warps, num_stages=cfg.num_stages)
        for use_tma in (True, False):
            if config.get("Q_TMA") and not use_tma:
                continue
            usage = resource_usage(config, args.head_dim, use_tma)
            rows.append(dict(config=config, use_tma=use_tma, **usage))
            print(f"{config} {'tma' if use_tma else 'ptr'}: {usage['registers']} registers, "
                  f"{usage['stack_bytes']} B stack, {usage['shared_bytes']} B shared", flush=True)
    if args.out:
        args.out.write_text(json.dumps(dict(triton=triton.__version__, head_dim=args.head_dim, rows=rows), indent=1))
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
