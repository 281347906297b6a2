"""When a periodic callback (evaluation, figures) is next due, on the env-step clock."""

from __future__ import annotations


def next_due(step: int, interval: int) -> int:
    """The first multiple of ``interval`` env steps after ``step`` (runs are due on the grid, not drifting
    by however far a collection overshot it)."""
    return (step // interval + 1) * interval
