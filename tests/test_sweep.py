# ruff: noqa: I001  (acorm_pl must be imported before torch: it sets OMP_WAIT_POLICY)
"""``acorm-pl sweep`` for real: Ray schedules the smoke sweep's four trials two at a time on two CPUs into one
MLflow tracking server; a trial SIGKILLed mid-run resumes from its checkpoint into the same run; a rerun
starts nothing; bad sweep files fail before anything starts; nothing outlives the command."""

from __future__ import annotations

import acorm_pl  # noqa: F401  (sets OMP_WAIT_POLICY before torch loads)

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import torch
from mlflow.tracking import MlflowClient

from acorm_pl.cli import main
from acorm_pl.sweep import load_sweep
from acorm_pl.sweep.spec import check_trials
from acorm_pl.sweep.runner import checkpoint_env_steps, latest_checkpoint
from acorm_pl.tracking import source_commit
from cli_errors import assert_one_line_error

REPO = Path(__file__).resolve().parents[1]
SMOKE = REPO / "conf" / "sweeps" / "smoke.yaml"
TRIALS = {"QMIX-3m-s0", "ACORM-3m-s0", "QMIX-3m-s1", "ACORM-3m-s1"}


def _sweep_processes() -> set[tuple[int, float]]:
    """Ray's processes, MLflow servers (and their uvicorn workers) and trial processes now running."""
    found = set()
    for p in psutil.process_iter(["name", "cmdline", "create_time", "status"]):
        if p.info["status"] == psutil.STATUS_ZOMBIE:
            continue
        name, cmd = p.info["name"] or "", " ".join(p.info["cmdline"] or [])
        ray = name in ("raylet", "gcs_server") or name.startswith("ray::") or cmd.startswith("ray::") \
            or "site-packages/ray/" in cmd
        mlflow = "mlflow" in cmd and ("server" in cmd or "uvicorn" in cmd)
        if ray or mlflow or "acorm_pl.sweep.child" in cmd:
            found.add((p.pid, p.info["create_time"]))
    return found


def _trial_process(trial_dir: Path) -> psutil.Process | None:
    """The running ``acorm-pl fit`` of the trial in ``trial_dir``."""
    marker = f"--checkpoint_dir={trial_dir / 'checkpoints'}"
    for p in psutil.process_iter(["cmdline"]):
        cmd = p.info["cmdline"] or []
        if "acorm_pl.sweep.child" in cmd and marker in cmd:
            return p
    return None


