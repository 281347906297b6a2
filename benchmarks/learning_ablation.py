"""Learning benchmarks on one SMAX map, several seeds, one env-step budget: the ablation suite (issue 3: ACORM
vs QMIX vs w/o CL vs w/o MHA, Fig. 3) or the MAPPO suite (issue 5: MAPPO vs ACORM-MAPPO, Appendix D, Fig. 9);
prints the test win rates (final evaluation and mean of the last evaluations) per run and mean / spread per
variant as a markdown table.

Every run is a plain ``acorm-pl fit`` of the shipped paper config with the overrides it prints, run one
after the other, each in its own directory ``<store>/<run name>/`` with its own MLflow sqlite store, so
any row can be rerun alone with the printed command.

    python benchmarks/learning_ablation.py --map 5m_vs_6m --seeds 0 1 2 --env-steps 80000
    python benchmarks/learning_ablation.py --suite mappo --map 5m_vs_6m --seeds 0 1 2 --env-steps 300000
    python benchmarks/learning_ablation.py --report-only --store bench_runs   # re-read finished runs
"""

# ruff: noqa: I001  (acorm_pl must be imported before torch: it sets OMP_WAIT_POLICY)
from __future__ import annotations

import argparse
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

import acorm_pl  # noqa: F401
from mlflow.tracking import MlflowClient

from acorm_pl.analysis.stats import bootstrap_ci

from common import machine

REPO = Path(__file__).resolve().parents[1]
VARIANTS = {  # name -> config under conf/smax
    "ACORM": "acorm_{map}.yaml",  # Fig. 3's curves
    "QMIX": "qmix_{map}.yaml",
    "w/o CL": "ablations/acorm_wo_cl_{map}.yaml",
    "w/o MHA": "ablations/acorm_wo_mha_{map}.yaml",
    "MAPPO": "mappo_{map}.yaml",  # Fig. 9's curves
    "ACORM-MAPPO": "acorm_mappo_{map}.yaml",
}
SUITES = {"ablation": ["ACORM", "QMIX", "w/o CL", "w/o MHA"], "mappo": ["MAPPO", "ACORM-MAPPO"]}
ON_POLICY = {"MAPPO", "ACORM-MAPPO"}  # one PPO update per batch of fresh episodes: no updates_per_collect
EXPERIMENT = "learning-ablation"


def run_name(variant: str, seed: int) -> str:
    return f"{variant.replace('/', '').replace(' ', '_')}-s{seed}"


def command(variant: str, map_name: str, seed: int, args: argparse.Namespace) -> list[str]:
    config = REPO / "conf" / "smax" / VARIANTS[variant].format(map=map_name)
    replay = [] if variant in ON_POLICY else ["--data.updates_per_collect", str(args.updates_per_collect)]
    return [
        "acorm-pl", "fit", "--config", str(config), "--seed_everything", str(seed),
        "--data.total_env_steps", str(args.env_steps), *replay,
        "--evaluation.eval_interval", str(args.eval_interval),
        "--evaluation.final_n_eval_episodes", str(args.final_eval_episodes),
        "--trainer.logger.init_args.experiment_name", EXPERIMENT,
        "--trainer.logger.init_args.run_name", run_name(variant, seed),
    ]


def _final_and_last_k(client: MlflowClient, run_id: str, key: str, last_k: int) -> tuple[float, float]:
    """The final evaluation's value of ``key`` and the mean of the ``last_k`` periodic evaluations before it."""
    history = sorted(client.get_metric_history(run_id, key), key=lambda m: (m.step, m.timestamp))
    final = history[-1].value
    periodic = [m.value for m in history[:-1]][-last_k:] or [final]
    return final, statistics.fmean(periodic)


def _summary(values: list[float]) -> str:
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    lo, hi = bootstrap_ci(values)
    return f"{statistics.fmean(values):.3f} ± {std:.3f} [{lo:.2f}, {hi:.2f}]"


