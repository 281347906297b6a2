"""Process-backed environments: one :class:`SingleEnv` per worker process, stepped in lockstep, restarted on failure.

Game engines (StarCraft II for SMAC, the GRF engine) crash, hang and leak processes now and then. Each copy
therefore lives in its own ``spawn``-ed worker that talks to the parent over a ``Pipe``. A worker that dies,
stops answering within ``step_timeout`` (``reset_timeout`` for a reset) or raises from ``reset``/``step`` is
killed together with its whole process group and started again with a fresh seed; the episode it was
playing is reported as ``discarded`` so the rollout drops it whole.

No orphans: every worker calls ``setsid()`` first (its own process group, so a terminal's Ctrl-C reaches the
parent only and anything the engine launches shares the worker's group), asks the kernel to send it SIGTERM
when the parent dies (``PR_SET_PDEATHSIG`` on Linux; tied to the parent *thread* that started the worker,
so build the env on a long-lived thread such as the main one), and on SIGTERM closes its environment and
kills its own group (:mod:`acorm_pl.envs.worker_main`). The parent kills a worker with ``killpg(pid, SIGKILL)``.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing as mp
import os
import pickle
import signal
import sys
import time
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, fields, replace
from multiprocessing.connection import Connection, wait
from typing import TYPE_CHECKING, Any

import numpy as np

from acorm_pl.envs.base import EnvConfigError, ResetResult, SingleStep, StepResult, VecEnv, require_seeds
from acorm_pl.envs.worker_main import worker_main

if TYPE_CHECKING:  # workers import this module too: torch is loaded lazily, in the parent only
    import torch

    from acorm_pl.envs.base import EnvInfo, SingleEnv, UnitStateLayout

log = logging.getLogger(__name__)

RESEED_STRIDE = 100_003  # a prime, so restarted seeds of neighbouring copies do not collide for long
CLOSE_TIMEOUT = 5.0  # seconds close() lets workers shut their engines down before killing them


def restart_seed(seed: int, restarts: int) -> int:
    """Seed of a worker after it was restarted ``restarts`` times: ``seed + 100_003 * restarts``."""
    return seed + RESEED_STRIDE * restarts


@dataclass(frozen=True)
class WorkerOptions:
    """How :class:`ProcessVecEnv` runs its workers: the one definition of these options (``data.env_kwargs`` of
    the process-backed families), checked here with one-line :class:`EnvConfigError` messages.

    Args:
        step_timeout: seconds a step may take before the worker counts as hung.
        reset_timeout: seconds a reset may take (including starting a restarted worker and its engine).
        max_restarts: restarts allowed in total over the env's life.
    """

    step_timeout: float = 60.0
    reset_timeout: float = 300.0
    max_restarts: int = 100

    def __post_init__(self) -> None:
        for name in ("step_timeout", "reset_timeout"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise EnvConfigError(f"{name} must be a positive number of seconds, got {value!r}")
        restarts = self.max_restarts
        if isinstance(restarts, bool) or not isinstance(restarts, int) or restarts < 0:
            raise EnvConfigError(f"max_restarts must be a non-negative integer, got {restarts!r}")

    @classmethod
    def split(cls, options: Mapping[str, Any]) -> tuple[WorkerOptions, dict[str, Any]]:
        """The worker options among a family's ``options`` (checked, defaults filled in) and all the others."""
        return (cls(**{k: v for k, v in options.items() if k in WORKER_OPTIONS}),
                {k: v for k, v in options.items() if k not in WORKER_OPTIONS})


WORKER_OPTIONS: tuple[str, ...] = tuple(f.name for f in fields(WorkerOptions))


@contextlib.contextmanager
def _main_module_hidden(hide: bool) -> Iterator[None]:
    """While starting workers, keep ``spawn`` from re-running the parent's ``__main__`` in them.

    ``spawn`` re-imports the main script in every child so objects defined there can be unpickled; for the
    ``acorm-pl`` script that would load Lightning into every worker. Only done when the factory does not
    refer to ``__main__``.
    """
    main = sys.modules.get("__main__")
    if not hide or main is None:
        yield
        return
    saved_file, saved_spec = main.__dict__.pop("__file__", None), getattr(main, "__spec__", None)
    main.__spec__ = None
    try:
        yield
    finally:
        if saved_file is not None:
            main.__file__ = saved_file
        main.__spec__ = saved_spec


