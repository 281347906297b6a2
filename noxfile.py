"""nox sessions: ``nox -s tests`` runs the suite, ``nox -s lint`` runs ruff."""

import nox

nox.options.sessions = ["lint", "tests"]
TORCH = "torch==2.13.0"  # the local CPU build; the package's own range admits it


@nox.session(python="3.11")
def tests(session: nox.Session) -> None:
    session.install(TORCH)
    session.install("-e", ".[smax,sweep,dev]")
    session.run("pytest", "-q", *session.posargs)


@nox.session(python="3.11")
def lint(session: nox.Session) -> None:
    session.install("ruff>=0.6")
    session.run("ruff", "check", "acorm_pl", "tests", "benchmarks", "noxfile.py")
    session.run("ruff", "format", "--check", "--diff", "acorm_pl/losses")


@nox.session(python="3.11")
def football(session: nox.Session) -> None:
    """Builds gfootball (scripts/install_football.sh) and runs the GRF tests against the real engine."""
    session.install(TORCH)
    session.install("-e", ".[smax,dev]")
    session.run("bash", "scripts/install_football.sh", external=True)
    session.run("pytest", "-q", "tests/test_env_football.py", *session.posargs)
