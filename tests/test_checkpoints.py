"""Checkpoints that cannot be used end in one line naming the file and what does not match, from every reader
(``fit --ckpt_path``, ``evaluate``, ``inspect_checkpoint``, ``run_id_in_checkpoint``) and before any MLflow
run starts; a diverging resume stops in one line and leaves the finite checkpoint it started from."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
import torch
from cli_errors import all_runs, one_line_error
from test_cli import TINY as TINY_FIT

import acorm_pl
from acorm_pl.analysis import inspect_checkpoint, load_checkpoint
from acorm_pl.checkpoints import CHECKPOINT_FORMAT, read_checkpoint
from acorm_pl.cli import main
from acorm_pl.errors import ConfigError
from acorm_pl.tracking import run_id_in_checkpoint

TINY = [*TINY_FIT, "--trainer.enable_progress_bar", "false"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``last.ckpt`` of a tiny QMIX run on SMAX 3m (400 env steps) in a store of its own."""
    workdir = tmp_path_factory.mktemp("trained")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(workdir)
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        main(["fit", *TINY])
    (path,) = workdir.glob("mlartifacts/*/artifacts/checkpoints/last.ckpt")
    return path


def _edited(trained: Path, out: Path, edit) -> Path:
    ckpt = torch.load(trained, weights_only=False)
    edit(ckpt)
    torch.save(ckpt, out)
    return out


def _future(ckpt: dict) -> None:
    ckpt["acorm_pl"]["format"] = CHECKPOINT_FORMAT + 1
    ckpt["acorm_pl"]["package_version"] = "99.0"


def _bad_file(case: str, trained: Path, folder: Path) -> tuple[Path, str]:
    """A file for ``case`` and the words its error must contain."""
    path = folder / f"{case}.ckpt"
    if case == "missing":
        return path, "no checkpoint at"
    if case == "random bytes":
        path.write_bytes(torch.randint(0, 256, (4096,), generator=torch.Generator().manual_seed(0),
                                       dtype=torch.uint8).numpy().tobytes())
        return path, "is not a checkpoint: not a file written by torch.save"
    if case == "truncated":
        path.write_bytes(trained.read_bytes()[: trained.stat().st_size // 2])
        return path, "is truncated or corrupt"
    if case == "empty":
        path.write_bytes(b"")
        return path, "is empty (0 bytes)"
    if case == "not acorm-pl":
        torch.save({"state_dict": {"w": torch.zeros(2)}}, path)
        return path, "was not written by an acorm-pl algorithm"
    assert case == "newer format"
    return _edited(trained, path, _future), f"in checkpoint format {CHECKPOINT_FORMAT + 1}; this acorm-pl"


@pytest.mark.parametrize("case", ["missing", "random bytes", "truncated", "empty", "not acorm-pl", "newer format"])
def test_bad_checkpoint_files_end_in_one_line_from_every_reader(case, trained, workdir, capsys):
    path, expected = _bad_file(case, trained, workdir)
    for argv in (["fit", *TINY, "--ckpt_path", str(path)], ["evaluate", str(path), "--episodes", "2"]):
        line = one_line_error(argv, capsys)
        assert expected in line and str(path) in line, line
    assert not all_runs(workdir)  # nothing started, not even the evaluation's run
    with pytest.raises(ConfigError, match=re.escape(expected)):
        inspect_checkpoint(path, n_episodes=1)
    with pytest.raises(ConfigError, match=re.escape(expected)):
        run_id_in_checkpoint(path)


def test_checkpoints_record_their_format_and_package_version(trained):
    info = read_checkpoint(trained)["acorm_pl"]
    assert info["format"] == CHECKPOINT_FORMAT and info["package_version"] == acorm_pl.__version__
    assert info["class_path"] == "acorm_pl.algos.qmix.QMIX"


def _flip_agent_id(trained: Path) -> tuple[list[str], str]:
    saved = torch.load(trained, weights_only=False)["hyper_parameters"]["add_agent_id"]
    return (["--model.init_args.add_agent_id", str(not saved).lower()],
            f"add_agent_id {saved} in the checkpoint, {not saved} in the config")


@pytest.mark.parametrize(
    ("case", "args", "expected"),
    [
        ("map", ["--data.map_name", "8m"], "map smax 3m in the checkpoint, smax 8m in the config"),
        ("algorithm", ["--model.class_path", "acorm_pl.algos.ACORM"],
         "algorithm QMIX in the checkpoint, ACORM in the config"),
        ("size", ["--model.init_args.embed_dim", "32"], "embed_dim 64 in the checkpoint, 32 in the config"),
        ("agent ids", None, None),
        ("episode limit", ["--data.env_kwargs.episode_limit", "80"],
         "environment episode_limit 60 in the checkpoint, 80 in the config"),
    ],
)
def test_resume_from_a_checkpoint_that_does_not_fit_the_config_ends_in_one_line(case, args, expected, trained,
                                                                                workdir, capsys):
    if case == "agent ids":  # whichever default the config has, the other one must be refused
        args, expected = _flip_agent_id(trained)
    line = one_line_error(["fit", *TINY, *args, "--ckpt_path", str(trained)], capsys)
    assert line.startswith(f"acorm-pl: error: cannot resume from {trained}: ") and expected in line, line
    assert not all_runs(workdir)


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (lambda c: c["hyper_parameters"].update(mixer_flavour="new"), "QMIX refuses its settings"),
        (lambda c: c["state_dict"].update({"mixer.extra": torch.zeros(3)}),
         "does not fit this acorm-pl's"),
    ],
    ids=["unknown setting", "unknown tensor"],
)
def test_checkpoint_of_an_incompatible_version_ends_in_one_line(edit, expected, trained, workdir, capsys):
    path = _edited(trained, workdir / "other_version.ckpt", edit)
    line = one_line_error(["evaluate", str(path)], capsys)
    assert expected in line and str(path) in line, line
    with pytest.raises(ConfigError, match="does not fit this acorm-pl"):
        load_checkpoint(path)


