"""GPU check: a short ACORM fit on SMAX with JAX and torch both on the GPU, and ACORM TD-update times at MMM2
shapes (batch 32 and 128) in fp32 and bf16-mixed.

    python benchmarks/gpu_check.py [--fit-seconds 120] [--fit-steps 20000] [--repeats 10]

Where torch finds no CUDA GPU it prints ``gpu_check: no CUDA GPU found`` and exits 0, measuring nothing.
Exit code 1: a measurement failed (the others still run and print). About 100 s on one H200 (figures in the
README, "Scale"): JAX's compilation, two fits of at most ``--fit-seconds`` each, the TD timings.

What it does on a GPU:

1. SMAX on the GPU: JAX runs on its CUDA backend (``JAX_PLATFORMS=cuda,cpu``, set before SMAX is imported),
   and shows that ``torch.from_dlpack`` of a JAX array shares its device buffer (no host copy) and where
   SMAX's observations and a collected rollout live.
2. ``conf/algo/acorm.yaml`` on ``conf/env/smax/3s5z.yaml`` (the shipped ACORM-QMIX config on SMAX 3s5z) trained
   with Lightning on the GPU for ``--fit-steps`` env steps or ``--fit-seconds``, whichever ends first, in fp32
   and bf16-mixed, with the replay buffer on the GPU too (``data.buffer_device cuda``): episodes go from JAX to
   the buffer to the learner without leaving the device. Built directly from the config (model, data, epsilon,
   evaluation, roles), not through ``acorm-pl fit``, so neither MLflow nor jsonargparse is needed. Prints
   env steps/s and TD updates/s over whole collect-and-update cycles (``benchmarks/acorm_speed.py:
   FitClock``). Without JAX's CUDA backend the fit runs SMAX on the CPU and says so.
3. One ACORM TD update (``benchmarks/common.py: td_step``) at MMM2 shapes (10 agents, 18 actions, obs 176,
   state 322; the model of ``conf/mmm2.yaml``) on synthetic batches of 32 and 128 episodes of
   120-180 steps, fp32 and under Lightning's bf16-mixed plugin context; medians of ``--repeats``.

Getting the packages onto a GPU machine without network (such as this project's device machine: Python 3.12
with torch, Lightning, torchmetrics, JAX with its CUDA 13 plugin, flax and chex already installed):
acorm_pl runs from the checkout (``PYTHONPATH=.``) and only jaxmarl, pure Python, travels as a wheel. On a
machine with network, in the repository root::

    echo /.whl/ >> .git/info/exclude
    python -m pip download --no-deps --only-binary=:all: -d .whl jaxmarl==0.2.0

and on the GPU machine, with ``.whl`` carried along::

    python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && \\
        PYTHONPATH=/tmp/site:. python3 benchmarks/gpu_check.py

JAX's CUDA backend is not a dependency of acorm-pl (``pip install jax[cuda13]`` needs NVIDIA's libraries
and is useless on the GPU-less machines that run the tests). A GPU machine without it gets it as the
binary wheels ``jax-cuda13-plugin`` and ``jax-cuda13-pjrt`` (or ``-cuda12-``) of the same version as its
jaxlib, downloaded as above (add ``--python-version``/``--platform manylinux_2_27_x86_64`` to match it).
``--device cpu`` runs the same steps on the CPU (for checking the script, not for figures).
"""

# ruff: noqa: I001  (acorm_pl must be imported before torch: it sets OMP_WAIT_POLICY)
from __future__ import annotations

import argparse
import gc
import importlib.util
import os
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import acorm_pl  # noqa: F401  (sets OMP_WAIT_POLICY before torch loads)
import torch

from common import machine

REPO = Path(__file__).resolve().parents[1]
NO_GPU = "gpu_check: no CUDA GPU found (torch.cuda.is_available() is False): nothing measured"


def jax_cuda_plugin() -> str | None:
    """The installed JAX CUDA plugin's module name, if any."""
    for version in (13, 12):
        with_plugin = importlib.util.find_spec("jax_plugins") is not None
        if with_plugin and importlib.util.find_spec(f"jax_plugins.xla_cuda{version}") is not None:
            return f"jax_plugins.xla_cuda{version}"
    return None


def smax_on_device(device: str) -> None:
    """JAX's backend, a DLPack hand-over and where SMAX's outputs and a collected rollout live."""
    import jax
    import jax.numpy as jnp

    from acorm_pl.algos import ACORM
    from acorm_pl.data import collect_rollout
    from acorm_pl.envs.smax import SMAXVecEnv

    x = jnp.arange(1024, dtype=jnp.float32)
    t = torch.from_dlpack(x)
    shared = t.data_ptr() == x.unsafe_buffer_pointer()
    print(f"  JAX {jax.__version__}, default backend {jax.default_backend()}, devices {jax.devices()}")
    print(f"  torch.from_dlpack(jax array) on {t.device}, same device buffer as JAX's: {shared}")
    env = SMAXVecEnv("3s5z", list(range(8)))
    model = ACORM(env_info=env.info.as_dict()).to(device)
    first = env.reset()
    start = time.perf_counter()
    rollout = collect_rollout(env, model, explore=True)
    elapsed = time.perf_counter() - start
    print(f"  SMAX 3s5z reset obs on {first.obs.device}; rollout of 8 episodes ({rollout.env_steps} env steps, "
          f"{elapsed:.1f} s incl. compilation) assembled on {rollout.episodes.obs.device}")
    env.close()


