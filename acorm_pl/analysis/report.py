"""``docs/results.md`` and its figures, generated from the exported study results (:mod:`acorm_pl.analysis.study`):
per map and variant the mean test win rate over seeds with 95% bootstrap CIs at fixed env-step marks, the final
value and the area under the curve, how soon each seed first reached a win rate of 0.5 and of 0.9, each
variant's difference from its host, the runs' budgets, update ratios and wall times, and the published SMAX
figures for the same maps."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from acorm_pl.analysis.curves import RunCurve, curves_figure, learning_curves
from acorm_pl.analysis.role_report import roles_section
from acorm_pl.analysis.stats import area_under_curve, bootstrap_band, bootstrap_diff_ci
from acorm_pl.analysis.study import ARMS, EDGE_STEPS, RESULTS_DIR, StudyRun, load_results

MARKS = (100_000, 250_000, 500_000, 1_000_000, 2_000_000, 5_000_000, 10_000_000)
MIN_SEEDS = 3  # a comparison with a verdict needs this many seeds on each side
FINAL_LAST = 5  # the final value of a run: the mean of its last five evaluations (the authors' "last-5 mean")
THRESHOLDS = (0.5, 0.9)  # "how soon": the env step of a run's first evaluation at or above each
HOSTS = {"qmix_pilot": "QMIX", "qmix": "QMIX", "qmix_x8": "QMIX", "mappo_pilot": "MAPPO", "mappo": "MAPPO"}
FULL_METHOD = {"qmix_pilot": "ACORM", "qmix": "ACORM", "qmix_x8": "ACORM", "mappo_pilot": "ACORM-MAPPO",
               "mappo": "ACORM-MAPPO"}
# (the variants of a full method are named "<full method>-...")
MATCHED = {"qmix": "QMIX-128", "qmix_x8": "QMIX-128"}  # the host with the full method's agent embedding size
# The contrastive step at the paper's per-episode rate (T_cl counted in episodes, Algorithm 1) and the same network
# without it: the comparison that isolates the contrastive loss, where the arm's full method took it more rarely.
PAPER_RATE = {"qmix": ("ACORM-Tcl12", "ACORM-noCL"), "mappo": ("ACORM-MAPPO-Tcl1", "ACORM-MAPPO-noCL")}
ARM_TITLES = {"qmix_pilot": "QMIX host, pilot (which maps)", "qmix": "QMIX host (Figs. 2-3)",
              "qmix_x8": "QMIX host at the paper's update ratio (8 TD updates per 8 collected episodes)",
              "mappo_pilot": "MAPPO host, pilot (which maps)", "mappo": "MAPPO host (Fig. 9)"}
VARIANT_ORDER = ("ACORM", "ACORM-Tcl12", "QMIX", "QMIX-128", "ACORM-noCL", "ACORM-noMHA", "MAPPO", "ACORM-MAPPO",
                 "ACORM-MAPPO-Tcl1", "ACORM-MAPPO-noCL")

# Final test win rate at 1e7 env steps (unless noted), as the study issue quotes them: JaxMARL and Mava on SMAX;
# the ACORM authors' curves on SMAC (4 seeds, last-5 mean, ACORM / their QMIX).
PUBLISHED: dict[str, dict[str, str]] = {
    "2s3z": {"JaxMARL IPPO / MAPPO": "0.90 / 1.00", "Mava IPPO / MAPPO": "0.89 / 0.94 (at 1M)",
             "ACORM paper, SMAC: ACORM / QMIX": "0.96 / 0.92"},
    "3s5z": {"JaxMARL IPPO / MAPPO": "0.55 / 0.70", "Mava IPPO / MAPPO": "~1.0 / 0.97",
             "ACORM paper, SMAC: ACORM / QMIX": "0.94 / 0.95"},
    "6h_vs_8z": {"JaxMARL IPPO / MAPPO": "0.95 / 0.20", "Mava IPPO / MAPPO": "~1.0 / ~1.0"},
    "3s5z_vs_3s6z": {"JaxMARL IPPO / MAPPO": "0.02 / 0.35", "Mava IPPO / MAPPO": "0.70 / 0.76",
                     "ACORM paper, SMAC: ACORM / QMIX": "0.88 / 0.34"},
    "10m_vs_11m": {"JaxMARL IPPO / MAPPO": "0.28 / 0.40", "Mava IPPO / MAPPO": "0.31 / 0.67"},
    "27m_vs_30m": {"JaxMARL IPPO / MAPPO": "0.10 / 0.15", "Mava IPPO / MAPPO": "0.32 / 0.79"},
    "3s_vs_5z": {"JaxMARL IPPO / MAPPO": "0.60 / ~0", "Mava IPPO / MAPPO": "0.99 / 0.93"},
    "5m_vs_6m": {"JaxMARL IPPO / MAPPO": "0.12 / 0.05", "Mava IPPO / MAPPO": "0.06 / 0.10",
                 "ACORM paper, SMAC: ACORM / QMIX": "0.74 / 0.70"},
}


@dataclass
class Cell:
    """One (arm, map, variant) over its seeds."""

    arm: str
    map: str
    variant: str
    runs: list[StudyRun]
    marks: dict[int, tuple[float, float, float, int]]  # mark -> (mean, low, high, seeds with a value there)
    final: np.ndarray  # [S] each seed's last-5 mean
    auc: np.ndarray  # [S] each seed's normalised area under its curve

    @property
    def seeds(self) -> list[int]:
        return [r.seed for r in self.runs]


def value_at(run: StudyRun, mark: int) -> float:
    """The run's evaluation nearest to ``mark`` env steps, if one lies within half an evaluation interval of it
    (NaN otherwise: the run did not get there)."""
    gaps = np.diff(run.env_steps)
    tolerance = float(np.median(gaps)) / 2 if gaps.size else 0.0
    i = int(np.argmin(np.abs(run.env_steps - mark)))
    return float(run.win_rate[i]) if abs(int(run.env_steps[i]) - mark) <= tolerance else float("nan")


def final_value(run: StudyRun, last: int = FINAL_LAST) -> float:
    """Mean of the run's last ``last`` evaluations."""
    return float(run.win_rate[-last:].mean())


