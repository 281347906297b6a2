"""Role maps, attention heatmaps, ``acorm-pl evaluate`` and the RoleFigures callback on a tiny trained ACORM
checkpoint: the data behind each figure (panels, points, heatmap arrays), not its pixels."""

# ruff: noqa: I001  (acorm_pl must be imported before torch: it sets OMP_WAIT_POLICY)
from __future__ import annotations

import json
from pathlib import Path

import acorm_pl  # noqa: F401
import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient

from acorm_pl.algos import QMIX
from acorm_pl.analysis import (
    attention_figure,
    evaluate_checkpoint,
    inspect_checkpoint,
    load_records,
    record_episodes,
    role_map_data,
    role_map_figure,
    save_records,
)
from acorm_pl.cli import main
from acorm_pl.envs import get_env_info, make_vec_env
from acorm_pl.errors import ConfigError
from tiny_runs import RUN_NAME, tiny_acorm_checkpoint, tiny_acorm_store
from cli_errors import assert_one_line_error

pytestmark = pytest.mark.slow  # trains a tiny ACORM run once (about 20 s with SMAX compilation)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    return tiny_acorm_checkpoint(tmp_path_factory)


@pytest.fixture(scope="module")
def record(ckpt):
    (rec,) = inspect_checkpoint(ckpt, n_episodes=1, seed=3, n_envs=4)
    return rec


def test_callback_logs_role_figures_as_mlflow_artifacts(ckpt, tmp_path_factory):
    client = MlflowClient(tracking_uri=f"sqlite:///{tiny_acorm_store(tmp_path_factory) / 'mlruns.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("notebooks").experiment_id],
                                f"attributes.run_name = '{RUN_NAME}'")
    steps = sorted(a.path for a in client.list_artifacts(run.info.run_id, "figures"))
    assert len(steps) == 2  # at 200 env steps and at the end
    for step_dir in steps:
        files = {Path(a.path).name for a in client.list_artifacts(run.info.run_id, step_dir)}
        assert files == {"role_map.png", "role_map.json", "attention.png", "attention.csv"}
    local = Path(run.info.artifact_uri.removeprefix("file://")) / steps[-1]
    panels = json.loads((local / "role_map.json").read_text())
    assert 1 <= len(panels) <= 3 and all(len(p["embedding_xy"]) == 3 and len(p["role_xy"]) == 3 for p in panels)
    rows = (local / "attention.csv").read_text().splitlines()
    assert rows[0] == "timestep,head,agent,label,alive,weight" and (len(rows) - 1) % (4 * 3) == 0