def test_evaluation_rebuilds_the_model_from_the_checkpoint_settings_not_today_defaults(trained):
    saved = torch.load(trained, weights_only=False)["hyper_parameters"]
    model, data = load_checkpoint(trained)
    assert model.hparams.add_agent_id == saved["add_agent_id"] and model.hparams.embed_dim == saved["embed_dim"]
    assert data["map_name"] == "3m"


def test_resume_applies_changed_settings_and_a_diverging_resume_keeps_the_finite_checkpoint(trained, workdir, capsys):
    before = read_checkpoint(trained)
    mtime = os.stat(os.path.realpath(trained)).st_mtime_ns
    # The checkpoint comes from another MLflow store: the resume logs to a new run of this one.
    line = one_line_error(["fit", *TINY, "--data.total_env_steps", "800", "--model.init_args.lr", "1e30",
                           "--model.init_args.grad_clip_norm", "0", "--ckpt_path", str(trained)], capsys)
    assert line.startswith("acorm-pl: error: training diverged after ") and ", at env step " in line, line
    assert "TD loss = nan" in line and str(trained.parent) in line, line
    (run,) = all_runs(workdir)
    assert run.info.status == "FAILED" and run.data.tags["acorm_pl.failure"] == line.removeprefix("acorm-pl: error: ")
    assert run.data.params["lr"] == "1e+30"  # the config's setting was used, not the checkpoint's
    assert os.stat(os.path.realpath(trained)).st_mtime_ns == mtime  # nothing overwrote the finite checkpoint
    model, _ = load_checkpoint(trained)
    assert all(torch.isfinite(t).all() for t in model.state_dict().values() if t.is_floating_point())
    assert read_checkpoint(trained)["RolloutDataModule"]["env_steps"] == before["RolloutDataModule"]["env_steps"]
    assert not list(Path(run.info.artifact_uri.removeprefix("file://")).glob("checkpoints/*.ckpt"))
