"""The study's role and attention numbers (Figs. 4, 5, 11, 13): NMI between clusters and unit type or health
band, the spread of the embeddings, per-head attention entropy and distance, by hand; their summary over seeds in
the report; and `acorm-pl results roles` driven through the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from tiny_runs import tiny_acorm_checkpoint

from acorm_pl.analysis.inspect import EpisodeRecord
from acorm_pl.analysis.role_report import roles_section
from acorm_pl.analysis.role_stats import (
    attention_numbers,
    cluster_agreement,
    group_nmi,
    health_bands,
    relative_spread,
)
from acorm_pl.cli import main


def _record(embeddings: torch.Tensor, types: list[str], health: torch.Tensor, attention: torch.Tensor | None = None
            ) -> EpisodeRecord:
    t, n = embeddings.shape[:2]
    return EpisodeRecord(length=t, won=True, episode_return=1.0, actions=torch.zeros(t, n, dtype=torch.long),
                         rewards=torch.zeros(t), alive=health > 0, embeddings=embeddings, roles=None,
                         cluster_labels=None, attention=attention, unit_types=types, health=health)


def test_health_bands_and_group_nmi_by_hand():
    assert health_bands(torch.tensor([0.1, 1 / 3, 0.5, 0.9, 1.0])).tolist() == [0, 0, 1, 2, 2]
    reference = torch.tensor([[0, 0, 1, 1], [0, 0, 0, 0], [0, 1, 1, 1]])
    labels = torch.tensor([[5, 5, 2, 2], [0, 1, 2, 3], [1, 0, 0, -1]])
    valid = torch.tensor([[True] * 4, [True] * 4, [True, True, True, False]])
    out = group_nmi(labels, reference, valid)
    # group 1 has one reference value (skipped); groups 0 and 2 match their references up to renaming
    assert out["groups"] == 2 and out["nmi"] == pytest.approx(1.0)
    assert 0.0 <= out["chance"] < 1.0


def test_cluster_agreement_finds_unit_types_and_attention_numbers():
    torch.manual_seed(0)
    types = ["stalker", "stalker", "zealot", "zealot", "zealot"]
    onehot = torch.tensor([[1.0, 0.0] if u == "stalker" else [0.0, 1.0] for u in types])
    emb = onehot.expand(6, 5, 2) * 10 + 0.01 * torch.randn(6, 5, 2)  # clusters = unit types
    health = torch.full((6, 5), 0.9)
    health[:, 0] = 0.2
    health[3:, 4] = 0.0  # agent 4 dies at step 3
    uniform = torch.full((6, 2, 5), 0.0)
    uniform[..., :4] = 0.25
    uniform[:3, :, 4] = 0.2
    uniform[:3, :, :4] = 0.2
    rec = _record(emb, types, health, uniform)
    out = cluster_agreement([rec], k=2)
    assert out["unit_type"]["nmi"] == pytest.approx(1.0) and out["unit_type"]["groups"] == 6
    att = attention_numbers([rec])
    assert att["normalised_entropy_per_head"] == pytest.approx([1.0, 1.0])  # uniform over the alive agents
    assert att["head_distance_tv"] == pytest.approx(0.0)
    one_hot = torch.zeros(6, 2, 5)
    one_hot[:, 0, 0], one_hot[:, 1, 1] = 1.0, 1.0  # two heads on two different agents
    att = attention_numbers([_record(emb, types, health, one_hot)])
    assert att["head_distance_tv"] == pytest.approx(1.0) and att["normalised_entropy_per_head"] == pytest.approx([0, 0])


@pytest.mark.slow
def test_roles_command_writes_numbers_and_the_report_shows_them(workdir, capsys, tmp_path_factory):
    ckpt = str(tiny_acorm_checkpoint(tmp_path_factory))
    main(["results", "roles", ckpt, "--baseline", ckpt, "--name", "acorm_3m", "--episodes", "2",
          "--results", "results", "--figures", "docs/study"])
    data = json.loads((workdir / "results" / "roles" / "acorm_3m.json").read_text())
    assert data["algorithm"] == "ACORM" and data["k"] == 3 and data["policy"]["episodes"] == 2
    assert {"embeddings", "roles", "attention"} <= set(data["policy"]) and "baseline" in data
    assert data["policy"]["attention"]["heads"] == 4
    assert any(f.endswith(".png") for f in data["figures"])
    (workdir / "results" / "mappo").mkdir()
    main(["results", "report", "--results", "results", "--out", "docs/results.md", "--figures", "docs/study"])
    text = (workdir / "docs" / "results.md").read_text()
    assert "### acorm_3m: ACORM on SMAX 3m" in text and "| ACORM (host) | h | 3 |" in text
    assert "Attention (4 heads" in text and "](study/roles_acorm_3m/role_map.png)" in text
    assert (workdir / "docs" / "study" / "roles_acorm_3m" / "role_map.png").is_file()


def _roles_file(seed: int, policy_type: float, host_type: float, entropies: list[float], tv: float,
                host_chance: float = 0.25) -> dict:
    nmi = lambda v, chance=0.25: {"nmi": v, "chance": chance, "groups": 100}  # noqa: E731
    return {"checkpoint": f"ACORM-MAPPO-3s5z-s{seed}.ckpt", "algorithm": "ACORMMAPPO", "map": "3s5z",
            "env_steps": 1_000_000, "k": 3, "figures": [],
            "policy": {"episodes": 32, "win_rate": 1.0,
                       "embeddings": {"k": 3, "unit_type": nmi(policy_type), "health_band": nmi(0.4),
                                      "spread": policy_type / 2},
                       "roles": {"k": 3, "unit_type": nmi(0.5), "health_band": None},
                       "attention": {"heads": 2, "steps": 10, "normalised_entropy_per_head": entropies,
                                     "head_distance_tv": tv}},
            "baseline": {"algorithm": "MAPPO", "embeddings": {"k": 3, "unit_type": nmi(host_type, host_chance),
                                                               "health_band": nmi(0.4)}}}


def test_roles_over_seeds_are_means_with_bootstrap_intervals_and_paired_differences(tmp_path):
    """Two checkpoints: the bootstrap means of two values are their mean and the two values themselves at the
    2.5 / 97.5 percentiles (resampled means take only the values a, (a+b)/2, b with probability 1/4, 1/2, 1/4)."""
    (tmp_path / "roles").mkdir()
    for seed, (p, h, ent, tv, hc) in enumerate([(0.8, 0.5, [0.6, 1.0], 0.3, 0.35), (0.6, 0.5, [0.8, 0.8], 0.5, 0.25)]):
        (tmp_path / "roles" / f"acorm_mappo_3s5z_s{seed}.json").write_text(
            json.dumps(_roles_file(seed, p, h, ent, tv, host_chance=hc)))
    text = "\n".join(roles_section(tmp_path, tmp_path, tmp_path / "figures"))
    assert "### acorm_mappo_3s5z, over 2 checkpoints: ACORMMAPPO on SMAX 3s5z" in text
    assert ("| ACORMMAPPO | e | 2 | 0.70 [0.60, 0.80] | 0.25 [0.25, 0.25] | 0.40 [0.40, 0.40] | 0.25 [0.25, 0.25] "
            "| 0.35 [0.30, 0.40] |" in text)
    assert "| ACORMMAPPO | z | 2 | 0.50 [0.50, 0.50] | 0.25 [0.25, 0.25] | - | - | - |" in text  # not measured
    assert "| ACORMMAPPO | e | 3 | 0.80 (chance 0.25, 100 steps) | 0.40 (chance 0.25, 100 steps) | 0.400 |" in text
    assert "| MAPPO (host) | h | 2 | 0.50 [0.50, 0.50] | 0.30 [0.25, 0.35] |" in text
    # paired by checkpoint: 0.8 - 0.5 and 0.6 - 0.5; above chance: (0.8 - 0.25) - (0.5 - 0.35) = 0.40 and
    # (0.6 - 0.25) - (0.5 - 0.25) = 0.10
    assert ("unit type, ACORMMAPPO's e minus the host's hidden states, paired by checkpoint: 0.20 [0.10, 0.30]; "
            "above chance (each NMI less its own chance level): 0.25 [0.10, 0.40].") in text
    # head-averaged entropies 0.8 and 0.8; most focused heads 0.6 and 0.8; distances 0.3 and 0.5
    assert ("normalised entropy averaged over heads 0.80 [0.80, 0.80], of the most focused head 0.70 [0.60, 0.80]; "
            "mean distance between heads 0.40 [0.30, 0.50]") in text
    assert text.index("over 2 checkpoints") < text.index("### acorm_mappo_3s5z_s0")  # the summary first
    for seed in (0, 1):  # the same algorithm under another name (e.g. its contrastive-off variant): its own table
        (tmp_path / "roles" / f"acorm_mappo_nocl_3s5z_s{seed}.json").write_text(
            json.dumps(_roles_file(seed, 0.3, 0.5, [1.0, 1.0], 0.0)))
    text = "\n".join(roles_section(tmp_path, tmp_path, tmp_path / "figures"))
    assert "| ACORMMAPPO | e | 2 | 0.70 [0.60, 0.80] |" in text and "| ACORMMAPPO | e | 2 | 0.30 [0.30, 0.30] |" in text
    assert "### acorm_mappo_nocl_3s5z, over 2 checkpoints" in text
    for seed in (0, 1):
        (tmp_path / "roles" / f"acorm_mappo_nocl_3s5z_s{seed}.json").unlink()
    (tmp_path / "roles" / "acorm_mappo_3s5z_s1.json").unlink()
    assert "over 2 checkpoints" not in "\n".join(roles_section(tmp_path, tmp_path, tmp_path / "figures"))  # one seed


def test_relative_spread_by_hand():
    """Step 0: (1, 0) and (-1, 0) around (0, 0): distance 1, norm 1 -> 1. Step 1: (3, 0) and (1, 0) around (2, 0):
    distance 1, mean norm 2 -> 0.5; the dead agent at (100, 100) is left out. Step 2: one agent alive, skipped."""
    points = torch.tensor([[[1.0, 0.0], [-1.0, 0.0], [5.0, 5.0]],
                           [[3.0, 0.0], [1.0, 0.0], [100.0, 100.0]],
                           [[1.0, 1.0], [0.0, 0.0], [0.0, 0.0]]])
    alive = torch.tensor([[True, True, False], [True, True, False], [True, False, False]])
    assert relative_spread(points, alive) == pytest.approx(0.75)
    assert relative_spread(torch.ones(2, 3, 4), torch.ones(2, 3, dtype=torch.bool)) == 0.0  # all agents alike
    assert np.isnan(relative_spread(points[2:], alive[2:]))  # no step with two agents alive
