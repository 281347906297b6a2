"""Progress and tables for people: a rich progress bar for long analyses and rich tables for summaries."""

from __future__ import annotations

import contextlib
import importlib.util
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table


@contextlib.contextmanager
def progress_task(description: str, total: int | None, enabled: bool = True,
                  console: Console | None = None) -> Iterator[Callable[[int], None]]:
    """A rich progress bar for one task of ``total`` units; yields ``advance(k)``. Disabled (a no-op), e.g.
    inside a training run whose own progress bar is live, when ``enabled`` is False, and in Jupyter without
    ipywidgets (which rich needs to draw a live bar there)."""
    console = console or Console()
    if not enabled or (console.is_jupyter and importlib.util.find_spec("ipywidgets") is None):
        yield lambda k: None
        return
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=True) as bar:
        task = bar.add_task(description, total=total)
        yield lambda k: bar.advance(task, k)


def rich_table(title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> Table:
    """A rich table with ``columns`` (the first left-aligned, the rest right-aligned) and ``rows``."""
    table = Table(title=title)
    for i, name in enumerate(columns):
        table.add_column(name, justify="left" if i == 0 else "right")
    for row in rows:
        table.add_row(*(str(v) for v in row))
    return table


def interval(value: float, low: float, high: float, digits: int = 3) -> str:
    """``value [low, high]`` for a table cell."""
    return f"{value:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"
