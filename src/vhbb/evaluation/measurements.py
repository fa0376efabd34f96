"""A figure as written to ``metrics.json``: ``{"value", "error", "reason"}``."""

from __future__ import annotations

import math
from typing import Any


def measurement(
    value: float | None, error: float | None = None, reason: str | None = None
) -> dict[str, Any]:
    """``{"value", "error", "reason"}``; a non-finite value becomes null with a reason."""
    if value is not None and not math.isfinite(float(value)):
        return {"value": None, "error": None, "reason": reason or f"non-finite value ({value})"}
    if value is None and reason is None:
        reason = "undefined"
    return {
        "value": None if value is None else float(value),
        "error": None if error is None or not math.isfinite(float(error)) else float(error),
        "reason": reason,
    }


def undefined(reason: str) -> dict[str, Any]:
    return measurement(None, None, reason)
