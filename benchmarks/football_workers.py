"""GRF env steps/s: one bare gfootball env in this process vs 1, 2 and 4 worker processes (ProcessVecEnv)
collecting whole episodes with random actions through the rollout code the DataModule uses.

Prints medians over ``--repeats`` measurements and the ratios to the bare env (scaling and overhead).

    python benchmarks/football_workers.py --scenario academy_3_vs_1_with_keeper --steps 2000
"""

# ruff: noqa: I001  (acorm_pl must be imported before torch: it sets OMP_WAIT_POLICY)
from __future__ import annotations

import argparse
import statistics
import time

import acorm_pl  # noqa: F401
import numpy as np
import torch

from acorm_pl.data.rollout import collect_rollout
from acorm_pl.envs import make_vec_env
from acorm_pl.envs.football import FootballEnv, N_ACTIONS

from common import machine


class RandomActor:
    """Uniform random actions (all 19 are always available in GRF)."""

    def initial_state(self, n_envs: int) -> None:
        return None

    def act(self, obs, last_actions, avail, hidden, explore):  # noqa: ANN001 - the rollout's Actor protocol
        return torch.randint(0, N_ACTIONS, obs.shape[:2]), None


def bare_steps_per_s(scenario: str, steps: int, seed: int) -> float:
    env = FootballEnv(scenario, seed=seed)
    rng = np.random.default_rng(seed)
    n = env.info.n_agents
    env.reset()
    start = time.perf_counter()
    for _ in range(steps):
        res = env.step(rng.integers(0, N_ACTIONS, size=n))
        if res.terminated or res.truncated:
            env.reset()
    rate = steps / (time.perf_counter() - start)
    env.close()
    return rate


def worker_steps_per_s(scenario: str, n_workers: int, steps: int, seed: int) -> float:
    env = make_vec_env("football", scenario, seeds=[seed + i for i in range(n_workers)])
    actor = RandomActor()
    try:
        collect_rollout(env, actor, explore=True)  # warm-up: engines started, first episode played
        done, start = 0, time.perf_counter()
        while done < steps:
            done += collect_rollout(env, actor, explore=True).env_steps
        return done / (time.perf_counter() - start)
    finally:
        env.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenario", default="academy_3_vs_1_with_keeper")
    parser.add_argument("--steps", type=int, default=2000, help="env steps per measurement")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    args = parser.parse_args()
    print(f"# machine: {machine()}")
    print(f"# scenario {args.scenario}, {args.steps} env steps per measurement, median of {args.repeats}")
    bare = statistics.median(bare_steps_per_s(args.scenario, args.steps, seed=r) for r in range(args.repeats))
    print(f"| setting | env steps/s | vs bare env |\n|---|---|---|\n| bare env, this process | {bare:.0f} | 1.00 |")
    for n in args.workers:
        rate = statistics.median(worker_steps_per_s(args.scenario, n, args.steps, seed=10 * r)
                                 for r in range(args.repeats))
        print(f"| {n} worker{'s' if n > 1 else ''} | {rate:.0f} | {rate / bare:.2f} |", flush=True)


if __name__ == "__main__":
    main()
