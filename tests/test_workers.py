# ruff: noqa: I001  (acorm_pl must be imported before torch: it sets OMP_WAIT_POLICY)
"""ProcessVecEnv (one spawned worker per copy, restarted on crash / hang / exception, no orphan processes) and
how the rollout and the DataModule drop the episodes a failed worker lost."""

from __future__ import annotations

import acorm_pl  # noqa: F401  (sets OMP_WAIT_POLICY before torch loads)

import functools
import gc
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from scripted_env import ScriptedVecEnv
from worker_envs import (
    INFO,
    LIMIT,
    ToyEnv,
    broken_factory,
    episode_length,
    expected_alive,
    expected_obs,
    expected_state,
)

from acorm_pl import envs
from acorm_pl.data import EpisodeReplayBuffer, RolloutDataModule, collect_rollout
from acorm_pl.envs.base import EnvConfigError, StepResult
from acorm_pl.envs.workers import ProcessVecEnv, WorkerOptions, restart_seed

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="process groups and /proc: Linux")
LOGGER = "acorm_pl.envs.workers"


# ---- helpers -----------------------------------------------------------------------------------------------
def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, killed but not yet reaped by whoever adopted it, counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except (FileNotFoundError, ProcessLookupError):
        return False


def _children(pid: int) -> list[int]:
    """Direct children of ``pid``."""
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    out.append(int(entry.name))
            except (OSError, IndexError):
                pass
    return out


def _still_alive(pids: list[int], timeout: float = 5.0) -> list[int]:
    """The pids still running after waiting up to ``timeout`` seconds for all to go."""
    deadline = time.monotonic() + timeout
    while (alive := [p for p in pids if _alive(p)]) and time.monotonic() < deadline:
        time.sleep(0.05)
    return alive


def _actions(t: int, n_envs: int) -> torch.Tensor:
    """Actions of step t: agent a plays (t + a) % 3 in every copy."""
    return ((t + torch.arange(INFO.n_agents)) % 3).expand(n_envs, -1).clone()


class StepActor:
    """Plays :func:`_actions`; ``hooks[t]()`` runs just before the action of step t is chosen."""

    def __init__(self, hooks: dict | None = None) -> None:
        self.hooks = hooks or {}

    def initial_state(self, n_envs: int) -> int:
        return 0

    def act(self, obs, last_actions, avail, hidden, explore):
        if hidden in self.hooks:
            self.hooks[hidden]()
        return _actions(hidden, obs.shape[0]), hidden + 1


def _action_sum(steps: int) -> int:
    return int(sum(_actions(t, 1).sum() for t in range(steps)))


def _assert_whole_episodes(buffer: EpisodeReplayBuffer) -> None:
    """Every stored episode is complete: ``filled`` is a prefix of ones as long as the stored length."""
    stored = buffer.get(torch.arange(len(buffer)))
    for i, length in enumerate(buffer.lengths.tolist()):
        filled = stored.filled[i]
        assert length >= 1 and filled[:length].eq(1).all() and filled[length:].eq(0).all()


@pytest.fixture(scope="module")
def env3():
    env = ProcessVecEnv(functools.partial(ToyEnv), [0, 1, 4], INFO, step_timeout=30, reset_timeout=120)
    yield env
    env.close()


SEEDS3, LENGTHS3 = [0, 1, 4], [2, 3, 6]  # seed 4 runs into the limit (truncated)


