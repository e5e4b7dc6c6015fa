"""Test setup: run Triton kernels through the CPU interpreter when no CUDA device exists.

The variable must be set before any kernel module is imported, hence here at collection time.
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


def pytest_configure(config):
    config.addinivalue_line("markers", "long(seconds): runs about that long on a 2-core CPU; scheduled first")


def pytest_collection_modifyitems(config, items):
    """Tests marked ``long`` run first, longest first: with two xdist workers a long test left for the end keeps
    one worker busy while the other idles (the suite's wall time is then the tail's)."""

    def seconds(item) -> float:
        mark = item.get_closest_marker("long")
        return mark.args[0] if mark is not None and mark.args else 0.0

    items.sort(key=seconds, reverse=True)  # stable: the rest keep their order
