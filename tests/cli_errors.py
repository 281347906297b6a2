"""The CLI's contract for bad input: exit code 2 and exactly one ``acorm-pl: error:`` line saying what is wrong."""

from __future__ import annotations

import pytest

from acorm_pl.cli import main


def assert_one_line_error(argv: list[str], capsys: pytest.CaptureFixture[str], expected: str) -> None:
    """Run ``acorm-pl argv``; it must exit with code 2 and one error line on stderr containing ``expected``."""
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("acorm-pl: error:")]
    assert len(lines) == 1 and expected in lines[0], lines