# ---- healthy workers ---------------------------------------------------------------------------------------
@pytest.mark.slow
def test_reset_step_values_and_finished_copies_wait(env3):
    assert [episode_length(s) for s in SEEDS3] == LENGTHS3
    pids = env3.worker_pids()
    assert len(set(pids)) == 3 and all(os.getpgid(p) == p and os.getsid(p) == p for p in pids)  # setsid()
    first = env3.reset()
    assert first.obs.shape == (3, 2, 3) and first.obs.dtype == torch.float32
    assert first.state.shape == (3, 3) and first.state.dtype == torch.float32
    assert first.avail_actions.shape == (3, 2, 4) and first.avail_actions.dtype == torch.bool
    assert first.alive.shape == (3, 2) and first.alive.dtype == torch.bool and first.alive.all()
    for e, seed in enumerate(SEEDS3):
        assert first.obs[e].tolist() == expected_obs(seed, 0).tolist()
        assert first.avail_actions[e, :, :3].all() and not first.avail_actions[e, :, 3].any()
    for t in range(1, LIMIT + 2):  # one step more than the longest episode: nobody is stepped then
        res = env3.step(_actions(t - 1, 3))
        assert res.discarded is not None and res.discarded.dtype == torch.bool and not res.discarded.any()
        for e, (seed, length) in enumerate(zip(SEEDS3, LENGTHS3)):
            now = min(t, length)  # a finished copy repeats its last result
            assert res.obs[e].tolist() == expected_obs(seed, now).tolist()
            assert res.alive[e].tolist() == expected_alive(now).tolist()
            assert res.state[e].tolist() == expected_state(seed, now, _action_sum(now)).tolist()
            assert bool(res.terminated[e]) == (t >= length and length < LIMIT)
            assert bool(res.truncated[e]) == (t >= length and length == LIMIT)
            assert bool(res.battle_won[e]) == (t >= length and length < LIMIT and seed % 2 == 0)
        assert res.reward.tolist() == [1.0, 1.0, 1.0]
    # The proof that finished copies are never stepped: ToyEnv raises if stepped after its episode ended, which
    # would have restarted its worker; every copy got 1 to 5 lockstep steps after its end here.
    assert env3.restarts == 0
    assert env3.worker_pids() == pids and env3.state_dict() == {}
    env3.save_replay()
    assert env3.restarts == 0


@pytest.mark.slow
def test_collect_rollout_through_workers_matches_the_script(env3):
    r = collect_rollout(env3, StepActor(), explore=True)
    assert r.discarded == 0 and r.lengths.tolist() == LENGTHS3
    assert r.won.tolist() == [True, False, False] and r.truncated.tolist() == [False, False, True]
    ep, t_max = r.episodes, max(LENGTHS3)
    assert ep.max_t == t_max
    for e, (seed, length) in enumerate(zip(SEEDS3, LENGTHS3)):
        for t in range(t_max + 1):
            on = t <= length
            obs = expected_obs(seed, t) if on else 0 * expected_obs(seed, 0)
            assert ep.obs[e, t].tolist() == obs.tolist()
            state = expected_state(seed, t, _action_sum(t)).tolist() if on else [0.0] * 3
            assert ep.state[e, t].tolist() == state
            assert bool(ep.avail_actions[e, t].any()) == on
            assert ep.alive[e, t].tolist() == (expected_alive(t).tolist() if on else [False, False])
        for t in range(t_max):
            step = t < length
            assert ep.actions[e, t].tolist() == (_actions(t, 1)[0].tolist() if step else [0, 0])
            assert (ep.filled[e, t], ep.reward[e, t]) == (float(step), float(step))
            assert ep.terminated[e, t] == float(t == length - 1 and length < LIMIT)
    assert r.returns.tolist() == [float(n) for n in LENGTHS3] and env3.restarts == 0


