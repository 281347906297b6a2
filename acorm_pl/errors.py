"""The errors acorm-pl reports as one line (``acorm-pl: error: ...``, exit code 2) instead of a traceback."""

from __future__ import annotations


class ConfigError(ValueError):
    """An invalid configuration value; the message is one line naming the value and what is allowed."""


class DivergenceError(RuntimeError):
    """A run stopped because a loss, a gradient or the weights stopped being finite; the message is one
    line naming the update, the env step and the values."""


def require(ok: bool, message: str) -> None:
    """Raise :class:`ConfigError` with ``message`` unless ``ok``."""
    if not ok:
        raise ConfigError(message)
