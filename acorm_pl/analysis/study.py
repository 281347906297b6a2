"""The study's results as files in the repository: each finished sweep trial exported from its MLflow store to
one CSV of evaluations, its resolved config and a JSON of facts (budget, update ratio, wall time, commit), under
``docs/results/<arm>/<map>/``; and read back from there for the report (:mod:`acorm_pl.analysis.report`).

    acorm-pl results export sweeps/study_mappo_smax --arm mappo     # -> docs/results/mappo/<map>/...
    acorm-pl results report                                          # -> docs/results.md, docs/gallery/study/
"""

from __future__ import annotations

import contextlib
import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from mlflow.entities import Run
from mlflow.tracking import MlflowClient

from acorm_pl.analysis.curves import run_artifact_text
from acorm_pl.errors import require
from acorm_pl.sweep.runner import TAG
from acorm_pl.sweep.status import main_run
from acorm_pl.tracking import STACK_TAG, source_commit

RESULTS_DIR = Path("docs/results")
COLUMNS = ("map", "variant", "seed", "env_step", "test_win_rate", "test_return_mean", "test_ep_length_mean",
           "wall_time_s")
METRICS = {"test_win_rate": "test/win_rate", "test_return_mean": "test/return_mean",
           "test_ep_length_mean": "test/ep_length_mean"}
# each pilot picks the maps of the arm after it; qmix_x8 is the QMIX host at the paper's update ratio
ARMS = ("qmix_pilot", "qmix", "qmix_x8", "mappo_pilot", "mappo")
CLOCK = "time/run_s"  # seconds trained, summed over a run's attempts (callbacks.Evaluation)
PAUSE_MIN_S = 300.0  # runs from before the clock: this long without logging anything is a pause between attempts
ACTIVITY = "perf/env_steps_per_s"  # logged every few updates by every run (callbacks.ThroughputMonitor)
# logged at every contrastive step (Eq. 3); positive_fraction is the accuracy of a key drawn at random
CONTRASTIVE = {"loss": "roles/contrastive_loss", "accuracy": "roles/accuracy",
               "positive_fraction": "roles/positive_fraction"}
EDGE_STEPS = 5  # the start and the end of the contrastive learning: means over its first and last five steps


@dataclass
class StudyRun:
    """One trial of the study as read back from ``docs/results``."""

    arm: str
    map: str
    variant: str
    seed: int
    env_steps: np.ndarray  # [E] env steps of the evaluations
    win_rate: np.ndarray  # [E] test win rate of each evaluation
    return_mean: np.ndarray  # [E]
    facts: dict[str, Any]  # the run's JSON: budget, update ratio, wall time, commit, ...


def run_stem(variant: str, seed: int) -> str:
    """File name (without suffix) of a run's files within its map directory."""
    return f"{variant}_s{seed}"


def _history(client: MlflowClient, run_id: str, metric: str) -> dict[int, tuple[float, int]]:
    """step -> (value, timestamp ms) of ``metric``, the later value where a step was logged twice (a resumed
    run repeats the evaluation it was interrupted after)."""
    points: dict[int, tuple[float, int]] = {}
    for m in sorted(client.get_metric_history(run_id, metric), key=lambda m: (m.step, m.timestamp)):
        points[int(m.step)] = (float(m.value), int(m.timestamp))
    return points


def active_seconds(run: Run, eval_ms: list[int], clock: list[float | None], activity_ms: list[int]
                   ) -> tuple[list[float], float]:
    """(seconds trained at each evaluation, seconds of the MLflow run's span not counted) for a run whose
    evaluations were logged at ``eval_ms`` (ms since the epoch) with the run clock ``clock`` (``time/run_s``,
    None where missing), and which logged anything at all at ``activity_ms`` (training metrics included).

    A run that logged its clock at every evaluation is read from it; what it leaves out of the run's span is
    the pauses between attempts, the start-up before training (imports, environments) and the shut-down. One
    from before the clock is read from timestamps: a stretch of more than PAUSE_MIN_S in which the run logged
    nothing (it logs training metrics every few updates, however slowly it runs) is a pause between attempts.
    """
    start = run.info.start_time or (eval_ms[0] if eval_ms else 0)
    total = max(0.0, ((run.info.end_time or start) - start) / 1000)
    if clock and all(c is not None for c in clock):
        return [float(c) for c in clock], max(0.0, total - float(clock[-1]))
    end = run.info.end_time or max([start, *activity_ms, *eval_ms])
    inside = [t for t in (*activity_ms, *eval_ms) if start <= t <= end]  # a clock set wrong can log outside
    marks = np.asarray(sorted({start, *inside}), dtype=np.float64) / 1000
    gaps = np.diff(marks)
    pause_ends, pause_lengths = marks[1:][gaps > PAUSE_MIN_S], gaps[gaps > PAUSE_MIN_S]
    seconds = [round((t - start) / 1000 - float(pause_lengths[pause_ends <= t / 1000].sum()), 1) for t in eval_ms]
    return seconds, float(pause_lengths.sum())