def test_role_map_panels_and_points(record):
    last = record.length - 1
    panels = role_map_data(record, [0, last // 2, last])
    assert [p.timestep for p in panels] == [0, last // 2, last]
    for p in panels:
        assert p.embedding_xy.shape == (3, 2) and p.role_xy.shape == (3, 2)
        assert np.abs(p.embedding_xy).max() <= 1 + 1e-9 and np.abs(p.role_xy).max() <= 1 + 1e-9
        assert p.labels == ["0 marine", "1 marine", "2 marine"]
        assert np.array_equal(p.clusters, record.cluster_labels[p.timestep].numpy())
        assert np.allclose(p.health, record.health[p.timestep].numpy())
    fig = role_map_figure(panels)
    assert len(fig.axes) == 3
    for ax, p in zip(fig.axes, panels):
        dots, stars = ax.collections  # embeddings, then roles
        assert np.allclose(dots.get_offsets(), p.embedding_xy) and np.allclose(stars.get_offsets(), p.role_xy)
        assert [t.get_text() for t in ax.texts[:3]] == p.labels


def test_attention_heatmap_per_head(record):
    fig = attention_figure(record)
    maps = [ax for ax in fig.axes if ax.images]
    assert len(maps) == 4  # one per head (the colour bar is an axes without images)
    for h, ax in enumerate(maps):
        assert np.allclose(ax.images[0].get_array(), record.attention[:, h, :].T.numpy())
        assert ax.get_title() == f"head {h}"


def test_health_and_alive_agree_and_records_round_trip(record, tmp_path):
    assert record.health.shape == record.alive.shape
    assert torch.equal(record.health > 0, record.alive)
    assert (record.health[0] == 1).all()
    (again,) = load_records(save_records([record], tmp_path / "rec.pt"))
    assert again.length == record.length and torch.equal(again.attention, record.attention)
    assert again.unit_types == record.unit_types and torch.equal(again.health, record.health)


def test_evaluation_outcomes_do_not_depend_on_recording(ckpt):
    plain, none = evaluate_checkpoint(ckpt, n_episodes=6, seed=5, n_envs=4)
    recorded, records = evaluate_checkpoint(ckpt, n_episodes=6, seed=5, n_envs=4, record=True)
    assert none == [] and len(records) == 6 and plain.n_episodes == 6
    assert np.array_equal(plain.won, recorded.won) and np.allclose(plain.returns, recorded.returns)
    assert np.array_equal(plain.lengths, [r.length for r in records])
    m = plain.metrics()
    assert m["test/win_rate_low"] <= m["test/win_rate"] <= m["test/win_rate_high"]
    assert m["test/return_mean"] == pytest.approx(plain.returns.mean())


def test_evaluate_command(ckpt, tmp_path, capsys):
    uri = f"sqlite:///{tmp_path / 'eval.db'}"
    main(["evaluate", str(ckpt), "--episodes", "5", "--n-envs", "4", "--record", str(tmp_path / "rec.pt"),
          "--figures", str(tmp_path / "figs"), "--timesteps", "0", "2", "--tracking-uri", uri])
    out = capsys.readouterr().out
    assert "ACORM on smax 3m" in out and "test win rate" in out
    assert len(load_records(tmp_path / "rec.pt")) == 5
    assert len(json.loads((tmp_path / "figs" / "role_map.json").read_text())) == 2
    client = MlflowClient(tracking_uri=uri)
    (run,) = client.search_runs([client.get_experiment_by_name("evaluation").experiment_id])
    summary = json.loads((Path(run.info.artifact_uri.removeprefix("file://")) / "evaluation.json").read_text())
    assert run.data.metrics["test/win_rate"] == pytest.approx(np.mean(summary["episodes"]["won"]))
    assert run.data.metrics["test/n_episodes"] == 5
    assert run.data.tags["acorm_pl.source_run_id"] == summary["source_run_id"] is not None
    logged = {a.path for d in ("figures", "records") for a in client.list_artifacts(run.info.run_id, d)}
    assert {"figures/role_map.png", "figures/attention.png", "records/rec.pt"} <= logged


@pytest.mark.parametrize(("args", "expected"), [
    (["/nonexistent.ckpt"], "no checkpoint at /nonexistent.ckpt"),
    (["{ckpt}", "--episodes", "0"], "--episodes: must be a positive integer, got '0'"),
    (["{ckpt}", "--figures", "{tmp}", "--timesteps", "999"], "timesteps [999] are outside the episode"),
    ([], "the following arguments are required: checkpoint"),
])
def test_bad_evaluate_input_fails_with_one_line(ckpt, tmp_path, capsys, args, expected):
    argv = ["evaluate", *[a.format(ckpt=ckpt, tmp=tmp_path) for a in args], "--n-envs", "4", "--no-mlflow"]
    assert_one_line_error(argv, capsys, expected)


def test_qmix_role_map_has_no_stars_and_no_attention():
    env = make_vec_env("smax", "3m", [0, 1, 2, 3])
    model = QMIX(env_info=get_env_info("smax", "3m").as_dict(), embed_dim=16)
    try:
        (rec,) = record_episodes(model, env, 1)
    finally:
        env.close()
    assert rec.roles is None and rec.attention is None and model.training  # the train mode is restored
    panels = role_map_data(rec, [0], fit_on="panels")
    assert panels[0].role_xy is None
    assert len(role_map_figure(panels).axes[0].collections) == 1
    with pytest.raises(ConfigError, match="no attention weights"):
        attention_figure(rec)
