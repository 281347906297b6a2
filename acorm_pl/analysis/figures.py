"""Role maps (paper Figs. 4, 11, 13) and attention heatmaps (Fig. 5) of one recorded episode.

Role map: at chosen timesteps, the agents' embeddings e_i^t (dots) and role representations z_i^t (stars)
projected to 2-D with t-SNE (scikit-learn), coloured by their K-means cluster (grey: dead), each dot
labelled with the agent's index and unit type. Embeddings and roles are projected separately (they have
different sizes), by default over every step of the episode so that the panels share one map, and each
projection is centred and scaled to [-1, 1] so both fit one pair of axes.

Attention heatmap: for every head, the weights of the state embedding over the agents (Eq. 6's alpha) at
every timestep; dead agents' cells are crossed out.

Figures are plain matplotlib ``Figure`` objects on the Agg canvas (no display needed); the ``write_*``
functions save them as PNG next to the data behind them (JSON / CSV).
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from acorm_pl.analysis.inspect import EpisodeRecord
from acorm_pl.analysis.progress import progress_task
from acorm_pl.errors import require

FIT_ON = ("episode", "panels")
DEAD_COLOUR = "#9e9e9e"


def new_figure(width: float, height: float) -> Figure:
    """A matplotlib figure on the Agg canvas (renders without a display)."""
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def cluster_colour(label: int) -> str:
    """Colour of cluster ``label`` (tab10), grey for -1 (dead)."""
    palette = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#bcbd22",
               "#17becf", "#7f7f7f"]
    return DEAD_COLOUR if label < 0 else palette[label % len(palette)]


def agent_labels(record: EpisodeRecord) -> list[str]:
    """``"<index> <unit type>"`` per agent, or the index alone where the environment has no unit types."""
    n = record.embeddings.shape[1]
    types = record.unit_types or [""] * n
    return [f"{i} {t}".strip() for i, t in enumerate(types)]


def default_timesteps(length: int, n: int = 3) -> list[int]:
    """``n`` timesteps spread over an episode of ``length`` steps: its first, its last and evenly between."""
    require(length >= 1, f"episode length must be >= 1, got {length}")
    return sorted({int(round(t)) for t in np.linspace(0, length - 1, n)})


@dataclass
class RoleMapPanel:
    """One timestep of a role map: 2-D positions of every agent's embedding and role representation."""

    timestep: int
    labels: list[str]  # per agent
    clusters: np.ndarray  # [N] K-means cluster of the embedding (-1: dead)
    alive: np.ndarray  # [N] bool
    embedding_xy: np.ndarray  # [N, 2]
    role_xy: np.ndarray | None  # [N, 2]; None without role representations (e.g. QMIX)
    health: np.ndarray | None  # [N] health fractions where the environment knows them

    def as_dict(self) -> dict:
        """JSON-ready form."""
        return {"timestep": self.timestep, "labels": self.labels, "clusters": self.clusters.tolist(),
                "alive": self.alive.tolist(), "embedding_xy": self.embedding_xy.tolist(),
                "role_xy": None if self.role_xy is None else self.role_xy.tolist(),
                "health": None if self.health is None else self.health.tolist()}


def project_2d(points: np.ndarray, perplexity: float | None = None, seed: int = 0) -> np.ndarray:
    """2-D t-SNE of ``points`` [M, D] (PCA for fewer than 5 points), centred and scaled to [-1, 1].
    Perplexity defaults to min(30, (M - 1) / 3)."""
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE

    m = points.shape[0]
    if m < 5:
        k = min(2, m, points.shape[1])
        xy = np.zeros((m, 2))
        if m > 1:
            xy[:, :k] = PCA(n_components=k).fit_transform(points)
    else:
        p = perplexity if perplexity is not None else min(30.0, (m - 1) / 3)
        require(0 < p < m, f"t-SNE perplexity must be in (0, {m}) for {m} points, got {p}")
        xy = TSNE(n_components=2, perplexity=p, init="pca", random_state=seed).fit_transform(points)
    xy = xy - xy.mean(0)
    scale = np.abs(xy).max()
    return xy / scale if scale > 0 else xy


def role_map_data(record: EpisodeRecord, timesteps: list[int] | None = None, fit_on: str = "episode",
                  perplexity: float | None = None, seed: int = 0, progress: bool = False) -> list[RoleMapPanel]:
    """Role-map panels of ``record`` at ``timesteps`` (default :func:`default_timesteps`). The t-SNE is fit
    on every step of the episode (``fit_on="episode"``) or only on the panels' steps (``"panels"``)."""
    require(fit_on in FIT_ON, f"fit_on must be one of {FIT_ON}, got {fit_on!r}")
    steps = default_timesteps(record.length) if timesteps is None else [int(t) for t in timesteps]
    require(len(steps) >= 1, "role maps need at least one timestep")
    bad = [t for t in steps if not 0 <= t < record.length]
    require(not bad, f"timesteps {bad} are outside the episode (0..{record.length - 1})")
    fit_steps = list(range(record.length)) if fit_on == "episode" else steps
    n = record.embeddings.shape[1]
    sources = [record.embeddings] + ([record.roles] if record.roles is not None else [])
    maps = []
    with progress_task("t-SNE of embeddings and roles", len(sources), progress) as advance:
        for source in sources:
            flat = source[fit_steps].reshape(len(fit_steps) * n, -1).numpy().astype(np.float64)
            maps.append(project_2d(flat, perplexity, seed).reshape(len(fit_steps), n, 2))
            advance(1)
    where = {t: i for i, t in enumerate(fit_steps)}
    labels = agent_labels(record)
    clusters = record.cluster_labels if record.cluster_labels is not None else -(~record.alive).long()
    return [RoleMapPanel(timestep=t, labels=labels, clusters=clusters[t].numpy(), alive=record.alive[t].numpy(),
                         embedding_xy=maps[0][where[t]], role_xy=maps[1][where[t]] if len(maps) > 1 else None,
                         health=None if record.health is None else record.health[t].numpy())
            for t in steps]