# ---- failures ----------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_killed_and_hung_workers_are_restarted_and_their_episodes_dropped(caplog):
    # seeds 0, 1, 2 play 2, 3, 4 steps; worker 1 is SIGKILLed before step 2, worker 2 hangs in step 2
    env = ProcessVecEnv(functools.partial(ToyEnv, hang={2: 2}, sleeper=True), [0, 1, 2], INFO, step_timeout=1.5,
                        reset_timeout=120)  # fmt: skip
    with env:
        pids = env.worker_pids()
        engines = [_children(p) for p in pids]
        assert [len(c) for c in engines] == [1, 1, 1]
        actor = StepActor({1: lambda: os.kill(pids[1], signal.SIGKILL)})
        with caplog.at_level(logging.WARNING, logger=LOGGER):
            r = collect_rollout(env, actor, explore=True)
        assert env.restarts == 2 and r.discarded == 2
        assert r.lengths.tolist() == [2] and r.won.tolist() == [True] and r.returns.tolist() == [2.0]
        assert r.episodes.obs[0, :3, 0].tolist() == [expected_obs(0, t)[0].tolist() for t in range(3)]
        text = caplog.text
        assert f"worker 1 (pid {pids[1]}, seed 1)" in text and "exit code -9" in text
        assert f"worker 2 (pid {pids[2]}, seed 2) did not answer within 1.5 s" in text
        assert f"restarted it with seed {restart_seed(2, 1)}" in text
        # the failed workers' process groups (engines included) are gone; worker 0 and its engine live on
        assert _still_alive([pids[1], pids[2], *engines[1], *engines[2]]) == []
        assert _alive(pids[0]) and _alive(engines[0][0])
        new = env.worker_pids()
        assert new[0] == pids[0] and new[1] not in pids and new[2] not in pids

        buffer = EpisodeReplayBuffer(INFO, capacity=8)
        buffer.add(r.episodes, r.lengths)
        r2 = collect_rollout(env, StepActor(), explore=True)  # every copy plays again, on fresh workers
        seeds = [0, restart_seed(1, 1), restart_seed(2, 1)]
        assert r2.discarded == 0 and r2.lengths.tolist() == [episode_length(s) for s in seeds]
        assert r2.episodes.obs[:, 0, 0, 0].tolist() == [float(s) for s in seeds]
        buffer.add(r2.episodes, r2.lengths)
        assert len(buffer) == 4 and buffer.lengths[:4].tolist() == [2, *r2.lengths.tolist()]
        _assert_whole_episodes(buffer)
    assert _still_alive(new + engines[0]) == []


@pytest.mark.slow
def test_exception_in_worker_restarts_it_and_restart_budget_is_enforced(caplog):
    # seed 0 raises in its first step; its replacement (seed 100003) crashes in its first step
    factory = functools.partial(ToyEnv, fail={0: 1}, crash={restart_seed(0, 1): 1})
    env = ProcessVecEnv(factory, [0, 3], INFO, step_timeout=30, reset_timeout=120, max_restarts=1)
    try:
        env.reset()
        with caplog.at_level(logging.WARNING, logger=LOGGER):
            res = env.step(_actions(0, 2))
        assert res.discarded.tolist() == [True, False] and res.terminated.tolist() == [True, False]
        assert env.restarts == 1
        assert "worker 0" in caplog.text and "raised an exception" in caplog.text and "Traceback" in caplog.text
        assert "ValueError: toy failure of seed 0 at step 1" in caplog.text
        res = env.step(_actions(1, 2))  # copy 0 stays discarded until the next reset
        assert res.discarded.tolist() == [True, False] and env.restarts == 1
        first = env.reset()
        assert first.obs[:, 0, 0].tolist() == [float(restart_seed(0, 1)), 3.0]
        with pytest.raises(RuntimeError, match=r"worker 0 .*exit code -9.*max_restarts=1") as err:
            env.step(_actions(0, 2))
        assert "\n" not in str(err.value)
    finally:
        pids = env.worker_pids()
        env.close()
    assert _still_alive(pids) == []


@pytest.mark.slow
def test_close_and_garbage_collection_leave_no_processes():
    env = ProcessVecEnv(functools.partial(ToyEnv, sleeper=True), [0, 1], INFO, reset_timeout=120)
    dropped = ProcessVecEnv(functools.partial(ToyEnv, sleeper=True), [2], INFO, reset_timeout=120)
    pids, dropped_pids = env.worker_pids(), dropped.worker_pids()
    everything = pids + dropped_pids + [c for p in pids + dropped_pids for c in _children(p)]
    assert len(everything) == 6
    env.reset()
    env.close()  # ToyEnv.close() leaves its `sleep` running: the process-group kill takes it down
    assert _still_alive(pids + everything[3:5]) == [] and env.worker_pids() == []
    env.close()
    with pytest.raises(RuntimeError, match="closed"):
        env.reset()
    del dropped
    gc.collect()
    assert _still_alive(everything) == []


