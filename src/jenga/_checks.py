"""Input checks shared by the modules that validate user values (no jenga imports: everything may use it)."""

from __future__ import annotations

import numbers


def is_int(value: object) -> bool:
    """An integer that is not a bool (``True`` is no block size)."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)
