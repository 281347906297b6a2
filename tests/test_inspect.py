"""Inspection of a trained ACORM checkpoint: per-timestep embeddings, roles, clusters and attention."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient

from acorm_pl.algos import ACORM
from acorm_pl.analysis import inspect_checkpoint, load_checkpoint
from acorm_pl.cli import main

REPO = Path(__file__).resolve().parents[1]


def test_inspect_acorm_checkpoint(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    main(["fit", "--config", str(REPO / "conf" / "quickstart.yaml"), "--model.class_path", "acorm_pl.algos.ACORM",
          "--model.init_args.embed_dim", "32", "--model.init_args.role_dim", "16", "--data.n_envs", "4",
          "--data.buffer_size", "32", "--data.batch_size", "4", "--data.total_env_steps", "300",
          "--data.epoch_env_steps", "300", "--evaluation.n_eval_episodes", "4", "--roles.interval", "2",
          "--trainer.enable_model_summary", "false"])
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlruns.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("quickstart").experiment_id])
    assert "roles/contrastive_loss" in run.data.metrics
    ckpt = Path(run.info.artifact_uri.removeprefix("file://")) / "checkpoints" / "last.ckpt"

    model, data = load_checkpoint(ckpt)
    assert isinstance(model, ACORM) and data["map_name"] == "3m"
    records = inspect_checkpoint(ckpt, n_episodes=3, seed=5)
    assert len(records) == 3
    for rec in records:
        t = rec.length
        assert rec.embeddings.shape == (t, 3, 32) and rec.roles.shape == (t, 3, 16)
        assert rec.attention.shape == (t, 4, 3)
        assert torch.allclose(rec.attention.sum(-1), torch.ones(t, 4), atol=1e-5)
        assert ((rec.cluster_labels >= 0) == rec.alive).all()
        assert rec.unit_types == ["marine"] * 3  # decoded from the state by the SMAX adapter
        assert rec.alive.dtype == torch.bool and torch.equal(rec.health > 0, rec.alive)  # as the environment said
        assert rec.actions.shape == (t, 3) and rec.rewards.sum().item() == pytest.approx(rec.episode_return)
    # the same seed gives the same greedy episodes
    again = inspect_checkpoint(ckpt, n_episodes=3, seed=5)
    assert [r.length for r in again] == [r.length for r in records]
    assert torch.equal(again[0].actions, records[0].actions)


def test_load_checkpoint_refuses_foreign_checkpoints(tmp_path):
    path = tmp_path / "foreign.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": {}}, path)
    with pytest.raises(ValueError, match="not written by an acorm-pl algorithm"):
        load_checkpoint(path)
