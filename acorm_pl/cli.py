"""``acorm-pl``: the commands of :data:`COMMANDS`; ``fit`` is LightningCLI with the rollout DataModule, MLflow
tracking and env-step progress.

    acorm-pl --help                          # what acorm-pl is and its commands
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
from collections.abc import Callable
from typing import Any

from jsonargparse import ArgumentError, ArgumentParser, Namespace

# Keep JAX (SMAX) off the GPU and quiet before anything imports it.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# Lightning's own use of a deprecated torch pytree API; nothing a user can act on.
warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")

import torch  # noqa: E402
from lightning.pytorch.cli import LightningCLI  # noqa: E402
from lightning.pytorch.utilities import rank_zero_warn  # noqa: E402

from acorm_pl.callbacks import (  # noqa: E402
    EnvStepProgressBar,
    EpsilonSchedule,
    Evaluation,
    RoleClustering,
    ThroughputMonitor,
)
from acorm_pl.checkpoints import LIGHTNING_CKPT_KEYWORDS, check_resume, read_checkpoint  # noqa: E402
from acorm_pl.data.datamodule import RolloutDataModule  # noqa: E402
from acorm_pl.envs.base import EnvConfigError  # noqa: E402
from acorm_pl.errors import ConfigError, DivergenceError  # noqa: E402
from acorm_pl.imports import import_attr  # noqa: E402
from acorm_pl.tracking import (  # noqa: E402
    FailureReason,
    MLflowSaveConfig,
    MLflowTracker,
    RunCheckpoint,
    default_tracking_uri,
    run_id_in_checkpoint,
    run_in_store,
)


def _env_info_of(data: RolloutDataModule) -> dict[str, int]:
    return data.env_info.as_dict()


def _seed_of(seed: Any) -> int:
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ConfigError(f"seed_everything must be a non-negative integer (it seeds the envs too), got {seed!r}")
    return seed


class ACORMCLI(LightningCLI):
    """LightningCLI wired for acorm-pl: env facts flow from the DataModule into the model, the top-level
    seed seeds networks and environments, and ``epsilon`` / ``evaluation`` are always-on callbacks."""

    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        """``fit`` only: the algorithms learn from their own rollouts and have no validation, test or predict
        loop (``acorm-pl evaluate`` measures a checkpoint)."""
        return {"fit": LightningCLI.subcommands()["fit"]}

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
        parser.add_argument(
            "--checkpoint_dir", type=str | None, default=None,
            help="Directory of this run's checkpoints (null: <run artifacts>/checkpoints where MLflow's "
                 "artifacts are local files). acorm-pl sweep gives each trial its own.")

    # Lightning's version loads the file before any check and replaces the config's model settings with the
    # checkpoint's, silently ignoring e.g. a new learning rate or network size; acorm-pl keeps the config and
    # checks that the checkpoint fits it (before_fit), so this only rejects a bad file early, in one line.
    def _parse_ckpt_path(self) -> None:
        ckpt_path = self.config[self.config.subcommand].get("ckpt_path") if self.config.get("subcommand") else None
        if ckpt_path and ckpt_path not in LIGHTNING_CKPT_KEYWORDS:
            read_checkpoint(ckpt_path)

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        set_torch_threads(config.get("torch_num_threads"))
        if config.get("checkpoint_dir"):
            for callback in self.trainer_defaults["callbacks"]:
                if isinstance(callback, RunCheckpoint):
                    callback.dirpath = os.path.realpath(os.path.expanduser(config["checkpoint_dir"]))
        if self.subcommand == "fit":
            _resume_run(config)

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
        # A checkpoint that cannot resume this config fails here, in one line, before any MLflow run starts.
        if ckpt_path:
            check_resume(ckpt_path, self.model, self.datamodule)


def _resume_run(config: Namespace) -> None:
    """Give the MLflow logger of a fit resumed from a checkpoint the run that wrote the checkpoint (its
    ``run_id`` argument), when that run is in the logger's store and no run is configured."""
    ckpt_path = config.get("ckpt_path")
    if not ckpt_path or ckpt_path in LIGHTNING_CKPT_KEYWORDS:
        return
    run_id = run_id_in_checkpoint(ckpt_path)
    if run_id is None:
        return
    loggers = config.trainer.get("logger")
    for logger in loggers if isinstance(loggers, list) else [loggers]:
        cls = import_attr(logger.class_path) if isinstance(logger, Namespace) and "class_path" in logger else None
        if not (isinstance(cls, type) and issubclass(cls, MLflowTracker)):
            continue
        args = logger.init_args
        if args.get("run_id") is not None:
            continue
        uri = args.get("tracking_uri") or default_tracking_uri()
        if run_in_store(uri, run_id):
            args.run_id = run_id
        else:
            rank_zero_warn(f"the MLflow run {run_id} that wrote {ckpt_path} is not in this tracking store ({uri}); "
                           "the resumed training logs to a new run")


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
        "callbacks": [ThroughputMonitor(), EnvStepProgressBar(), RunCheckpoint(save_last="link", save_top_k=1),
                      FailureReason()],
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


