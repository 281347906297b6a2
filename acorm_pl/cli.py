"""``acorm-pl``: LightningCLI with the rollout DataModule, MLflow tracking and env-step progress.

    acorm-pl fit --config conf/quickstart.yaml
    acorm-pl fit --help
    acorm-pl evaluate <checkpoint> --help    # and acorm-pl curves: acorm_pl/analysis/commands.py
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import warnings
from typing import Any

from jsonargparse import ArgumentError, ArgumentParser

# Keep JAX (SMAX) off the GPU and quiet before anything imports it.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# Lightning's own use of a deprecated torch pytree API; nothing a user can act on.
warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")

import torch  # noqa: E402
from lightning.pytorch.cli import LightningCLI  # noqa: E402

from acorm_pl.callbacks import (  # noqa: E402
    EnvStepProgressBar,
    EpsilonSchedule,
    Evaluation,
    RoleClustering,
    ThroughputMonitor,
)
from acorm_pl.data.datamodule import RolloutDataModule  # noqa: E402
from acorm_pl.envs.base import EnvConfigError  # noqa: E402
from acorm_pl.errors import ConfigError  # noqa: E402
from acorm_pl.tracking import MLflowSaveConfig, MLflowTracker, RunCheckpoint, run_id_in_checkpoint  # noqa: E402


def _env_info_of(data: RolloutDataModule) -> dict[str, int]:
    return data.env_info.as_dict()


def _seed_of(seed: Any) -> int:
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ConfigError(f"seed_everything must be a non-negative integer (it seeds the envs too), got {seed!r}")
    return seed


class ACORMCLI(LightningCLI):
    """LightningCLI wired for acorm-pl: env facts flow from the DataModule into the model, the top-level
    seed seeds networks and environments, and ``epsilon`` / ``evaluation`` are always-on callbacks."""

    def add_arguments_to_parser(self, parser: ArgumentParser) -> None:
        parser.add_lightning_class_args(EpsilonSchedule, "epsilon")
        parser.add_lightning_class_args(Evaluation, "evaluation")
        parser.add_lightning_class_args(RoleClustering, "roles")
        parser.link_arguments("data", "model.init_args.env_info", compute_fn=_env_info_of, apply_on="instantiate")
        parser.link_arguments("seed_everything", "data.seed", compute_fn=_seed_of, apply_on="parse")
        parser.add_argument(
            "--torch_num_threads", type=int | None, default=None,
            help="Threads of torch's CPU ops in this process (null: torch's default). Small recurrent "
                 "networks on a CPU train fastest with 1: see the README's benchmarks.")

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        set_torch_threads(config.get("torch_num_threads"))

    def _instantiate_trainer(self, config: dict[str, Any], callbacks: list[Any]) -> Any:
        # The default rich bar is one of trainer_defaults' callbacks; Lightning refuses any progress bar
        # callback together with enable_progress_bar=False, so drop ours then.
        if config.get("enable_progress_bar") is False:
            kept = [c for c in self.trainer_defaults["callbacks"] if not isinstance(c, EnvStepProgressBar)]
            self.trainer_defaults = {**self.trainer_defaults, "callbacks": kept}
        return super()._instantiate_trainer(config, callbacks)

    def before_fit(self) -> None:
        self.datamodule.use_algorithm(self.model)  # bad combinations fail before a run is started
        ckpt_path = self.config_init[self.subcommand].get("ckpt_path")
        tracker = next((lg for lg in self.trainer.loggers if isinstance(lg, MLflowTracker)), None)
        if ckpt_path and tracker is not None and tracker._run_id is None and os.path.isfile(ckpt_path):
            run_id = run_id_in_checkpoint(ckpt_path)
            if run_id is not None:
                tracker._run_id = run_id  # resume logging into the run that wrote the checkpoint


def set_torch_threads(n: int | None) -> None:
    """Fix torch's intra-op threads to ``n`` (``None`` leaves them). OMP_NUM_THREADS is set to match so
    Lightning's launchers keep ``n`` and DDP ranks started as new processes inherit it."""
    if n is None:
        return
    if isinstance(n, bool) or n < 1:
        raise ConfigError(f"torch_num_threads must be a positive integer or null, got {n!r}")
    torch.set_num_threads(n)
    os.environ["OMP_NUM_THREADS"] = str(n)


def trainer_defaults() -> dict[str, Any]:
    """Trainer settings every run gets; the callbacks listed here are always present."""
    return {
        "max_epochs": -1,  # runs end on the env-step budget (data.total_env_steps)
        "log_every_n_steps": 10,
        "num_sanity_val_steps": 0,
        "logger": {"class_path": "acorm_pl.tracking.MLflowTracker"},
        "callbacks": [ThroughputMonitor(), EnvStepProgressBar(), RunCheckpoint(save_last="link", save_top_k=1)],
    }


def build_cli(args: list[str] | None = None, run: bool = True) -> ACORMCLI:
    """The acorm-pl CLI; with ``run=False`` it only parses ``args`` and instantiates the objects."""
    return ACORMCLI(
        model_class=None,
        datamodule_class=RolloutDataModule,
        subclass_mode_model=True,
        save_config_callback=MLflowSaveConfig,
        save_config_kwargs={"overwrite": True},
        trainer_defaults=trainer_defaults(),
        seed_everything_default=0,
        args=args,
        run=run,
        auto_configure_optimizers=False,
        parser_kwargs={"exit_on_error": False},
    )


def _interrupt_on_sigterm(signum: int, frame: Any) -> None:
    """SIGTERM ends a run like Ctrl-C: Lightning's interrupt handling marks the run failed and shuts down."""
    raise KeyboardInterrupt(f"received signal {signum}")


ANALYSIS_COMMANDS = ("evaluate", "curves")  # argparse commands of acorm_pl.analysis.commands


def main(args: list[str] | None = None) -> None:
    """Console entry point: LightningCLI's subcommands (``fit`` ...) and the analysis commands ``evaluate``
    and ``curves``; configuration errors end with one line on stderr and exit code 2. SIGTERM (e.g. from a
    scheduler) is handled as Ctrl-C, so the run is marked and environment workers are closed."""
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _interrupt_on_sigterm) if in_main_thread else None
    argv = sys.argv[1:] if args is None else list(args)
    try:
        if argv and argv[0] in ANALYSIS_COMMANDS:
            from acorm_pl.analysis.commands import run_command  # matplotlib and scikit-learn only when needed

            run_command(argv)
        else:
            build_cli(args)
    except (ValueError, ArgumentError) as err:
        cause = _config_error_in(err)
        if cause is None:
            raise
        message = " ".join(str(cause).split())  # jsonargparse spreads one error over several lines
        print(f"acorm-pl: error: {message}", file=sys.stderr)
        sys.exit(2)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _config_error_in(err: BaseException) -> BaseException | None:
    """The configuration error behind ``err`` (jsonargparse wraps errors raised while instantiating)."""
    seen: BaseException | None = err
    while seen is not None:
        if isinstance(seen, (ConfigError, EnvConfigError, ArgumentError)):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


__all__ = ["ACORMCLI", "build_cli", "main"]


if __name__ == "__main__":
    main()
