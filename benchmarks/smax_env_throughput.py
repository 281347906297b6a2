"""Throughput of :class:`acorm_pl.envs.smax.SMAXVecEnv` under uniformly random available actions.

For each map and ``n_envs`` prints the first-call compile time (reset + step) and the median over
repeats of env-steps/s (``n_envs`` x lockstep steps per second), timing the whole loop: sampling
actions in torch, the torch -> JAX -> torch handoff, and resetting once every copy is done.

Run: ``python benchmarks/smax_env_throughput.py [--maps 3m 3s5z] [--n-envs 1 8 32 128]``
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import torch

from acorm_pl.envs.smax import SMAXVecEnv  # sets JAX's environment defaults before jax loads


def random_actions(avail: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """One uniformly random available action per agent, [n_envs, n_agents] int64."""
    n_envs, n_agents, n_actions = avail.shape
    flat = avail.reshape(-1, n_actions).float()
    return torch.multinomial(flat, 1, generator=generator).reshape(n_envs, n_agents)


def run_steps(env: SMAXVecEnv, avail: torch.Tensor, done: torch.Tensor, n_steps: int, gen: torch.Generator) -> tuple:
    """Step ``n_steps`` times, resetting whenever every copy has finished its episode."""
    for _ in range(n_steps):
        if done.all():
            avail = env.reset().avail_actions
            done = torch.zeros_like(done)
        out = env.step(random_actions(avail, gen))
        avail = out.avail_actions
        done = done | out.terminated | out.truncated
    return avail, done


def bench(map_name: str, n_envs: int, n_steps: int, repeats: int) -> tuple[float, float, list[float]]:
    """(compile seconds, median env-steps/s, all env-steps/s) for one configuration."""
    gen = torch.Generator().manual_seed(0)
    env = SMAXVecEnv(map_name, seeds=range(n_envs))
    t0 = time.perf_counter()
    avail = env.reset().avail_actions
    out = env.step(random_actions(avail, gen))
    compile_s = time.perf_counter() - t0
    avail, done = out.avail_actions, out.terminated | out.truncated
    avail, done = run_steps(env, avail, done, 20, gen)  # warm-up
    rates = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        avail, done = run_steps(env, avail, done, n_steps, gen)
        rates.append(n_envs * n_steps / (time.perf_counter() - t0))
    env.close()
    return compile_s, statistics.median(rates), rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--maps", nargs="+", default=["3m", "3s5z"])
    parser.add_argument("--n-envs", nargs="+", type=int, default=[1, 8, 32, 128])
    parser.add_argument("--steps", type=int, default=100, help="lockstep steps per timed repeat")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    import jax

    print(f"machine: {platform.platform()} | {platform.processor() or platform.machine()} | cpus: {os.cpu_count()}")
    print(f"python {platform.python_version()} | torch {torch.__version__} (threads {torch.get_num_threads()})")
    print(f"jax {jax.__version__} | backend {jax.default_backend()} | devices {jax.devices()}")
    print(f"{args.repeats} repeats x {args.steps} lockstep steps, random available actions, median reported")
    print(f"{'map':<8} {'n_envs':>6} {'compile_s':>9} {'env_steps/s':>12} {'steps/s':>9}  min..max env_steps/s")
    for map_name in args.maps:
        for n_envs in args.n_envs:
            compile_s, median, rates = bench(map_name, n_envs, args.steps, args.repeats)
            print(
                f"{map_name:<8} {n_envs:>6} {compile_s:>9.2f} {median:>12.0f} {median / n_envs:>9.1f}"
                f"  {min(rates):.0f}..{max(rates):.0f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