def _fit(argv: list[str]) -> None:
    # Let LightningCLI read sys.argv itself when that is where the arguments come from (it warns otherwise).
    build_cli(None if sys.argv[1:] == ["fit", *argv] else ["fit", *argv])


def _analysis(argv: list[str], name: str) -> None:
    from acorm_pl.analysis.commands import run_command  # matplotlib and scikit-learn only when needed

    run_command([name, *argv])


def _sweep(argv: list[str]) -> None:
    from acorm_pl.sweep.command import sweep_command  # Ray and the MLflow server only when needed

    sweep_command(argv)


COMMANDS: dict[str, tuple[str, Callable[[list[str]], None]]] = {
    "fit": ("train an algorithm from a config (--config conf/quickstart.yaml), or resume it (--ckpt_path)", _fit),
    "evaluate": ("greedy episodes of a checkpoint: win rate and return with confidence intervals, figures",
                 lambda argv: _analysis(argv, "evaluate")),
    "curves": ("learning curves over seeds with bootstrap bands and a summary table, from MLflow runs",
               lambda argv: _analysis(argv, "curves")),
    "results": ("the study's results: export finished sweep trials to docs/results/, regenerate docs/results.md",
                lambda argv: _analysis(argv, "results")),
    "sweep": ("every trial of a sweep file (variants x seeds x grid) as an acorm-pl fit, scheduled by Ray", _sweep),
}
"""Every acorm-pl command: name -> (one-line summary for ``acorm-pl --help``, runner of its arguments)."""

# LightningCLI's other subcommands: these modules have no validation, test or predict loop.
NOT_COMMANDS = {"validate": "validation", "test": "test", "predict": "prediction"}


def usage() -> str:
    """The text of ``acorm-pl --help``: what acorm-pl is and its commands."""
    width = max(map(len, COMMANDS))
    lines = [
        "usage: acorm-pl COMMAND [options]",
        "",
        "ACORM (attention-guided contrastive role representations, ICLR 2024) and its baselines QMIX, MAPPO and",
        "ACORM-MAPPO for cooperative multi-agent RL, on PyTorch Lightning: SMAX, StarCraft II (SMAC) and Google",
        "Research Football, tracked with MLflow.",
        "",
        "commands:",
        *(f"  {name:<{width}}  {summary}" for name, (summary, _) in COMMANDS.items()),
        "",
        "acorm-pl COMMAND --help lists a command's options; README.md has the quick start.",
    ]
    return "\n".join(lines)


def _dispatch(argv: list[str]) -> None:
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return
    name = argv[0]
    if name in NOT_COMMANDS:
        raise ConfigError(f"acorm-pl {name} is not available: these algorithms learn from their own rollouts and "
                          f"have no {NOT_COMMANDS[name]} loop; measure a trained policy with `acorm-pl evaluate CKPT`")
    if name not in COMMANDS:
        what = (f"expected a command first, got the option {name!r}" if name.startswith("-")
                else f"unknown command {name!r}")
        raise ConfigError(f"{what}; commands: {', '.join(COMMANDS)} (acorm-pl --help)")
    COMMANDS[name][1](argv[1:])


def main(args: list[str] | None = None) -> None:
    """Console entry point: the commands of :data:`COMMANDS`. Bad input, a checkpoint that does not fit and a
    diverging run end with one ``acorm-pl: error:`` line on stderr and exit code 2; Ctrl-C outside a run ends
    with one line and exit code 130. SIGTERM (e.g. from a scheduler) is handled as Ctrl-C, so the run is
    marked and environment workers are closed."""
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _interrupt_on_sigterm) if in_main_thread else None
    argv = sys.argv[1:] if args is None else list(args)
    try:
        _dispatch(argv)
    except (ValueError, ArgumentError, DivergenceError) as err:
        cause = _config_error_in(err)
        if cause is None:
            raise
        message = _explained(" ".join(str(cause).split()))  # jsonargparse spreads one error over several lines
        print(f"acorm-pl: error: {message}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        # Inside a fit Lightning handles Ctrl-C (the run is marked FAILED); this is Ctrl-C anywhere else.
        print("acorm-pl: interrupted; nothing was written after the last completed step", file=sys.stderr)
        sys.exit(130)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _explained(message: str) -> str:
    """``message``, or what to do instead where jsonargparse's words would not say it: a config without an
    algorithm (an environment file alone, or an ablation file without the algorithm file it modifies)."""
    if "arguments are required: fit.model" in message or "given class_path 'lightning.LightningModule'" in message:
        return ("the config names no algorithm (model.class_path): put an algorithm file first, e.g. "
                "--config conf/algo/acorm.yaml --config conf/env/smax/3s5z.yaml (conf/algo: qmix, acorm, mappo, "
                "acorm_mappo; an ablation file goes between the two)")
    return message


def _config_error_in(err: BaseException) -> BaseException | None:
    """The configuration error behind ``err`` (jsonargparse wraps errors raised while instantiating)."""
    seen: BaseException | None = err
    while seen is not None:
        if isinstance(seen, (ConfigError, EnvConfigError, ArgumentError, DivergenceError)):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


__all__ = ["ACORMCLI", "COMMANDS", "build_cli", "main", "usage"]


if __name__ == "__main__":
    main()
