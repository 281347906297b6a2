"""The configuration error every part of acorm-pl raises for bad input."""

from __future__ import annotations


class ConfigError(ValueError):
    """An invalid configuration value; the message is one line naming the value and what is allowed."""


def require(ok: bool, message: str) -> None:
    """Raise :class:`ConfigError` with ``message`` unless ``ok``."""
    if not ok:
        raise ConfigError(message)