class _WorkerFailure(Exception):
    """A worker died, hung or raised; the message says which (with the traceback if it raised)."""

    def __init__(self, reason: str, died: bool = False):
        super().__init__(reason)
        self.died = died  # the process was gone before the parent killed it: its exit code tells why


@dataclass
class _Worker:
    """The parent's handle on one worker process."""

    seed: int
    incarnation: int  # restarts of this copy so far
    process: Any  # multiprocessing.context.SpawnProcess
    conn: Connection
    killed: bool = False


def _kill(worker: _Worker) -> None:
    """SIGKILL the worker's whole process group (engine included), then reap it (once)."""
    if worker.killed:
        return
    worker.killed = True
    pid = worker.process.pid
    try:
        os.killpg(pid, signal.SIGKILL)
    except OSError:  # no such group: the worker has not called setsid() yet
        with contextlib.suppress(OSError):
            worker.process.kill()
    worker.process.join(CLOSE_TIMEOUT)
    worker.conn.close()


def _close_workers(workers: list[_Worker | None]) -> None:
    """Ask every worker to close its environment, wait briefly, then kill whatever is left of each group."""
    live = [w for w in workers if w is not None and not w.killed]
    for w in live:
        with contextlib.suppress(OSError, ValueError):
            w.conn.send(("close", None))
    deadline = time.monotonic() + CLOSE_TIMEOUT
    pending = {w.process.sentinel for w in live}
    while pending and time.monotonic() < deadline:
        pending -= set(wait(list(pending), deadline - time.monotonic()))
    # Exited workers are not reaped yet (a zombie keeps its pid, and nothing here starts a process, which would
    # reap it), so killpg cannot hit a reused pid; it takes down engines that outlived a worker's own close().
    for w in live:
        _kill(w)
    workers[:] = [None] * len(workers)


