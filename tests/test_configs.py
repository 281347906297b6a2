"""Every shipped config parses, instantiates and matches the paper's hyperparameters where it says so."""

from __future__ import annotations

from pathlib import Path

import pytest

from acorm_pl.algos import ACORM, QMIX
from acorm_pl.cli import build_cli
from acorm_pl.envs.smax import available_maps

CONF = Path(__file__).resolve().parents[1] / "conf"
CONFIGS = sorted(CONF.rglob("*.yaml"))


@pytest.mark.parametrize("algo", ["qmix", "acorm"])
def test_there_is_a_paper_config_for_every_smax_map(algo):
    assert {p.stem.removeprefix(f"{algo}_") for p in (CONF / "smax").glob(f"{algo}_*.yaml")} == set(available_maps())


ABLATIONS = {"wo_cl": (False, True, True), "wo_mha": (True, False, True), "vanilla": (True, False, False)}


@pytest.mark.parametrize("variant", sorted(ABLATIONS))
@pytest.mark.parametrize("map_name", ["3s5z_vs_3s6z", "5m_vs_6m"])
def test_ablation_configs_flip_exactly_their_switches(variant, map_name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    full = build_cli(["--config", str(CONF / "smax" / f"acorm_{map_name}.yaml"), "--trainer.logger", "false"],
                     run=False).model.hparams
    path = CONF / "smax" / "ablations" / f"acorm_{variant}_{map_name}.yaml"
    ablated = build_cli(["--config", str(path), "--trainer.logger", "false"], run=False).model.hparams
    switches = ("contrastive", "attention", "state_encoder")
    assert tuple(ablated[k] for k in switches) == ABLATIONS[variant]
    assert {k: v for k, v in ablated.items() if k not in switches} == {k: v for k, v in full.items()
                                                                       if k not in switches}


@pytest.mark.parametrize("path", CONFIGS, ids=[str(p.relative_to(CONF)) for p in CONFIGS])
def test_config_instantiates(path, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cli = build_cli(["--config", str(path), "--trainer.logger", "false"], run=False)
    model, data = cli.model, cli.datamodule
    assert isinstance(model, QMIX)  # ACORM is a QMIX subclass
    assert model.info == data.env_info  # linked from the data module
    assert data.batch_size <= data.buffer_size
    if path.parent.name == "smax":
        hp = model.hparams
        assert (hp.lr, hp.gamma, hp.tau, hp.hypernet_embed, hp.hypernet_layers) == (6e-4, 0.99, 0.005, 32, 2)
        assert data.batch_size == 32 and cli.config.epsilon.anneal_steps == 80_000
        assert cli.config.evaluation.eval_interval == 5000 and cli.config.evaluation.n_eval_episodes == 32
    if isinstance(model, ACORM):  # Tables 1-2
        hp = model.hparams
        assert (hp.embed_dim, hp.role_dim, hp.state_embed_dim, hp.n_heads, hp.attn_dim, hp.attn_out_dim) == (
            128, 64, 64, 4, 128, 64)
        assert (hp.n_clusters, hp.contrastive_lr, hp.key_encoder_tau) == (3, 8e-4, 0.005)
        assert cli.config.roles.interval == 100
