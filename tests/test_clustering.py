"""Clustering strategies the ACORM modules own: GMM's EM and the silhouette score against scikit-learn on random
groups with dead agents masked, AutoK choosing the K the data have, and short ACORM fits with each through the CLI."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from cli_errors import assert_one_line_error
from paper_configs import config_args, paper_config
from sklearn.metrics import silhouette_score
from sklearn.mixture import GaussianMixture

from acorm_pl.algos import ACORM
from acorm_pl.analysis.demo import small_run_args
from acorm_pl.analysis.inspect import load_checkpoint
from acorm_pl.cli import main
from acorm_pl.clustering import GMM, AutoK, KMeans, batched_gmm, batched_kmeans, batched_silhouette
from acorm_pl.envs.base import EnvInfo

REPO = Path(__file__).resolve().parents[1]


def _groups(m: int = 40, n: int = 8, d: int = 5, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Random groups of three blobs, with 0-3 dead agents per group (never fewer than 4 alive)."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(m, 3, d, generator=g) * 4
    which = torch.randint(0, 3, (m, n), generator=g)
    x = centres.gather(1, which.unsqueeze(-1).expand(m, n, d)) + torch.randn(m, n, d, generator=g)
    valid = torch.ones(m, n, dtype=torch.bool)
    dead = torch.randint(0, 4, (m,), generator=g)
    for i in range(m):
        valid[i, torch.randperm(n, generator=g)[: int(dead[i])]] = False
    return x, valid


def test_gmm_log_likelihood_matches_sklearn():
    x, valid = _groups()
    res = batched_gmm(x, 3, valid=valid, reg_covar=1e-3, n_iters=1000, tol=1e-7)
    init = batched_kmeans(x, 3, valid=valid, n_init=3, seed=0)  # where batched_gmm starts
    assert (res.labels[~valid] == -1).all() and (res.labels[valid] >= 0).all()
    for i in range(x.shape[0]):
        pts = x[i][valid[i]].double().numpy()
        k = int(res.n_components[i])
        # sklearn's density with our parameters gives our log-likelihood ...
        ours = GaussianMixture(k, covariance_type="diag")
        ours.weights_ = res.weights[i, :k].double().numpy() / res.weights[i, :k].double().sum().item()
        ours.means_ = res.means[i, :k].double().numpy()
        ours.covariances_ = res.variances[i, :k].double().numpy()
        ours.precisions_cholesky_ = 1 / np.sqrt(ours.covariances_)
        assert ours.score_samples(pts).sum() == pytest.approx(float(res.log_likelihood[i]), rel=1e-4, abs=1e-3)
        # ... and sklearn's EM from the same start (the K-means solution) converges to the same fit
        hard = np.eye(k)[init.labels[i][valid[i]].numpy()]
        nk = hard.sum(0)
        means = hard.T @ pts / nk[:, None]
        var = hard.T @ pts**2 / nk[:, None] - means**2 + 1e-3
        ref = GaussianMixture(k, covariance_type="diag", reg_covar=1e-3, weights_init=nk / nk.sum(), means_init=means,
                              precisions_init=1 / var, max_iter=1000, tol=1e-10).fit(pts)
        assert ref.score(pts) * len(pts) == pytest.approx(float(res.log_likelihood[i]), rel=1e-3, abs=1e-2)


def test_gmm_ignores_what_dead_agents_hold():
    x, valid = _groups(m=10)
    a = batched_gmm(x, 3, valid=valid)
    b = batched_gmm(x.masked_fill(~valid.unsqueeze(-1), 1e6), 3, valid=valid)
    assert torch.equal(a.labels, b.labels) and torch.allclose(a.log_likelihood, b.log_likelihood)


def test_silhouette_matches_sklearn_on_random_groups_with_dead_agents():
    x, valid = _groups(m=60, seed=1)
    g = torch.Generator().manual_seed(2)
    labels = torch.randint(0, 3, valid.shape, generator=g).masked_fill(~valid, -1)
    score, defined = batched_silhouette(x, labels, valid)
    checked = 0
    for i in range(x.shape[0]):
        lab = labels[i][valid[i]].numpy()
        n_lab = len(np.unique(lab))
        assert bool(defined[i]) == (2 <= n_lab <= len(lab) - 1)
        if defined[i]:
            ref = silhouette_score(x[i][valid[i]].double().numpy(), lab)
            assert float(score[i]) == pytest.approx(ref, abs=1e-5)
            checked += 1
    assert checked > 40


def test_auto_k_finds_the_number_of_blobs():
    g = torch.Generator().manual_seed(0)
    groups = []
    for true_k in (2, 3, 4):
        centres = torch.eye(6)[:true_k] * 20
        which = torch.arange(12) % true_k
        groups.append(centres[which] + 0.1 * torch.randn(12, 6, generator=g))
    x = torch.stack(groups)  # [3, 12, 6]
    valid = torch.ones(3, 12, dtype=torch.bool)
    valid[0, -2:] = False  # dead agents in the first group
    labels = AutoK()(x, valid, k=5)
    found = [len(torch.unique(labels[i][valid[i]])) for i in range(3)]
    assert found == [2, 3, 4]
    assert (labels[0, -2:] == -1).all()
    two = AutoK()(x[:1, :2], torch.ones(1, 2, dtype=torch.bool), k=3)  # two agents: silhouette undefined
    assert sorted(two[0].tolist()) == [0, 1]


def test_model_owns_its_clustering(capsys):
    info = EnvInfo(n_agents=5, n_actions=6, obs_dim=8, state_dim=7, episode_limit=10).as_dict()
    assert isinstance(ACORM(env_info=info, embed_dim=16).clustering, KMeans)
    assert isinstance(ACORM(env_info=info, embed_dim=16, clustering=GMM()).clustering, GMM)
    saved = {"class_path": "acorm_pl.clustering.AutoK", "init_args": {"base": {"class_path": "acorm_pl.clustering.GMM",
                                                                              "init_args": {"n_iters": 5}}}}
    auto = ACORM(env_info=info, embed_dim=16, clustering=saved).clustering  # as a checkpoint holds it
    assert isinstance(auto, AutoK) and isinstance(auto.base, GMM) and auto.base.n_iters == 5
    assert_one_line_error(["fit", *config_args("acorm", "3m"),
                           "--model.init_args.clustering", "sklearn.cluster.KMeans"], capsys, "clustering")


@pytest.mark.slow
@pytest.mark.parametrize("strategy, expected", [("acorm_pl.clustering.GMM", GMM), ("acorm_pl.clustering.AutoK", AutoK)])
def test_short_acorm_fit_with_each_clustering(workdir, strategy, expected):
    main(small_run_args(paper_config("acorm", "3m"), workdir, "clustering", env_steps=600,
                        eval_interval=300, quick=True, extra=["--model.init_args.clustering", strategy]))
    model, _ = load_checkpoint(next(workdir.rglob("last.ckpt")))  # rebuilt from the checkpoint's settings
    assert isinstance(model.clustering, expected)
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{workdir / 'mlruns.db'}")
    run = client.search_runs([client.get_experiment_by_name("notebooks").experiment_id])[0]
    assert client.get_metric_history(run.info.run_id, "roles/contrastive_loss")  # the contrastive step ran