def fit(precision: str, device: str, fit_steps: int, fit_seconds: float, workdir: Path) -> None:
    """The shipped ACORM SMAX 3s5z config trained for a short budget; prints its throughput."""
    import json

    import lightning.pytorch as pl
    import yaml

    from acorm_pl.algos import ACORM
    from acorm_pl.callbacks import EpsilonSchedule, Evaluation, RoleClustering
    from acorm_pl.data import RolloutDataModule
    from acorm_speed import FitClock

    conf = yaml.safe_load((REPO / "conf" / "algo" / "acorm.yaml").read_text())  # the algorithm file on 3s5z
    conf["data"].update(yaml.safe_load((REPO / "conf" / "env" / "smax" / "3s5z.yaml").read_text())["data"])
    pl.seed_everything(conf.get("seed_everything", 0), verbose=False)
    data = RolloutDataModule(**{**conf["data"], "seed": conf.get("seed_everything", 0), "buffer_device": device,
                                "total_env_steps": fit_steps, "epoch_env_steps": fit_steps})
    model = ACORM(env_info=data.env_info.as_dict(), **conf["model"]["init_args"])
    out = workdir / f"fit-{precision}.json"
    callbacks = [EpsilonSchedule(**conf["epsilon"]), Evaluation(**conf["evaluation"]),
                 RoleClustering(**conf["roles"]), FitClock(str(out))]
    trainer = pl.Trainer(accelerator="gpu" if device == "cuda" else "cpu", devices=1,
                         precision="32-true" if precision == "fp32" else precision, max_epochs=-1,
                         max_time={"seconds": fit_seconds}, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                         callbacks=callbacks, default_root_dir=str(workdir))
    trainer.fit(model, datamodule=data)
    del trainer, data, model  # the replay buffer (GiBs on the device) before the next fit allocates its own
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()
    r = json.loads(out.read_text())
    print(f"  {precision:10s} {r['env_steps_per_s']:8.1f} env steps/s {r['updates_per_s']:7.2f} TD updates/s "
          f"({r['env_steps']} env steps, {r['updates']} updates, {r['window_cycles']} cycles timed, "
          f"wall {r['wall_s']:.0f} s)")


def td_times(device: str, batch_sizes: list[int], repeats: int) -> None:
    """ACORM TD update at MMM2 shapes per batch size and precision, medians."""
    from acorm_speed import build_acorm, mmm2_batch
    from common import PRECISIONS, precision_context
    from common import median_seconds, td_step

    model, opt = build_acorm(REPO)
    model.to(device)
    for b in batch_sizes:
        batch = mmm2_batch(b).to(device)
        row = []
        for name in PRECISIONS:
            def step() -> None:
                td_step(model, opt, batch)  # noqa: B023
                if device == "cuda":
                    torch.cuda.synchronize()

            with precision_context(name, device):
                row.append(f"{name} {median_seconds(step, repeats, warmup=2) * 1000:8.1f} ms")
        print(f"  batch {b:4d} (T = {batch.max_t}): " + "   ".join(row))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fit-steps", type=int, default=20_000, help="env-step budget of each fit")
    parser.add_argument("--fit-seconds", type=float, default=120.0, help="wall-clock limit of each fit")
    parser.add_argument("--repeats", type=int, default=10, help="timed TD updates per setting (median)")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[32, 128])
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda",
                        help="cpu: run the same steps on the CPU to check the script (no figures)")
    args = parser.parse_args()
    print(machine())
    if args.device == "cuda" and not torch.cuda.is_available():
        print(NO_GPU)
        return 0
    plugin = jax_cuda_plugin() if args.device == "cuda" else None
    # Before anything imports SMAX (its module defaults JAX to the CPU).
    os.environ["JAX_PLATFORMS"] = "cuda,cpu" if plugin else "cpu"
    if args.device == "cuda":
        print(f"GPU: {torch.cuda.get_device_name()} | torch CUDA {torch.version.cuda} | JAX CUDA plugin: "
              f"{plugin or 'none: SMAX stays on the CPU (see the docstring for the wheels)'}")
    failed = []

    def attempt(label: str, fn: Callable[[], None]) -> None:
        print(f"\n{label}")
        try:
            fn()
        except Exception:  # one failed measurement must not hide the others
            failed.append(label)
            traceback.print_exc()

    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        attempt("1. SMAX on the device", lambda: smax_on_device(args.device))
        attempt(f"2. fit conf/algo/acorm.yaml + conf/env/smax/3s5z.yaml, buffer and learner on {args.device}, at most "
                f"{args.fit_steps} env steps / {args.fit_seconds:.0f} s each",
                lambda: [fit(p, args.device, args.fit_steps, args.fit_seconds, Path(tmp))
                         for p in ("fp32", "bf16-mixed")])
        attempt(f"3. ACORM TD update at MMM2 shapes (batch of 120-180-step episodes), median of {args.repeats}",
                lambda: td_times(args.device, args.batch_sizes, args.repeats))
    if failed:
        print(f"\ngpu_check: failed: {'; '.join(failed)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
