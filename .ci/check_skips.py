"""CI: check a pytest JUnit report of the fresh-machine run (the README's test line without gfootball).

    python .ci/check_skips.py report.xml

Passes when tests ran, none failed, and every skipped test is an optional-engine test whose reason names
the command that installs the engine; at least one such skip must be there (else the run did not exercise
the machine without the engine). Prints the skips; exits 1 with the reason otherwise.
"""

from __future__ import annotations

import sys
import xml.etree.ElementTree as ET
from collections import Counter

# Reasons an optional-engine test may give for skipping: the install command of each engine.
ENGINE_INSTALL_COMMANDS = ("bash scripts/install_football.sh",)


def main(report: str) -> int:
    root = ET.parse(report).getroot()
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    totals = Counter()
    for suite in suites:
        for key in ("tests", "failures", "errors", "skipped"):
            totals[key] += int(suite.get(key, 0))
    skips = Counter()
    unexpected = []
    for case in root.iter("testcase"):
        skipped = case.find("skipped")
        if skipped is None:
            continue
        # A module-level skip is reported as "collection skipped" with the reason in the element's text.
        message = skipped.get("message", "")
        reason = (skipped.text or message) if message == "collection skipped" else message
        name = f"{case.get('classname')}::{case.get('name')}"
        if any(command in reason for command in ENGINE_INSTALL_COMMANDS):
            skips[reason] += 1
        else:
            unexpected.append(f"{name}: {reason!r}")
    ran = totals["tests"] - totals["skipped"]
    print(f"check_skips: {totals['tests']} tests, {ran} ran, {totals['skipped']} skipped, "
          f"{totals['failures']} failed, {totals['errors']} errors")
    for reason, n in skips.items():
        print(f"check_skips: {n} skipped: {reason}")
    problems = []
    if ran <= 0:
        problems.append("no test ran")
    if totals["failures"] or totals["errors"]:
        problems.append("tests failed")
    if unexpected:
        problems.append("skips other than optional engines: " + "; ".join(unexpected))
    if not skips:
        problems.append("no optional-engine test skipped: was an engine installed in the fresh virtualenv?")
    for problem in problems:
        print(f"check_skips: FAIL: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    sys.exit(main(sys.argv[1]))
