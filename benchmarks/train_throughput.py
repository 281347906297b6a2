"""Time the two halves of the QMIX training loop on SMAX: episode collection and one TD update.

    python benchmarks/train_throughput.py [--maps 3m 3s5z] [--repeats 7]

Prints the machine, then per map: collection of one lockstep batch of ``n_envs`` episodes with the
exploring policy (env steps/s), and one full TD update at batch 32 (forward, target, backward, Adam).
Medians over ``--repeats`` after a warm-up (the first collection compiles the environment).
"""

# ruff: noqa: I001  (acorm_pl must be imported before torch: it sets OMP_WAIT_POLICY)
from __future__ import annotations

import argparse
import statistics
import time

import acorm_pl  # noqa: F401  (sets OMP_WAIT_POLICY before torch loads)
import torch

from acorm_pl.algos import QMIX
from acorm_pl.data import EpisodeReplayBuffer, collect_rollout
from acorm_pl.envs import get_env_info, make_vec_env
from common import machine, median_seconds, td_step


def bench_map(map_name: str, n_envs: int, batch_size: int, repeats: int) -> dict[str, float]:
    info = get_env_info("smax", map_name)
    model = QMIX(env_info=info.as_dict())
    model.epsilon = 0.3
    env = make_vec_env("smax", map_name, list(range(n_envs)))
    buffer = EpisodeReplayBuffer(info, capacity=256)
    start = time.perf_counter()
    rollout = collect_rollout(env, model, explore=True)  # compiles reset and step
    compile_s = time.perf_counter() - start
    while len(buffer) < batch_size:
        buffer.add(rollout.episodes, rollout.lengths)
        rollout = collect_rollout(env, model, explore=True)
    collect_rates = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        rollout = collect_rollout(env, model, explore=True)
        collect_rates.append(rollout.env_steps / (time.perf_counter() - t0))
    opt = torch.optim.Adam(model.td_parameters(), lr=6e-4)
    batch = buffer.sample(batch_size)
    update_s = median_seconds(lambda: td_step(model, opt, batch), repeats, warmup=2)
    env.close()
    return {"compile_s": compile_s, "collect_steps_per_s": statistics.median(collect_rates),
            "update_ms": update_s * 1000, "batch_t": batch.max_t}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--maps", nargs="+", default=["3m", "3s5z"])
    parser.add_argument("--n-envs", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    print(machine())
    print(f"n_envs {args.n_envs}, batch {args.batch_size} episodes, medians of {args.repeats}")
    print(f"{'map':10s} {'compile_s':>9s} {'collect env steps/s':>20s} {'TD update ms':>13s} {'batch T':>8s}")
    for name in args.maps:
        r = bench_map(name, args.n_envs, args.batch_size, args.repeats)
        print(f"{name:10s} {r['compile_s']:9.1f} {r['collect_steps_per_s']:20,.0f} {r['update_ms']:13.1f} "
              f"{r['batch_t']:8d}")


if __name__ == "__main__":
    main()
