"""Parameter checks shared by the built-in strategies: errors name the param, the value and the fix."""
from __future__ import annotations

import math
from typing import Any


def check_number(name: str, value: Any, fix: str, low: float | None = None,
                 high: float | None = None, *, integer: bool = False,
                 low_open: bool = False) -> None:
    """Raise ``ValueError("`name` must be <fix>, got <value>")`` unless ``value`` is a finite
    number (an int when ``integer``) within ``[low, high]`` (``(low, high]`` when ``low_open``)."""
    ok = not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)
    if ok and integer:
        ok = isinstance(value, int)
    if ok and low is not None:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value <= high
    if not ok:
        raise ValueError(f"`{name}` must be {fix}, got {value!r}")