@pytest.mark.slow
def test_workers_die_with_their_parent(tmp_path):
    script = f"""
import sys
sys.path[:0] = {[str(Path(__file__).parent), str(Path(__file__).parents[1])]!r}
import functools, time
from acorm_pl.envs.workers import ProcessVecEnv
from worker_envs import INFO, ToyEnv
env = ProcessVecEnv(functools.partial(ToyEnv, sleeper=True), [0, 1], INFO, reset_timeout=120)
print(*env.worker_pids(), flush=True)
time.sleep(120)
"""
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        pids = [int(p) for p in parent.stdout.readline().split()]
        assert len(pids) == 2, "the parent did not start its workers"
        everything = pids + [c for p in pids for c in _children(p)]
        assert len(everything) == 4
    finally:
        parent.kill()
        parent.wait()
    assert _still_alive(everything, timeout=8.0) == []  # PR_SET_PDEATHSIG -> SIGTERM -> close, kill own group


@pytest.mark.slow
def test_broken_factory_fails_at_construction_without_restarts():
    with pytest.raises(RuntimeError, match=r"worker 0 \(seed 5\) failed to start: ValueError: no such map") as err:
        ProcessVecEnv(broken_factory, [5], INFO, reset_timeout=120)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"step_timeout": 0}, "step_timeout must be a positive number of seconds, got 0"),
        ({"reset_timeout": -1.0}, "reset_timeout must be a positive number of seconds, got -1.0"),
        ({"max_restarts": -1}, "max_restarts must be a non-negative integer, got -1"),
        ({"max_restarts": 1.5}, "max_restarts must be a non-negative integer, got 1.5"),
        ({"seeds": []}, "needs at least one seed"),
        ({"factory": lambda seed: ToyEnv(seed)}, "cannot be pickled"),
    ],
)
def test_invalid_options_are_one_line_config_errors(kwargs, message):
    args = {"factory": ToyEnv, "seeds": [0], "info": INFO} | kwargs
    with pytest.raises(EnvConfigError, match=message) as err:
        ProcessVecEnv(args.pop("factory"), args.pop("seeds"), args.pop("info"), **args)
    assert "\n" not in str(err.value)
    worker_options = {k: v for k, v in kwargs.items() if k not in ("seeds", "factory")}
    if worker_options:  # the one definition every family checks them with says the same
        with pytest.raises(EnvConfigError, match=message):
            WorkerOptions.split({"reward": "paper", **worker_options})


def test_worker_options_split_from_a_familys_options():
    options, rest = WorkerOptions.split({"reward": "paper", "step_timeout": 5, "episode_limit": 9})
    assert options == WorkerOptions(step_timeout=5) and rest == {"reward": "paper", "episode_limit": 9}
    assert (options.reset_timeout, options.max_restarts) == (300.0, 100)


# ---- rollout and DataModule with discarded episodes ------------------------------------------------------
class DiscardingVecEnv(ScriptedVecEnv):
    """:class:`ScriptedVecEnv` whose copy e reports ``discarded`` (and terminated) at step ``discard_at[e]``."""

    def __init__(self, lengths: list[int], won: list[bool], discard_at: dict[int, int], limit: int = 6):
        super().__init__(lengths, won, limit=limit)
        self.discard_at = discard_at
        self.restarts = 0

    def step(self, actions: torch.Tensor) -> StepResult:
        res = super().step(actions)
        lost = torch.zeros(self.n_envs, dtype=torch.bool)
        for e, t in self.discard_at.items():
            if int(self.t[e]) == t:
                lost[e] = True
                self.restarts += 1
        res.discarded, res.terminated = lost, res.terminated | lost
        return res


