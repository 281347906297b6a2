"""Learning curves over seeds from MLflow stores: grouping, step alignment, bootstrap bands, the figure's
lines, the summary table and ``acorm-pl curves``."""

# ruff: noqa: I001  (acorm_pl must be imported before torch: it sets OMP_WAIT_POLICY)
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import acorm_pl  # noqa: F401
import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from acorm_pl.analysis.curves import (
    curves_figure,
    grid_interval,
    learning_curves,
    load_runs,
    summary_rows,
    tracking_uris,
)
from acorm_pl.cli import main
from cli_errors import assert_one_line_error

EXPERIMENT = "learning-ablation"


def _win_rate(group: str, seed: int, step: int) -> float:
    slope = 0.8 if group == "ACORM" else 0.4
    return min(1.0, slope * step / 10_000 + 0.02 * seed)


def _store(path: Path, groups: list[str], seeds: list[int]) -> None:
    """An sqlite store like the learning benchmark's: runs <group>-s<seed>, evaluations every ~1000 env steps
    at jittered steps, a final larger evaluation at the last step, an eval_interval in config.yaml."""
    path.mkdir(parents=True)
    client = MlflowClient(tracking_uri=f"sqlite:///{path / 'mlruns.db'}")
    exp = client.create_experiment(EXPERIMENT, artifact_location=(path / "mlartifacts").as_uri())
    config = path / "config.yaml"
    config.write_text("evaluation:\n  eval_interval: 1000\n")
    for group in groups:
        for seed in seeds:
            run = client.create_run(exp, run_name=f"{group}-s{seed}")
            rid = run.info.run_id
            client.log_param(rid, "seed", str(seed))
            client.set_tag(rid, "variant", group)
            steps = [0] + [k * 1000 + 7 * seed + 3 for k in range(1, 11)]
            for i, step in enumerate(steps):
                client.log_metric(rid, "test/win_rate", _win_rate(group, seed, step), step=step, timestamp=i)
            client.log_metric(rid, "test/win_rate", 0.9 if group == "ACORM" else 0.1, step=steps[-1], timestamp=99)
            client.log_artifact(rid, str(config))
            client.set_terminated(rid, "FINISHED")
    running = client.create_run(exp, run_name="ACORM-s9")  # still running: left out by default
    client.log_metric(running.info.run_id, "test/win_rate", 0.0, step=0)


