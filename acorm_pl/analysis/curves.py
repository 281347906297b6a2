"""Learning curves over seeds with 95% bootstrapped confidence bands (paper Figs. 2, 3, 6, 9, 12), read
from MLflow runs.

Runs: every run of the chosen experiment(s) in one or more MLflow stores (a tracking URI, an sqlite file,
a directory holding ``mlruns.db``, or a directory whose sub-directories each hold one, as the learning
benchmark writes them), by default only FINISHED ones. A run's curve is its metric (``test/win_rate``)
against the step it was logged at, the env-step count.

Groups (one line each): runs are grouped by ``group_by``: ``name`` (the run name without a trailing seed
suffix ``-s<seed>``, ``_s<seed>`` or ``-seed<seed>``), ``tag:<key>`` or ``param:<key>``, or several of these
comma-separated (one group per combination). A run's seed is its ``seed`` param (logged by every
``acorm-pl fit``), else the suffix.

Alignment: seeds evaluate at slightly different env steps (an evaluation runs after the first collection
that crosses each multiple of ``eval_interval``, e.g. 10023 and 10037). Every evaluation is moved to the
nearest multiple of the grid interval; where two land on the same point the later one is kept, which
makes the last point the run's final (larger) evaluation. The grid interval is the one given, else the
largest ``evaluation.eval_interval`` in the runs' ``config.yaml`` artifacts, else the median gap between
evaluations rounded to two significant digits. At each grid point the band uses the seeds that have a
value there.

Summary per group: the final value (each run's last evaluation) and the area under the curve (each run's
average over training, :func:`~acorm_pl.analysis.stats.area_under_curve`), as mean over seeds with a
bootstrap confidence interval.
"""

from __future__ import annotations

import csv
import json
import re
import tempfile
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlparse

import numpy as np
import yaml
from matplotlib.figure import Figure
from mlflow.entities import Run
from mlflow.tracking import MlflowClient

from acorm_pl.analysis.figures import cluster_colour, new_figure
from acorm_pl.analysis.progress import progress_task
from acorm_pl.analysis.stats import area_under_curve, bootstrap_band
from acorm_pl.errors import require

SEED_SUFFIX = re.compile(r"[-_](?:s|seed)(\d+)$")


@dataclass
class RunCurve:
    """One run's evaluations of a metric."""

    store: str  # tracking URI
    run_id: str
    run_name: str
    group: str
    seed: str
    steps: np.ndarray  # env steps of each logged value, in logging order
    values: np.ndarray
    eval_interval: int | None  # evaluation.eval_interval of the run's config.yaml, where it has one


@dataclass
class GroupCurve:
    """One line of a learning-curve figure: the runs of a group on a common env-step grid."""

    group: str
    seeds: list[str]
    steps: np.ndarray  # [P] grid points
    values: np.ndarray  # [S, P] each run's value at each point (NaN: none)
    mean: np.ndarray  # [P] mean over the seeds with a value
    low: np.ndarray  # [P] bootstrap confidence band of the mean
    high: np.ndarray
    count: np.ndarray  # [P] seeds with a value
    final: np.ndarray  # [S] each run's last value
    auc: np.ndarray  # [S] each run's normalised area under its curve


def tracking_uris(stores: Sequence[str | Path]) -> list[str]:
    """Tracking URIs of ``stores``: URIs as they are, sqlite files, directories holding ``mlruns.db``, or
    directories whose sub-directories do (each one a store)."""
    uris: list[str] = []
    for store in stores:
        text = str(store)
        if "://" in text or text.startswith("sqlite:"):
            uris.append(text)
            continue
        path = Path(text).expanduser().resolve()
        if path.is_file():
            uris.append(f"sqlite:///{path}")
        elif (path / "mlruns.db").is_file():
            uris.append(f"sqlite:///{path / 'mlruns.db'}")
        else:
            found = sorted(path.glob("*/mlruns.db")) if path.is_dir() else []
            require(bool(found), f"no MLflow store at {store} (expected a tracking URI, an sqlite file, or a "
                                 "directory holding mlruns.db or */mlruns.db)")
            uris += [f"sqlite:///{db}" for db in found]
    return uris


def group_of(run: Run, group_by: str) -> str:
    """The group of ``run`` under ``group_by`` (``name``, ``tag:<key>`` or ``param:<key>``; several,
    comma-separated, group by their combination, e.g. a sweep's ``tag:acorm_pl.variant,tag:acorm_pl.map``)."""
    if "," in group_by:
        return ", ".join(group_of(run, part.strip()) for part in group_by.split(","))
    if group_by == "name":
        return SEED_SUFFIX.sub("", run.info.run_name or run.info.run_id)
    kind, _, key = group_by.partition(":")
    require(kind in ("tag", "param") and bool(key),
            f"group_by must be 'name', 'tag:<key>' or 'param:<key>', got {group_by!r}")
    source = run.data.tags if kind == "tag" else run.data.params
    return f"{key}={source[key]}" if key in source else f"{key} missing"


