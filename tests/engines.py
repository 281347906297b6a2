"""Optional game engines in the test suite: tests that need one skip with the command that installs it,
unless the environment says the engine is required (``ACORM_PL_REQUIRE_FOOTBALL=1``, as ``.ci/run`` sets),
where a missing engine fails instead.

StarCraft II is never needed: the SMAC tests run against ``fake_smac.py``.
"""

from __future__ import annotations

import importlib.util
import os

import pytest

FOOTBALL_INSTALL = "bash scripts/install_football.sh"
FOOTBALL_MISSING = f"gfootball (Google Research Football) is not installed; install it with: {FOOTBALL_INSTALL}"


def football_required() -> bool:
    """Whether a missing gfootball must fail the GRF tests instead of skipping them."""
    return os.environ.get("ACORM_PL_REQUIRE_FOOTBALL", "").strip() not in ("", "0", "false")


def football_available() -> bool:
    return importlib.util.find_spec("gfootball") is not None


# Skips a test (or a parametrized case) that needs the real GRF engine, unless the engine is required.
needs_football = pytest.mark.skipif(not football_available() and not football_required(), reason=FOOTBALL_MISSING)
