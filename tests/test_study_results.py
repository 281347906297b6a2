"""The study's results pipeline: a sweep's finished MLflow runs exported to CSV/YAML/JSON under docs/results, the
report's statistics computed from them by hand, and both commands driven through the CLI."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import numpy as np
import pytest
import yaml
from cli_errors import assert_one_line_error
from mlflow.tracking import MlflowClient

from acorm_pl.analysis.report import cells, comparison, final_value, first_reaching, render, value_at
from acorm_pl.analysis.stats import bootstrap_diff_ci
from acorm_pl.analysis.study import COLUMNS, StudyRun, load_results
from acorm_pl.cli import main

STEPS = [0, 10_240, 20_480, 30_720, 40_960, 51_200, 61_440, 71_680, 81_920, 92_160, 102_400]


def _fake_sweep(sweep_dir, finals: dict[tuple[str, int], float]) -> MlflowClient:
    """A sweep store like ``acorm-pl sweep`` leaves: one run per (variant, seed) with the sweep's tags, a
    test/win_rate ramp to ``final``, test/return_mean and a config.yaml artifact; plus one unfinished run."""
    sweep_dir.mkdir()
    client = MlflowClient(tracking_uri=f"sqlite:///{sweep_dir / 'mlruns.db'}")
    exp = client.create_experiment("study", artifact_location=(sweep_dir / "mlartifacts").as_uri())
    config = {"data": {"map_name": "3s5z", "total_env_steps": 100_000, "n_envs": 8, "batch_size": 32,
                       "updates_per_collect": 1},
              "evaluation": {"eval_interval": 10_000, "n_eval_episodes": 32},
              "model": {"class_path": "acorm_pl.algos.MAPPO"}}
    for (variant, seed), final in finals.items():
        run = client.create_run(exp, run_name=f"{variant}-3s5z-s{seed}", start_time=1_000_000, tags={
            "acorm_pl.sweep": "study", "acorm_pl.trial": f"{variant}-3s5z-s{seed}", "acorm_pl.variant": variant,
            "acorm_pl.seed": str(seed), "acorm_pl.map": "3s5z", "acorm_pl.git_commit": "abc123def456",
            "acorm_pl.stack.torch": "2.13.0+cpu", "acorm_pl.stack.cpu": "AMD EPYC"})
        rid = run.info.run_id
        for i, step in enumerate(STEPS):
            value = final * i / (len(STEPS) - 1)
            client.log_metric(rid, "test/win_rate", value, timestamp=1_000_000 + 1000 * (i + 1), step=step)
            client.log_metric(rid, "test/return_mean", 20 * value, timestamp=1_000_000 + 1000 * (i + 1), step=step)
            client.log_metric(rid, "test/ep_length_mean", 60.0, timestamp=1_000_000 + 1000 * (i + 1), step=step)
        client.log_metric(rid, "perf/env_steps_per_s", 750.0, step=STEPS[-1])
        client.log_text(rid, yaml.safe_dump(config), "config.yaml")
        client.set_terminated(rid, "FINISHED", end_time=1_000_000 + 120_000)
    unfinished = client.create_run(exp, run_name="MAPPO-3s5z-s9", tags={
        "acorm_pl.sweep": "study", "acorm_pl.trial": "MAPPO-3s5z-s9", "acorm_pl.variant": "MAPPO",
        "acorm_pl.seed": "9", "acorm_pl.map": "3s5z"})
    client.log_metric(unfinished.info.run_id, "test/win_rate", 0.5, step=10_240)
    return client


@pytest.fixture
def exported(workdir, capsys):
    finals = {("MAPPO", 0): 0.5, ("MAPPO", 1): 0.6, ("MAPPO", 2): 0.7,
              ("ACORM-MAPPO", 0): 0.8, ("ACORM-MAPPO", 1): 0.9, ("ACORM-MAPPO", 2): 1.0}
    _fake_sweep(workdir / "sweep", finals)
    main(["results", "export", "sweep", "--arm", "mappo", "--results", "results"])
    out = capsys.readouterr().out
    assert "exported 6 runs" in out and "MAPPO-3s5z-s9 (RUNNING)" in out
    return workdir / "results", finals


def test_export_writes_one_csv_config_and_facts_per_finished_run(exported):
    root, finals = exported
    files = sorted(p.name for p in (root / "mappo" / "3s5z").iterdir())
    assert files == sorted(f"{v}_s{s}.{ext}" for v, s in finals for ext in ("csv", "json", "yaml"))
    with (root / "mappo" / "3s5z" / "MAPPO_s1.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert tuple(rows[0]) == COLUMNS
    assert [int(r["env_step"]) for r in rows] == STEPS
    assert float(rows[-1]["test_win_rate"]) == pytest.approx(0.6)
    assert float(rows[-1]["test_return_mean"]) == pytest.approx(12.0)
    assert float(rows[0]["wall_time_s"]) == pytest.approx(1.0) and float(rows[-1]["wall_time_s"]) == pytest.approx(11)
    facts = json.loads((root / "mappo" / "3s5z" / "MAPPO_s1.json").read_text())
    assert facts["commit"] == "abc123def456" and facts["wall_time_s"] == 120.0
    assert facts["updates_per_collect"] == 1 and facts["total_env_steps"] == 100_000
    assert facts["env_steps"] == 102_400 and facts["env_steps_per_s"] == pytest.approx(102_400 / 120, abs=0.1)
    assert facts["eval_interval"] == 10_000
    assert facts["stack"] == {"cpu": "AMD EPYC", "torch": "2.13.0+cpu"}  # what a rerun has to match
    config = yaml.safe_load((root / "mappo" / "3s5z" / "MAPPO_s1.yaml").read_text())
    assert config["data"]["map_name"] == "3s5z"


def _resumed_run(client: MlflowClient, exp: str, variant: str, clock: bool) -> None:
    """A FINISHED trial evaluated every 10 s, interrupted after its 4th evaluation, paused 2000 s and resumed
    (with the run clock when ``clock``: 40 s trained at the checkpoint; the resume redoes 5 s of lost work)."""
    run = client.create_run(exp, start_time=1_000_000, tags={
        "acorm_pl.sweep": "study", "acorm_pl.trial": f"{variant}-8m-s0", "acorm_pl.variant": variant,
        "acorm_pl.seed": "0", "acorm_pl.map": "8m"})
    rid = run.info.run_id
    seconds = [10, 20, 30, 40, 2055, 2065, 2075]  # since the start; the pause between 40 and 2055
    for i, t in enumerate(seconds):
        client.log_metric(rid, "test/win_rate", 0.1 * i, timestamp=1_000_000 + 1000 * t, step=10_000 * i)
        if clock:
            client.log_metric(rid, "time/run_s", [10, 20, 30, 40, 55, 65, 75][i], step=10_000 * i)
    # training metrics every 2 s while an attempt runs: the first until 44 s, the second from 2049 s
    for t in [*range(2, 45, 2), *range(2049, 2080, 2)]:
        client.log_metric(rid, "perf/env_steps_per_s", 500.0, timestamp=1_000_000 + 1000 * t, step=250 * t)
    client.log_text(rid, yaml.safe_dump({"data": {"total_env_steps": 60_000}}), "config.yaml")
    client.set_terminated(rid, "FINISHED", end_time=1_000_000 + 2_080_000)


def _slowed_run(client: MlflowClient, exp: str) -> None:
    """A FINISHED trial from before the clock that slowed down (starved of CPU) but never stopped: evaluations
    at 10, 20, 30, 400 and 800 s, training metrics every 60 s throughout."""
    run = client.create_run(exp, start_time=1_000_000, tags={
        "acorm_pl.sweep": "study", "acorm_pl.trial": "QMIX-128-8m-s0", "acorm_pl.variant": "QMIX-128",
        "acorm_pl.seed": "0", "acorm_pl.map": "8m"})
    rid = run.info.run_id
    for i, t in enumerate([10, 20, 30, 400, 800]):
        client.log_metric(rid, "test/win_rate", 0.1 * i, timestamp=1_000_000 + 1000 * t, step=10_000 * i)
    for t in range(0, 801, 60):
        client.log_metric(rid, "perf/env_steps_per_s", 100.0, timestamp=1_000_000 + 1000 * t, step=50 * t)
    client.log_text(rid, yaml.safe_dump({"data": {"total_env_steps": 40_000}}), "config.yaml")
    client.set_terminated(rid, "FINISHED", end_time=1_000_000 + 800_000)


def test_export_leaves_the_pause_of_a_resumed_run_out_of_its_wall_time(workdir, capsys):
    (workdir / "sweep").mkdir()
    client = MlflowClient(tracking_uri=f"sqlite:///{workdir / 'sweep' / 'mlruns.db'}")
    exp = client.create_experiment("study", artifact_location=(workdir / "sweep" / "mlartifacts").as_uri())
    _resumed_run(client, exp, "QMIX", clock=False)
    _resumed_run(client, exp, "ACORM", clock=True)
    _slowed_run(client, exp)
    main(["results", "export", "sweep", "--arm", "qmix", "--results", "results"])
    capsys.readouterr()

    def read(variant):
        with (workdir / "results" / "qmix" / "8m" / f"{variant}_s0.csv").open() as f:
            rows = [float(r["wall_time_s"]) for r in csv.DictReader(f)]
        return rows, json.loads((workdir / "results" / "qmix" / "8m" / f"{variant}_s0.json").read_text())

    # Before the clock: the 2005 s in which the run logged nothing (over 300 s) is a pause, and is not counted.
    rows, facts = read("QMIX")
    assert rows == [10, 20, 30, 40, 50, 60, 70]
    assert facts["not_counted_s"] == 2005.0 and facts["wall_time_s"] == 2080.0 - 2005.0
    assert facts["env_steps_per_s"] == pytest.approx(60_000 / 75.0, abs=0.1)
    # A run that only slowed down has no pause, however long between two evaluations.
    rows, facts = read("QMIX-128")
    assert rows == [10, 20, 30, 400, 800] and facts["not_counted_s"] == 0.0 and facts["wall_time_s"] == 800.0
    # With the clock: its values, and the run's span less the clock's last value is the pause.
    rows, facts = read("ACORM")
    assert rows == [10, 20, 30, 40, 55, 65, 75]
    assert facts["not_counted_s"] == 2080.0 - 75.0 and facts["wall_time_s"] == 75.0
    text = render(cells(load_results(workdir / "results")), {}, workdir)
    assert ("| ACORM | 0 | 60k | 7 x ? episodes | 1 min (33 min outside training not counted: start-up, shut-down "
            "and any pause between attempts) | 800 | ? TD update(s) of ? episodes per ? collected | ? |") in text


def test_report_statistics_by_hand(exported):
    root, finals = exported
    runs = load_results(root)
    assert len(runs) == 6
    by = {(c.variant): c for c in cells(runs, n_resamples=2000)}
    mappo = by["MAPPO"]
    # final = mean of the last five evaluations: ramp i/10 * final for i = 6..10 -> 0.8 * final
    assert mappo.final == pytest.approx([0.8 * 0.5, 0.8 * 0.6, 0.8 * 0.7])
    # AUC of a linear ramp from 0 to final is final / 2 (the env steps are evenly spaced)
    assert mappo.auc == pytest.approx([0.25, 0.3, 0.35])
    mean, low, high, n = mappo.marks[100_000]  # nearest evaluation: 102,400 (within 5,120) -> the last value
    assert mean == pytest.approx(0.6) and n == 3 and low <= 0.6 <= high
    assert 100_000 in mappo.marks and 250_000 not in mappo.marks  # no mark past the budget
    line = comparison(by["ACORM-MAPPO"], mappo, n_resamples=2000)
    assert "ACORM-MAPPO ends higher than MAPPO" in line and "difference +0.24" in line and "disjoint" in line
    # AUC: 0.45 against 0.30; resampling each side's 3 seeds keeps the difference within [+0.05, +0.25]
    auc = re.search(r"AUC 0\.45 vs 0\.30, difference \+0\.15 \[([+-][\d.]+), ([+-][\d.]+)\]", line)
    assert auc and 0.05 <= float(auc[1]) <= 0.15 <= float(auc[2]) <= 0.25
    two = cells([r for r in runs if r.seed < 2], n_resamples=500)  # two seeds each: numbers, no verdict
    line = comparison(two[1], two[0], n_resamples=500)
    assert "too few seeds for a comparison" in line and "ends higher" not in line


def test_value_at_and_final_value():
    run = StudyRun("mappo", "3s5z", "MAPPO", 0, np.array([0, 10_000, 20_000, 30_000]),
                   np.array([0.0, 0.1, 0.2, 0.4]), np.zeros(4), {})
    assert value_at(run, 10_000) == pytest.approx(0.1)
    assert value_at(run, 24_000) == pytest.approx(0.2)  # within half an interval
    assert np.isnan(value_at(run, 100_000))  # the run never got there
    assert final_value(run, last=2) == pytest.approx(0.3)


def test_bootstrap_diff_ci():
    low, high = bootstrap_diff_ci([1.0, 1.0, 1.0], [0.0, 0.0], n_resamples=500)
    assert low == high == 1.0
    low, high = bootstrap_diff_ci([0.0, 1.0], [0.0, 1.0], n_resamples=2000)
    assert low == pytest.approx(-1.0) and high == pytest.approx(1.0)
    low, high = bootstrap_diff_ci([0.4, 0.5, 0.6], [0.1, 0.2, 0.3], n_resamples=2000)
    assert 0.1 < low < 0.3 < high < 0.5


def test_bootstrap_diff_ci_is_antisymmetric_and_ignores_seed_order():
    # A verdict near zero must not flip with which variant is passed first (it did when the sides were
    # resampled in argument order: on 10m_vs_11m the rare-step ACORM-MAPPO minus noCL gave [-0.34, -0.00], "ends
    # lower", and noCL minus it [-0.01, +0.34], "no difference").
    a, b = [0.94, 0.86, 0.68, 0.91, 0.89], [0.64, 0.54, 0.86]
    low, high = bootstrap_diff_ci(a, b)
    back_low, back_high = bootstrap_diff_ci(b, a)
    assert (back_low, back_high) == pytest.approx((-high, -low), abs=1e-12)
    assert bootstrap_diff_ci(a[::-1], b[1:] + b[:1]) == pytest.approx((low, high), abs=1e-12)
    assert low < np.mean(a) - np.mean(b) < high


def test_report_written_through_the_cli(exported, capsys):
    root, _ = exported
    (root / "notes.md").write_text("## What the data support\n\nA hand-written paragraph.\n")
    main(["results", "report", "--results", str(root), "--out", "docs/results.md", "--figures", "docs/study"])
    text = (root.parent / "docs" / "results.md").read_text()
    assert "### SMAX 3s5z" in text and "A hand-written paragraph." in text
    assert "![mappo 3s5z](study/mappo_3s5z.png)" in text and (root.parent / "docs/study/mappo_3s5z.png").is_file()
    assert "| MAPPO | 3 | 0.60 [" in text  # the 100k mark over three seeds
    assert "Mava IPPO / MAPPO: ~1.0 / 0.97" in text  # the published figures for the map


def test_results_bad_input_is_one_line(workdir, capsys):
    assert_one_line_error(["results", "export", "nowhere", "--arm", "mappo"], capsys, "no sweep store at nowhere")
    assert_one_line_error(["results", "export", "nowhere", "--arm", "vdn"], capsys, "invalid choice: 'vdn'")
    assert_one_line_error(["results", "report", "--results", "nothing"], capsys, "no results directory at nothing")


def test_committed_report_is_what_the_committed_results_give(tmp_path, capsys):
    """docs/results.md regenerates, word for word, from the CSV files under docs/results (one command)."""
    repo = Path(__file__).resolve().parents[1]
    out = tmp_path / "docs" / "results.md"
    main(["results", "report", "--results", str(repo / "docs" / "results"), "--out", str(out),
          "--figures", str(tmp_path / "docs" / "gallery" / "study")])
    assert out.read_text() == (repo / "docs" / "results.md").read_text()


def test_the_full_methods_variants_are_compared_with_it_as_well_as_with_the_host(tmp_path):
    steps = np.arange(0, 110_000, 10_000)

    def run(variant: str, seed: int, final: float) -> StudyRun:
        return StudyRun("mappo", "3s5z", variant, seed, steps, np.full(len(steps), final), np.zeros(len(steps)), {})

    finals = {"MAPPO": (0.5, 0.55, 0.6), "ACORM-MAPPO": (0.9, 0.92, 0.94), "ACORM-MAPPO-noCL": (0.6, 0.62, 0.64)}
    runs = [run(v, seed, f) for v, fs in finals.items() for seed, f in enumerate(fs)]
    text = render(cells(runs, n_resamples=500), {}, tmp_path)
    against_full = text.split("Against the full method (ACORM-MAPPO), its ablations and variants:")[1]
    line = next(ln for ln in against_full.splitlines() if ln.startswith("- "))
    assert "ACORM-MAPPO-noCL ends lower than ACORM-MAPPO" in line and "difference -0.30" in line
    assert "- 3s5z: ACORM-MAPPO-noCL ends higher than MAPPO" in text  # and still against the host


def test_acorm_is_compared_with_matched_capacity_qmix(tmp_path):
    steps = np.arange(0, 110_000, 10_000)
    finals = {"ACORM": (0.40, 0.45, 0.50), "QMIX": (0.20, 0.25, 0.30), "QMIX-128": (0.42, 0.45, 0.48)}
    runs = [StudyRun("qmix", "2s3z", v, seed, steps, np.full(len(steps), f), np.zeros(len(steps)), {})
            for v, fs in finals.items() for seed, f in enumerate(fs)]
    text = render(cells(runs, n_resamples=500), {}, tmp_path)
    matched = text.split("Against the host at matched capacity (QMIX-128):")[1]
    assert matched.strip().splitlines()[0].startswith("- 2s3z: no difference shown between ACORM and QMIX-128 "
                                                      "(final 0.45 vs 0.45, difference +0.00")


def test_re_export_keeps_the_commit_an_untagged_run_was_first_exported_with(workdir, capsys):
    """A run from before runs tagged their commit takes the sweep checkout's commit at its first export; a later
    export, from a checkout that has moved on, must not relabel it (nor copy a commit onto a different run)."""
    (workdir / "sweep").mkdir()
    client = MlflowClient(tracking_uri=f"sqlite:///{workdir / 'sweep' / 'mlruns.db'}")
    exp = client.create_experiment("study", artifact_location=(workdir / "sweep" / "mlartifacts").as_uri())
    _slowed_run(client, exp)
    facts_path = workdir / "results" / "qmix" / "8m" / "QMIX-128_s0.json"
    main(["results", "export", "sweep", "--arm", "qmix", "--results", "results"])
    first = json.loads(facts_path.read_text())
    facts_path.write_text(json.dumps({**first, "commit": "0123456789ab"}))  # as exported from an older checkout
    main(["results", "export", "sweep", "--arm", "qmix", "--results", "results"])
    assert json.loads(facts_path.read_text())["commit"] == "0123456789ab"
    facts_path.write_text(json.dumps({**first, "commit": "0123456789ab", "mlflow_run_id": "another-run"}))
    main(["results", "export", "sweep", "--arm", "qmix", "--results", "results"])
    capsys.readouterr()
    assert json.loads(facts_path.read_text())["commit"] == first["commit"] != "0123456789ab"


def test_how_soon_is_each_seeds_first_evaluation_at_the_threshold(tmp_path):
    steps = np.array([0, 250_000, 500_000, 750_000, 1_000_000, 1_250_000])
    fast = StudyRun("mappo", "3s5z", "MAPPO", 0, steps, np.array([0.0, 0.4, 0.5, 0.95, 0.8, 0.9]), steps * 0.0, {})
    slow = StudyRun("mappo", "3s5z", "MAPPO", 1, steps, np.array([0.0, 0.1, 0.2, 0.3, 0.6, 0.7]), steps * 0.0, {})
    assert first_reaching(fast, 0.5) == 500_000 and first_reaching(fast, 0.9) == 750_000
    assert first_reaching(slow, 0.5) == 1_000_000 and first_reaching(slow, 0.9) is None
    text = render(cells([fast, slow], n_resamples=200), {}, tmp_path)
    assert "| MAPPO | s0 500k, s1 1M | s0 750k, s1 never |" in text
    late = StudyRun("mappo", "3s5z", "MAPPO", 2, steps + 3_210, np.array([0, 0, 0, 0, 0, 0.5]), steps * 0.0, {})
    assert "s2 1.25M" in render(cells([late], n_resamples=200), {}, tmp_path)


def test_the_contrastive_loss_at_the_papers_rate_is_compared_with_none(tmp_path):
    """Where the arm's full method took its contrastive step more rarely than the paper, the report also sets the
    same network without the loss against the paper's rate, the comparison that isolates the loss."""
    steps = np.arange(0, 110_000, 10_000)
    finals = {"MAPPO": (0.5, 0.55, 0.6), "ACORM-MAPPO": (0.9, 0.92, 0.94), "ACORM-MAPPO-Tcl1": (0.7, 0.8, 0.9),
              "ACORM-MAPPO-noCL": (0.3, 0.32, 0.34)}
    runs = [StudyRun("mappo", "3s5z", v, seed, steps, np.full(len(steps), f), np.zeros(len(steps)), {})
            for v, fs in finals.items() for seed, f in enumerate(fs)]
    text = render(cells(runs, n_resamples=500), {}, tmp_path)
    section = text.split("The contrastive loss at the paper's rate (ACORM-MAPPO-Tcl1) against none "
                         "(ACORM-MAPPO-noCL, the same network):")[1]
    line = section.strip().splitlines()[0]
    assert line.startswith("- 3s5z: ACORM-MAPPO-noCL ends lower than ACORM-MAPPO-Tcl1 (final 0.32 vs 0.80, "
                           "difference -0.48")
    runs = [r for r in runs if r.variant != "ACORM-MAPPO-Tcl1"]
    assert "at the paper's rate" not in render(cells(runs, n_resamples=500), {}, tmp_path)


