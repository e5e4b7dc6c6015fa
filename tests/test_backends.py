"""Backend registries: one place for what Triton needs here, and errors that list every unmet constraint."""

from __future__ import annotations

import pytest
import torch

from jenga.attention import ATTENTION_BACKENDS, BACKENDS, block_sparse_attention
from jenga.backends import BackendRegistry, BackendUnsupported, Constraint
from jenga.selection import SELECT_BACKENDS, SELECT_REGISTRY


def test_registries_hold_the_accepted_backends():
    assert ("auto", *ATTENTION_BACKENDS.names()) == BACKENDS
    assert set(SELECT_BACKENDS) == {"auto", *SELECT_REGISTRY.names()}


def test_attention_error_lists_every_unmet_constraint(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    q = torch.randn(1, 64, 1, 24, dtype=torch.float64)
    kv_index, kv_count = torch.zeros(1, 1, 1, 1, dtype=torch.int32), torch.ones(1, 1, 1, dtype=torch.int32)
    with pytest.raises(BackendUnsupported) as err:
        block_sparse_attention(q, q, q, kv_index, kv_count, block_size=64, backend="triton")
    message = str(err.value)
    for needle in ("CUDA tensors", "got cpu tensors", "head dims", "got 24", "got torch.float64", "backend='torch'"):
        assert needle in message
    assert isinstance(err.value, ValueError) and isinstance(err.value, TypeError)


def test_registry_rejects_duplicates_and_unknown_names():
    registry = BackendRegistry("demo")
    registry.register("a", (Constraint("x > 0", lambda x: x > 0, lambda x: x),))(lambda: None)
    with pytest.raises(ValueError, match="already registered"):
        registry.register("a")(lambda: None)
    with pytest.raises(ValueError, match=r"registered: \('a',\)"):
        registry.get("b")
    assert registry.runnable("a", x=1) and not registry.runnable("a", x=-1)
    with pytest.raises(BackendUnsupported, match=r"needs x > 0 \(got -1\)"):
        registry.check("a", x=-1)
