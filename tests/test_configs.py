"""Every shipped config parses, instantiates and matches the paper's hyperparameters where it says so."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from fake_smac import install_fake_smac

from acorm_pl.algos import ACORM, QMIX
from acorm_pl.cli import build_cli
from acorm_pl.data.episode_buffer import EpisodeReplayBuffer
from acorm_pl.envs.smax import available_maps

CONF = Path(__file__).resolve().parents[1] / "conf"
CONFIGS = sorted(CONF.rglob("*.yaml"))
SMAC_FIG2_MAPS = {"2s3z", "3s5z", "5m_vs_6m", "corridor", "3s5z_vs_3s6z", "MMM2"}  # the paper's Fig. 2


GRF_PAPER_SCENARIOS = {"academy_3_vs_1_with_keeper", "academy_counterattack_hard", "academy_run_to_score_with_keeper"}


@pytest.mark.parametrize("algo", ["qmix", "acorm"])
def test_there_is_a_grf_config_for_every_paper_scenario(algo):
    assert {p.stem.removeprefix(f"{algo}_") for p in (CONF / "football").glob(f"{algo}_*.yaml")} == GRF_PAPER_SCENARIOS


def _is_smac(path: Path) -> bool:
    return path.parent.name == "smac" or path == CONF / "mmm2.yaml"


@pytest.mark.parametrize("algo", ["qmix", "acorm"])
def test_there_is_a_paper_config_for_every_smax_map(algo):
    assert {p.stem.removeprefix(f"{algo}_") for p in (CONF / "smax").glob(f"{algo}_*.yaml")} == set(available_maps())


@pytest.mark.parametrize("algo", ["qmix", "acorm"])
def test_there_is_a_smac_config_for_every_fig2_map(algo):
    assert {p.stem.removeprefix(f"{algo}_") for p in (CONF / "smac").glob(f"{algo}_*.yaml")} == SMAC_FIG2_MAPS


def test_mmm2_config_is_the_smac_acorm_mmm2_config():
    assert yaml.safe_load((CONF / "mmm2.yaml").read_text()) == yaml.safe_load(
        (CONF / "smac" / "acorm_MMM2.yaml").read_text())


@pytest.mark.parametrize("map_name", sorted(SMAC_FIG2_MAPS))
def test_smac_qmix_and_acorm_configs_share_everything_but_the_model(map_name):
    acorm, qmix = (yaml.safe_load((CONF / "smac" / f"{a}_{map_name}.yaml").read_text()) for a in ("acorm", "qmix"))
    for section in ("seed_everything", "data", "epsilon", "evaluation"):
        assert acorm[section] == qmix[section], section
    assert qmix["model"]["init_args"]["lr"] == acorm["model"]["init_args"]["lr"]


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
    if _is_smac(path):  # no StarCraft II here: SMAC's env info comes from the documented double
        install_fake_smac(monkeypatch, tmp_path / "StarCraftII")
    cli = build_cli(["--config", str(path), "--trainer.logger", "false"], run=False)
    model, data = cli.model, cli.datamodule
    assert isinstance(model, QMIX)  # ACORM is a QMIX subclass
    assert model.info == data.env_info  # linked from the data module
    assert data.batch_size <= data.buffer_size
    if _is_smac(path):
        assert data.env_name == "smac" and data.map_name in SMAC_FIG2_MAPS
        # Table 2's 5000 episodes fit a 24 GiB machine on every Fig. 2 map (sized on the meta device)
        buffer = EpisodeReplayBuffer(data.env_info, data.buffer_size, device="meta")
        assert data.buffer_size == 5000 and buffer.nbytes < 24 * 2**30
    if path.parent.name == "football":  # Appendix C: the paper's three scenarios and its reward
        assert data.env_name == "football" and data.map_name in GRF_PAPER_SCENARIOS
        assert data.env_kwargs["reward"] == "paper" and data.buffer_size == 5000
    if path.parent.name in ("smax", "football") or _is_smac(path):
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
