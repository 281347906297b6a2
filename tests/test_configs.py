"""Every shipped config parses, instantiates and matches the paper's hyperparameters where it says so."""

from __future__ import annotations

from pathlib import Path

import pytest

from acorm_pl.algos import QMIX
from acorm_pl.cli import build_cli
from acorm_pl.envs.smax import available_maps

CONF = Path(__file__).resolve().parents[1] / "conf"
CONFIGS = sorted(CONF.rglob("*.yaml"))


def test_there_is_a_paper_config_for_every_smax_map():
    assert {p.stem.removeprefix("qmix_") for p in (CONF / "smax").glob("qmix_*.yaml")} == set(available_maps())


@pytest.mark.parametrize("path", CONFIGS, ids=[str(p.relative_to(CONF)) for p in CONFIGS])
def test_config_instantiates(path, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cli = build_cli(["--config", str(path), "--trainer.logger", "false"], run=False)
    model, data = cli.model, cli.datamodule
    assert isinstance(model, QMIX)
    assert model.info == data.env_info  # linked from the data module
    assert data.batch_size <= data.buffer_size
    if path.parent.name == "smax":
        hp = model.hparams
        assert (hp.lr, hp.gamma, hp.tau, hp.hypernet_embed, hp.hypernet_layers) == (6e-4, 0.99, 0.005, 32, 2)
        assert data.batch_size == 32 and cli.config.epsilon.anneal_steps == 80_000
        assert cli.config.evaluation.eval_interval == 5000 and cli.config.evaluation.n_eval_episodes == 32
