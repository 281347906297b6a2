"""ACORM's speed and memory side by side in one run, with the machine they ran on.

    python benchmarks/acorm_speed.py [--repeats 5] [--threads 1] [--fit-steps 4000] [--baseline-ref GIT_REF]
                                     [--parts td profile buffer fit gru]

Parts (all by default):

* ``td``: one ACORM TD update (forward over online and target networks, loss, backward, clipping, Adam, soft
  target update; ``benchmarks/common.py: td_step``) at SMAC MMM2 shapes (10 agents, 18 actions, obs 176,
  state 322) with the model of ``conf/mmm2.yaml``, on a synthetic batch of 32 episodes of mixed
  lengths (120-180 steps, padded to the longest), in fp32 and under Lightning's ``bf16-mixed`` precision
  plugin (its training-step context: CPU autocast to bfloat16, as in ``--trainer.precision bf16-mixed``).
  Medians of ``--repeats`` after a warm-up, at ``--threads`` torch threads.
* ``profile``: ``torch.profiler`` tables of one such update in each precision, top rows by self CPU time.
* ``buffer``: the replay buffer's bytes for 5000 MMM2 episodes of 120 steps: the earlier layout (every episode
  padded to the 180-step limit in float32, by formula) against the step ring in each ``data.buffer_obs_dtype``,
  and the time to sample a batch of 32 episodes.
* ``gru``: the fixed cost of one GRU step in rows of work (the cost model of the length buckets that skip
  padded steps, ``acorm_pl.nets.agent.STEP_OVERHEAD_ROWS``).
* ``fit``: ``acorm-pl fit --config conf/algo/acorm.yaml --config conf/env/smax/3s5z.yaml`` (the shipped
  ACORM-QMIX config on SMAX 3s5z) for ``--fit-steps`` env steps, in fp32 (``32-true``) and ``bf16-mixed``, each
  in its own process: env steps/s and TD updates/s over whole collect-and-update cycles, from the first cycle
  that updates to the last (startup, JIT compilation, the warm-up collection before the buffer holds a batch and
  the final evaluation are left out).

``--baseline-ref`` checks the given commit out into a temporary ``git worktree`` (removed at the end) and
measures the ``td`` and ``fit`` parts there too, with that commit's code and configs, next to this tree's.
"""

# ruff: noqa: I001  (acorm_pl must be imported before torch: it sets OMP_WAIT_POLICY)
from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import acorm_pl  # noqa: F401  (sets OMP_WAIT_POLICY before torch loads)
import lightning.pytorch as pl
import torch
import yaml

from acorm_pl.data import EpisodeBatch
from acorm_pl.envs.base import EnvInfo
from common import PRECISIONS, machine, median_seconds, precision_context, td_step

# Only APIs that older commits have are used at import time and in the ``td`` / ``fit`` parts: a baseline
# worktree imports this file with its own acorm_pl.
BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
MMM2 = EnvInfo(n_agents=10, n_actions=18, obs_dim=176, state_dim=322, episode_limit=180)
BATCH, MIN_T = 32, 120


