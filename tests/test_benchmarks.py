"""Benchmark scripts that must keep working where their figures cannot be taken: the GPU check on a machine
without a GPU, its imports on one without MLflow, and the synthetic MMM2 batches the ACORM speed benchmark times."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch

from acorm_pl.data import EpisodeReplayBuffer

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def test_gpu_check_exits_cleanly_without_a_gpu():
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}  # no GPU, even where the tests run on a machine with one
    proc = subprocess.run([sys.executable, str(BENCH / "gpu_check.py")], env=env, capture_output=True, text=True,
                          timeout=300)
    lines = proc.stdout.splitlines()
    assert proc.returncode == 0, proc.stderr
    assert lines[0].startswith(("Linux", "Darwin", "Windows")) and "torch" in lines[0]  # the machine line
    assert lines[1] == "gpu_check: no CUDA GPU found (torch.cuda.is_available() is False): nothing measured"


def test_gpu_check_imports_load_without_mlflow_or_jsonargparse():
    # The GPU machine has torch, Lightning and JAX but neither MLflow nor jsonargparse; the check builds its fit
    # from these modules alone, so none of them may import the tracking or CLI layers at load time.
    blocker = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('mlflow', 'jsonargparse'):\n"
        "            raise ImportError('not installed here: ' + name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "from acorm_pl.algos import ACORM\n"
        "from acorm_pl.callbacks import EpsilonSchedule, Evaluation, RoleClustering\n"
        "from acorm_pl.data import RolloutDataModule, collect_rollout\n"
        "import acorm_speed, common\n"
        "print('loaded', 'mlflow' in sys.modules, 'jsonargparse' in sys.modules)\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(BENCH.parent), str(BENCH)])}
    proc = subprocess.run([sys.executable, "-c", blocker], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.splitlines()[-1] == "loaded False False"


def test_synthetic_mmm2_batch_holds_whole_valid_episodes(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))
    from acorm_speed import MMM2, mmm2_batch

    batch = mmm2_batch(6, seed=3)
    lengths = batch.filled.sum(1).long()
    assert bool(((lengths >= 120) & (lengths <= 180)).all()) and batch.max_t == int(lengths.max())
    assert batch.obs.shape == (6, batch.max_t + 1, 10, 176) and batch.state.shape == (6, batch.max_t + 1, 322)
    observed = torch.arange(batch.max_t + 1) <= lengths.unsqueeze(1)  # [B, T+1]: up to the final observation
    assert torch.equal(batch.avail_actions.any(-1), observed.unsqueeze(-1).expand(-1, -1, 10))
    taken = batch.avail_actions[:, :-1].gather(-1, batch.actions.unsqueeze(-1)).squeeze(-1)
    assert bool(taken[batch.filled.bool()].all())  # every action taken was available
    dead = batch.avail_actions.sum(-1) == 1
    assert bool(batch.avail_actions[..., 0][dead].all()) and dead.any()  # the dead can only no-op
    ends = batch.terminated.sum(1)
    assert torch.equal(ends, (lengths < 180).float())  # a terminal ends every episode short of the limit
    buffer = EpisodeReplayBuffer(MMM2, capacity=6)
    buffer.add(batch, lengths)  # whole episodes, as the buffer requires
    assert buffer.lengths.tolist() == lengths.tolist()