def first_reaching(run: StudyRun, threshold: float) -> int | None:
    """The env step of the run's first evaluation with a test win rate of at least ``threshold`` (None: never).
    Read per seed, not averaged: a seed that never gets there has no number to average."""
    hits = np.flatnonzero(run.win_rate >= threshold)
    return int(run.env_steps[hits[0]]) if hits.size else None


def _speed_rows(members: Sequence[Cell]) -> list[str]:
    rows = ["| variant | " + " | ".join(f"first at {t:g} or more, per seed" for t in THRESHOLDS) + " |",
            "|---|" + "---|" * len(THRESHOLDS)]
    for c in members:
        reached = [", ".join(f"s{r.seed} " + ("never" if (s := first_reaching(r, t)) is None else _steps(s))
                             for r in c.runs) for t in THRESHOLDS]
        rows.append(f"| {c.variant} | " + " | ".join(reached) + " |")
    return rows


def _contrastive_rows(members: Sequence[Cell]) -> list[str]:
    """Per run with contrastive steps: how many, and the InfoNCE loss and accuracy at their start and end."""
    rows = [f"| variant | seed | contrastive steps | InfoNCE loss, first {EDGE_STEPS} -> last {EDGE_STEPS} (max) "
            f"| accuracy, first {EDGE_STEPS} -> last {EDGE_STEPS} | accuracy of a random key |",
            "|---|---|---|---|---|---|"]
    for c in members:
        for r in c.runs:
            if (cl := r.facts.get("contrastive")) is not None:
                rows.append(f"| {c.variant} | {r.seed} | {cl['steps']} | {cl['loss_first']:.2f} -> "
                            f"{cl['loss_last']:.2f} ({cl['loss_max']:.2f}) | {cl['accuracy_first']:.2f} -> "
                            f"{cl['accuracy_last']:.2f} | {cl['positive_fraction']:.2f} |")
    return rows if len(rows) > 2 else []


