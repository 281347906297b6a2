"""``python -m acorm_pl.sweep.child PARENT_PID fit ...``: one trial's ``acorm-pl fit``, tied to the Ray worker
that started it. Linux sends it SIGTERM (handled by ``acorm-pl`` like Ctrl-C) when that worker dies, so a
killed worker leaves no training process behind to race its own retry for the checkpoint directory."""

from __future__ import annotations

import contextlib
import os
import signal
import sys

_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


def die_with_parent(parent_pid: int) -> None:
    """Ask Linux for SIGTERM when the parent dies; exit at once if it already has."""
    if sys.platform.startswith("linux"):
        import ctypes

        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        sys.exit(f"acorm-pl sweep: the worker that started this trial (pid {parent_pid}) is gone")


def main(argv: list[str]) -> None:
    """Run ``acorm-pl`` with ``argv[1:]`` once tied to the process ``argv[0]``."""
    die_with_parent(int(argv[0]))
    from acorm_pl.cli import main as cli_main

    sys.argv = ["acorm-pl", *argv[1:]]  # exactly what `acorm-pl fit ...` from a shell sees
    cli_main()


if __name__ == "__main__":
    main(sys.argv[1:])
