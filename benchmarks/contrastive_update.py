"""Time one ACORM contrastive update (clustering + InfoNCE loss + optimizer step + momentum update) and
one full ACORM TD update, at batch 32 episodes x 120 steps x 10 agents with 128-d agent embeddings.

    python benchmarks/contrastive_update.py [--repeats 5] [--sklearn-groups 200]

The reference clusters as the authors' code does: scikit-learn KMeans(n_clusters=3) called once per
(episode, timestep). That is slow, so it is timed on ``--sklearn-groups`` random groups and extrapolated
to all 3840 (the output says so); loss and step are the same in both.
"""

# ruff: noqa: I001  (acorm_pl must be imported before torch: it sets OMP_WAIT_POLICY)
from __future__ import annotations

import argparse

import acorm_pl  # noqa: F401
import sklearn
import torch
from sklearn.cluster import KMeans

from acorm_pl.algos import ACORM
from acorm_pl.data import EpisodeBatch
from acorm_pl.envs.base import EnvInfo
from common import random_batch, machine, median_seconds, td_step

B, T, N = 32, 120, 10
INFO = EnvInfo(n_agents=N, n_actions=16, obs_dim=270, state_dim=252, episode_limit=T)  # SMAX 10m_vs_11m sizes


def make_batch(seed: int = 0) -> EpisodeBatch:
    return random_batch(INFO, B, T, seed)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--sklearn-groups", type=int, default=200)
    args = parser.parse_args()
    print(f"{machine()} | scikit-learn {sklearn.__version__}")
    print(f"batch {B} episodes x {T} steps x {N} agents, agent embedding 128, K=3; medians of {args.repeats}")

    torch.manual_seed(0)
    model = ACORM(env_info=INFO.as_dict(), hypernet_embed=32)
    model.manual_backward = lambda loss: loss.backward()  # no Trainer here
    td_opt, cl_opt = model.named_optimizers()["td"], model.roles.named_optimizers()["contrastive"]
    batch = make_batch()

    embeddings = model.agent_embeddings(batch)  # in training these come from the TD forward pass

    def ours() -> None:
        labels = model.roles.cluster(embeddings, batch, seed=0)
        model.roles.contrastive_update(model, batch, embeddings, labels, cl_opt)

    ours_s = median_seconds(ours, args.repeats)
    cluster_s = median_seconds(lambda: model.roles.cluster(embeddings, batch, seed=0), args.repeats)
    labels = model.roles.cluster(embeddings, batch, seed=0)
    loss_step_s = median_seconds(lambda: model.roles.contrastive_update(model, batch, embeddings, labels, cl_opt),
                                 args.repeats)
    forward_s = median_seconds(lambda: model.agent_embeddings(batch), args.repeats)

    flat = embeddings.reshape(B * T, N, -1).numpy()
    subset = torch.randperm(B * T, generator=torch.Generator().manual_seed(0))[: args.sklearn_groups].tolist()

    def sklearn_subset(n_init: int | str) -> None:
        for i in subset:
            KMeans(n_clusters=3, n_init=n_init, random_state=0).fit(flat[i])

    scale = B * T / len(subset)
    sk10_s = median_seconds(lambda: sklearn_subset(10), max(1, args.repeats // 2), warmup=0) * scale
    sk_auto_s = median_seconds(lambda: sklearn_subset("auto"), max(1, args.repeats // 2), warmup=0) * scale

    td_s = median_seconds(lambda: td_step(model, td_opt, batch), args.repeats)

    print("\none contrastive update = clustering + loss + step (+ momentum update), on given embeddings")
    print(f"  ours, batched torch K-means (10 restarts) over all {B * T} groups: {ours_s * 1000:9.1f} ms "
          f"(clustering {cluster_s * 1000:.1f} ms, loss + step {loss_step_s * 1000:.1f} ms)")
    for label, sk in (("n_init=10, sklearn < 1.4 default (the authors' era)", sk10_s),
                      ("n_init='auto', today's default (1 k-means++ run) ", sk_auto_s)):
        total = sk + loss_step_s
        print(f"  authors' way, sklearn KMeans per (episode, timestep), {label}: {total:7.2f} s "
              f"-> ours is {total / ours_s:5.0f}x faster")
    print(f"  (sklearn timed on {len(subset)} random groups and extrapolated to {B * T}; the agent-embedding "
          f"forward both need, run once per TD update anyway: {forward_s * 1000:.0f} ms)")
    print(f"\nfull ACORM TD update (agents, roles, state GRU, attention, mixer, targets; fwd+bwd+Adam): "
          f"{td_s * 1000:.0f} ms")


if __name__ == "__main__":
    main()
