"""The CLI's contract for bad input (exit code 2 and exactly one ``acorm-pl: error:`` line saying what is wrong),
and the MLflow runs a CLI call left behind."""

from __future__ import annotations

from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from acorm_pl.cli import main


def one_line_error(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """Run ``acorm-pl argv``; it must exit with code 2, no traceback and one error line on stderr: returned."""
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("acorm-pl: error:")]
    assert len(lines) == 1 and "Traceback" not in err, err[-3000:]
    return lines[0]


def assert_one_line_error(argv: list[str], capsys: pytest.CaptureFixture[str], expected: str) -> None:
    """Run ``acorm-pl argv``; it must exit with code 2 and one error line on stderr containing ``expected``."""
    line = one_line_error(argv, capsys)
    assert expected in line, line


def all_runs(workdir: Path) -> list:
    """Every MLflow run, of any experiment, in ``workdir/mlruns.db`` (none if the store was never created)."""
    if not (workdir / "mlruns.db").exists():
        return []
    client = MlflowClient(tracking_uri=f"sqlite:///{workdir / 'mlruns.db'}")
    return client.search_runs([e.experiment_id for e in client.search_experiments()])