def mmm2_batch(batch_size: int = BATCH, seed: int = 0) -> EpisodeBatch:
    """Synthetic MMM2 episodes of 120-180 steps, padded to the longest and zero past each end. Agents die at
    random steps (then only SMAC's no-op 0 is available); alive agents always have stop (1) and random others;
    actions are random available ones; episodes shorter than the limit end on a terminal."""
    g = torch.Generator().manual_seed(seed)
    n, a, limit = MMM2.n_agents, MMM2.n_actions, MMM2.episode_limit
    lengths = torch.randint(MIN_T, limit + 1, (batch_size,), generator=g)
    t = int(lengths.max())
    live = torch.arange(t + 1) <= lengths.unsqueeze(1)  # [B, T+1] observations of each episode
    steps = live[:, :t] & (torch.arange(t) < lengths.unsqueeze(1))  # [B, T] its transitions
    death = torch.randint(t // 3, 2 * t, (batch_size, 1, n), generator=g)
    alive = torch.arange(t + 1).view(1, -1, 1) < death  # [B, T+1, N]
    avail = torch.rand(batch_size, t + 1, n, a, generator=g) < 0.5
    avail[..., 0], avail[..., 1] = False, True
    dead = torch.zeros(a, dtype=torch.bool)
    dead[0] = True
    avail = torch.where(alive.unsqueeze(-1), avail, dead) & live.view(batch_size, t + 1, 1, 1)
    scores = torch.rand(batch_size, t, n, a, generator=g).masked_fill(~avail[:, :-1], -1.0)
    terminated = torch.zeros(batch_size, t)
    ends = lengths < limit
    terminated[ends.nonzero().squeeze(1), lengths[ends] - 1] = 1.0
    return EpisodeBatch(
        obs=(torch.rand(batch_size, t + 1, n, MMM2.obs_dim, generator=g) * 2 - 1) * live.view(batch_size, -1, 1, 1),
        state=(torch.rand(batch_size, t + 1, MMM2.state_dim, generator=g) * 2 - 1) * live.unsqueeze(-1),
        avail_actions=avail,
        actions=scores.argmax(-1) * steps.unsqueeze(-1),
        reward=torch.rand(batch_size, t, generator=g) * steps,
        terminated=terminated,
        filled=steps.float(),
        alive=alive & live.view(batch_size, t + 1, 1),
    )


def build_acorm(root: Path) -> tuple[Any, torch.optim.Optimizer]:
    """ACORM with the model settings of ``root``'s ``conf/mmm2.yaml`` (ACORM on SMAC MMM2) and its TD optimizer."""
    from acorm_pl.algos import ACORM

    init = yaml.safe_load((root / "conf" / "mmm2.yaml").read_text())["model"]["init_args"]
    torch.manual_seed(0)
    model = ACORM(env_info=MMM2.as_dict(), **init)
    if hasattr(model, "named_optimizers"):
        return model, model.named_optimizers()["td"]
    opts = model.configure_optimizers()  # a baseline tree from before optimizers had names
    return model, opts[0] if isinstance(opts, list) else opts


def td_times(root: Path, repeats: int) -> dict[str, float]:
    """Median seconds of one TD update per precision."""
    model, opt = build_acorm(root)
    batch = mmm2_batch()
    out = {}
    for name in PRECISIONS:
        with precision_context(name):
            out[name] = median_seconds(lambda: td_step(model, opt, batch), repeats)
    return out


def profile_tables(rows: int, repeats: int) -> dict[str, str]:
    """Per precision: the median seconds of the TD update's phases and a ``torch.profiler`` table (top
    ``rows`` by self CPU time) of one update."""
    model, opt = build_acorm(REPO)
    batch = mmm2_batch()
    params = model.td_parameters()
    reports = {}
    for name in PRECISIONS:
        with precision_context(name):
            td_step(model, opt, batch)  # warm-up
            with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
                td_step(model, opt, batch)
            phases = {"loss (forward, online + target)": [], "backward": [], "clip + Adam + target update": []}
            for _ in range(repeats):
                t0 = time.perf_counter()
                loss, _ = model.td_loss(batch)
                t1 = time.perf_counter()
                opt.zero_grad()
                loss.backward()
                t2 = time.perf_counter()
                torch.nn.utils.clip_grad_norm_(params, model.hparams.grad_clip_norm)
                opt.step()
                model.update_targets()
                for key, dt in zip(phases, (t1 - t0, t2 - t1, time.perf_counter() - t2), strict=True):
                    phases[key].append(dt)
        split = ", ".join(f"{k} {sorted(v)[len(v) // 2] * 1000:.0f} ms" for k, v in phases.items())
        table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows)
        reports[name] = f"  phases (median of {repeats}): {split}\n{table}"
    return reports


