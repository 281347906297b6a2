"""What ``acorm-pl sweep`` costs and gains on the smoke sweep (conf/sweeps/smoke.yaml: 4 trials of 3k env steps):
its wall time with 1 and with 2 trials at a time (the ratio is what the second core buys), and the overhead of
Ray and the MLflow server per trial against the same four fits run directly, one after another, each into an
sqlite store. Every measurement starts from an empty directory.

    python benchmarks/sweep_overhead.py                 # about 3-4 minutes on a 2-core CPU
"""

# ruff: noqa: I001  (acorm_pl must be imported before torch: it sets OMP_WAIT_POLICY)
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import acorm_pl  # noqa: F401

from acorm_pl.sweep import load_sweep

from common import machine

REPO = Path(__file__).resolve().parents[1]
SMOKE = REPO / "conf" / "sweeps" / "smoke.yaml"


def direct_fits(workdir: Path) -> list[float]:
    """Each smoke trial as a plain ``acorm-pl fit`` (sqlite store, no Ray, no server); seconds per fit."""
    sweep = load_sweep(SMOKE, workdir)
    times = []
    for trial in sweep.trials():
        command = [sys.executable, "-m", "acorm_pl.cli", *sweep.fit_args(trial),
                   f"--trainer.logger.init_args.tracking_uri=sqlite:///{workdir / 'mlruns.db'}",
                   f"--trainer.logger.init_args.run_name={trial.trial_id}"]
        start = time.perf_counter()
        subprocess.run(command, cwd=REPO, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        times.append(time.perf_counter() - start)
    return times


def sweep_run(workdir: Path, cpus: int) -> tuple[float, float]:
    """The smoke sweep on a local Ray of ``cpus`` CPUs: (command wall time, first trial start to last trial end)."""
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "acorm_pl.cli", "sweep", str(SMOKE), "--dir", str(workdir),
                    "--num-cpus", str(cpus)], cwd=REPO, check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    attempts = [json.loads(line) for f in (workdir / "trials").glob("*/attempts.jsonl")
                for line in f.read_text().splitlines()]
    return wall, max(a["ended"] for a in attempts) - min(a["started"] for a in attempts)


def main() -> None:
    argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args()
    print(f"# machine: {machine()}")
    os.chdir(REPO)  # the sweep file's config paths are relative to the repository
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        fits = direct_fits(root / "direct")
        one, one_span = sweep_run(root / "one", 1)
        two, _ = sweep_run(root / "two", 2)
    n, direct = len(fits), sum(fits)
    print(f"\nsmoke sweep, {n} trials (wall seconds):\n")
    print("| run | wall time | |")
    print("|---|---|---|")
    print(f"| {n} fits directly, one after another | {direct:.1f} s | {', '.join(f'{t:.1f}' for t in fits)} |")
    print(f"| acorm-pl sweep, 1 trial at a time (--num-cpus 1) | {one:.1f} s | trials {one_span:.1f} s |")
    print(f"| acorm-pl sweep, 2 trials at a time (--num-cpus 2) | {two:.1f} s | |")
    print(f"\n1 vs 2 at a time: {one / two:.2f}x faster with two")
    print(f"overhead of Ray + the MLflow server per trial (1 at a time vs direct): {(one - direct) / n:.1f} s "
          f"({one - one_span:.1f} s of it once per sweep: starting and stopping Ray and the server, checking the "
          f"trials; {(one_span - direct) / n:.1f} s per trial while they run)")


if __name__ == "__main__":
    main()
