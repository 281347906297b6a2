"""Every shipped config parses, instantiates and matches the paper's hyperparameters where it says so."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from engines import needs_football
from fake_smac import install_fake_smac

from acorm_pl.algos import ACORM, ACORMMAPPO, MAPPO, QMIX
from acorm_pl.algos.base import MARLModule
from acorm_pl.cli import build_cli
from acorm_pl.data.episode_buffer import EpisodeReplayBuffer
from acorm_pl.envs.smax import available_maps

CONF = Path(__file__).resolve().parents[1] / "conf"
CONFIGS = sorted(p for p in CONF.rglob("*.yaml") if p.parent.name != "sweeps")  # sweep files: tests/test_sweep.py
SMAC_FIG2_MAPS = {"2s3z", "3s5z", "5m_vs_6m", "corridor", "3s5z_vs_3s6z", "MMM2"}  # the paper's Fig. 2 (and Fig. 9)
ALGOS = ["qmix", "acorm", "mappo", "acorm_mappo"]


def _maps(folder: Path, algo: str) -> set[str]:
    """Map names of ``algo``'s configs in ``folder`` (``acorm_<map>`` excludes ``acorm_mappo_<map>``)."""
    longer = [a for a in ALGOS if a != algo and a.startswith(f"{algo}_")]
    return {p.stem.removeprefix(f"{algo}_") for p in folder.glob(f"{algo}_*.yaml")
            if not any(p.stem.startswith(f"{a}_") for a in longer)}


GRF_PAPER_SCENARIOS = {"academy_3_vs_1_with_keeper", "academy_counterattack_hard", "academy_run_to_score_with_keeper"}


@pytest.mark.parametrize("algo", ALGOS)
def test_there_is_a_grf_config_for_every_paper_scenario(algo):
    assert _maps(CONF / "football", algo) == GRF_PAPER_SCENARIOS


def _is_smac(path: Path) -> bool:
    return path.parent.name == "smac" or path == CONF / "mmm2.yaml"


@pytest.mark.parametrize("algo", ALGOS)
def test_there_is_a_paper_config_for_every_smax_map(algo):
    assert _maps(CONF / "smax", algo) == set(available_maps())


@pytest.mark.parametrize("algo", ALGOS)
def test_there_is_a_smac_config_for_every_fig2_map(algo):
    assert _maps(CONF / "smac", algo) == SMAC_FIG2_MAPS


def test_mmm2_config_is_the_smac_acorm_mmm2_config():
    assert yaml.safe_load((CONF / "mmm2.yaml").read_text()) == yaml.safe_load(
        (CONF / "smac" / "acorm_MMM2.yaml").read_text())


@pytest.mark.parametrize(("host", "lrs"), [("qmix", ("lr",)), ("mappo", ("actor_lr", "critic_lr"))])
@pytest.mark.parametrize("map_name", sorted(SMAC_FIG2_MAPS))
def test_smac_host_and_acorm_configs_share_everything_but_the_model(map_name, host, lrs):
    acorm_algo = "acorm" if host == "qmix" else "acorm_mappo"
    acorm, plain = (yaml.safe_load((CONF / "smac" / f"{a}_{map_name}.yaml").read_text()) for a in (acorm_algo, host))
    for section in ("seed_everything", "data", "epsilon", "evaluation"):
        assert acorm.get(section) == plain.get(section), section
    assert all(plain["model"]["init_args"][k] == acorm["model"]["init_args"][k] for k in lrs)


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


def _config_case(path: Path):
    """A config as a test case; GRF configs need the real engine (SMAC ones run against the double)."""
    return pytest.param(path, id=str(path.relative_to(CONF)), marks=[needs_football] * (path.parent.name == "football"))


@pytest.mark.parametrize("path", [_config_case(p) for p in CONFIGS])
def test_config_instantiates(path, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    if _is_smac(path):  # no StarCraft II here: SMAC's env info comes from the documented double
        install_fake_smac(monkeypatch, tmp_path / "StarCraftII")
    cli = build_cli(["--config", str(path), "--trainer.logger", "false"], run=False)
    model, data = cli.model, cli.datamodule
    assert isinstance(model, MARLModule)  # ACORM is a QMIX subclass, ACORM-MAPPO a MAPPO subclass
    assert model.info == data.env_info  # linked from the data module
    assert data.batch_size <= data.buffer_size
    replay = not model.on_policy
    if _is_smac(path):
        assert data.env_name == "smac" and data.map_name in SMAC_FIG2_MAPS
        # Table 2's 5000 episodes fit a 24 GiB machine on every Fig. 2 map (sized on the meta device)
        buffer = EpisodeReplayBuffer(data.env_info, data.buffer_size, device="meta")
        assert not replay or (data.buffer_size == 5000 and buffer.nbytes < 24 * 2**30)
    if path.parent.name == "football":  # Appendix C: the paper's three scenarios and its reward
        assert data.env_name == "football" and data.map_name in GRF_PAPER_SCENARIOS
        assert data.env_kwargs["reward"] == "paper" and (not replay or data.buffer_size == 5000)
    paper_config = path.parent.name in ("smax", "football") or _is_smac(path)
    if isinstance(model, MAPPO) and paper_config:  # Tables 3-4
        hp = model.hparams
        assert (hp.clip, hp.gae_lambda, hp.ppo_epochs, hp.entropy_coef, hp.gamma) == (0.2, 0.95, 5, 0.02, 0.99)
        assert (hp.actor_lr, hp.critic_lr, hp.critic_hidden_dim, hp.n_minibatches) == (6e-4, 8e-4, 64, 1)
        assert hp.advantage_norm and hp.lr_decay_env_steps == 0 and not hp.add_agent_id
        assert data.batch_size == 32 and data.updates_per_collect == 1 and cli.trainer.log_every_n_steps == 1
        assert cli.config.evaluation.eval_interval == 5000 and cli.config.evaluation.n_eval_episodes == 32
    if isinstance(model, QMIX) and paper_config:
        hp = model.hparams
        assert (hp.lr, hp.gamma, hp.tau, hp.hypernet_embed, hp.hypernet_layers) == (6e-4, 0.99, 0.005, 32, 2)
        assert data.batch_size == 32 and cli.config.epsilon.anneal_steps == 80_000
        assert cli.config.evaluation.eval_interval == 5000 and cli.config.evaluation.n_eval_episodes == 32
    if isinstance(model, (ACORM, ACORMMAPPO)):  # Tables 1-2 (QMIX based) and 3-4 (MAPPO based) agree on these
        hp = model.hparams
        assert (hp.embed_dim, hp.role_dim, hp.state_embed_dim, hp.n_heads, hp.attn_dim, hp.attn_out_dim) == (
            128, 64, 64, 4, 128, 64)
        assert (hp.n_clusters, hp.contrastive_lr, hp.key_encoder_tau) == (3, 8e-4, 0.005)
        assert cli.config.roles.interval == (32 if isinstance(model, MAPPO) else 100)  # T_cl: Table 4 / Table 2