def test_export_summarises_each_runs_contrastive_learning_and_the_report_shows_it(workdir, capsys):
    """The InfoNCE loss and accuracy of the first and last five contrastive steps (a resumed run's repeated step
    counted once, at its later value), the largest loss, the chance accuracy; none for a run without the loss."""
    client = _fake_sweep(workdir / "sweep", {("MAPPO", 0): 0.5, ("ACORM-MAPPO", 0): 0.9})
    run = client.search_runs([e.experiment_id for e in client.search_experiments()],
                             "tags.`acorm_pl.trial` = 'ACORM-MAPPO-3s5z-s0'")[0]
    losses = [1.2, 1.0, 3.0, 1.1, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2]
    for i, loss in enumerate(losses):
        step = 1_000 * (i + 1)
        client.log_metric(run.info.run_id, "roles/contrastive_loss", loss, timestamp=10 * i, step=step)
        client.log_metric(run.info.run_id, "roles/accuracy", 0.1 * (i % 10), timestamp=10 * i, step=step)
        client.log_metric(run.info.run_id, "roles/positive_fraction", 0.25, timestamp=10 * i, step=step)
    client.log_metric(run.info.run_id, "roles/contrastive_loss", 0.7, timestamp=999, step=12_000)  # resumed: again
    main(["results", "export", "sweep", "--arm", "mappo", "--results", "results"])
    facts = json.loads((workdir / "results" / "mappo" / "3s5z" / "ACORM-MAPPO_s0.json").read_text())
    assert facts["contrastive"] == pytest.approx({
        "steps": 12, "loss_first": (1.2 + 1.0 + 3.0 + 1.1 + 0.9) / 5, "loss_last": (0.6 + 0.5 + 0.4 + 0.3 + 0.7) / 5,
        "loss_max": 3.0, "accuracy_first": 0.2, "accuracy_last": (0.7 + 0.8 + 0.9 + 0.0 + 0.1) / 5,
        "positive_fraction": 0.25}, abs=1e-4)
    assert "contrastive" not in json.loads((workdir / "results" / "mappo" / "3s5z" / "MAPPO_s0.json").read_text())
    main(["results", "report", "--results", "results", "--out", "results.md", "--figures", "figs"])
    capsys.readouterr()
    report = (workdir / "results.md").read_text()
    assert "| ACORM-MAPPO | 0 | 12 | 1.44 -> 0.50 (3.00) | 0.20 -> 0.50 | 0.25 |" in report
