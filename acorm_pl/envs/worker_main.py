"""The worker side of :class:`acorm_pl.envs.workers.ProcessVecEnv`: the loop each ``spawn``-ed worker process runs.

Kept small and import-light (no torch): it is imported afresh in every worker.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import traceback
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any, NoReturn

from acorm_pl.envs.base import SingleEnv

_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


def _shutdown(holder: list[SingleEnv]) -> NoReturn:
    """Close the environment, then take down everything in this worker's process group (itself included)."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    for env in holder:
        with contextlib.suppress(Exception):  # the process is going away: nothing left to report to
            env.close()
    if os.getpgrp() == os.getpid():  # only when setsid() worked: never signal the parent's group
        os.killpg(os.getpid(), signal.SIGKILL)
    os._exit(0)


def _die_with_parent(parent_pid: int) -> None:
    """Ask Linux to send SIGTERM when the parent dies; exit now if it already has."""
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
        except (OSError, AttributeError):
            pass
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(0)


def worker_main(conn: Connection, factory: Callable[[int], SingleEnv], seed: int, parent_pid: int) -> NoReturn:
    """Worker loop: build ``factory(seed)``, then answer ``(command, argument)`` messages until "close".

    Replies are ``("ready", info)`` once after construction, then ``("ok", result)`` or ``("error", traceback)``.
    """
    with contextlib.suppress(OSError):
        os.setsid()
    holder: list[SingleEnv] = []
    signal.signal(signal.SIGTERM, lambda signum, frame: _shutdown(holder))
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # interrupts are the parent's business
    _die_with_parent(parent_pid)
    try:
        holder.append(factory(seed))
        conn.send(("ready", holder[0].info))
    except Exception:
        conn.send(("error", traceback.format_exc()))
        _shutdown(holder)
    env = holder[0]
    commands = {"step": env.step, "reset": lambda _: env.reset(), "save_replay": lambda _: env.save_replay(),
                "seed": env.seed}
    while True:
        try:
            command, argument = conn.recv()
        except (EOFError, OSError):  # the parent is gone
            _shutdown(holder)
        if command == "close":
            break
        try:
            reply: tuple[str, Any] = ("ok", commands[command](argument))
        except Exception:
            reply = ("error", traceback.format_exc())
        try:
            conn.send(reply)
        except (OSError, ValueError):
            _shutdown(holder)
    env.close()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)  # skip interpreter teardown (slow with torch loaded); the parent kills leftovers of the group
