"""The kernel of two source trees, same run, same card, same random lists: did a change slow it down?

    python benchmarks/kernel_ab.py --tree old=/tmp/old/src --tree new=src --out $OUT/kernel-ab.json   # GPU

Each tree runs in its own fresh process (``PYTHONPATH=<tree>``), alternating old, new, old, new so that clock
drift hits both; every process times ``jenga.block_sparse_attention`` with the autotuner on
(``JENGA_AUTOTUNE=1``, which trees without a tile table ignore), so both pick their tiles the same way; with
``--table``, from their shipped tile tables instead (trees that ship the same table). The
JSON gives each tree's median over its rounds per shape and density, and new / old.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

SHAPES = {"wan1.3b": (12, 32_760), "wan14b": (40, 75_600), "hunyuan": (24, 119_056)}

CHILD = r"""
import json, math, sys, torch, triton, jenga
shapes, densities = json.loads(sys.argv[1]), json.loads(sys.argv[2])
rows = []
for name, (heads, tokens) in shapes.items():
    blocks = math.ceil(tokens / 128)
    gen = torch.Generator(device="cpu").manual_seed(blocks)
    q, k, v = (torch.randn(1, tokens, heads, 128, generator=gen).to("cuda", torch.bfloat16) for _ in range(3))
    for density in densities:
        keep = max(1, round(density * blocks))
        chosen = torch.rand(heads, blocks, blocks, generator=gen).topk(keep, dim=-1).indices.sort(-1).values
        index = torch.zeros(1, heads, blocks, blocks, dtype=torch.int32)
        index[0, :, :, :keep] = chosen.to(torch.int32)
        index, count = index.cuda(), torch.full((1, heads, blocks), keep, dtype=torch.int32, device="cuda")
        ms = triton.testing.do_bench(lambda: jenga.block_sparse_attention(q, k, v, index, count), warmup=50, rep=300)
        rows.append({"shape": name, "density": keep / blocks, "ms": ms})
print("ROWS " + json.dumps(rows), flush=True)
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tree", action="append", required=True, help="name=path of a source tree (src folder)")
    parser.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    parser.add_argument("--densities", nargs="+", type=float, default=[1.0, 0.25])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--table", action="store_true",
                        help="tiles from each tree's shipped table instead of autotuning (trees with the same table)")
    parser.add_argument("--out", default="kernel-ab.json")
    args = parser.parse_args()
    trees = dict(item.split("=", 1) for item in args.tree)
    shapes = {name: SHAPES[name] for name in args.shapes}
    times: dict[str, dict[tuple, list[float]]] = {name: {} for name in trees}
    for round_index in range(args.rounds):
        for name, path in trees.items():
            env = {**os.environ, "PYTHONPATH": os.path.abspath(path) + os.pathsep + os.environ.get("PYTHONPATH", ""),
                   "JENGA_AUTOTUNE": "0" if args.table else "1"}
            done = subprocess.run([sys.executable, "-c", CHILD, json.dumps(shapes), json.dumps(args.densities)],
                                  env=env, capture_output=True, text=True, check=False)
            line = next((x for x in done.stdout.splitlines() if x.startswith("ROWS ")), None)
            if line is None:
                raise SystemExit(f"tree {name} failed in round {round_index}:\n{done.stderr[-3000:]}")
            for row in json.loads(line[5:]):
                times[name].setdefault((row["shape"], round(row["density"], 4)), []).append(row["ms"])
            print(f"round {round_index} {name}: {line[5:]}", flush=True)
    names = list(trees)
    rows = []
    for key in times[names[0]]:
        row = {"shape": key[0], "density": key[1]}
        for name in names:
            row[f"{name}_ms"] = statistics.median(times[name][key])
        if len(names) == 2:
            row[f"{names[1]}_over_{names[0]}"] = row[f"{names[1]}_ms"] / row[f"{names[0]}_ms"]
        rows.append(row)
    import torch

    record = {"card": torch.cuda.get_device_name(), "trees": trees, "rounds": args.rounds,
              "tiles": "shipped table" if args.table else "autotuned", "rows": rows}
    with open(args.out, "w") as handle:
        json.dump(record, handle, indent=1)
    print(json.dumps(record, indent=1))


if __name__ == "__main__":
    main()