def contrastive_facts(client: MlflowClient, run_id: str) -> dict[str, Any] | None:
    """How the run's contrastive learning went: the number of contrastive steps, the InfoNCE loss and the
    accuracy (share of anchors whose best-scoring key is a positive) averaged over the first and over the last
    :data:`EDGE_STEPS` steps, the largest loss, and the mean share of keys that are positives (the accuracy of
    a key drawn at random). None for a run without contrastive steps."""
    histories = {key: _history(client, run_id, name) for key, name in CONTRASTIVE.items()}
    steps = sorted(set.intersection(*(set(h) for h in histories.values())))  # the three are logged together
    if not steps:
        return None

    def mean(key: str, at: list[int]) -> float:
        return round(float(np.mean([histories[key][s][0] for s in at])), 4)

    first, last = steps[:EDGE_STEPS], steps[-EDGE_STEPS:]
    return {"steps": len(steps), "loss_first": mean("loss", first), "loss_last": mean("loss", last),
            "loss_max": round(max(histories["loss"][s][0] for s in steps), 4),
            "accuracy_first": mean("accuracy", first), "accuracy_last": mean("accuracy", last),
            "positive_fraction": mean("positive_fraction", steps)}


def run_facts(run: Run, config: dict[str, Any], commit: str | None, env_steps: int, not_counted_s: float = 0.0
              ) -> dict[str, Any]:
    """What a reader needs to judge a run: budget, update ratio, evaluation protocol, wall time, and speed
    (``env_steps`` collected over the wall time, evaluations included; the wall time is the MLflow run's span
    less ``not_counted_s``, see :func:`active_seconds`)."""
    data, model = config.get("data") or {}, (config.get("model") or {})
    evaluation = config.get("evaluation") or {}
    tags = run.data.tags
    wall = max(0.0, ((run.info.end_time or 0) - (run.info.start_time or 0)) / 1000 - not_counted_s)
    facts = {
        "arm_host": model.get("class_path", "").rsplit(".", 1)[-1],
        "sweep": tags.get(f"{TAG}sweep"), "trial": tags.get(f"{TAG}trial"), "mlflow_run_id": run.info.run_id,
        "status": run.info.status, "commit": tags.get(f"{TAG}git_commit") or commit,
        "total_env_steps": data.get("total_env_steps"), "n_envs": data.get("n_envs"),
        "batch_size": data.get("batch_size"), "updates_per_collect": data.get("updates_per_collect"),
        "ppo_epochs": (model.get("init_args") or {}).get("ppo_epochs"),
        "eval_interval": evaluation.get("eval_interval"), "n_eval_episodes": evaluation.get("n_eval_episodes"),
        "env_steps": env_steps, "wall_time_s": round(wall, 1),
        "env_steps_per_s": round(env_steps / wall, 1) if wall > 0 else None,
        "not_counted_s": round(not_counted_s, 1),
    }
    stack = {key[len(STACK_TAG):]: value for key, value in sorted(tags.items()) if key.startswith(STACK_TAG)}
    if stack:  # runs since the stack was recorded: what a rerun has to match to repeat this one exactly
        facts["stack"] = stack
    return facts