def _ci(values: np.ndarray, confidence: float, n_resamples: int) -> tuple[float, float, float, int]:
    mean, low, high, count = bootstrap_band(values.reshape(-1, 1), confidence, n_resamples)
    return float(mean[0]), float(low[0]), float(high[0]), int(count[0])


def cells(runs: Sequence[StudyRun], confidence: float = 0.95, n_resamples: int = 10_000) -> list[Cell]:
    """The runs grouped by (arm, map, variant), with their statistics; ordered by arm, map, then variant."""
    groups: dict[tuple[str, str, str], list[StudyRun]] = {}
    for r in runs:
        groups.setdefault((r.arm, r.map, r.variant), []).append(r)

    def order(key: tuple[str, str, str]) -> tuple:
        arm, map_name, variant = key
        rank = VARIANT_ORDER.index(variant) if variant in VARIANT_ORDER else len(VARIANT_ORDER)
        return (ARMS.index(arm), map_name, rank, variant)

    out = []
    for key in sorted(groups, key=order):
        members = sorted(groups[key], key=lambda r: r.seed)
        budget = max(int(r.env_steps[-1]) for r in members)
        marks = {m: _ci(np.array([value_at(r, m) for r in members]), confidence, n_resamples)
                 for m in MARKS if m <= budget * 1.01}
        out.append(Cell(*key, members, marks, np.array([final_value(r) for r in members]),
                        np.array([area_under_curve(r.env_steps, r.win_rate) for r in members])))
    return out


def _fmt(mean: float, low: float, high: float) -> str:
    if np.isnan(mean):
        return "-"
    return f"{mean:.2f}" if low == high == mean else f"{mean:.2f} [{low:.2f}, {high:.2f}]"


def _steps(n: int) -> str:
    if n < 999_500:  # what would round to 1000k is written in M
        return f"{round(n / 1000)}k"
    return f"{n // 1_000_000}M" if n % 1_000_000 == 0 else f"{n / 1e6:.2f}M"


def comparison(cell: Cell, host: Cell, confidence: float = 0.95, n_resamples: int = 10_000) -> str:
    """One line on ``cell`` against ``host``: the difference of final values with its bootstrap CI, whether
    the two cells' CIs are disjoint, and the difference of the areas under the curves; with fewer than
    :data:`MIN_SEEDS` seeds on a side, the numbers only, and no verdict."""
    if min(len(cell.seeds), len(host.seeds)) < MIN_SEEDS:
        return (f"{cell.map}: final {cell.final.mean():.2f} ({cell.variant}) vs {host.final.mean():.2f} "
                f"({host.variant}), {len(cell.seeds)} vs {len(host.seeds)} seeds: too few seeds for a comparison "
                f"(the report compares from {MIN_SEEDS} seeds per variant)")
    low, high = bootstrap_diff_ci(cell.final, host.final, confidence, n_resamples)
    diff = float(cell.final.mean() - host.final.mean())
    a = _ci(cell.final, confidence, n_resamples)
    b = _ci(host.final, confidence, n_resamples)
    disjoint = a[1] > b[2] or b[1] > a[2]
    if low > 0:
        verdict = f"{cell.variant} ends higher than {host.variant}"
    elif high < 0:
        verdict = f"{cell.variant} ends lower than {host.variant}"
    else:
        verdict = f"no difference shown between {cell.variant} and {host.variant}"
    auc_low, auc_high = bootstrap_diff_ci(cell.auc, host.auc, confidence, n_resamples)
    auc = (f"AUC {cell.auc.mean():.2f} vs {host.auc.mean():.2f}, difference "
           f"{cell.auc.mean() - host.auc.mean():+.2f} [{auc_low:+.2f}, {auc_high:+.2f}]")
    return (f"{cell.map}: {verdict} (final {a[0]:.2f} vs {b[0]:.2f}, difference {diff:+.2f} "
            f"[{low:+.2f}, {high:+.2f}]; the two CIs are {'disjoint' if disjoint else 'overlapping'}; {auc}; "
            f"{len(cell.seeds)} vs {len(host.seeds)} seeds)")


