"""The roles-and-attention part of ``docs/results.md``: one section per ``acorm-pl results roles`` file, and a
table over seeds for every name measured on more than one checkpoint (files ``<name>_s<seed>.json``)."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from acorm_pl.analysis.role_stats import fmt_nmi
from acorm_pl.analysis.stats import bootstrap_ci

REFERENCES = ("unit_type", "health_band")
SEED_SUFFIX = re.compile(r"_s\d+$")  # acorm_mappo_3s5z_s2 -> acorm_mappo_3s5z: one seed of that name
INTRO = ("Greedy episodes on analysis seeds. At every step the alive agents are clustered by K-means (K of the "
         "checkpoint) on their agent embeddings e (the clusters that pick ACORM's negatives), on their role "
         "representations z, and, for the host, on its agent GRU's hidden states h; the NMI of those clusters "
         "with the agents' unit types and with their health bands (0-1/3, 1/3-2/3, 2/3-1 of max health) is "
         "averaged over the steps where the reference has two values or more; chance: the same clusters "
         "shuffled within each step. Attention: entropy of each head's weights over the alive agents divided "
         "by log(alive) (1 = uniform), and the mean total-variation distance between two heads' weights. Spread: "
         "the mean distance of the alive agents' vectors to their mean at a step over their mean norm (0 = all "
         "agents alike; measured from this sitting on, '-' in files written before).")


def _blocks(data: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    """(policy name, what was clustered: e, z or the host's hidden states h, the result) of one roles file."""
    out = [(data["algorithm"], symbol, data["policy"][what]) for what, symbol in (("embeddings", "e"), ("roles", "z"))
           if what in data["policy"]]
    if "baseline" in data and "embeddings" in data["baseline"]:  # the host's agent GRU hidden states
        out.append((f"{data['baseline']['algorithm']} (host)", "h", data["baseline"]["embeddings"]))
    return out


def _mean_ci(values: Sequence[float]) -> str:
    """``0.42 [0.30, 0.51]``: the mean over checkpoints with its 95% percentile-bootstrap interval."""
    arr = np.asarray([v for v in values if not np.isnan(v)], dtype=np.float64)
    if arr.size == 0:
        return "-"
    low, high = bootstrap_ci(arr)
    return f"{arr.mean():.2f} [{low:.2f}, {high:.2f}]"


def _value(block: dict[str, Any], reference: str, key: str) -> float:
    measured = block.get(reference)
    return float(measured[key]) if measured else float("nan")


def _excess(block: dict[str, Any], reference: str) -> float:
    """NMI less its chance level (the same clusters shuffled within each step)."""
    return _value(block, reference, "nmi") - _value(block, reference, "chance")


def summary_over_seeds(name: str, group: Sequence[dict[str, Any]]) -> list[str]:
    """Markdown table of the roles files ``<name>_s<seed>``: each NMI and its chance level as mean [95% CI]
    over the checkpoints, the paired difference between the policy's embeddings and the host's hidden states
    (of the NMIs and of their excess over chance), and the attention numbers."""
    first = group[0]
    lines = [f"### {name}, over {len(group)} checkpoints: {first['algorithm']} on SMAX {first['map']}", "",
             "Mean over the checkpoints (one per seed) with its 95% bootstrap CI over them.", "",
             "| policy | clustered | checkpoints | NMI with unit type | chance | NMI with health band | chance "
             "| spread |",
             "|---|---|---|---|---|---|---|---|"]
    rows: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for data in group:
        for policy, symbol, block in _blocks(data):
            rows.setdefault((policy, symbol), []).append(block)
    for (policy, symbol), blocks in rows.items():
        cols = [_mean_ci([_value(b, ref, key) for b in blocks]) for ref in REFERENCES for key in ("nmi", "chance")]
        cols.append(_mean_ci([float(b.get("spread", float("nan"))) for b in blocks]))
        lines.append(f"| {policy} | {symbol} | {len(blocks)} | " + " | ".join(cols) + " |")
    paired = [d for d in group if "baseline" in d and "embeddings" in d["baseline"]]
    if len(paired) >= 2:
        lines.append("")
        for ref in REFERENCES:
            diff = [_value(d["policy"]["embeddings"], ref, "nmi") - _value(d["baseline"]["embeddings"], ref, "nmi")
                    for d in paired]
            # The two policies play different episodes, so their chance levels differ (fewer alive agents per
            # step raise it): the excess over chance compares what the clusters find beyond the group sizes.
            excess = [_excess(d["policy"]["embeddings"], ref) - _excess(d["baseline"]["embeddings"], ref)
                      for d in paired]
            lines.append(f"- NMI with {ref.replace('_', ' ')}, {first['algorithm']}'s e minus the host's hidden "
                         f"states, paired by checkpoint: {_mean_ci(diff)}; above chance (each NMI less its own "
                         f"chance level): {_mean_ci(excess)}.")
    attention = [d["policy"]["attention"] for d in group if d["policy"].get("attention")]
    if attention:
        mean_entropy = [float(np.mean(a["normalised_entropy_per_head"])) for a in attention]
        lowest = [float(np.min(a["normalised_entropy_per_head"])) for a in attention]
        lines += ["", f"Attention over {len(attention)} checkpoints: normalised entropy averaged over heads "
                      f"{_mean_ci(mean_entropy)}, of the most focused head {_mean_ci(lowest)}; mean distance between "
                      f"heads {_mean_ci([a['head_distance_tv'] for a in attention])} (total variation)."]
    return lines + [""]


def _one_file(path: Path, data: dict[str, Any], doc_dir: Path, figures_dir: Path) -> list[str]:
    lines = [f"### {path.stem}: {data['algorithm']} on SMAX {data['map']} after {data['env_steps']:,} env steps "
             f"(test win rate over these episodes {data['policy']['win_rate']:.2f})", "",
             "| policy | clustered | K | NMI with unit type | NMI with health band | spread |",
             "|---|---|---|---|---|---|"]
    for name, symbol, block in _blocks(data):
        spread = "-" if block.get("spread") is None else f"{block['spread']:.3f}"
        lines.append(f"| {name} | {symbol} | {block['k']} | {fmt_nmi(block.get('unit_type'))} | "
                     f"{fmt_nmi(block.get('health_band'))} | {spread} |")
    attention = data["policy"].get("attention")
    if attention:
        ent = ", ".join(f"{v:.2f}" for v in attention["normalised_entropy_per_head"])
        lines += ["", f"Attention ({attention['heads']} heads, {attention['steps']} steps): normalised entropy "
                      f"per head {ent}; mean distance between heads {attention['head_distance_tv']:.2f} "
                      "(total variation, 0 = identical, 1 = disjoint)."]
    for fig in data.get("figures", []):
        if fig.endswith(".png"):
            where = figures_dir / f"roles_{path.stem}" / Path(fig).name
            rel = Path(os.path.relpath(where.resolve(), doc_dir.resolve())).as_posix()
            lines += ["", f"![{Path(fig).stem}]({rel})"]
    return lines + [""]


def roles_section(results: Path, doc_dir: Path, figures_dir: Path) -> list[str]:
    """Markdown for every ``<results>/roles/*.json`` written by ``acorm-pl results roles`` (its figures linked
    from ``<figures_dir>/roles_<name>/``); names with two or more seeds (``<name>_s<seed>``) summarised first."""
    files = sorted((results / "roles").glob("*.json")) if (results / "roles").is_dir() else []
    if not files:
        return []
    loaded = [(path, json.loads(path.read_text())) for path in files]
    groups: dict[str, list[dict[str, Any]]] = {}
    for path, data in loaded:
        groups.setdefault(SEED_SUFFIX.sub("", path.stem), []).append(data)
    lines = ["## Roles and attention (Figs. 4, 5, 11, 13)", "", INTRO, ""]
    for name, group in groups.items():
        if len(group) >= 2:
            lines += summary_over_seeds(name, group)
    for path, data in loaded:
        lines += _one_file(path, data, doc_dir, figures_dir)
    return lines
