"""Sweep files: what they may say, how they expand into trials, and the checks made before any trial starts.

A sweep file (YAML) names the trials of a study; each trial is one ``acorm-pl fit``::

    name: smoke                       # the sweep's name: tag acorm_pl.sweep, default directory sweeps/<name>
    experiment: sweep-smoke           # MLflow experiment of every trial (default: the name)
    directory: sweeps/smoke           # checkpoints, logs and the MLflow store (default sweeps/<name>)
    variants:                         # label -> base config file(s) and overrides of that variant
      ACORM:
        config:                       # composed in order, as repeated --config; block style: YAML's
          - conf/algo/acorm.yaml      # [...] and {...} styles cannot hold a {map} path
          - conf/env/smax/{map}.yaml
      QMIX-128:
        config:
          - conf/algo/qmix.yaml
          - conf/env/smax/{map}.yaml
        overrides: {model.init_args.embed_dim: 128}
    seeds: [0, 1, 2]
    overrides: {data.total_env_steps: 500000}   # every trial
    grid: {map: [2s3z, 3s5z]}         # cartesian product; a dotted key is a fit option, a plain key fills
                                      # {key} in the config paths
    resources: {cpus: 1, gpus: 0}     # per trial; torch_num_threads = cpus
    retries: 2                        # restarts of a crashed trial (each resumes from its last checkpoint)

Relative paths are relative to the working directory, as for ``acorm-pl fit --config``.
"""

from __future__ import annotations

import contextlib
import fnmatch
import io
import itertools
import json
import re
import string
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from acorm_pl.errors import ConfigError, require

SWEEP_KEYS = ("name", "experiment", "directory", "variants", "seeds", "overrides", "grid", "resources", "retries")
VARIANT_KEYS = ("config", "overrides")
RESOURCE_KEYS = ("cpus", "gpus")
# Options the sweep sets itself for every trial.
RESERVED = ("seed_everything", "torch_num_threads", "checkpoint_dir", "ckpt_path", "trainer.logger", "config",
            "print_config", "trainer.enable_progress_bar")
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
OPTION = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)+\+?$")  # data.total_env_steps, trainer.callbacks+
TEMPLATE = re.compile(r"^[A-Za-z_]\w*$")


@dataclass(frozen=True)
class Variant:
    """One line of the study's figure: base config files and the overrides that make this variant."""

    label: str
    configs: tuple[str, ...]  # paths, possibly with {grid key} placeholders
    overrides: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Trial:
    """One ``acorm-pl fit``: a variant at a grid point with a seed."""

    trial_id: str
    variant: str
    seed: int
    point: dict[str, Any]  # grid key -> value
    configs: tuple[Path, ...]
    overrides: tuple[str, ...]  # "--key=value" CLI arguments: the sweep's, the variant's, the grid point's


