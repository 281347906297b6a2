"""What the divergence guard costs: one TD update with and without ``check_update`` (loss, gradient norm and
weights tested with one host sync), and the check alone, for QMIX and ACORM at two map sizes.

    python benchmarks/divergence_guard.py [--repeats 7] [--threads 1]
"""

# ruff: noqa: I001  (acorm_pl must be imported before torch: it sets OMP_WAIT_POLICY)
from __future__ import annotations

import argparse

import acorm_pl  # noqa: F401
import torch

from acorm_pl.algos import ACORM, QMIX
from acorm_pl.data import EpisodeBatch
from acorm_pl.envs.base import EnvInfo
from common import random_batch, machine, median_seconds

# SMAX sizes (obs, state and actions as the environment reports them), batch 32 episodes at the episode limit.
MAPS = {"3m": EnvInfo(n_agents=3, n_actions=8, obs_dim=75, state_dim=72, episode_limit=60),
        "10m_vs_11m": EnvInfo(n_agents=10, n_actions=16, obs_dim=270, state_dim=252, episode_limit=150)}
B = 32


def make_batch(info: EnvInfo, seed: int = 0) -> EpisodeBatch:
    return random_batch(info, B, info.episode_limit, seed)


def update(model: QMIX, opt: torch.optim.Optimizer, batch: EpisodeBatch, guarded: bool) -> None:
    """One TD update as QMIX.td_update does it, with or without the guard."""
    loss, _ = model.td_loss(batch)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    if guarded:
        model.check_update(opt, {"TD loss": loss})
    torch.nn.utils.clip_grad_norm_(model.td_parameters(), model.hparams.grad_clip_norm)
    opt.step()
    model.update_targets()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(machine())
    print(f"TD update, batch {B} episodes at the episode limit; medians of {args.repeats}, milliseconds")
    print("| algorithm | map | update | update + guard | guard alone | overhead |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name, cls in (("QMIX", QMIX), ("ACORM", ACORM)):
        for map_name, info in MAPS.items():
            torch.manual_seed(0)
            model = cls(env_info=info.as_dict(), hypernet_embed=32)
            opt = model.named_optimizers()["td"]
            batch = make_batch(info)
            plain = median_seconds(lambda: update(model, opt, batch, False), args.repeats)  # noqa: B023
            guarded = median_seconds(lambda: update(model, opt, batch, True), args.repeats)  # noqa: B023
            loss, _ = model.td_loss(batch)
            loss.backward()
            alone = median_seconds(lambda: model.check_update(opt, {"TD loss": loss}), args.repeats * 5)  # noqa: B023
            print(f"| {name} | {map_name} | {plain * 1e3:.1f} | {guarded * 1e3:.1f} | {alone * 1e3:.2f} | "
                  f"{alone / plain:.1%} |")


if __name__ == "__main__":
    main()
