"""Kernel tile choices shipped as data, so that a user's first call compiles once and never sweeps.

The block-sparse kernel's tiles (``BLOCK_M``, ``BLOCK_N``, warps, stages, and whether queries and keys go
through tensor descriptors) are looked up per (GPU architecture, head dim, dtype, block size, length
bucket):

1. the user's own autotuned picks, ``$XDG_CACHE_HOME/jenga/tuned-<arch>.json`` (``~/.cache/jenga`` when the
   variable is unset), written only when the user asked for tuning;
2. the table shipped in the package, ``jenga/kernels/tuned/<arch>.json`` (``benchmarks/tune_kernel.py``
   measures it on the GPU);
3. a safe default (:func:`default_choice`).

An entry of the same head dim, dtype and block size at the nearest length bucket stands in for a missing
bucket. Autotuning runs only when asked: the environment switch ``JENGA_AUTOTUNE=1`` (every new shape is
tuned in the run and its pick saved to the cache), or :func:`jenga.kernels.tune` for chosen shapes.

Table format (both files)::

    {"arch": "sm90", "entries": [{"head_dim": 128, "dtype": "bfloat16", "block_size": 128,
      "len_bucket": 32768, "best": "pointer",
      "pointer": {"BLOCK_M": 128, "BLOCK_N": 64, "num_warps": 4, "num_stages": 2},
      "tma": {"BLOCK_M": 128, "BLOCK_N": 128, "num_warps": 8, "num_stages": 2, "Q_TMA": true}}, ...]}

``pointer`` is the best config with plain loads, ``tma`` the best with tensor descriptors (absent where
descriptors were not measured), ``best`` the faster of the two.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import tempfile
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import torch

logger = logging.getLogger("jenga")

AUTOTUNE_ENV = "JENGA_AUTOTUNE"
_CONFIG_KEYS = ("BLOCK_M", "BLOCK_N", "num_warps", "num_stages")
_PATHS = ("pointer", "tma")


@dataclass(frozen=True)
class TileChoice:
    """One launch's tiles: ``config`` holds ``BLOCK_M``, ``BLOCK_N``, ``num_warps``, ``num_stages``, ``Q_TMA``;
    ``source`` says where it came from (``cache``, ``package``, ``default``) for logs and benchmarks."""

    config: dict
    use_tma: bool
    source: str


def length_bucket(n: int) -> int:
    """Sequence lengths share a tuning per power of two (the autotuner's length key)."""
    import triton

    return triton.next_power_of_2(int(n))


def arch_name(capability: tuple[int, int]) -> str:
    """``sm90`` for compute capability (9, 0): the tables are per architecture."""
    return f"sm{capability[0]}{capability[1]}"


def autotune_requested() -> bool:
    """True when the user set ``JENGA_AUTOTUNE=1`` (or ``true``/``yes``): tune new shapes in this run."""
    return os.environ.get(AUTOTUNE_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def cache_dir() -> Path:
    """Where autotuned picks are kept: ``$XDG_CACHE_HOME/jenga``, else ``~/.cache/jenga``."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "jenga"


def cache_path(arch: str) -> Path:
    return cache_dir() / f"tuned-{arch}.json"


def _entry_key(entry: dict) -> tuple:
    return (int(entry["head_dim"]), str(entry["dtype"]), int(entry["block_size"]), int(entry["len_bucket"]))


def _valid_config(config, block_size: int) -> bool:
    """A table config must name every launch field with a tile that fits one block."""
    if not isinstance(config, dict) or any(not isinstance(config.get(key), int) for key in _CONFIG_KEYS):
        return False
    return block_size % config["BLOCK_M"] == 0 and block_size % config["BLOCK_N"] == 0


def parse_table(data: dict, origin: str) -> dict[tuple, dict]:
    """Entries of a table keyed by (head dim, dtype name, block size, length bucket); malformed entries are
    skipped with a warning naming ``origin`` (a damaged cache file must not stop a run)."""
    table = {}
    for entry in data.get("entries", []) if isinstance(data, dict) else []:
        try:
            key = _entry_key(entry)
        except (KeyError, TypeError, ValueError):
            logger.warning("jenga: skipping a malformed kernel tuning entry in %s: %r", origin, entry)
            continue
        paths = {p: entry[p] for p in _PATHS if _valid_config(entry.get(p), key[2])}
        if not paths:
            logger.warning("jenga: skipping a kernel tuning entry without a usable config in %s: %r", origin, entry)
            continue
        best = entry.get("best") if entry.get("best") in paths else next(iter(paths))
        table[key] = {**paths, "best": best}
    return table


def _read_json(path) -> dict:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as err:
        logger.warning("jenga: ignoring unreadable kernel tuning file %s (%s)", path, err)
        return {}


@functools.cache
def package_table(arch: str) -> dict[tuple, dict]:
    """The table shipped in the package for ``arch`` (empty where none was measured)."""
    path = resources.files("jenga.kernels").joinpath("tuned", f"{arch}.json")
    return parse_table(_read_json(path), f"jenga/kernels/tuned/{arch}.json")


_cache_tables: dict[Path, dict[tuple, dict]] = {}


def cache_table(arch: str) -> dict[tuple, dict]:
    """The user's autotuned picks for ``arch`` (read once per process and path)."""
    path = cache_path(arch)
    if path not in _cache_tables:
        _cache_tables[path] = parse_table(_read_json(path), str(path))
    return _cache_tables[path]


def _nearest(table: dict[tuple, dict], head_dim: int, dtype: str, block_size: int, bucket: int):
    """The entry at ``bucket``, else the one at the nearest bucket (log scale) of the same kind; None if none."""
    exact = table.get((head_dim, dtype, block_size, bucket))
    if exact is not None:
        return exact
    same_kind = [key for key in table if key[:3] == (head_dim, dtype, block_size)]
    if not same_kind:
        return None
    key = min(same_kind, key=lambda k: (abs(math.log2(k[3]) - math.log2(bucket)), k[3]))
    return table[key]


def default_choice(head_dim: int, dtype: torch.dtype, block_size: int, capability: tuple[int, int]) -> TileChoice:
    """Tiles that compile and run well everywhere: plain loads, 128 x 64 query x key tiles with 4 warps and
    2 stages for 16-bit types at head dim <= 128 on Ampere and newer (the autotuner's pick at all three real
    shapes on an H200, benchmarks/results/attention-ded2d5c-NVIDIA-H200.json); 64 x 64 tiles for float32 (exact
    dots run on FMA units), head dim 256 (registers) and older GPUs (shared memory)."""
    if dtype == torch.float32:
        m, n, warps, stages = 64, 64, 4, 3
    elif head_dim > 128 or capability[0] < 8:
        m, n, warps, stages = 64, 64, 4, 2
    else:
        m, n, warps, stages = 128, 64, 4, 2
    m, n = min(m, block_size), min(n, block_size)
    config = {"BLOCK_M": m, "BLOCK_N": n, "num_warps": warps, "num_stages": stages, "Q_TMA": False}
    return TileChoice(config, False, "default")


def choose(
    device: torch.device, head_dim: int, dtype: torch.dtype, block_size: int, seq_k: int,
    tma_allowed: bool, use_tma: bool | None,
) -> TileChoice:
    """The tiles for one launch, with no tuning: the user's cache, else the package table, else the default.

    ``tma_allowed``: tensor descriptors work for these inputs (Hopper, aligned strides). ``use_tma``: the
    caller's explicit request (None: the table's faster path where allowed).
    """
    capability = torch.cuda.get_device_capability(device)
    arch = arch_name(capability)
    dtype_name = str(dtype).removeprefix("torch.")
    bucket = length_bucket(seq_k)
    for source, table in (("cache", cache_table(arch)), ("package", package_table(arch))):
        entry = _nearest(table, head_dim, dtype_name, block_size, bucket)
        if entry is None:
            continue
        if use_tma is None:
            path = entry["best"] if tma_allowed or entry["best"] == "pointer" else "pointer"
        else:
            path = "tma" if use_tma else "pointer"
        if path in entry:
            config = {"Q_TMA": False, **entry[path]}
            config["Q_TMA"] = bool(config["Q_TMA"]) and path == "tma"
            return TileChoice(config, path == "tma", source)
    choice = default_choice(head_dim, dtype, block_size, capability)
    return TileChoice(choice.config, bool(use_tma), choice.source)


def record_pick(
    device: torch.device, head_dim: int, dtype: torch.dtype, block_size: int, seq_k: int, use_tma: bool,
    config: dict, best: bool = True,
) -> Path:
    """Persist an autotuned pick in the user's cache (atomically: a crash leaves the old file whole).

    ``best``: this path is the faster one for its key (an autotuned launch knows only its own path, so it
    claims ``best`` unless the entry already holds the other path).
    """
    arch = arch_name(torch.cuda.get_device_capability(device))
    path = cache_path(arch)
    data = _read_json(path)
    entries = data.get("entries", []) if isinstance(data, dict) else []
    key = (head_dim, str(dtype).removeprefix("torch."), block_size, length_bucket(seq_k))
    kind = "tma" if use_tma else "pointer"
    picked = {k: int(config[k]) for k in _CONFIG_KEYS}
    picked["Q_TMA"] = bool(config.get("Q_TMA", False)) and use_tma
    for entry in entries:
        try:
            if _entry_key(entry) == key:
                break
        except (KeyError, TypeError, ValueError):
            continue
    else:
        entry = dict(zip(("head_dim", "dtype", "block_size", "len_bucket"), key, strict=True))
        entries.append(entry)
    entry[kind] = picked
    if best or entry.get("best") not in entry:
        entry["best"] = kind
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, prefix=path.name, suffix=".tmp", delete=False) as tmp:
        json.dump({"arch": arch, "entries": entries}, tmp, indent=1)
    os.replace(tmp.name, path)
    _cache_tables.pop(path, None)
    logger.info("jenga: saved kernel tuning for %s to %s", key, path)
    return path