@dataclass(frozen=True)
class Sweep:
    """A parsed and checked sweep file."""

    name: str
    experiment: str
    source: Path
    directory: Path
    variants: dict[str, Variant]
    seeds: tuple[int, ...]
    overrides: dict[str, Any]
    grid: dict[str, list[Any]]
    cpus: int
    gpus: float
    retries: int

    def trials(self) -> list[Trial]:
        """Every (seed, grid point, variant), seed-major: a sweep stopped early still has every variant of
        its first seeds."""
        keys = list(self.grid)
        trials = []
        for seed in self.seeds:
            for values in itertools.product(*(self.grid[k] for k in keys)):
                point = dict(zip(keys, values))
                for variant in self.variants.values():
                    trials.append(self._trial(variant, point, seed))
        ids = [t.trial_id for t in trials]
        duplicates = sorted({i for i in ids if ids.count(i) > 1})
        require(not duplicates, f"{self.source}: trials {duplicates} would share an id: make the variant labels "
                                "or grid values distinct")
        return trials

    def select(self, patterns: list[str] | None) -> list[Trial]:
        """The trials whose ids match one of the shell-style ``patterns`` (all trials when None), in
        :meth:`trials` order; a pattern that matches no trial is an error naming the trials there are."""
        trials = self.trials()
        if not patterns:
            return trials
        ids = [t.trial_id for t in trials]
        for pattern in patterns:
            require(any(fnmatch.fnmatchcase(i, pattern) for i in ids),
                    f"--only {pattern!r} matches no trial of {self.source}; its trials: " + ", ".join(ids))
        return [t for t in trials if any(fnmatch.fnmatchcase(t.trial_id, p) for p in patterns)]

    def _trial(self, variant: Variant, point: dict[str, Any], seed: int) -> Trial:
        templates = {k: v for k, v in point.items() if TEMPLATE.match(k)}
        configs = tuple(Path(c.format_map(templates)).absolute() for c in variant.configs)  # trials run elsewhere
        options = {k: v for k, v in point.items() if not TEMPLATE.match(k)}
        overrides = [*_cli(self.overrides), *_cli(variant.overrides), *_cli(options)]
        label = "-".join([variant.label, *(_slug(v) for v in point.values()), f"s{seed}"])
        return Trial(label, variant.label, seed, point, configs, tuple(overrides))

    def trial_dir(self, trial: Trial) -> Path:
        """The trial's own directory: ``checkpoints/`` and its log ``fit.log``."""
        return self.directory / "trials" / trial.trial_id

    def fit_args(self, trial: Trial) -> list[str]:
        """``acorm-pl fit`` arguments of ``trial`` without the tracking settings (see runner.fit_command)."""
        configs = [f"--config={c}" for c in trial.configs]
        return ["fit", *configs, *trial.overrides, f"--seed_everything={trial.seed}",
                f"--torch_num_threads={self.cpus}", f"--checkpoint_dir={self.trial_dir(trial) / 'checkpoints'}",
                "--trainer.enable_progress_bar=false"]


def _slug(value: Any) -> str:
    """A grid value as part of a trial id (letters, digits, ``_.-``)."""
    text = value if isinstance(value, str) else json.dumps(value)
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "_"


def _cli(overrides: dict[str, Any]) -> list[str]:
    """``{key: value}`` as ``--key=value`` arguments; non-strings are written as JSON (which YAML reads back)."""
    return [f"--{k}={v if isinstance(v, str) else json.dumps(v)}" for k, v in overrides.items()]


def _mapping(value: Any, where: str, allowed: tuple[str, ...] | None = None) -> dict[str, Any]:
    require(isinstance(value, dict), f"{where} must be a mapping, got {value!r}")
    unknown = [k for k in value if allowed is not None and k not in allowed]
    require(not unknown, f"{where}: unknown key(s) {unknown}; allowed: {', '.join(allowed or ())}")
    return value


def _options(value: Any, where: str) -> dict[str, Any]:
    """Checked ``overrides``: dotted fit options that the sweep does not set itself."""
    options = _mapping(value if value is not None else {}, where)
    for key in options:
        reserved = next((r for r in RESERVED if str(key).rstrip("+") == r or str(key).startswith(r + ".")), None)
        require(reserved is None, f"{where}: {key!r} is set by the sweep for every trial ({reserved})")
        require(isinstance(key, str) and OPTION.match(key) is not None,
                f"{where}: {key!r} is not a fit option (dotted, e.g. data.total_env_steps)")
    return options


def _variant(label: Any, value: Any, where: str) -> Variant:
    require(isinstance(label, str) and NAME.match(label) is not None,
            f"{where}: variant label {label!r} must be letters, digits, '_', '.' or '-'")
    spec = {"config": value} if isinstance(value, (str, list)) else _mapping(value, f"{where}.{label}", VARIANT_KEYS)
    configs = spec.get("config")
    configs = [configs] if isinstance(configs, str) else configs
    require(isinstance(configs, list) and bool(configs) and all(isinstance(c, str) for c in configs),
            f"{where}.{label}.config must be a config path or a list of them, got {spec.get('config')!r}")
    return Variant(label, tuple(configs), _options(spec.get("overrides"), f"{where}.{label}.overrides"))


def _grid(value: Any, variants: dict[str, Variant], where: str) -> dict[str, list[Any]]:
    grid = _mapping(value if value is not None else {}, where)
    used = {name for v in variants.values() for c in v.configs
            for _, name, _, _ in string.Formatter().parse(c) if name}
    for key, values in grid.items():
        require(isinstance(values, list) and bool(values), f"{where}.{key} must be a non-empty list, got {values!r}")
        if isinstance(key, str) and TEMPLATE.match(key):
            require(key in used, f"{where}: {key!r} is neither a fit option (dotted, e.g. data.map_name) nor used "
                                 f"as {{{key}}} in a variant's config path")
        else:
            _options({key: None}, where)
    missing = sorted(used - set(grid))
    if missing:
        raise ConfigError(f"{where}: config paths use {{{missing[0]}}} but the grid has no key {missing[0]!r}")
    return grid