def buffer_report(repeats: int) -> list[tuple[str, int, float | None]]:
    """(layout, bytes for 5000 MMM2 episodes of 120 steps, ms to sample 32 episodes or None)."""
    from acorm_pl.data import EpisodeReplayBuffer
    from acorm_pl.data.episode_buffer import OBS_DTYPES, buffer_nbytes

    n, o, s, a, limit = MMM2.n_agents, MMM2.obs_dim, MMM2.state_dim, MMM2.n_actions, MMM2.episode_limit
    # float32 obs/state and bool avail for limit + 1 steps; int64 actions, float32 reward/terminated/filled
    padded = 5000 * ((limit + 1) * (n * o * 4 + s * 4 + n * a) + limit * (n * 8 + 3 * 4))
    episodes = mmm2_batch(64, seed=1)
    rows: list[tuple[str, int, float | None]] = [("before: padded to the 180-step limit, float32", padded,
                                                  padded_sample_seconds(episodes, repeats) * 1000)]
    rows.append(("after, data.buffer_steps null (5000 episodes at the limit), float32",
                 buffer_nbytes(MMM2, 5000), None))
    for name, dtype in OBS_DTYPES.items():
        small = EpisodeReplayBuffer(MMM2, capacity=64, obs_dtype=name)  # sampling time does not depend on size
        small.add(episodes, episodes.filled.sum(1).long())
        ms = median_seconds(lambda: small.sample(BATCH), repeats) * 1000  # noqa: B023
        rows.append((f"after, data.buffer_steps 600000, buffer_obs_dtype {name}",
                     buffer_nbytes(MMM2, 5000, 600_000, dtype), ms))
    return rows


def padded_sample_seconds(episodes: EpisodeBatch, repeats: int) -> float:
    """Median time of the earlier buffer's sampling on its layout (every field padded to the limit; a batch
    is ``field[idx, :longest]`` per field) for 32 of ``episodes``."""
    plus_one = ("obs", "state", "avail_actions", "alive")  # T+1 entries
    layout = {}
    for k, v in vars(episodes).items():
        layout[k] = v.new_zeros(v.shape[0], MMM2.episode_limit + (k in plus_one), *v.shape[2:])
        layout[k][:, : v.shape[1]] = v
    lengths = episodes.filled.sum(1).long()
    g = torch.Generator().manual_seed(0)

    def sample() -> dict[str, torch.Tensor]:
        idx = torch.randperm(episodes.batch_size, generator=g)[:BATCH]
        t = int(lengths[idx].max())
        return {k: v[idx, : t + (k in plus_one)] for k, v in layout.items()}

    return median_seconds(sample, repeats)


class FitClock(pl.Callback):
    """Writes the loop's throughput to ``out`` (JSON) when training ends: env steps/s and TD updates/s over
    whole collect-and-update cycles, from the first cycle that updates to the last one."""

    def __init__(self, out: str):
        self.out = out
        self.marks: list[tuple[float, int, int]] = []  # (time, env steps, updates) as a cycle's updates begin
        self.start = time.perf_counter()

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        steps = trainer.datamodule.env_steps
        if not self.marks or steps != self.marks[-1][1]:  # a collection just happened
            self.marks.append((time.perf_counter(), steps, int(pl_module.n_updates)))

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Without two timed cycles (a budget too short to start updating) the rates are NaN, not an error.
        (t0, s0, u0), (t1, s1, u1) = (self.marks[0], self.marks[-1]) if self.marks else ((0.0, 0, 0),) * 2
        result = {"env_steps": trainer.datamodule.env_steps, "updates": int(pl_module.n_updates),
                  "wall_s": time.perf_counter() - self.start, "window_cycles": max(len(self.marks) - 1, 0),
                  "env_steps_per_s": (s1 - s0) / (t1 - t0) if t1 > t0 else float("nan"),
                  "updates_per_s": (u1 - u0) / (t1 - t0) if t1 > t0 else float("nan"),
                  "torch_threads": torch.get_num_threads(), "acorm_pl": acorm_pl.__file__}
        Path(self.out).write_text(json.dumps(result))