def seed_of(run: Run) -> str:
    """The run's ``seed`` param, else the seed suffix of its name, else its run id."""
    if "seed" in run.data.params:
        return run.data.params["seed"]
    match = SEED_SUFFIX.search(run.info.run_name or "")
    return match.group(1) if match else run.info.run_id[:8]


def run_artifact_text(client: MlflowClient, run: Run, name: str) -> str | None:
    """The text of the run's artifact ``name`` (None without one): local artifacts are read in place."""
    parsed = urlparse(run.info.artifact_uri)
    if parsed.scheme in ("", "file"):
        path = Path(unquote(parsed.path)) / name
        return path.read_text() if path.is_file() else None
    with tempfile.TemporaryDirectory() as tmp:
        try:
            return Path(client.download_artifacts(run.info.run_id, name, tmp)).read_text()
        except Exception:  # no such artifact, or a store we cannot read: the caller does without it
            return None


def _eval_interval(client: MlflowClient, run: Run) -> int | None:
    """``evaluation.eval_interval`` of the run's ``config.yaml`` artifact (None without one)."""
    config = yaml.safe_load(run_artifact_text(client, run, "config.yaml") or "") or {}
    value = (config.get("evaluation") or {}).get("eval_interval")
    return int(value) if isinstance(value, int) else None


def load_runs(stores: Sequence[str | Path], experiment: str | None = None, metric: str = "test/win_rate",
              group_by: str = "name", status: str | None = "FINISHED", filter_string: str = "",
              progress: bool = False) -> list[RunCurve]:
    """The curves of ``metric`` of every run in ``stores`` (all experiments, or the one named ``experiment``)
    with the given ``status`` (None: any) and MLflow ``filter_string``; runs without the metric are skipped."""
    found = []
    for uri in tracking_uris(stores):
        client = MlflowClient(tracking_uri=uri)
        if experiment is None:
            ids = [e.experiment_id for e in client.search_experiments()]
        else:
            exp = client.get_experiment_by_name(experiment)
            ids = [exp.experiment_id] if exp is not None else []
        runs = client.search_runs(ids, filter_string=filter_string, max_results=50_000) if ids else []
        found += [(uri, client, r) for r in runs if status is None or r.info.status == status]
    curves = []
    with progress_task(f"reading {metric} of {len(found)} runs", len(found), progress) as advance:
        for uri, client, run in found:
            history = sorted(client.get_metric_history(run.info.run_id, metric), key=lambda m: m.step)
            advance(1)
            if not history:
                continue
            curves.append(RunCurve(uri, run.info.run_id, run.info.run_name or run.info.run_id, group_of(run, group_by),
                                   seed_of(run), np.array([m.step for m in history], dtype=np.int64),
                                   np.array([m.value for m in history]), _eval_interval(client, run)))
    where = f"experiment {experiment!r}" if experiment else "any experiment"
    places = ", ".join(map(str, stores))
    require(bool(curves), f"no {status or 'logged'} run with metric {metric!r} in {where} of {places}")
    return curves


def grid_interval(runs: Sequence[RunCurve], interval: int | None = None) -> int:
    """The alignment grid (see the module docstring): ``interval``, the runs' largest configured
    ``eval_interval``, or the median gap between evaluations rounded to two significant digits."""
    if interval is not None:
        require(interval >= 1, f"interval must be a positive integer, got {interval}")
        return int(interval)
    configured = [r.eval_interval for r in runs if r.eval_interval]
    if configured:
        return max(configured)
    gaps = np.concatenate([np.diff(np.unique(r.steps)) for r in runs])
    if gaps.size == 0:
        return 1
    median = float(np.median(gaps))
    digits = 10 ** max(0, int(np.floor(np.log10(median))) - 1)
    return max(1, int(round(median / digits)) * digits)


def aligned(run: RunCurve, interval: int) -> dict[int, float]:
    """The run's values on the grid: each evaluation at the nearest multiple of ``interval``, the later
    evaluation where two land on the same point."""
    points: dict[int, float] = {}
    for step, value in zip(run.steps.tolist(), run.values.tolist()):
        points[int(round(step / interval)) * interval] = value
    return points