class ProcessVecEnv(VecEnv):
    """``len(seeds)`` copies of a :class:`SingleEnv`, each in its own ``spawn``-ed worker process.

    Finished copies are never stepped again until the next :meth:`reset` (their :class:`SingleEnv` is not
    called); they report their last result (as pymarl's parallel runner, where finished episodes wait for the
    rest). A failed worker is restarted with seed ``seeds[i] + 100_003 * k`` after its ``k``-th restart; the
    step reports that copy ``terminated`` and ``discarded``. At most ``max_restarts`` restarts over the env's
    life, then :class:`RuntimeError`. A worker failing during :meth:`reset` is restarted and its reset retried.
    :meth:`state_dict` is empty: process envs re-seed on resume instead of restoring engine RNG state.

    Args:
        factory: picklable ``seed -> SingleEnv`` (e.g. a ``functools.partial`` of the class), called in the worker.
        seeds: one seed per copy.
        info: the task's facts; every worker's environment must report exactly these.
        state_layout: where the family's state keeps health and unit types (:meth:`VecEnv.agent_features`).
        **options: :class:`WorkerOptions` (``step_timeout``, ``reset_timeout``, ``max_restarts``).
    """

    def __init__(self, factory: Callable[[int], SingleEnv], seeds: Sequence[int], info: EnvInfo, *,
                 state_layout: UnitStateLayout | None = None, **options: Any):  # fmt: skip
        self.options = WorkerOptions(**options)
        seeds = require_seeds(seeds, "ProcessVecEnv")
        self.n_envs = len(seeds)
        self.restarts = 0
        self.state_layout = state_layout
        try:
            self._hide_main = b"__main__" not in pickle.dumps(factory)
        except Exception as err:
            raise EnvConfigError(f"the environment factory {factory!r} cannot be pickled: {err}") from None
        self._info, self._factory, self._seeds = info, factory, seeds
        self._ctx = mp.get_context("spawn")
        self._workers: list[_Worker | None] = [None] * self.n_envs
        # Closes the workers when close() is called, when this object is collected, or at interpreter exit,
        # whichever comes first; it holds the worker list, not this object.
        self._finalizer = weakref.finalize(self, _close_workers, self._workers)
        self._last: list[SingleStep | None] = [None] * self.n_envs
        self._running = np.zeros(self.n_envs, dtype=bool)
        self._lost = np.zeros(self.n_envs, dtype=bool)
        try:
            for i in range(self.n_envs):
                self._workers[i] = self._spawn(i, 0)
            deadline = time.monotonic() + self.options.reset_timeout
            for i in range(self.n_envs):
                self._handshake(i, deadline)
        except BaseException:
            self.close()
            raise

    @property
    def info(self) -> EnvInfo:
        return self._info

    def worker_pids(self) -> list[int]:
        """Process ids of the current workers (each one also leads its own process group)."""
        return [w.process.pid for w in self._workers if w is not None]

    # ---- worker management ------------------------------------------------------------------------------
    def _spawn(self, index: int, incarnation: int) -> _Worker:
        seed = restart_seed(self._seeds[index], incarnation)
        conn, child_conn = self._ctx.Pipe()
        process = self._ctx.Process(
            target=worker_main,
            args=(child_conn, self._factory, seed, os.getpid()),
            name=f"env-worker-{index}",
            daemon=True,
        )
        with _main_module_hidden(self._hide_main):
            process.start()
        child_conn.close()  # so the parent sees EOF once the worker is gone
        return _Worker(seed, incarnation, process, conn)

    def _worker(self, index: int) -> _Worker:
        worker = self._workers[index]
        if worker is None:
            raise RuntimeError("ProcessVecEnv is closed")
        return worker

    def _handshake(self, index: int, deadline: float) -> None:
        """Wait for a fresh worker's ``ready``; a failure here is a broken factory, not bad luck."""
        worker = self._worker(index)
        try:
            self._recv(worker, deadline, self.options.reset_timeout, until_ready=True)
        except _WorkerFailure as failure:
            log.error("environment worker %d (pid %d, seed %d) failed to start: %s", index, worker.process.pid,
                      worker.seed, failure)  # fmt: skip
            last_line = str(failure).strip().splitlines()[-1]
            raise RuntimeError(
                f"environment worker {index} (seed {worker.seed}) failed to start: {last_line}"
            ) from None

    def _recv(self, worker: _Worker, deadline: float, timeout: float, until_ready: bool = False) -> Any:
        """The next reply of ``worker`` (consuming its ``ready`` first, if still due) or :class:`_WorkerFailure`."""
        while True:
            ready = wait([worker.conn, worker.process.sentinel], max(0.0, deadline - time.monotonic()))
            if not ready:
                raise _WorkerFailure(f"did not answer within {timeout:g} s")
            if worker.conn not in ready:
                raise _WorkerFailure("exited", died=True)
            try:
                kind, payload = worker.conn.recv()
            except (EOFError, OSError):
                raise _WorkerFailure("died (its pipe closed)", died=True) from None
            if kind == "error":
                raise _WorkerFailure(f"raised an exception:\n{payload}")
            if kind != "ready":
                return payload
            if payload != self._info:
                raise _WorkerFailure(f"its environment reports {payload}, expected {self._info}")
            if until_ready:
                return payload

    def _exchange(self, messages: dict[int, tuple[str, Any]], timeout: float) -> tuple[dict[int, Any], list[int]]:
        """Send every worker its message, then collect the replies within ``timeout`` (the workers run
        concurrently). Workers that fail are restarted; returns (replies by copy, failed copies)."""
        failures: dict[int, _WorkerFailure] = {}
        replies: dict[int, Any] = {}
        for i, message in messages.items():
            try:
                self._worker(i).conn.send(message)
            except (OSError, ValueError) as err:
                failures[i] = _WorkerFailure(f"has a broken pipe ({type(err).__name__})", died=True)
        deadline = time.monotonic() + timeout
        for i in messages:
            if i not in failures:
                try:
                    replies[i] = self._recv(self._worker(i), deadline, timeout)
                except _WorkerFailure as failure:
                    failures[i] = failure
        for i in failures:  # all before starting any worker: a start reaps exited children, freeing their pids
            _kill(self._worker(i))
        for i in sorted(failures):
            self._restart(i, failures[i])
        return replies, sorted(failures)

    def _restart(self, index: int, failure: _WorkerFailure) -> None:
        """Kill worker ``index`` with its process group and start a fresh one with the next seed."""
        old = self._worker(index)
        pid = old.process.pid
        _kill(old)
        self._workers[index] = None
        reason = str(failure)
        if failure.died and old.process.exitcode is not None:
            reason = f"{reason} with exit code {old.process.exitcode}"
        if self.restarts >= self.options.max_restarts:
            lines = reason.strip().splitlines()
            detail = lines[0] if len(lines) == 1 else f"{lines[0]} {lines[-1]}"
            raise RuntimeError(f"environment worker {index} (pid {pid}) failed ({detail}) after all "
                               f"max_restarts={self.options.max_restarts} restarts were used")  # fmt: skip
        self.restarts += 1
        new = self._workers[index] = self._spawn(index, old.incarnation + 1)
        log.warning("environment worker %d (pid %d, seed %d) %s; killed its process group, restarted it with seed %d "
                    "(restart %d of at most %d); its episode is discarded", index, pid, old.seed, reason, new.seed,
                    self.restarts, self.options.max_restarts)  # fmt: skip

    # ---- VecEnv ---------------------------------------------------------------------------------------------
    def reset(self) -> ResetResult:
        """Reset every copy concurrently; workers that fail are restarted and their reset retried."""
        pending = list(range(self.n_envs))
        while pending:
            replies, pending = self._exchange({i: ("reset", None) for i in pending}, self.options.reset_timeout)
            for i, first in replies.items():
                self._last[i] = SingleStep(**vars(first), reward=0.0, terminated=False, truncated=False,
                                           battle_won=False)  # fmt: skip
        self._running[:] = True
        self._lost[:] = False
        return ResetResult(*self._stack_observations())

    def step(self, actions: torch.Tensor) -> StepResult:
        """Step the copies whose episode is still running; the others repeat their last result untouched."""
        import torch

        if any(last is None for last in self._last):
            raise RuntimeError("ProcessVecEnv.step() called before reset()")
        acts = actions.detach().cpu().numpy().astype(np.int64, copy=False)
        running = np.flatnonzero(self._running).tolist()
        replies, failed = self._exchange({i: ("step", acts[i]) for i in running}, self.options.step_timeout)
        for i, result in replies.items():
            self._last[i] = result
            self._running[i] = not (result.terminated or result.truncated)
        for i in failed:
            self._mark_lost(i)
        last = [s for s in self._last if s is not None]
        return StepResult(
            *self._stack_observations(),
            reward=torch.tensor([s.reward for s in last], dtype=torch.float32),
            terminated=torch.tensor([bool(s.terminated) for s in last]),
            truncated=torch.tensor([bool(s.truncated) for s in last]),
            battle_won=torch.tensor([bool(s.battle_won) for s in last]),
            discarded=torch.from_numpy(self._lost.copy()),
        )

    def _mark_lost(self, index: int) -> None:
        """Copy ``index`` lost its episode: it reports terminated and discarded until the next reset."""
        last = self._last[index]
        if last is not None:
            self._last[index] = replace(last, reward=0.0, terminated=True, truncated=False, battle_won=False)
        self._running[index] = False
        self._lost[index] = True

    def _stack_observations(self) -> list[torch.Tensor]:
        """obs, state, avail_actions and alive of every copy's latest result, stacked."""
        import torch

        last = [s for s in self._last if s is not None]
        fields_ = (("obs", np.float32), ("state", np.float32), ("avail_actions", bool), ("alive", bool))
        return [torch.from_numpy(np.stack([np.asarray(getattr(s, name), dtype=dtype) for s in last]))
                for name, dtype in fields_]

    def save_replay(self) -> None:
        """Ask every worker's environment to write its replay (SMAC); a failing worker is restarted."""
        _, failed = self._exchange({i: ("save_replay", None) for i in range(self.n_envs)},
                                   self.options.reset_timeout)
        for i in failed:
            self._mark_lost(i)

    def reseed(self, seeds: Sequence[int]) -> None:
        """Every worker's environment draws its next episodes from ``seeds[i]`` (:meth:`SingleEnv.seed`); a
        worker restarted later starts from ``seeds[i] + 100_003 * k``."""
        if len(seeds) != self.n_envs:
            raise ValueError(f"reseed needs {self.n_envs} seeds, got {len(seeds)}")
        self._seeds = [int(s) for s in seeds]
        _, failed = self._exchange({i: ("seed", s) for i, s in enumerate(self._seeds)}, self.options.reset_timeout)
        for i in failed:  # restarted with a seed derived from its new one; nothing of an episode was lost
            self._mark_lost(i)

    def state_dict(self) -> dict[str, Any]:
        """Empty: engine RNG state cannot be read back, so process envs re-seed on resume."""
        return {}

    def close(self) -> None:
        """Close every worker's environment and kill what is left of each worker's process group; idempotent."""
        finalizer = getattr(self, "_finalizer", None)
        if finalizer is not None:
            finalizer()


__all__ = ["RESEED_STRIDE", "WORKER_OPTIONS", "ProcessVecEnv", "WorkerOptions", "restart_seed"]
