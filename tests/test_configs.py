"""The shipped configs: algorithm files (conf/algo) hold the paper's tables, environment files (conf/env) the
per-map facts; every combination parses, instantiates and matches the paper where it says so."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from cli_errors import assert_one_line_error
from engines import needs_football
from fake_smac import install_fake_smac
from paper_configs import CONF, config_args

from acorm_pl.algos import ACORM, ACORMMAPPO, MAPPO, QMIX
from acorm_pl.algos.base import MARLModule
from acorm_pl.cli import build_cli
from acorm_pl.data.episode_buffer import EpisodeReplayBuffer
from acorm_pl.envs.smax import available_maps

ALGOS = ["qmix", "acorm", "mappo", "acorm_mappo"]
SMAC_FIG2_MAPS = {"2s3z", "3s5z", "5m_vs_6m", "corridor", "3s5z_vs_3s6z", "MMM2"}  # the paper's Fig. 2 (and Fig. 9)
GRF_PAPER_SCENARIOS = {"academy_3_vs_1_with_keeper", "academy_counterattack_hard", "academy_run_to_score_with_keeper"}
ENVS = {"smax": set(available_maps()), "smac": SMAC_FIG2_MAPS, "football": GRF_PAPER_SCENARIOS}
# What an environment file may set: the map and its facts, never the algorithm (that is conf/algo's).
ENV_KEYS = {"trainer.logger.init_args.experiment_name", "data.env", "data.map_name", "data.env_kwargs",
            "data.total_env_steps", "data.buffer_size"}
ABLATIONS = {"wo_cl": (False, True, True), "wo_mha": (True, False, True), "vanilla": (True, False, False)}
SWITCHES = ("contrastive", "attention", "state_encoder")


def _flat_keys(tree: dict, prefix: str = "") -> set[str]:
    keys = set()
    for key, value in tree.items():
        if isinstance(value, dict) and f"{prefix}{key}" not in ENV_KEYS:
            keys |= _flat_keys(value, f"{prefix}{key}.")
        else:
            keys.add(f"{prefix}{key}")
    return keys


def _cli(args: list[str], monkeypatch, tmp_path: Path, smac: bool = False):
    monkeypatch.chdir(tmp_path)
    if smac:  # no StarCraft II here: SMAC's env info comes from the documented double
        install_fake_smac(monkeypatch, tmp_path / "StarCraftII")
    return build_cli([*args, "--trainer.logger", "false"], run=False)


def test_the_config_tree_is_algorithms_times_environments():
    assert {p.stem for p in (CONF / "algo").glob("*.yaml")} == set(ALGOS)
    assert {p.stem for p in (CONF / "algo" / "ablations").glob("*.yaml")} == set(ABLATIONS)
    for family, maps in ENVS.items():
        assert {p.stem for p in (CONF / "env" / family).glob("*.yaml")} == maps, family
    # Fewer than half of the 108 per-(algorithm, map) files this tree replaced.
    assert len(list(CONF.rglob("*.yaml"))) < 108 // 2


@pytest.mark.parametrize("path", sorted((CONF / "env").rglob("*.yaml")), ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_environment_files_hold_only_environment_facts(path):
    tree = yaml.safe_load(path.read_text())
    assert _flat_keys(tree) <= ENV_KEYS
    assert tree["data"]["env"] == path.parent.name and tree["data"]["map_name"] == path.stem
    assert tree["trainer"]["logger"]["init_args"]["experiment_name"] == (
        f"{'grf' if path.parent.name == 'football' else path.parent.name}-{path.stem}")


@pytest.mark.parametrize("algo", ALGOS)
def test_algorithm_files_name_no_map(algo):
    tree = yaml.safe_load((CONF / "algo" / f"{algo}.yaml").read_text())
    assert not {"env", "map_name", "env_kwargs"} & set(tree["data"])
    assert "experiment_name" not in tree["trainer"]["logger"]["init_args"]


def _case(family: str, map_name: str, algo: str):
    return pytest.param(family, map_name, algo, id=f"{algo}+{family}/{map_name}",
                        marks=[needs_football] * (family == "football"))


@pytest.mark.parametrize(("family", "map_name", "algo"),
                         [_case(f, m, a) for f, maps in ENVS.items() for m in sorted(maps) for a in ALGOS])
def test_every_algorithm_instantiates_on_every_environment(family, map_name, algo, tmp_path, monkeypatch):
    cli = _cli(config_args(algo, map_name, family), monkeypatch, tmp_path, smac=family == "smac")
    model, data = cli.model, cli.datamodule
    assert isinstance(model, MARLModule)  # ACORM is a QMIX subclass, ACORM-MAPPO a MAPPO subclass
    assert model.info == data.env_info  # linked from the data module
    assert (data.env_name, data.map_name) == (family, map_name)
    assert data.batch_size <= data.buffer_size
    replay = not model.on_policy
    # Table 2's 5000 episodes wherever they fit a 24 GiB machine (sized on the meta device), else the most that do
    buffer = EpisodeReplayBuffer(data.env_info, data.buffer_size, device="meta")
    assert not replay or buffer.nbytes < 24 * 2**30
    assert not replay or family != "smac" or data.buffer_size == 5000  # every Fig. 2 map fits at 5000
    if family == "football":  # Appendix C: the paper's reward, and 2M env steps (Fig. 7)
        assert data.env_kwargs["reward"] == "paper" and data.total_env_steps == 2_000_000
    if isinstance(model, MAPPO):  # Tables 3-4
        hp = model.hparams
        assert (hp.clip, hp.gae_lambda, hp.ppo_epochs, hp.entropy_coef, hp.gamma) == (0.2, 0.95, 5, 0.02, 0.99)
        assert (hp.actor_lr, hp.critic_lr, hp.critic_hidden_dim, hp.n_minibatches) == (6e-4, 8e-4, 64, 1)
        assert hp.advantage_norm and hp.lr_decay_env_steps == 0 and not hp.add_agent_id
        assert data.batch_size == 32 and data.updates_per_collect == 1 and cli.trainer.log_every_n_steps == 1
    else:  # Tables 1-2; one update per collected episode
        hp = model.hparams
        assert (hp.lr, hp.gamma, hp.tau, hp.hypernet_embed, hp.hypernet_layers) == (6e-4, 0.99, 0.005, 32, 2)
        assert data.batch_size == 32 and cli.config.epsilon.anneal_steps == 80_000
        assert data.updates_per_collect == data.n_envs
    assert cli.config.evaluation.eval_interval == 5000 and cli.config.evaluation.n_eval_episodes == 32
    if isinstance(model, (ACORM, ACORMMAPPO)):  # Tables 1-2 (QMIX based) and 3-4 (MAPPO based) agree on these
        hp = model.hparams
        assert (hp.embed_dim, hp.role_dim, hp.state_embed_dim, hp.n_heads, hp.attn_dim, hp.attn_out_dim) == (
            128, 64, 64, 4, 128, 64)
        assert (hp.n_clusters, hp.contrastive_lr, hp.key_encoder_tau) == (3, 8e-4, 0.005)
        assert cli.config.roles.interval == (1 if isinstance(model, MAPPO) else 100)  # T_cl: Table 4 (32 episodes) / 2
    if isinstance(model, ACORM):  # Table 2's learning-rate decay, linear over the run's own budget
        assert hp.lr_decay_env_steps is None and hp.lr_final_ratio == 0.1


@pytest.mark.parametrize("variant", sorted(ABLATIONS))
@pytest.mark.parametrize("host", ["acorm", "acorm_mappo"])
def test_ablation_files_flip_exactly_their_switches(variant, host, tmp_path, monkeypatch):
    algo, env = config_args(host, "5m_vs_6m")[:2], config_args(host, "5m_vs_6m")[2:]
    full = _cli([*algo, *env], monkeypatch, tmp_path).model.hparams
    ablation = ["--config", str(CONF / "algo" / "ablations" / f"{variant}.yaml")]
    ablated = _cli([*algo, *ablation, *env], monkeypatch, tmp_path).model.hparams
    assert tuple(ablated[k] for k in SWITCHES) == ABLATIONS[variant]
    assert {k: v for k, v in ablated.items() if k not in SWITCHES} == {k: v for k, v in full.items()
                                                                       if k not in SWITCHES}


def test_mmm2_single_file_is_acorm_on_smac_mmm2(tmp_path, monkeypatch):
    single = _cli(["--config", str(CONF / "mmm2.yaml")], monkeypatch, tmp_path, smac=True)
    composed = _cli(config_args("acorm", "MMM2", "smac"), monkeypatch, tmp_path, smac=True)
    for section in ("model", "data", "epsilon", "evaluation", "roles", "seed_everything"):
        assert single.config[section] == composed.config[section], section
    names = yaml.safe_load((CONF / "mmm2.yaml").read_text())["trainer"]["logger"]["init_args"]
    assert names == {"experiment_name": "smac-MMM2", "run_name": "acorm"}  # the env file's and the algorithm file's


@pytest.mark.parametrize("files", [["env/smax/3m.yaml"], ["algo/ablations/wo_cl.yaml", "env/smax/3m.yaml"]],
                         ids=["environment file alone", "ablation file without its algorithm file"])
def test_a_config_without_an_algorithm_is_one_line(files, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    args = ["fit", *[a for f in files for a in ("--config", str(CONF / f))]]
    assert_one_line_error(args, capsys, "the config names no algorithm (model.class_path): put an algorithm file "
                                        "first, e.g. --config conf/algo/acorm.yaml")


def test_quickstart_single_file_instantiates(tmp_path, monkeypatch):
    cli = _cli(["--config", str(CONF / "quickstart.yaml")], monkeypatch, tmp_path)
    assert isinstance(cli.model, QMIX) and cli.datamodule.map_name == "3m"