def write_figures(all_cells: Sequence[Cell], out_dir: str | Path, confidence: float = 0.95) -> dict[tuple, Path]:
    """One learning-curve figure (mean over seeds, bootstrap band) per (arm, map) in ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {}
    for arm, map_name in dict.fromkeys((c.arm, c.map) for c in all_cells):
        members = [c for c in all_cells if (c.arm, c.map) == (arm, map_name)]
        runs = [RunCurve("docs/results", f"{c.variant}_s{r.seed}", f"{c.variant}_s{r.seed}", c.variant, str(r.seed),
                         r.env_steps, r.win_rate, r.facts.get("eval_interval"))
                for c in members for r in c.runs]
        curves = learning_curves(runs, confidence=confidence, groups=[c.variant for c in members])
        fig = curves_figure(curves, confidence=confidence, title=f"SMAX {map_name}, {ARM_TITLES[arm]}: test win "
                            f"rate, mean over seeds, {round(confidence * 100)}% bootstrap band")
        paths[(arm, map_name)] = out / f"{arm}_{map_name}.png"
        fig.savefig(paths[(arm, map_name)], dpi=110)
    return paths


def _run_rows(members: Sequence[Cell]) -> list[str]:
    rows = ["| variant | seed | budget | evaluations | wall time | env steps/s (whole run) | update ratio | commit |",
            "|---|---|---|---|---|---|---|---|"]
    for c in members:
        for r in c.runs:
            f = r.facts
            budget = int(f.get("total_env_steps") or r.env_steps[-1])
            rate = f.get("env_steps_per_s")
            wall = f.get("wall_time_s")
            known = {k: "?" if f.get(k) is None else f[k]
                     for k in ("batch_size", "updates_per_collect", "n_envs", "n_eval_episodes")}
            if f.get("ppo_epochs"):  # on-policy: fresh episodes, used for a few epochs
                ratio = f"{known['batch_size']} fresh episodes per PPO update, {f['ppo_epochs']} epochs"
            else:
                ratio = (f"{known['updates_per_collect']} TD update(s) of {known['batch_size']} episodes "
                         f"per {known['n_envs']} collected")
            not_counted = f.get("not_counted_s") or 0.0
            wall_text = "?" if wall is None else f"{wall / 60:.0f} min"
            if not_counted >= 60:  # a long start-up under load does this too, not only a resumed run
                wall_text += (f" ({not_counted / 60:.0f} min outside training not counted: start-up, shut-down "
                              f"and any pause between attempts)")
            rows.append(f"| {c.variant} | {r.seed} | {_steps(budget)} | {len(r.env_steps)} x "
                        f"{known['n_eval_episodes']} episodes | {wall_text} | "
                        f"{'?' if rate is None else f'{rate:,.0f}'} | {ratio} | {str(f.get('commit') or '?')[:8]} |")
    return rows


def render(all_cells: Sequence[Cell], figures: dict[tuple, Path], doc_dir: Path, notes: str | None = None,
           confidence: float = 0.95, results: Path | None = None, figures_dir: Path | None = None) -> str:
    """The text of ``docs/results.md``."""
    pct = round(confidence * 100)
    lines = ["# Results: the study (issue 15)", "",
             "Generated by `acorm-pl results report` from the CSV files under `docs/results/` (one per run: one "
             "row per evaluation); do not edit by hand. Each run is one trial of a sweep file in `conf/sweeps/` "
             "(`acorm-pl sweep <file>` reproduces it from its seed), exported with `acorm-pl results export`. "
             "Earlier, smaller comparisons: [earlier-results.md](earlier-results.md).", "",
             f"Every number is the mean over seeds with its {pct}% percentile-bootstrap CI over seeds. A mark "
             "(100k, ...) is the evaluation nearest to that env step; *final* is each run's mean over its last "
             f"{FINAL_LAST} evaluations (the authors' last-5 mean); *AUC* is the normalised area under the "
             "curve over the whole budget (the average test win rate during training). With 3 seeds a bootstrap "
             "CI is narrow and optimistic: read an overlap as 'not shown', not as 'equal'.", ""]
    if notes:
        lines += [notes.strip(), ""]
    for arm in dict.fromkeys(c.arm for c in all_cells):
        lines += [f"## {ARM_TITLES[arm]}", ""]
        arm_cells = [c for c in all_cells if c.arm == arm]
        for map_name in dict.fromkeys(c.map for c in arm_cells):
            members = [c for c in arm_cells if c.map == map_name]
            marks = sorted({m for c in members for m in c.marks})
            lines += [f"### SMAX {map_name}", ""]
            if (arm, map_name) in figures:
                rel = figures[(arm, map_name)].resolve().relative_to(doc_dir.resolve())
                lines += [f"![{arm} {map_name}]({rel.as_posix()})", ""]
            lines += ["| variant | seeds | " + " | ".join(_steps(m) for m in marks) + " | final | AUC |",
                      "|---|---|" + "---|" * len(marks) + "---|---|"]
            for c in members:
                lines.append(f"| {c.variant} | {len(c.seeds)} | "
                             + " | ".join(_fmt(*c.marks[m][:3]) if m in c.marks else "-" for m in marks)
                             + f" | {_fmt(*_ci(c.final, confidence, 10_000)[:3])} | "
                               f"{_fmt(*_ci(c.auc, confidence, 10_000)[:3])} |")
            lines += ["", "How soon (the env step of each seed's first test win rate at or above the threshold):",
                      "", *_speed_rows(members)]
            if contrastive := _contrastive_rows(members):
                lines += ["", "The contrastive learning in each run (Eq. 3; accuracy: the share of anchors whose "
                          f"best-scoring key is a positive; the first and last {EDGE_STEPS} steps overlap where a "
                          f"run took fewer than {2 * EDGE_STEPS}):", "", *contrastive]
            by_name = {c.variant: c for c in members}
            host = by_name.get(HOSTS[arm])
            if host is not None and len(members) > 1:
                lines += ["", "Against the host:", ""]
                lines += [f"- {comparison(c, host, confidence)}" for c in members if c is not host]
            full, matched = by_name.get(FULL_METHOD[arm]), by_name.get(MATCHED.get(arm, ""))
            if full is not None and matched is not None:
                lines += ["", f"Against the host at matched capacity ({matched.variant}):", "",
                          f"- {comparison(full, matched, confidence)}"]
            variants = [c for c in members if c.variant.startswith(f"{FULL_METHOD[arm]}-")]
            if full is not None and variants:
                lines += ["", f"Against the full method ({full.variant}), its ablations and variants:", ""]
                lines += [f"- {comparison(c, full, confidence)}" for c in variants]
            with_cl, without = (by_name.get(v) for v in PAPER_RATE.get(arm, ("", "")))
            if with_cl is not None and without is not None:
                lines += ["", f"The contrastive loss at the paper's rate ({with_cl.variant}) against none "
                          f"({without.variant}, the same network):", "",
                          f"- {comparison(without, with_cl, confidence)}"]
            if map_name in PUBLISHED:
                lines += ["", "Published final test win rates on this map (1e7 env steps unless noted; the ACORM "
                          "paper's are on SMAC, not SMAX): "
                          + "; ".join(f"{k}: {v}" for k, v in PUBLISHED[map_name].items()) + "."]
            lines += ["", "<details><summary>Runs</summary>", "", *_run_rows(members), "", "</details>", ""]
    if results is not None:
        lines += roles_section(results, doc_dir, figures_dir or doc_dir / "gallery" / "study")
    return "\n".join(lines).rstrip() + "\n"


def write_report(results: str | Path = RESULTS_DIR, out: str | Path = "docs/results.md",
                 figures_dir: str | Path = "docs/gallery/study", confidence: float = 0.95) -> list[Path]:
    """Regenerate ``out`` and its figures from the exported runs under ``results`` (with ``results/notes.md``,
    the hand-written reading of the data, placed after the method paragraph)."""
    runs = load_results(results)
    all_cells = cells(runs, confidence)
    figures = write_figures(all_cells, figures_dir, confidence) if all_cells else {}
    notes_path = Path(results) / "notes.md"
    notes = notes_path.read_text() if notes_path.is_file() else None
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render(all_cells, figures, out.parent, notes, confidence, Path(results), Path(figures_dir)))
    return [out, *figures.values()]
