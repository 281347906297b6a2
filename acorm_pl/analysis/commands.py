"""``acorm-pl evaluate``, ``acorm-pl curves`` and ``acorm-pl results``: the analysis commands next to ``fit``.

    acorm-pl evaluate <run artifacts>/checkpoints/last.ckpt --episodes 64 --figures figures/
    acorm-pl curves bench_runs/ --experiment learning-ablation --out curves/
    acorm-pl results export sweeps/study_mappo_smax --arm mappo && acorm-pl results report
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import NoReturn

from rich.console import Console

from acorm_pl.analysis.curves import learning_curves, load_runs, summary_rows, write_curves
from acorm_pl.analysis.evaluate import evaluate_checkpoint, log_analysis_run, log_evaluation
from acorm_pl.analysis.figures import write_episode_figures
from acorm_pl.analysis.inspect import save_records
from acorm_pl.analysis.progress import interval, rich_table
from acorm_pl.analysis.report import write_report
from acorm_pl.analysis.role_stats import measure_roles
from acorm_pl.analysis.study import ARMS, RESULTS_DIR, export_sweep
from acorm_pl.envs.seeds import ANALYSIS_SEED
from acorm_pl.errors import ConfigError, require
from acorm_pl.tracking import check_tracking_store, default_tracking_uri


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return value


def _level(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"must be a confidence level in (0, 1), e.g. 0.95, got {text!r}")
    return value


def _check_store(args: argparse.Namespace) -> None:
    # Before minutes of episodes or bootstrap, not after: an unwritable store would lose them.
    if not args.no_mlflow:
        check_tracking_store(args.tracking_uri or default_tracking_uri())


class _Parser(argparse.ArgumentParser):
    """argparse that raises :class:`ConfigError` (printed as one line by ``acorm-pl``) instead of exiting."""

    def error(self, message: str) -> NoReturn:
        raise ConfigError(f"{self.prog}: {message}")


def _add_mlflow_args(parser: argparse.ArgumentParser, experiment: str) -> None:
    parser.add_argument("--tracking-uri", default=None,
                        help="MLflow store to log to (default: $MLFLOW_TRACKING_URI, else sqlite:///mlruns.db here)")
    parser.add_argument("--log-experiment", default=experiment,
                        help=f"MLflow experiment of the new run (default: {experiment})")
    parser.add_argument("--run-name", default=None, help="name of the new MLflow run")
    parser.add_argument("--no-mlflow", action="store_true", help="do not log to MLflow")


def _evaluate_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="acorm-pl evaluate", description="Greedy episodes of a checkpoint on its own environment: "
                "test win rate with a confidence interval and mean return, logged to MLflow as a new run.")
    p.add_argument("checkpoint", help="a checkpoint of acorm-pl fit (e.g. <run artifacts>/checkpoints/last.ckpt)")
    p.add_argument("--episodes", type=_positive_int, default=32, help="greedy episodes (default 32)")
    p.add_argument("--seed", type=int, default=ANALYSIS_SEED,
                   help=f"environment copy i is seeded seed + i (default {ANALYSIS_SEED:_}: episodes that no "
                        "training or periodic evaluation played)")
    p.add_argument("--n-envs", type=_positive_int, default=None,
                   help="copies stepped at once (default min(episodes, 16))")
    p.add_argument("--confidence", type=_level, default=0.95, help="confidence level of the intervals (default 0.95)")
    p.add_argument("--record", type=Path, default=None,
                   help="write the per-timestep data of every episode (embeddings, roles, clusters, attention, "
                        "health, alive flags, actions) to this file (torch format; acorm_pl.analysis.load_records)")
    p.add_argument("--figures", type=Path, default=None,
                   help="write the role map and attention heatmaps of the first episode to this directory")
    p.add_argument("--timesteps", type=int, nargs="+", default=None,
                   help="episode steps of the role map (default: first, middle, last)")
    _add_mlflow_args(p, "evaluation")
    return p


def _curves_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="acorm-pl curves", description="Learning curves over seeds with bootstrap confidence bands "
                "and a summary table (final value, area under the curve) from MLflow runs.")
    p.add_argument("stores", nargs="+", help="MLflow stores: tracking URIs, sqlite files, directories holding "
                   "mlruns.db or */mlruns.db")
    p.add_argument("--experiment", default=None,
                   help="experiment to read (default: all experiments of each store)")
    p.add_argument("--metric", default="test/win_rate", help="metric to plot (default test/win_rate)")
    p.add_argument("--group-by", default="name",
                   help="one line per: name (run name without its -s<seed> suffix), tag:<key> or param:<key>; "
                        "several comma-separated, e.g. tag:acorm_pl.variant,tag:acorm_pl.map (a sweep's runs)")
    p.add_argument("--groups", nargs="+", default=None, help="groups to plot, in this order (default: all, sorted)")
    p.add_argument("--status", default="FINISHED", help="run status to keep, or 'any' (default FINISHED)")
    p.add_argument("--filter", default="", help="MLflow search filter, e.g. \"params.map_name = '5m_vs_6m'\"")
    p.add_argument("--interval", type=int, default=None,
                   help="env-step grid the evaluations are aligned to (default: the runs' evaluation.eval_interval)")
    p.add_argument("--confidence", type=_level, default=0.95, help="confidence level of the band (default 0.95)")
    p.add_argument("--resamples", type=int, default=10_000, help="bootstrap resamples (default 10000)")
    p.add_argument("--title", default=None, help="figure title")
    p.add_argument("--out", type=Path, default=Path("curves"), help="output directory (default ./curves)")
    _add_mlflow_args(p, "analysis")
    return p


def _results_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="acorm-pl results", description="The study's results in the repository: export finished sweep "
                "trials to docs/results/ (one CSV of evaluations, the resolved config and the run's facts per run), "
                "and regenerate docs/results.md and its figures from there.")
    sub = p.add_subparsers(dest="action", required=True, parser_class=_Parser)
    export = sub.add_parser("export", help="write a sweep's FINISHED trials to <results>/<arm>/<map>/")
    export.add_argument("sweep_dir", type=Path, help="the sweep directory (holding mlruns.db)")
    export.add_argument("--arm", required=True, choices=ARMS, help="which arm of the study the sweep belongs to")
    export.add_argument("--results", type=Path, default=RESULTS_DIR, help=f"results root (default {RESULTS_DIR})")
    roles = sub.add_parser("roles", help="role and attention numbers (NMI of clusters vs unit type and health, "
                           "attention entropy and head distance) of a checkpoint, vs a host's checkpoint")
    roles.add_argument("checkpoint", help="an ACORM or ACORM-MAPPO checkpoint")
    roles.add_argument("--baseline", default=None, help="the host's checkpoint (QMIX or MAPPO) on the same map")
    roles.add_argument("--name", required=True, help="writes <results>/roles/<name>.json and its figures")
    roles.add_argument("--episodes", type=_positive_int, default=32, help="greedy episodes (default 32)")
    roles.add_argument("--k", type=_positive_int, default=None, help="clusters (default: the checkpoint's K)")
    roles.add_argument("--results", type=Path, default=RESULTS_DIR, help=f"results root (default {RESULTS_DIR})")
    roles.add_argument("--figures", type=Path, default=Path("docs/gallery/study"),
                       help="figure root (default docs/gallery/study): figures in <figures>/roles_<name>/")
    report = sub.add_parser("report", help="regenerate docs/results.md and docs/gallery/study/ from the results")
    report.add_argument("--results", type=Path, default=RESULTS_DIR, help=f"results root (default {RESULTS_DIR})")
    report.add_argument("--out", type=Path, default=Path("docs/results.md"), help="report (default docs/results.md)")
    report.add_argument("--figures", type=Path, default=Path("docs/gallery/study"),
                        help="figure directory (default docs/gallery/study)")
    report.add_argument("--confidence", type=_level, default=0.95, help="confidence level (default 0.95)")
    return p


def results_command(argv: list[str], console: Console) -> None:
    """``acorm-pl results export|report``: see :func:`_results_parser`."""
    args = _results_parser().parse_args(argv)
    if args.action == "export":
        written, skipped = export_sweep(args.sweep_dir, args.arm, args.results)
        console.print(f"exported {len(written) // 3} runs to {args.results / args.arm}")
        if skipped:
            console.print(f"not finished, left out: {', '.join(skipped)}")
        return
    if args.action == "roles":
        numbers = measure_roles(args.checkpoint, args.baseline, args.episodes, args.k,
                                args.figures / f"roles_{args.name}")
        path = args.results / "roles" / f"{args.name}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(numbers, indent=1) + "\n")
        console.print(f"written: {path}")
        return
    require(args.results.is_dir(), f"no results directory at {args.results} (acorm-pl results export first)")
    paths = write_report(args.results, args.out, args.figures, args.confidence)
    console.print(f"written: {', '.join(str(p) for p in paths)}")


def evaluate_command(argv: list[str], console: Console) -> None:
    """``acorm-pl evaluate``: see :func:`_evaluate_parser`."""
    args = _evaluate_parser().parse_args(argv)
    _check_store(args)
    record = args.record is not None or args.figures is not None
    result, records = evaluate_checkpoint(args.checkpoint, args.episodes, args.seed, args.n_envs, record,
                                          args.confidence, progress=True)
    console.print(result.table())
    files: dict[str, list[Path]] = {}
    if args.record is not None:
        files["records"] = [save_records(records, args.record)]
        console.print(f"per-timestep data of {len(records)} episodes: {args.record}")
    if args.figures is not None:
        title = f"{result.algorithm} on {result.map_name}, {result.env_steps:,} env steps, episode 0"
        files["figures"] = write_episode_figures(records[0], args.figures, args.timesteps, title, progress=True)
        console.print(f"figures: {', '.join(str(p) for p in files['figures'])}")
    if args.no_mlflow:
        return
    with tempfile.TemporaryDirectory() as tmp:
        summary = Path(tmp) / "evaluation.json"
        summary.write_text(json.dumps(result.as_dict(), indent=1))
        run_id = log_evaluation(result, files, args.tracking_uri, args.log_experiment, args.run_name, summary)
    console.print(f"MLflow: run {run_id} in experiment {args.log_experiment!r}")


def curves_command(argv: list[str], console: Console) -> None:
    """``acorm-pl curves``: see :func:`_curves_parser`."""
    args = _curves_parser().parse_args(argv)
    _check_store(args)
    status = None if args.status.lower() == "any" else args.status.upper()
    runs = load_runs(args.stores, args.experiment, args.metric, args.group_by, status, args.filter, progress=True)
    curves = learning_curves(runs, args.interval, args.confidence, args.resamples, groups=args.groups, progress=True)
    rows = summary_rows(curves, args.confidence, args.resamples)
    paths = write_curves(curves, rows, args.out, args.metric, args.confidence, args.title)
    pct = round(args.confidence * 100)
    console.print(rich_table(
        f"{args.metric}: mean over seeds [{pct}% bootstrap CI]",
        ["group", "seeds", "last step", "final", "area under curve"],
        [[r["group"], r["n_seeds"], f"{r['last_step']:,}", interval(r["final"], r["final_low"], r["final_high"]),
          interval(r["auc"], r["auc_low"], r["auc_high"])] for r in rows]))
    console.print(f"written: {', '.join(str(p) for p in paths)}")
    if args.no_mlflow:
        return
    params = {"metric": args.metric, "group_by": args.group_by, "stores": ", ".join(map(str, args.stores))[:500],
              "experiment": args.experiment or "all", "n_runs": len(runs), "confidence": args.confidence}
    name = args.run_name or f"curves-{args.metric.replace('/', '_')}"
    run_id = log_analysis_run(args.log_experiment, name, {"curves": paths}, params=params,
                              tracking_uri=args.tracking_uri)
    console.print(f"MLflow: run {run_id} in experiment {args.log_experiment!r}")


def run_command(argv: list[str]) -> None:
    """Run the analysis command ``argv[0]`` (``evaluate``, ``curves`` or ``results``) with the arguments that follow."""
    console = Console()
    {"evaluate": evaluate_command, "curves": curves_command, "results": results_command}[argv[0]](argv[1:], console)