def role_map_figure(panels: list[RoleMapPanel], title: str | None = None) -> Figure:
    """One axes per panel: embeddings as dots (labelled ``index type``), roles as stars (labelled with the
    index), coloured by cluster; dead agents in grey."""
    fig = new_figure(4.2 * len(panels), 4.4)
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, panel in zip(axes, panels):
        colours = [cluster_colour(int(c)) for c in panel.clusters]
        ax.scatter(panel.embedding_xy[:, 0], panel.embedding_xy[:, 1], c=colours, marker="o", s=60,
                   edgecolors="black", linewidths=0.5, label="agent embedding")
        for i, (x, y) in enumerate(panel.embedding_xy):
            ax.annotate(panel.labels[i], (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
        if panel.role_xy is not None:
            ax.scatter(panel.role_xy[:, 0], panel.role_xy[:, 1], c=colours, marker="*", s=160,
                       edgecolors="black", linewidths=0.5, label="role representation")
            for i, (x, y) in enumerate(panel.role_xy):
                ax.annotate(str(i), (x, y), textcoords="offset points", xytext=(4, -9), fontsize=7)
        groups = sorted({int(c) for c in panel.clusters})
        ax.set_title(f"t = {panel.timestep}  (clusters: " + ", ".join(
            "dead" if g < 0 else str(g) for g in groups) + ")", fontsize=9)
        ax.set_xlim(-1.3, 1.3)
        ax.set_ylim(-1.3, 1.3)
        ax.set_xticks([])
        ax.set_yticks([])
    proxies = [Line2D([], [], marker=m, linestyle="", markerfacecolor="white", markeredgecolor="black",
                      markersize=s, label=label)
               for m, s, label in (("o", 7, "agent embedding"), ("*", 11, "role representation"))]
    axes[0].legend(handles=proxies[: 2 if panels[0].role_xy is not None else 1], loc="lower left", fontsize=7)
    if title:
        fig.suptitle(title)
    return fig


def attention_figure(record: EpisodeRecord, title: str | None = None) -> Figure:
    """One heatmap per attention head: agents (rows) by timesteps (columns), colour = weight; dead agents'
    cells crossed out. Requires a record with attention weights (ACORM with attention)."""
    require(record.attention is not None, "this episode has no attention weights (the model has no role attention)")
    weights = record.attention.numpy()  # [T, heads, N]
    t, heads, n = weights.shape
    col_width = min(8.0, max(3.5, 0.07 * t + 2.0))
    fig = new_figure(col_width * min(heads, 2) + 1.0, (0.3 * n + 1.2) * ((heads + 1) // 2) + 0.6)
    axes = fig.subplots((heads + 1) // 2, min(heads, 2), squeeze=False).reshape(-1)
    dead_t, dead_i = np.nonzero(~record.alive.numpy())
    vmin, vmax = float(weights.min()), float(weights.max())  # the colour range of the weights that occur
    image = None
    for h, ax in enumerate(axes):
        if h >= heads:
            ax.set_visible(False)
            continue
        image = ax.imshow(weights[:, h, :].T, aspect="auto", cmap="viridis", vmin=vmin, vmax=vmax,
                          interpolation="nearest")
        ax.scatter(dead_t, dead_i, marker="x", s=12, c="white", linewidths=0.6)
        ax.set_yticks(range(n), agent_labels(record), fontsize=7)
        ax.set_xlabel("timestep")
        ax.set_title(f"head {h}", fontsize=9)
    fig.colorbar(image, ax=axes[:heads].tolist(), label="attention weight", shrink=0.8)
    if title:
        fig.suptitle(title)
    return fig


def write_role_map(panels: list[RoleMapPanel], out_dir: str | Path, title: str | None = None,
                   stem: str = "role_map") -> list[Path]:
    """``<stem>.png`` and ``<stem>.json`` (the panels' data) in ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    png, data = out / f"{stem}.png", out / f"{stem}.json"
    role_map_figure(panels, title).savefig(png, dpi=110)
    data.write_text(json.dumps([p.as_dict() for p in panels], indent=1))
    return [png, data]


def write_attention(record: EpisodeRecord, out_dir: str | Path, title: str | None = None,
                    stem: str = "attention") -> list[Path]:
    """``<stem>.png`` and ``<stem>.csv`` (timestep, head, agent, label, alive, weight) in ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    png, data = out / f"{stem}.png", out / f"{stem}.csv"
    attention_figure(record, title).savefig(png, dpi=110)
    labels = agent_labels(record)
    weights, alive = record.attention.numpy(), record.alive.numpy()
    with data.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["timestep", "head", "agent", "label", "alive", "weight"])
        for (t, h, i), w in np.ndenumerate(weights):
            writer.writerow([t, h, i, labels[i], int(alive[t, i]), f"{w:.6g}"])
    return [png, data]


def write_episode_figures(record: EpisodeRecord, out_dir: str | Path, timesteps: list[int] | None = None,
                          title: str | None = None, seed: int = 0, progress: bool = False) -> list[Path]:
    """The role map and, where the model has attention, the attention heatmaps of ``record`` in ``out_dir``."""
    paths = write_role_map(role_map_data(record, timesteps, seed=seed, progress=progress), out_dir, title)
    if record.attention is not None:
        paths += write_attention(record, out_dir, title)
    return paths
