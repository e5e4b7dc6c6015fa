"""Test setup: run Triton kernels through the CPU interpreter when no CUDA device exists.

The variable must be set before any kernel module is imported, hence here at collection time.
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