def report(store: Path, last_k: int) -> None:
    """Markdown table over every finished run under ``store``: mean ± std [95% bootstrap CI] over seeds."""
    rows: dict[str, list[tuple[int, float, float, float, float]]] = {v: [] for v in VARIANTS}
    for db in sorted(store.glob("*/mlruns.db")):
        client = MlflowClient(tracking_uri=f"sqlite:///{db}")
        exp = client.get_experiment_by_name(EXPERIMENT)
        if exp is None:
            continue
        for run in client.search_runs([exp.experiment_id], filter_string="attributes.status = 'FINISHED'"):
            variant = next((v for v in VARIANTS if run.info.run_name.startswith(run_name(v, 0)[:-1])), None)
            if variant is None:
                continue
            seed = int(run.info.run_name.rsplit("-s", 1)[1])
            win, win_k = _final_and_last_k(client, run.info.run_id, "test/win_rate", last_k)
            ret, ret_k = _final_and_last_k(client, run.info.run_id, "test/return_mean", last_k)
            rows[variant].append((seed, win, win_k, ret, ret_k))
    print(f"\nmean ± std [95% bootstrap CI] over seeds; final = the last evaluation; last-{last_k} = the mean of "
          f"the {last_k} periodic evaluations before it\n")
    print("| variant | seeds | final test win rate | final test return | last-k test return | per seed: win / return |")
    print("|---|---|---|---|---|---|")
    for variant, runs in rows.items():
        if not runs:
            continue
        runs.sort()
        per_seed = ", ".join(f"s{r[0]}: {r[1]:.2f} / {r[3]:.2f}" for r in runs)
        print(f"| {variant} | {len(runs)} | {_summary([r[1] for r in runs])} | {_summary([r[3] for r in runs])} | "
              f"{_summary([r[4] for r in runs])} | {per_seed} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--suite", default="ablation", choices=list(SUITES), help="the variants run by default")
    parser.add_argument("--map", default="5m_vs_6m", help="a SMAX map with a config for every variant run")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), help="default: those of --suite")
    parser.add_argument("--env-steps", type=int, default=80_000)
    parser.add_argument("--updates-per-collect", type=int, default=4, help="replay variants only")
    parser.add_argument("--eval-interval", type=int, default=10_000)
    parser.add_argument("--final-eval-episodes", type=int, default=64)
    parser.add_argument("--last-k", type=int, default=3, help="periodic evaluations averaged per run")
    parser.add_argument("--store", type=Path, default=Path("bench_runs"), help="working directory of the runs")
    parser.add_argument("--report-only", action="store_true")
    args = parser.parse_args()
    args.variants = args.variants or SUITES[args.suite]
    missing = [v for v in args.variants if not (REPO / "conf" / "smax" / VARIANTS[v].format(map=args.map)).exists()]
    if missing:
        parser.error(f"no config for {', '.join(missing)} on map {args.map!r} under conf/smax")
    args.store.mkdir(parents=True, exist_ok=True)
    print(f"# machine: {machine()}")
    if not args.report_only:
        sweep(args)
    report(args.store, args.last_k)


def sweep(args: argparse.Namespace) -> None:
    """Every (seed, variant) run, seed-major (an interrupted sweep still has every variant for its first seeds)."""
    for seed in args.seeds:
        for variant in args.variants:
            name, cmd = run_name(variant, seed), command(variant, args.map, seed, args)
            workdir = args.store / name
            workdir.mkdir(parents=True, exist_ok=True)
            print(f"$ (cd {workdir} && {shlex.join(cmd)})", flush=True)
            start = time.perf_counter()
            with open(workdir / "run.log", "w") as log:
                rc = subprocess.call(cmd, cwd=workdir, stdout=log, stderr=subprocess.STDOUT)
            print(f"  {name}: rc={rc} in {time.perf_counter() - start:.0f} s", flush=True)
            if rc != 0:
                sys.exit(f"{name} failed (rc={rc}); see {workdir / 'run.log'}")


if __name__ == "__main__":
    main()
