"""The sweep's own MLflow tracking server: ``mlflow server`` on localhost over an sqlite store and a local
artifact root in the sweep directory, started and stopped by the sweep with every process it spawned."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from types import TracebackType

from acorm_pl.errors import ConfigError

STORE = "mlruns.db"  # the name acorm-pl curves looks for in a directory
ARTIFACTS = "mlartifacts"


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def store_uri(directory: Path) -> str:
    """The sqlite URI of the sweep's store, for reading it while no server runs."""
    return f"sqlite:///{directory / STORE}"


class TrackingServer:
    """``mlflow server`` for one sweep: backend ``<directory>/mlruns.db``, artifacts ``<directory>/mlartifacts``
    written by the trials in place (``--no-serve-artifacts``, so checkpoints and figures stay local files),
    bound to 127.0.0.1. It runs in a process group of its own, which :meth:`stop` kills whole (uvicorn's
    workers included). Use as a context manager, or :meth:`start`, :meth:`wait_ready` and :meth:`stop`."""

    def __init__(self, directory: Path, host: str = "127.0.0.1", startup_timeout: float = 180.0):
        self.directory = directory
        self.host = host
        self.port = free_port(host)
        self.startup_timeout = startup_timeout
        self._proc: subprocess.Popen | None = None
        self.log_path = directory / "mlflow_server.log"

    @property
    def uri(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> None:
        """Launch the server (returns at once; :meth:`wait_ready` waits for it to answer)."""
        self.directory.mkdir(parents=True, exist_ok=True)
        command = [sys.executable, "-m", "mlflow", "server",
                   "--backend-store-uri", store_uri(self.directory),
                   "--default-artifact-root", (self.directory / ARTIFACTS).as_uri(), "--no-serve-artifacts",
                   "--host", self.host, "--port", str(self.port), "--workers", "1"]
        # The job runner serves MLflow's GenAI jobs, which the sweep does not use; it would be two more processes.
        env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
        with self.log_path.open("ab") as log:
            self._proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                          env=env, start_new_session=True)

    def wait_ready(self) -> None:
        """Block until the server answers ``/health``; fail with one line if it exits or times out."""
        assert self._proc is not None, "start() first"
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise ConfigError(f"the MLflow server exited with code {self._proc.returncode} while starting; "
                                  f"see {self.log_path}")
            try:
                with urllib.request.urlopen(f"{self.uri}/health", timeout=2) as reply:
                    if reply.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.25)
        raise ConfigError(f"the MLflow server did not answer within {self.startup_timeout:.0f} s; see {self.log_path}")

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM the server and every process it spawned, then SIGKILL whatever is left after ``timeout`` s."""
        import psutil

        proc, self._proc = self._proc, None
        if proc is None:
            return
        try:
            family = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
        except psutil.NoSuchProcess:
            family = []
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)  # the group also holds children that were re-parented
        _, alive = psutil.wait_procs(family, timeout=timeout)
        for p in alive:
            with contextlib.suppress(psutil.NoSuchProcess):
                p.kill()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        psutil.wait_procs(alive, timeout=5.0)
        proc.wait()

    def __enter__(self) -> TrackingServer:
        self.start()
        try:
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