def test_rollout_drops_discarded_episodes_whole():
    full = collect_rollout(ScriptedVecEnv([2, 6, 4], [True, False, False]), StepActor(), explore=True)
    r = collect_rollout(DiscardingVecEnv([2, 6, 4], [True, False, False], {1: 3}), StepActor(), explore=True)
    assert r.discarded == 1 and r.n_episodes == 2 and r.lengths.tolist() == [2, 4] and r.env_steps == 6
    assert r.won.tolist() == [True, False] and r.truncated.tolist() == [False, False]
    assert r.returns.tolist() == [2.0, 4.0] and r.episodes.max_t == 4  # cut to the longest kept episode
    kept = full.episodes.truncate(4)
    for name in ("obs", "state", "avail_actions", "alive", "actions", "reward", "terminated", "filled"):
        assert torch.equal(getattr(r.episodes, name), getattr(kept, name)[[0, 2]]), name
    none = collect_rollout(DiscardingVecEnv([2, 3], [False, False], {0: 1, 1: 2}), StepActor(), explore=True)
    assert none.discarded == 2 and none.n_episodes == 0 and none.env_steps == 0 and none.episodes.batch_size == 0
    buffer = EpisodeReplayBuffer(ScriptedVecEnv([1], [False]).info, capacity=4)
    buffer.add(none.episodes, none.lengths)
    assert len(buffer) == 0 and buffer.episodes_added == 0


def _datamodule(monkeypatch, world_size: int = 1, other_rank=(0, 0, 0, 0)) -> RolloutDataModule:
    """A DataModule on the scripted family ``discarding`` (copy 1 of 3 loses its episode at step 3). With
    ``world_size`` 2 the other rank's (env_steps, episodes, restarts, can_sample) are added by the fake reduce."""

    def make(map_name, seeds, **kwargs):
        return DiscardingVecEnv([2, 6, 4], [True, False, False], {1: 3})

    monkeypatch.setitem(envs.FAMILIES, "discarding", (lambda map_name, **kw: make(map_name, [0]).info, make))

    def reduce(t, reduce_op):
        assert reduce_op == "sum"
        return t + torch.tensor(other_rank, dtype=t.dtype)

    dm = RolloutDataModule(env="discarding", map_name="x", n_envs=3, buffer_size=16, batch_size=3,
                           total_env_steps=100, epoch_env_steps=12)  # fmt: skip
    strategy = SimpleNamespace(root_device=torch.device("cpu"), reduce=reduce)
    dm.trainer = SimpleNamespace(lightning_module=StepActor(), global_rank=0, world_size=world_size,
                                 strategy=strategy, should_stop=False)  # fmt: skip
    dm.setup("fit")
    return dm


def test_datamodule_counts_only_kept_episodes(monkeypatch):
    dm = _datamodule(monkeypatch)
    dm.collect()
    assert (dm.env_steps, dm.episodes, dm.worker_restarts, len(dm.buffer)) == (6, 2, 1, 2)
    assert not dm._all_can_sample  # 2 episodes < batch_size 3
    dm.collect()
    assert (dm.env_steps, dm.episodes, dm.worker_restarts, len(dm.buffer)) == (12, 4, 2, 4)
    assert dm._all_can_sample
    _assert_whole_episodes(dm.buffer)
    assert set(dm.buffer.get(torch.arange(4)).obs[:, 0, 0, 1].tolist()) == {0.0, 2.0}  # obs[..., 1] = copy index
    assert dm.state_dict()["worker_restarts"] == 2


def test_datamodule_samples_only_when_every_rank_can(monkeypatch):
    dm = _datamodule(monkeypatch, world_size=2, other_rank=(1, 1, 0, 0))  # the other rank's buffer is short
    batches = list(dm._batches())  # epoch of 12 env steps: two collections of 6 + 1 steps
    assert (dm.env_steps, dm.episodes, len(dm.buffer)) == (14, 6, 4)
    assert dm.buffer.can_sample(3) and batches == []  # this rank could sample, but the other one cannot
    ready = _datamodule(monkeypatch, world_size=2, other_rank=(1, 1, 0, 1))
    assert len(list(ready._batches())) == 1  # sampled once both ranks hold a batch (after the second collection)