def _attempts(directory: Path, trial: str) -> list[dict]:
    return [json.loads(line) for line in (directory / "trials" / trial / "attempts.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    """The smoke sweep run once by ``acorm-pl sweep`` in a child process (2 CPUs); the first trial to write
    its first checkpoint (epoch 0 of 3) is SIGKILLed."""
    directory = tmp_path_factory.mktemp("sweep") / "smoke"
    before = _sweep_processes()
    env = {**os.environ, "COLUMNS": "160"}
    env.pop("MLFLOW_TRACKING_URI", None)
    log = directory.parent / "sweep.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "acorm_pl.cli", "sweep", str(SMOKE), "--dir", str(directory),
                                 "--num-cpus", "2"], cwd=REPO, stdout=out, stderr=subprocess.STDOUT, env=env)
        killed, deadline = None, time.monotonic() + 540
        while proc.poll() is None and time.monotonic() < deadline:
            for trial_dir in sorted((directory / "trials").glob("*")) if killed is None else []:
                checkpoint = latest_checkpoint(trial_dir / "checkpoints")
                victim = _trial_process(trial_dir) if checkpoint and checkpoint.name.startswith("epoch=0-") else None
                if victim is not None:
                    victim.kill()
                    killed = (trial_dir.name, time.time())
                    break
            time.sleep(0.2)
        if proc.poll() is None:
            proc.kill()
        returncode = proc.wait()
    deadline = time.monotonic() + 15
    while (left := _sweep_processes() - before) and time.monotonic() < deadline:
        time.sleep(0.5)
    return {"dir": directory, "returncode": returncode, "output": log.read_text(), "killed": killed,
            "left": left}


def _runs(directory: Path) -> list:
    client = MlflowClient(tracking_uri=f"sqlite:///{directory / 'mlruns.db'}")
    experiment = client.get_experiment_by_name("sweep-smoke")
    return client.search_runs([experiment.experiment_id]), client


@pytest.mark.slow
def test_smoke_sweep_runs_every_trial_into_one_experiment(smoke):
    assert smoke["returncode"] == 0, smoke["output"][-3000:]
    runs, _ = _runs(smoke["dir"])
    assert {r.info.run_name for r in runs} == TRIALS and len(runs) == 4  # one run per trial, the killed one too
    for run in runs:
        tags = run.data.tags
        variant, map_name, seed = run.info.run_name.split("-")
        assert run.info.status == "FINISHED"
        assert tags["acorm_pl.sweep"] == "smoke" and tags["acorm_pl.trial"] == run.info.run_name
        assert (tags["acorm_pl.variant"], tags["acorm_pl.map"], tags["acorm_pl.grid.map"]) == (variant, "3m", "3m")
        assert tags["acorm_pl.seed"] == run.data.params["seed"] == seed[1:]
        assert tags.get("acorm_pl.git_commit") == source_commit()  # the code each run ran
    # two trials at a time on two CPUs, never more
    spans = [(a["started"], a["ended"]) for t in TRIALS for a in _attempts(smoke["dir"], t)]
    overlap = max(sum(s <= t < e for s, e in spans) for t, _ in spans)
    assert overlap == 2


@pytest.mark.slow
def test_a_killed_trial_resumes_from_its_checkpoint_into_the_same_run(smoke):
    assert smoke["killed"] is not None, "no trial was caught between its first checkpoint and its end"
    trial, killed_at = smoke["killed"]
    first, second = _attempts(smoke["dir"], trial)
    assert first["returncode"] == -9 and first["error"] == "killed by SIGKILL" and first["checkpoint"] is None
    assert second["returncode"] == 0 and second["checkpoint"] and second["resumed_env_steps"] >= 1000
    runs, client = _runs(smoke["dir"])
    (run,) = [r for r in runs if r.info.run_name == trial]
    final = latest_checkpoint(smoke["dir"] / "trials" / trial / "checkpoints")
    state = torch.load(final, map_location="cpu", weights_only=False)
    assert state["mlflow_run_id"] == run.info.run_id and state["RolloutDataModule"]["env_steps"] >= 3000
    # the retry's metrics continue from the checkpoint's env steps; nothing restarted from 0
    history = [m for key in ("test/win_rate", "train/td_loss") for m in client.get_metric_history(run.info.run_id, key)]
    after_kill = [m.step for m in history if m.timestamp > killed_at * 1000]
    assert after_kill and min(after_kill) >= second["resumed_env_steps"] and max(after_kill) >= 3000
    assert [m.step for m in client.get_metric_history(run.info.run_id, "test/win_rate")].count(0) == 1


@pytest.mark.slow
def test_nothing_outlives_the_sweep(smoke):
    assert smoke["left"] == set()


@pytest.mark.slow
def test_a_second_run_starts_no_trial_and_status_and_curves_read_the_sweep(smoke, capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(REPO)
    monkeypatch.setenv("COLUMNS", "200")
    attempts = {t: len(_attempts(smoke["dir"], t)) for t in TRIALS}
    main(["sweep", str(SMOKE), "--dir", str(smoke["dir"])])
    assert "all 4 trials are FINISHED; nothing to run" in capsys.readouterr().out
    assert {t: len(_attempts(smoke["dir"], t)) for t in TRIALS} == attempts and len(_runs(smoke["dir"])[0]) == 4

    main(["sweep", str(SMOKE), "--dir", str(smoke["dir"]), "--status"])
    lines = [ln for ln in capsys.readouterr().out.splitlines() if any(t in ln for t in TRIALS)]
    assert len(lines) == 4 and all("FINISHED" in ln and "3,0" in ln for ln in lines)

    main(["curves", str(smoke["dir"]), "--experiment", "sweep-smoke", "--group-by",
          "tag:acorm_pl.variant,tag:acorm_pl.map", "--resamples", "200", "--out", str(tmp_path), "--no-mlflow"])
    groups = json.loads((tmp_path / "summary.json").read_text())["groups"]
    assert [(g["group"], g["n_seeds"]) for g in groups] == [("acorm_pl.variant=ACORM, acorm_pl.map=3m", 2),
                                                             ("acorm_pl.variant=QMIX, acorm_pl.map=3m", 2)]


def _sweep_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "sweep.yaml"
    path.write_text(text)
    return path


GOOD = """name: bad
variants:
  QMIX:
    config:
      - conf/algo/qmix.yaml
      - conf/env/smax/{map}.yaml
seeds: [0]
grid: {map: [3m]}
"""


@pytest.mark.parametrize(("text", "expected"), [
    (GOOD.replace("seeds:", "seed:"), "unknown key(s) ['seed']"),
    (GOOD + "overrides: {data.totl_env_steps: 1000}\n", "trial QMIX-3m-s0: unrecognized arguments: "
                                                        "--data.totl_env_steps"),
    (GOOD.replace("algo/qmix.yaml", "algo/qmx.yaml"), "variant QMIX: config file"),
    (GOOD.replace("{map: [3m]}", "{map: [3m], mapp: [1]}"), "'mapp' is neither a fit option"),
    (GOOD + "overrides: {seed_everything: 3}\n", "'seed_everything' is set by the sweep for every trial"),
    (GOOD + "overrides: {total_env_steps: 3}\n", "'total_env_steps' is not a fit option"),
    (GOOD + "overrides: {trainer.logger.init_args.run_name: x}\n", "is set by the sweep for every trial"),
    (GOOD + "resources: {cpus: 0}\n", "resources.cpus must be a positive integer, got 0"),
    (GOOD + "resources: {cpus: 100000}\n", "a trial needs 100000 CPUs"),
])
def test_a_bad_sweep_file_fails_before_anything_starts(tmp_path, capsys, monkeypatch, text, expected):
    monkeypatch.chdir(REPO)
    directory = tmp_path / "out"
    assert_one_line_error(["sweep", str(_sweep_file(tmp_path, text)), "--dir", str(directory)], capsys, expected)
    assert not directory.exists()


def test_trials_expand_seed_major_with_overrides_in_order(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    text = GOOD.replace("seeds: [0]", "seeds: [0, 1]").replace("{map: [3m]}", "{map: [3m, 8m], data.n_envs: [2]}")
    text = text.replace("smax/{map}.yaml\n", "smax/{map}.yaml\n    overrides: {data.n_envs: 4, data.batch_size: 8}\n"
                        "  ACORM:\n    config:\n      - conf/algo/acorm.yaml\n      - conf/env/smax/{map}.yaml\n")
    sweep = load_sweep(_sweep_file(tmp_path, text + "overrides: {data.batch_size: 16}\n"), tmp_path / "d")
    trials = sweep.trials()
    assert [t.trial_id for t in trials] == [f"{v}-{m}-2-s{s}" for s in (0, 1) for m in ("3m", "8m")
                                            for v in ("QMIX", "ACORM")]
    qmix = trials[0]
    assert qmix.configs == (REPO / "conf" / "algo" / "qmix.yaml", REPO / "conf" / "env" / "smax" / "3m.yaml")
    # the sweep's overrides, then the variant's, then the grid point's: later ones win on the command line
    assert qmix.overrides == ("--data.batch_size=16", "--data.n_envs=4", "--data.batch_size=8", "--data.n_envs=2")
    args = sweep.fit_args(qmix)
    assert f"--checkpoint_dir={tmp_path / 'd' / 'trials' / 'QMIX-3m-2-s0' / 'checkpoints'}" in args
    assert "--seed_everything=0" in args and "--torch_num_threads=1" in args


def test_only_selects_trials_by_pattern_in_sweep_order(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(REPO)
    monkeypatch.setenv("COLUMNS", "200")
    text = GOOD.replace("seeds: [0]", "seeds: [0, 1, 2]").replace("{map: [3m]}", "{map: [3m, 8m]}")
    path = _sweep_file(tmp_path, text)
    sweep = load_sweep(path, tmp_path / "d")
    assert [t.trial_id for t in sweep.select(["*-3m-*"])] == ["QMIX-3m-s0", "QMIX-3m-s1", "QMIX-3m-s2"]
    assert [t.trial_id for t in sweep.select(["*-s2", "QMIX-8m-s0"])] == ["QMIX-8m-s0", "QMIX-3m-s2", "QMIX-8m-s2"]
    assert sweep.select(None) == sweep.trials()
    main(["sweep", str(path), "--dir", str(tmp_path / "d"), "--status", "--only", "*-8m-*"])
    shown = [ln for ln in capsys.readouterr().out.splitlines() if "QMIX-" in ln]
    assert [ln.split()[1] for ln in shown] == ["QMIX-8m-s0", "QMIX-8m-s1", "QMIX-8m-s2"]
    assert_one_line_error(["sweep", str(path), "--dir", str(tmp_path / "d"), "--only", "*-3s5z-*"], capsys,
                          f"--only '*-3s5z-*' matches no trial of {path}; its trials: QMIX-3m-s0, QMIX-8m-s0,")
    assert not (tmp_path / "d").exists()


def test_resume_takes_the_newest_readable_checkpoint_not_last_ckpt(tmp_path):
    assert latest_checkpoint(tmp_path) is None
    paths = [tmp_path / f"epoch={i}-step={i}.ckpt" for i in range(3)]
    for i, path in enumerate(paths):
        torch.save({"RolloutDataModule": {"env_steps": 1000 * (i + 1)}}, path)
        os.utime(path, (i + 1, i + 1))
    (tmp_path / "last.ckpt").symlink_to(paths[0].name)  # left behind by a resume that wrote last-v1.ckpt
    (tmp_path / "last-v1.ckpt").symlink_to(paths[1].name)
    paths[2].write_bytes(paths[2].read_bytes()[:100])  # killed while it was being written
    assert latest_checkpoint(tmp_path) == paths[1] and checkpoint_env_steps(paths[1]) == 2000


@pytest.mark.parametrize("path", sorted((REPO / "conf" / "sweeps").glob("*.yaml")), ids=lambda p: p.stem)
def test_every_shipped_sweep_file_resolves(path, monkeypatch):
    """Each sweep file of conf/sweeps (the study's among them) loads and every trial parses with fit's parser."""
    monkeypatch.chdir(REPO)
    sweep = load_sweep(path)
    trials = sweep.trials()
    resolved = check_trials(sweep, trials)
    assert trials and set(resolved) == {t.trial_id for t in trials}
    for trial in trials:  # resolved once per variant and grid point: the map is the trial's
        assert resolved[trial.trial_id]["data"]["map_name"] == trial.point["map"]
