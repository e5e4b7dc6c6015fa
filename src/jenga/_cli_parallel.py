"""``jenga generate`` under ``torchrun``: one process per GPU, Ulysses context parallelism, rank 0 writes.

``torchrun --nproc-per-node N -m jenga.cli generate ...`` (or the ``jenga`` script under torchrun) sets
``WORLD_SIZE``/``RANK``/``LOCAL_RANK``; each rank loads the pipeline, moves it to its GPU and shards the
transformer with ``jenga.enable_parallelism(pipe, ContextParallelConfig(ulysses_degree=N,
ulysses_anything=True))`` (any sequence length and head count). Only rank 0 shows the progress bar, prints
and writes the file.
"""

from __future__ import annotations

import os
import sys
from typing import Any


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def setup(pipe: Any) -> bool:
    """Process group, this rank's GPU, the pipeline there and sharded; returns whether this is rank 0."""
    import torch
    import torch.distributed as dist
    from diffusers import ContextParallelConfig

    import jenga

    if not torch.cuda.is_available():
        raise RuntimeError("jenga generate under torchrun needs one CUDA GPU per process")
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        dist.init_process_group("nccl")
    world = dist.get_world_size()
    pipe.to(f"cuda:{local_rank}")
    jenga.enable_parallelism(pipe, ContextParallelConfig(ulysses_degree=world, ulysses_anything=True))
    main = dist.get_rank() == 0
    if not main:
        pipe.set_progress_bar_config(disable=True)
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - one line of output per run, from rank 0
    return main


def finish() -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