def run_child(root: Path, args: list[str], out: Path, timeout: float) -> dict[str, Any]:
    """Run ``python args`` with ``root``'s acorm_pl first on the path; the JSON it writes to ``out``."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), str(BENCH)])}
    proc = subprocess.run([sys.executable, *args], cwd=out.parent, env=env, capture_output=True, text=True,
                          timeout=timeout)
    if proc.returncode != 0 or not out.exists():
        tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-25:])
        raise RuntimeError(f"child run failed (exit {proc.returncode}): {' '.join(args[:4])} ...\n{tail}")
    return json.loads(out.read_text())


def acorm_3s5z_config(root: Path) -> list[str]:
    """``--config`` arguments of the shipped ACORM-QMIX config on SMAX 3s5z in ``root``: the algorithm and
    environment files, or the single per-map file of trees from before configs were composed."""
    composed = [root / "conf" / "algo" / "acorm.yaml", root / "conf" / "env" / "smax" / "3s5z.yaml"]
    paths = composed if composed[0].is_file() else [root / "conf" / "smax" / "acorm_3s5z.yaml"]
    return [a for p in paths for a in ("--config", str(p))]


def fit_rates(root: Path, precision: str, env_steps: int, workdir: Path) -> dict[str, Any]:
    out = workdir / f"fit-{precision}.json"
    cli = "import sys; from acorm_pl.cli import main; main(sys.argv[1:])"
    args = ["-c", cli, "fit", *acorm_3s5z_config(root),
            "--trainer.logger", "false", "--trainer.enable_progress_bar", "false",
            "--trainer.precision", "32-true" if precision == "fp32" else precision,
            "--data.total_env_steps", str(env_steps), "--data.epoch_env_steps", str(env_steps),
            "--trainer.callbacks+=acorm_speed.FitClock", "--trainer.callbacks.out", str(out)]
    return run_child(root, args, out, timeout=3600)


@contextlib.contextmanager
def baseline_tree(ref: str) -> Iterator[tuple[Path, str]]:
    """``ref`` checked out in a temporary git worktree, removed afterwards; yields (path, short hash)."""
    tmp = Path(tempfile.mkdtemp(prefix="acorm-baseline-"))
    tree = tmp / "tree"
    git = ["git", "-C", str(REPO)]
    added = subprocess.run([*git, "worktree", "add", "--detach", str(tree), ref], capture_output=True, text=True)
    if added.returncode != 0:
        shutil.rmtree(tmp, ignore_errors=True)
        sys.exit(f"acorm_speed: error: cannot check out --baseline-ref {ref!r}: {added.stderr.strip()}")
    try:
        short = subprocess.run([*git, "rev-parse", "--short", ref], capture_output=True, text=True).stdout.strip()
        yield tree, short
    finally:
        subprocess.run([*git, "worktree", "remove", "--force", str(tree)], capture_output=True)
        shutil.rmtree(tmp, ignore_errors=True)


def gib(n: int) -> str:
    return f"{n / 2**30:.2f} GiB"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the TD-update timings")
    parser.add_argument("--fit-steps", type=int, default=4000, help="env-step budget of each fit")
    parser.add_argument("--profile-rows", type=int, default=15)
    parser.add_argument("--baseline-ref", help="also measure td and fit on this commit (a temporary worktree)")
    parser.add_argument("--parts", nargs="+", choices=["td", "profile", "buffer", "fit", "gru"],
                        default=["td", "profile", "buffer", "fit"])
    parser.add_argument("--child-td", help=argparse.SUPPRESS)  # JSON path: measure td only, with --root's code
    parser.add_argument("--root", default=str(REPO), help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.child_td:
        result = {**td_times(Path(args.root), args.repeats), "acorm_pl": acorm_pl.__file__}
        Path(args.child_td).write_text(json.dumps(result))
        return
    print(machine())
    with contextlib.ExitStack() as stack:
        base = stack.enter_context(baseline_tree(args.baseline_ref)) if args.baseline_ref else None
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="acorm-speed-")))
        trees: list[tuple[str, Path]] = [("this tree", REPO)] + ([(f"baseline {base[1]}", base[0])] if base else [])
        if "td" in args.parts:
            report_td(trees, args, workdir)
        if "profile" in args.parts:
            for name, table in profile_tables(args.profile_rows, args.repeats).items():
                print(f"\n(ii) torch.profiler, one ACORM TD update at MMM2 shapes, {name}, this tree "
                      f"(top {args.profile_rows} by self CPU time)\n{table}")
        if "buffer" in args.parts:
            print("\n(iii) replay memory, 5000 MMM2 episodes of 120 steps (10 agents, obs 176, state 322, "
                  "18 actions); sampling 32 episodes, median ms")
            for label, nbytes, ms in buffer_report(args.repeats):
                print(f"  {label:68s} {gib(nbytes):>10s}  {'' if ms is None else f'sample {ms:6.1f} ms'}")
        if "fit" in args.parts:
            report_fit(trees, args, workdir)
        if "gru" in args.parts:
            report_gru(args)


def report_td(trees: list[tuple[str, Path]], args: argparse.Namespace, workdir: Path) -> None:
    print(f"\n(i) ACORM TD update at MMM2 shapes: batch {BATCH} episodes of {MIN_T}-{MMM2.episode_limit} steps "
          f"(padded to the longest), conf/mmm2.yaml model, {args.threads} torch thread(s), "
          f"median of {args.repeats}")
    for label, root in trees:
        if root == REPO:
            times = td_times(root, args.repeats)
        else:
            out = workdir / "td.json"
            times = run_child(root, [str(BENCH / "acorm_speed.py"), "--child-td", str(out), "--root", str(root),
                                     "--repeats", str(args.repeats), "--threads", str(args.threads)], out, 3600)
        ratio = times["fp32"] / times["bf16-mixed"]
        print(f"  {label:18s} fp32 {times['fp32'] * 1000:8.0f} ms   bf16-mixed {times['bf16-mixed'] * 1000:8.0f} ms"
              f"   (bf16 {ratio:.2f}x)")


def report_gru(args: argparse.Namespace, rows: tuple[int, ...] = (24, 48, 96, 192, 320), steps: int = 100) -> None:
    """The cost model of ``acorm_pl.nets.agent.length_buckets``: one GRU step (forward + backward) over R
    sequences costs a + b R; a / b is the fixed cost in rows (STEP_OVERHEAD_ROWS)."""
    print(f"\n(vi) nn.GRU forward + backward per step over R sequences ({steps} steps, {args.threads} torch "
          f"thread(s), median of {args.repeats}); least-squares fit a + b R")
    for hidden in (64, 128):
        gru = torch.nn.GRU(hidden, hidden, batch_first=True)
        per_step = []
        for r in rows:
            x = torch.randn(r, steps, hidden, requires_grad=True)
            per_step.append(median_seconds(lambda gru=gru, x=x: gru(x)[0].sum().backward(), args.repeats) / steps)
        b, a = torch.linalg.lstsq(torch.tensor([[float(r), 1.0] for r in rows]),
                                  torch.tensor(per_step).unsqueeze(1)).solution.squeeze(1).tolist()
        cells = "  ".join(f"R={r}: {t * 1e6:5.0f} us" for r, t in zip(rows, per_step))
        print(f"  embed {hidden:3d}: {cells}   a = {a * 1e6:.0f} us, b = {b * 1e6:.2f} us/row, a/b = {a / b:.0f} rows")


def report_fit(trees: list[tuple[str, Path]], args: argparse.Namespace, workdir: Path) -> None:
    print(f"\n(v) acorm-pl fit --config conf/algo/acorm.yaml --config conf/env/smax/3s5z.yaml, {args.fit_steps} "
          "env steps (8 envs, 8 TD "
          "updates of 32 episodes per collection); rates over whole collect+update cycles")
    for label, root in trees:
        for precision in PRECISIONS:
            r = fit_rates(root, precision, args.fit_steps, workdir)
            print(f"  {label:18s} {precision:10s} {r['env_steps_per_s']:8.1f} env steps/s "
                  f"{r['updates_per_s']:6.2f} TD updates/s  ({r['window_cycles']} cycles, {r['updates']} updates, "
                  f"wall {r['wall_s']:.0f} s, torch threads {r['torch_threads']})")


if __name__ == "__main__":
    main()
