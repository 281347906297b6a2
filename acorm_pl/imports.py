"""Objects named in configs by their import path (``package.module.Name``): mixers, clustering strategies and
environment families defined outside acorm_pl."""

from __future__ import annotations

import importlib
from typing import Any


def import_attr(path: str) -> Any:
    """The attribute ``Name`` of module ``package.module`` for ``package.module.Name``; None when the path has
    no module part, the module cannot be imported or has no such attribute (callers say what was expected)."""
    module, _, attr = path.rpartition(".")
    if not module:
        return None
    try:
        return getattr(importlib.import_module(module), attr, None)
    except ImportError:
        return None
