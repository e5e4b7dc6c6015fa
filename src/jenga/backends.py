"""Backends by name: the function each one runs and the constraints it needs (as diffusers'
``attention_dispatch`` registers its attention backends), and the one place that knows whether Triton is
usable here and whether its CPU interpreter is on.

A registry per operation (attention, block selection) lives beside that operation; an input a backend
cannot run raises :class:`BackendUnsupported` listing every unmet constraint, not only the first.
This module imports no kernel (importing Triton costs time; kernel modules import this one).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

__all__ = ["Backend", "BackendRegistry", "BackendUnsupported", "Constraint", "interpreting", "triton_available",
           "triton_importable"]


def unit_last_stride(t: torch.Tensor) -> torch.Tensor:
    """``t`` itself when its last dimension has a unit stride (what the kernels index), else a contiguous copy."""
    return t if t.stride(-1) == 1 else t.contiguous()


def interpreting() -> bool:
    """True when Triton runs kernels on the CPU through its interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


_TRITON_IMPORTABLE: list[bool] = []  # filled on first use: importing triton costs time, so not at import


@torch.compiler.assume_constant_result  # fixed for the process: torch.compile needs no guard on the cache
def triton_importable() -> bool:
    """Whether the triton package loads here (CPU-only installs may lack it)."""
    if not _TRITON_IMPORTABLE:
        try:
            import triton  # noqa: F401

            _TRITON_IMPORTABLE.append(True)
        except ImportError:
            _TRITON_IMPORTABLE.append(False)
    return _TRITON_IMPORTABLE[0]


def triton_available() -> bool:
    """True when Triton kernels can run here: triton installed and a CUDA device, or the CPU interpreter."""
    return triton_importable() and (torch.cuda.is_available() or interpreting())


class BackendUnsupported(ValueError, TypeError):
    """A backend asked for inputs it cannot run (a ``ValueError``; also a ``TypeError`` for dtype callers)."""


@dataclass(frozen=True)
class Constraint:
    """What a backend needs: ``check(**facts)`` is True when met; ``got(**facts)`` says what was found."""

    need: str
    check: Callable[..., bool]
    got: Callable[..., str] | None = None

    def unmet(self, facts: dict[str, Any]) -> str | None:
        if self.check(**facts):
            return None
        return self.need if self.got is None else f"{self.need} (got {self.got(**facts)})"


@dataclass(frozen=True)
class Backend:
    name: str
    fn: Callable[..., Any]
    constraints: tuple[Constraint, ...] = ()

    def unmet(self, **facts: Any) -> list[str]:
        """Every constraint these facts do not meet (empty: the backend runs them)."""
        return [reason for c in self.constraints if (reason := c.unmet(facts)) is not None]


class BackendRegistry:
    """Named backends of one operation, in registration order."""

    def __init__(self, operation: str) -> None:
        self.operation = operation
        self._backends: dict[str, Backend] = {}

    def register(self, name: str, constraints: tuple[Constraint, ...] = ()) -> Callable:
        """Decorator: register the function as backend ``name``."""
        def add(fn: Callable) -> Callable:
            if name in self._backends:
                raise ValueError(f"{self.operation} backend {name!r} is already registered")
            self._backends[name] = Backend(name, fn, tuple(constraints))
            return fn
        return add

    def names(self) -> tuple[str, ...]:
        return tuple(self._backends)

    def get(self, name: str) -> Backend:
        backend = self._backends.get(name)
        if backend is None:
            raise ValueError(f"unknown {self.operation} backend {name!r}; registered: {self.names()}")
        return backend

    def runnable(self, name: str, **facts: Any) -> bool:
        return not self.get(name).unmet(**facts)

    def check(self, name: str, *, fix: str = "", **facts: Any) -> Backend:
        """The backend ``name``, or :class:`BackendUnsupported` listing every constraint ``facts`` miss."""
        backend = self.get(name)
        reasons = backend.unmet(**facts)
        if reasons:
            raise BackendUnsupported(
                f"the {name} {self.operation} backend cannot run here: it needs " + "; ".join(reasons)
                + (f". {fix}" if fix else "")
            )
        return backend
