"""How strong SMAX's scripted enemy is: jaxmarl's heuristic policy playing the allies against itself.

    python benchmarks/smax_heuristic_mirror.py [--maps 3m 8m 2s3z 5m_vs_6m] [--episodes 1024]

Prints, per map, the allies' win rate (Wilson 95% interval), the draw rate and the mean episode length
when the allies run the same scripted policy as the enemy (attack the closest unit in range and keep
shooting it while it stays in range, else walk towards a visible enemy or the far side of the map). A
learned policy's test win rate on the same map reads against this mirror match. Episodes use SMAC's
episode limits, as the adapter does; a time-out counts as no win.
"""

# ruff: noqa: I001  (acorm_pl must be imported before torch: it sets OMP_WAIT_POLICY)
from __future__ import annotations

import argparse
import time

import acorm_pl  # noqa: F401
from acorm_pl.analysis.stats import wilson_interval
from acorm_pl.envs.smax import DEFAULT_EPISODE_LIMITS, _quiet_import
from common import machine


def mirror_match(map_name: str, episodes: int, seed: int, attack_mode: str) -> dict[str, float]:
    """Play ``episodes`` heuristic-vs-heuristic battles at once; outcome counts and mean length."""
    import jax
    import jax.numpy as jnp

    with _quiet_import():
        from jaxmarl.environments.smax import HeuristicEnemySMAX, map_name_to_scenario
        from jaxmarl.environments.smax.heuristic_enemy import (
            create_heuristic_policy,
            get_heuristic_policy_initial_state,
        )

    limit = DEFAULT_EPISODE_LIMITS[map_name]
    env = HeuristicEnemySMAX(scenario=map_name_to_scenario(map_name), max_steps=limit, attack_mode=attack_mode)
    n_allies = env.num_allies
    ally_policy = jax.vmap(create_heuristic_policy(env._env, 0, attack_mode=attack_mode))

    def battle(key: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        key, sub = jax.random.split(key)
        obs, state = env.reset(sub)
        policy_state = jax.tree.map(lambda *xs: jnp.stack(xs), *([get_heuristic_policy_initial_state()] * n_allies))

        def step(carry: tuple, _: None) -> tuple:
            key, obs, state, policy_state, done, won, length = carry
            key, k_act, k_env = jax.random.split(key, 3)
            ally_obs = jnp.stack([obs[a] for a in env.agents])
            actions, policy_state = ally_policy(jax.random.split(k_act, n_allies), policy_state, ally_obs)
            obs, state, _, _, _ = env.step_env(k_env, state, {a: actions[i] for i, a in enumerate(env.agents)})
            alive = state.state.unit_alive
            allies_left, enemies_left = jnp.any(alive[:n_allies]), jnp.any(alive[n_allies:])
            ends = ~done & (~allies_left | ~enemies_left)
            won = won | (ends & allies_left)
            length = length + (~done).astype(jnp.int32)
            return (key, obs, state, policy_state, done | ends, won, length), None

        init = (key, obs, state, policy_state, jnp.bool_(False), jnp.bool_(False), jnp.int32(0))
        (_, _, _, _, done, won, length), _ = jax.lax.scan(step, init, None, length=limit)
        return done, won, length

    keys = jax.random.split(jax.random.PRNGKey(seed), episodes)
    start = time.perf_counter()
    done, won, length = jax.block_until_ready(jax.jit(jax.vmap(battle))(keys))
    seconds = time.perf_counter() - start
    wins, ended = int(won.sum()), int(done.sum())
    return {"wins": wins, "draws_or_losses": ended - wins, "timeouts": episodes - ended,
            "mean_length": float(length.mean()), "seconds": seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--maps", nargs="+", default=["3m", "8m", "2s3z", "5m_vs_6m"])
    parser.add_argument("--episodes", type=int, default=1024)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--attack-mode", choices=["closest", "random"], default="closest")
    args = parser.parse_args()
    print(machine())
    print(f"allies and enemies both run jaxmarl's heuristic (attack mode {args.attack_mode}); "
          f"{args.episodes} episodes per map")
    print(f"{'map':10s} {'ally win rate [95% CI]':>24s} {'lost/drawn':>10s} {'timeouts':>8s} {'mean length':>11s}")
    for name in args.maps:
        r = mirror_match(name, args.episodes, args.seed, args.attack_mode)
        lo, hi = wilson_interval(r["wins"], args.episodes)
        print(f"{name:10s} {r['wins'] / args.episodes:>8.3f} [{lo:.3f}, {hi:.3f}]  {r['draws_or_losses']:>10d} "
              f"{r['timeouts']:>8d} {r['mean_length']:>11.1f}")


if __name__ == "__main__":
    main()