def load_sweep(path: str | Path, directory: str | Path | None = None) -> Sweep:
    """Read and check the sweep file ``path`` (``directory`` overrides its ``directory``); config files are
    checked to exist, fit options are checked later by :func:`check_trials`."""
    source = Path(path)
    require(source.is_file(), f"sweep file {str(path)!r} does not exist")
    try:
        raw = yaml.safe_load(source.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"{source}: not valid YAML: {' '.join(str(err).split())}") from None
    spec = _mapping(raw, str(source), SWEEP_KEYS)
    name = spec.get("name")
    require(isinstance(name, str) and NAME.match(name) is not None,
            f"{source}: name must be letters, digits, '_', '.' or '-' (it names the directory), got {name!r}")
    experiment = spec.get("experiment", name)
    require(isinstance(experiment, str) and bool(experiment.strip()),
            f"{source}: experiment must be a non-empty string, got {experiment!r}")
    variants_raw = _mapping(spec.get("variants"), f"{source}: variants")
    require(bool(variants_raw), f"{source}: variants must name at least one variant")
    variants = {str(k): _variant(k, v, f"{source}: variants") for k, v in variants_raw.items()}
    seeds = spec.get("seeds")
    require(isinstance(seeds, list) and bool(seeds) and all(type(s) is int and s >= 0 for s in seeds)
            and len(set(seeds)) == len(seeds), f"{source}: seeds must be a list of distinct non-negative integers, "
                                              f"got {seeds!r}")
    resources = _mapping(spec.get("resources", {}), f"{source}: resources", RESOURCE_KEYS)
    cpus, gpus = resources.get("cpus", 1), resources.get("gpus", 0)
    require(type(cpus) is int and cpus >= 1, f"{source}: resources.cpus must be a positive integer, got {cpus!r}")
    require(type(gpus) in (int, float) and gpus >= 0, f"{source}: resources.gpus must be >= 0, got {gpus!r}")
    retries = spec.get("retries", 2)
    require(type(retries) is int and retries >= 0, f"{source}: retries must be a non-negative integer, "
                                                   f"got {retries!r}")
    directory = Path(directory if directory is not None else spec.get("directory", f"sweeps/{name}"))
    sweep = Sweep(name, experiment, source, directory.resolve(), variants, tuple(seeds),
                  _options(spec.get("overrides"), f"{source}: overrides"),
                  _grid(spec.get("grid"), variants, f"{source}: grid"), cpus, float(gpus), retries)
    for trial in sweep.trials():
        missing = next((c for c in trial.configs if not c.is_file()), None)
        require(missing is None, f"{source}: variant {trial.variant}: config file {str(missing)!r} does not exist")
    return sweep


def check_trials(sweep: Sweep, trials: list[Trial]) -> dict[str, dict[str, Any]]:
    """Parse every trial's fit arguments with ``acorm-pl fit``'s own parser (one parse per variant and grid
    point); a bad option fails here, before anything starts. Returns each trial's resolved config."""
    from jsonargparse import ArgumentError

    from acorm_pl.cli import build_cli

    resolved: dict[tuple, dict[str, Any]] = {}
    out = {}
    for trial in trials:
        key = (trial.variant, json.dumps(trial.point, sort_keys=True, default=str))
        if key not in resolved:
            printed = io.StringIO()
            try:
                with warnings.catch_warnings(), contextlib.redirect_stdout(printed):
                    warnings.simplefilter("ignore")  # LightningCLI's note about args next to sys.argv
                    build_cli([*sweep.fit_args(trial), "--print_config"])
            except SystemExit:  # --print_config exits after printing the checked config
                pass
            except (ArgumentError, ValueError) as err:
                raise ConfigError(f"{sweep.source}: trial {trial.trial_id}: {' '.join(str(err).split())}") from None
            resolved[key] = yaml.safe_load(printed.getvalue()) or {}
        out[trial.trial_id] = resolved[key]
    return out