@pytest.fixture(scope="module")
def stores(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("bench")
    _store(root / "acorm", ["ACORM"], [0, 1, 2])
    _store(root / "qmix", ["QMIX"], [0, 1])
    return root


def test_stores_are_found_under_a_directory(stores):
    uris = tracking_uris([stores])
    assert len(uris) == 2 and all(u.startswith("sqlite:///") and u.endswith("mlruns.db") for u in uris)
    assert tracking_uris([stores / "acorm"]) == tracking_uris([stores / "acorm" / "mlruns.db"])


def test_runs_are_grouped_by_name_and_aligned_on_the_eval_grid(stores):
    runs = load_runs([stores], EXPERIMENT)
    assert sorted((r.group, r.seed) for r in runs) == [("ACORM", "0"), ("ACORM", "1"), ("ACORM", "2"),
                                                       ("QMIX", "0"), ("QMIX", "1")]
    assert grid_interval(runs) == 1000  # from config.yaml
    curves = learning_curves(runs, n_resamples=1000)
    assert [c.group for c in curves] == ["ACORM", "QMIX"]
    acorm = curves[0]
    assert acorm.steps.tolist() == list(range(0, 11_000, 1000)) and acorm.values.shape == (3, 11)
    assert (acorm.count == 3).all()
    expected = np.mean([_win_rate("ACORM", s, 5000 + 7 * s + 3) for s in range(3)])
    assert acorm.mean[5] == pytest.approx(expected)
    assert acorm.mean[-1] == pytest.approx(0.9) and acorm.low[-1] == acorm.high[-1]  # the final evaluation wins
    assert ((acorm.low <= acorm.mean + 1e-12) & (acorm.mean <= acorm.high + 1e-12)).all()
    assert (acorm.high[1:-1] > acorm.low[1:-1]).all()  # seeds differ there


def test_figure_has_one_line_and_one_band_per_group(stores):
    curves = learning_curves(load_runs([stores], EXPERIMENT), n_resamples=500)
    ax = curves_figure(curves).axes[0]
    assert len(ax.lines) == 2 and len(ax.collections) == 2
    for line, curve in zip(ax.lines, curves):
        assert np.array_equal(line.get_xdata(), curve.steps) and np.allclose(line.get_ydata(), curve.mean)
        assert line.get_label().startswith(curve.group)


def test_a_long_title_stays_inside_the_figure(stores):
    curves = learning_curves(load_runs([stores], EXPERIMENT), n_resamples=200)
    title = "SMAX 3s5z_vs_3s6z, ACORM-MAPPO host (Fig. 9): test win rate, mean over seeds, 95% bootstrap band"
    fig = curves_figure(curves, title=title)
    fig.canvas.draw()
    box = fig.axes[0].title.get_window_extent()
    assert box.x0 >= 0 and box.x1 <= fig.bbox.width
    assert " ".join(fig.axes[0].get_title().split()) == title  # wrapped, not shortened


def test_win_rate_axis_spans_zero_to_one_and_labels_count_seeds(stores):
    curves = learning_curves(load_runs([stores], EXPERIMENT), n_resamples=200)
    low, high = curves_figure(curves).axes[0].get_ylim()
    assert low <= 0 and high >= 1
    one = curves_figure([replace(curves[0], seeds=curves[0].seeds[:1])]).axes[0]
    assert one.lines[0].get_label() == f"{curves[0].group} (1 seed)"


def test_group_by_tag_and_group_order(stores):
    runs = load_runs([stores], EXPERIMENT, group_by="tag:variant")
    curves = learning_curves(runs, groups=["variant=QMIX", "variant=ACORM"], n_resamples=200)
    assert [c.group for c in curves] == ["variant=QMIX", "variant=ACORM"]
    assert len(load_runs([stores], EXPERIMENT, status=None)) == 7  # with the running ones


def test_summary_final_and_area_under_curve(stores):
    curves = learning_curves(load_runs([stores], EXPERIMENT), n_resamples=500)
    rows = {r["group"]: r for r in summary_rows(curves, n_resamples=500)}
    assert rows["ACORM"]["n_seeds"] == 3 and rows["ACORM"]["final"] == pytest.approx(0.9)
    assert rows["ACORM"]["final_low"] == rows["ACORM"]["final_high"]
    assert rows["ACORM"]["auc"] > rows["QMIX"]["auc"] and rows["QMIX"]["last_step"] == 10_000
    assert rows["QMIX"]["auc_low"] <= rows["QMIX"]["auc"] <= rows["QMIX"]["auc_high"]


def test_curves_command_writes_files_and_logs_them_to_mlflow(stores, tmp_path, capsys):
    out = tmp_path / "out"
    uri = f"sqlite:///{tmp_path / 'analysis.db'}"
    main(["curves", str(stores), "--experiment", EXPERIMENT, "--out", str(out), "--resamples", "300",
          "--tracking-uri", uri])
    printed = capsys.readouterr().out
    assert "ACORM" in printed and "QMIX" in printed and "area under curve" in printed
    summary = json.loads((out / "summary.json").read_text())
    assert [g["group"] for g in summary["groups"]] == ["ACORM", "QMIX"]
    rows = (out / "curves.csv").read_text().splitlines()
    assert rows[0] == "group,step,mean,low,high,n_seeds" and len(rows) == 1 + 2 * 11
    client = MlflowClient(tracking_uri=uri)
    (run,) = client.search_runs([client.get_experiment_by_name("analysis").experiment_id])
    logged = {a.path for a in client.list_artifacts(run.info.run_id, "curves")}
    assert {"curves/curves.png", "curves/curves.csv", "curves/summary.json"} <= logged


@pytest.mark.parametrize(("args", "expected"), [
    (["/nonexistent/store"], "no MLflow store at /nonexistent/store"),
    (["{stores}", "--group-by", "colour"], "group_by must be 'name', 'tag:<key>' or 'param:<key>'"),
    (["{stores}", "--experiment", "nope"], "no FINISHED run with metric 'test/win_rate' in experiment 'nope'"),
    (["{stores}", "--groups", "MAPPO"], "no runs in group(s) ['MAPPO']"),
    (["{stores}", "--resamples", "x"], "argument --resamples: invalid int value"),
])
def test_bad_curves_input_fails_with_one_line(stores, tmp_path, capsys, args, expected):
    argv = ["curves", *[a.format(stores=stores) for a in args], "--out", str(tmp_path), "--no-mlflow"]
    assert_one_line_error(argv, capsys, expected)