def export_sweep(sweep_dir: str | Path, arm: str, out: str | Path = RESULTS_DIR,
                 client: MlflowClient | None = None) -> tuple[list[Path], list[str]]:
    """Write every FINISHED trial of the sweep in ``sweep_dir`` (its ``mlruns.db``) to
    ``out/<arm>/<map>/<variant>_s<seed>.{csv,yaml,json}``. Returns the files written and the trials left out
    (not finished yet) with their status."""
    require(arm in ARMS, f"arm must be one of {', '.join(ARMS)}, got {arm!r}")
    sweep_dir = Path(sweep_dir)
    db = sweep_dir / "mlruns.db"
    require(client is not None or db.is_file(), f"no sweep store at {db} (run acorm-pl sweep first)")
    client = client or MlflowClient(tracking_uri=f"sqlite:///{db.resolve()}")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()],
                              f"tags.`{TAG}sweep` != ''", max_results=50_000)
    by_trial: dict[str, list[Run]] = {}
    for r in runs:
        by_trial.setdefault(r.data.tags.get(f"{TAG}trial", ""), []).append(r)
    commit = source_commit(sweep_dir)  # for runs made before runs recorded their commit
    written, skipped = [], []
    for trial, trial_runs in sorted(by_trial.items()):
        run = main_run(trial_runs)
        if run is None or run.info.status != "FINISHED":
            skipped.append(f"{trial} ({run.info.status if run else 'no run'})")
            continue
        tags = run.data.tags
        require(f"{TAG}map" in tags, f"trial {trial} has no map tag: the study's sweeps set data.map_name")
        map_name, variant, seed = tags[f"{TAG}map"], tags[f"{TAG}variant"], int(tags[f"{TAG}seed"])
        config_text = run_artifact_text(client, run, "config.yaml") or ""
        histories = {col: _history(client, run.info.run_id, name) for col, name in METRICS.items()}
        steps = sorted(histories["test_win_rate"])
        require(bool(steps), f"trial {trial} finished without a test/win_rate")
        clock = _history(client, run.info.run_id, CLOCK)
        activity = [m.timestamp for m in client.get_metric_history(run.info.run_id, ACTIVITY)]
        seconds, not_counted_s = active_seconds(run, [histories["test_win_rate"][s][1] for s in steps],
                                                [clock[s][0] if s in clock else None for s in steps], activity)
        target = Path(out) / arm / map_name
        target.mkdir(parents=True, exist_ok=True)
        stem = target / run_stem(variant, seed)
        with stem.with_suffix(".csv").open("w", newline="") as f:
            w = csv.writer(f)
            w.writerow(COLUMNS)
            for s, elapsed in zip(steps, seconds):
                values = [histories[c].get(s, (float("nan"), 0))[0] for c in METRICS]
                w.writerow([map_name, variant, seed, s, *(f"{v:.6g}" for v in values), round(elapsed, 1)])
        stem.with_suffix(".yaml").write_text(config_text)
        facts = run_facts(run, yaml.safe_load(config_text) or {}, _recorded_commit(stem, run) or commit,
                          steps[-1], not_counted_s)
        contrastive = contrastive_facts(client, run.info.run_id)
        if contrastive is not None:
            facts["contrastive"] = contrastive
        stem.with_suffix(".json").write_text(json.dumps(facts, indent=1) + "\n")
        written += [stem.with_suffix(s) for s in (".csv", ".yaml", ".json")]
    return written, skipped


def _recorded_commit(stem: Path, run: Run) -> str | None:
    """The commit an earlier export of this same MLflow run recorded, so that re-exporting a run made before
    runs tagged their commit keeps the commit it ran at instead of taking today's checkout."""
    path = stem.with_suffix(".json")
    if not path.is_file():
        return None
    with contextlib.suppress(ValueError):
        earlier = json.loads(path.read_text())
        if earlier.get("mlflow_run_id") == run.info.run_id:
            return earlier.get("commit")
    return None


def load_results(root: str | Path = RESULTS_DIR) -> list[StudyRun]:
    """Every exported run under ``root`` (``<arm>/<map>/<variant>_s<seed>.csv`` with its JSON beside it)."""
    runs = []
    for path in sorted(Path(root).glob("*/*/*.csv")):
        arm = path.parent.parent.name
        if arm not in ARMS:
            continue
        with path.open(newline="") as f:
            rows = list(csv.DictReader(f))
        require(bool(rows) and set(COLUMNS) <= set(rows[0]), f"{path}: expected the columns {', '.join(COLUMNS)}")
        facts_path = path.with_suffix(".json")
        facts = json.loads(facts_path.read_text()) if facts_path.is_file() else {}
        runs.append(StudyRun(arm, rows[0]["map"], rows[0]["variant"], int(rows[0]["seed"]),
                             np.array([int(r["env_step"]) for r in rows]),
                             np.array([float(r["test_win_rate"]) for r in rows]),
                             np.array([float(r["test_return_mean"]) for r in rows]), facts))
    return runs