def learning_curves(runs: Sequence[RunCurve], interval: int | None = None, confidence: float = 0.95,
                    n_resamples: int = 10_000, seed: int = 0, groups: Sequence[str] | None = None,
                    progress: bool = False) -> list[GroupCurve]:
    """One :class:`GroupCurve` per group (in the order of ``groups``, default sorted by name) on the common
    grid, with the mean over seeds and its bootstrap band at each grid point."""
    step = grid_interval(runs, interval)
    names = list(groups) if groups is not None else sorted({r.group for r in runs})
    missing = [g for g in names if not any(r.group == g for r in runs)]
    require(not missing, f"no runs in group(s) {missing}; groups found: {sorted({r.group for r in runs})}")
    members = {g: sorted((r for r in runs if r.group == g), key=lambda r: r.seed) for g in names}
    per_run = {id(r): aligned(r, step) for rs in members.values() for r in rs}
    total = sum(len({p for r in rs for p in per_run[id(r)]}) for rs in members.values())
    curves = []
    with progress_task("bootstrapping confidence bands", total, progress) as advance:
        for g, rs in members.items():
            grid = np.array(sorted({p for r in rs for p in per_run[id(r)]}), dtype=np.int64)
            values = np.array([[per_run[id(r)].get(int(p), np.nan) for p in grid] for r in rs])
            mean, low, high, count = bootstrap_band(values, confidence, n_resamples, seed, on_points=advance)
            curves.append(GroupCurve(g, [r.seed for r in rs], grid, values, mean, low, high, count,
                                     final=np.array([r.values[-1] for r in rs]),
                                     auc=np.array([area_under_curve(grid, v) for v in values])))
    return curves


def summary_rows(curves: Sequence[GroupCurve], confidence: float = 0.95, n_resamples: int = 10_000,
                 seed: int = 0) -> list[dict]:
    """Per group: seeds, last grid step, final value and area under the curve (means over seeds with their
    bootstrap confidence intervals)."""
    rows = []
    for c in curves:
        stats = {}
        for name, per_seed in (("final", c.final), ("auc", c.auc)):
            mean, low, high, _ = bootstrap_band(per_seed.reshape(-1, 1), confidence, n_resamples, seed)
            stats.update({name: float(mean[0]), f"{name}_low": float(low[0]), f"{name}_high": float(high[0])})
        rows.append({"group": c.group, "n_seeds": len(c.seeds), "seeds": c.seeds, "last_step": int(c.steps[-1]),
                     **stats})
    return rows


TITLE_CHARS = 80  # of the 9-pt title on a 6.4-inch figure; the report's titles name map and arm and run longer


def curves_figure(curves: Sequence[GroupCurve], metric: str = "test/win_rate", confidence: float = 0.95,
                  title: str | None = None) -> Figure:
    """One line per group (mean over seeds) with its shaded bootstrap band, against env steps."""
    fig = new_figure(6.4, 4.2)
    ax = fig.subplots()
    for i, c in enumerate(curves):
        colour = cluster_colour(i)
        seeds = f"{len(c.seeds)} seed" + ("s" if len(c.seeds) != 1 else "")
        ax.plot(c.steps, c.mean, color=colour, linewidth=2, label=f"{c.group} ({seeds})")
        ax.fill_between(c.steps, c.low, c.high, color=colour, alpha=0.2, linewidth=0)
    ax.set_xlabel("environment steps")
    ax.set_ylabel(metric)
    if metric.endswith("win_rate"):  # the full range, so that a flat 0.03 is not drawn as a peak
        ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    title = title or f"mean over seeds, {round(confidence * 100)}% bootstrap confidence band"
    # constrained layout does not shrink a title wider than the figure: it would be cut off at the edge
    ax.set_title(textwrap.fill(title, TITLE_CHARS), fontsize=9)
    return fig


def write_curves(curves: Sequence[GroupCurve], rows: list[dict], out_dir: str | Path,
                 metric: str = "test/win_rate", confidence: float = 0.95, title: str | None = None) -> list[Path]:
    """``curves.png``, ``curves.csv`` (group, step, mean, low, high, n_seeds), ``curves_runs.csv`` (each
    run's aligned values), ``summary.csv`` and ``summary.json`` in ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / n for n in ("curves.png", "curves.csv", "curves_runs.csv", "summary.csv", "summary.json")]
    curves_figure(curves, metric, confidence, title).savefig(paths[0], dpi=120)
    with paths[1].open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["group", "step", "mean", "low", "high", "n_seeds"])
        for c in curves:
            w.writerows([c.group, int(s), m, lo, hi, int(n)] for s, m, lo, hi, n in
                        zip(c.steps, c.mean, c.low, c.high, c.count))
    with paths[2].open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["group", "seed", "step", "value"])
        for c in curves:
            for seed, row in zip(c.seeds, c.values):
                w.writerows([c.group, seed, int(s), v] for s, v in zip(c.steps, row) if not np.isnan(v))
    with paths[3].open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=[k for k in rows[0] if k != "seeds"], extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    paths[4].write_text(json.dumps({"metric": metric, "confidence": confidence, "groups": rows}, indent=1))
    return paths
