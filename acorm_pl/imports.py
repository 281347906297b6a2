"""Objects named in configs by their import path (``package.module.Name``): mixers, clustering strategies and
environment families defined outside acorm_pl."""

from __future__ import annotations

import importlib
from typing import Any


def import_attr(path: str) -> Any:
    """The attribute ``Name`` of module ``package.module`` for ``package.module.Name``; None when the path has
    no module part, no such module exists or it has no such attribute (callers say what was expected). An
    error raised while importing a module that does exist (say, a dependency it lacks) is not hidden."""
    module, _, attr = path.rpartition(".")
    if not module:
        return None
    try:
        found = importlib.import_module(module)
    except ModuleNotFoundError as err:
        if err.name and (module == err.name or module.startswith(f"{err.name}.")):
            return None  # the named module (or a package on its path) does not exist
        raise
    return getattr(found, attr, None)
