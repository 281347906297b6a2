"""Time the two halves of the QMIX training loop on SMAX: episode collection and one TD update.

    python benchmarks/train_throughput.py [--maps 3m 3s5z] [--batch-sizes 32 128] [--threads 2 1] [--repeats 7]
        [--precisions fp32 bf16-mixed]

Prints the machine, then per map and torch thread count: collection of one lockstep batch of ``n_envs``
episodes with the exploring policy (env steps/s), and one full TD update (forward, target, backward, Adam)
per batch size and precision (fp32, or Lightning's ``bf16-mixed`` training-step context: the small networks
of the quick start, side by side), with the episode-steps it learns from per second. Medians over ``--repeats`` after a
warm-up (the first collection compiles the environment).
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
from common import PRECISIONS, machine, median_seconds, precision_context, td_step


def bench_map(map_name: str, n_envs: int, batch_sizes: list[int], threads: list[int], repeats: int,
              precisions: list[str]) -> list[dict[str, float]]:
    """Collection and TD-update figures for every (torch threads, batch size, precision), on the same sampled
    batches."""
    info = get_env_info("smax", map_name)
    model = QMIX(env_info=info.as_dict())
    model.epsilon = 0.3
    env = make_vec_env("smax", map_name, list(range(n_envs)))
    buffer = EpisodeReplayBuffer(info, capacity=512)
    start = time.perf_counter()
    rollout = collect_rollout(env, model, explore=True)  # compiles reset and step
    compile_s = time.perf_counter() - start
    while len(buffer) < max(batch_sizes):
        buffer.add(rollout.episodes, rollout.lengths)
        rollout = collect_rollout(env, model, explore=True)
    batches = {b: buffer.sample(b) for b in batch_sizes}
    rows = []
    for n_threads in threads:
        torch.set_num_threads(n_threads)
        collect_rates = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            rollout = collect_rollout(env, model, explore=True)
            collect_rates.append(rollout.env_steps / (time.perf_counter() - t0))
        for b, batch in batches.items():
            for precision in precisions:
                opt = torch.optim.Adam(model.td_parameters(), lr=6e-4)
                with precision_context(precision):
                    update_s = median_seconds(lambda: td_step(model, opt, batch), repeats, warmup=2)  # noqa: B023
                rows.append({"threads": n_threads, "batch": b, "precision": precision, "compile_s": compile_s,
                             "collect_steps_per_s": statistics.median(collect_rates), "update_ms": update_s * 1000,
                             "batch_t": batch.max_t, "samples_per_s": b * batch.max_t / update_s})
    env.close()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--maps", nargs="+", default=["3m", "3s5z"])
    parser.add_argument("--n-envs", type=int, default=8)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[32, 128])
    parser.add_argument("--threads", type=int, nargs="+", default=[torch.get_num_threads(), 1],
                        help="torch intra-op thread counts to compare (the CLI's --torch_num_threads)")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--precisions", nargs="+", default=list(PRECISIONS), choices=PRECISIONS)
    args = parser.parse_args()
    print(machine())
    print(f"n_envs {args.n_envs}, medians of {args.repeats}; each batch is sampled once and reused for every "
          "thread count")
    print(f"{'map':8s} {'threads':>7s} {'batch':>5s} {'precision':>10s} {'collect env steps/s':>20s} "
          f"{'TD update ms':>13s} {'batch T':>8s} {'episode-steps/s':>16s}")
    for name in args.maps:
        for r in bench_map(name, args.n_envs, args.batch_sizes, args.threads, args.repeats, args.precisions):
            print(f"{name:8s} {r['threads']:7d} {r['batch']:5d} {r['precision']:>10s} "
                  f"{r['collect_steps_per_s']:20,.0f} {r['update_ms']:13.1f} {r['batch_t']:8d} "
                  f"{r['samples_per_s']:16,.0f}")


if __name__ == "__main__":
    main()
