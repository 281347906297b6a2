"""docs/extending.md followed literally: every ``# file:`` block written into a fresh package, every
``acorm-pl fit`` line run (with a budget of a few hundred env steps appended), and what each fit trained checked."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import torch
from cli_errors import assert_one_line_error
from mlflow.tracking import MlflowClient
from paper_configs import config_args

from acorm_pl.analysis.demo import QUICK
from acorm_pl.analysis.inspect import load_checkpoint
from acorm_pl.cli import main

REPO = Path(__file__).resolve().parents[1]
GUIDE = REPO / "docs" / "extending.md"
BUDGET = ["--data.total_env_steps", "300", "--data.epoch_env_steps", "300", "--evaluation.eval_interval", "150",
          "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]


def _blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", GUIDE.read_text(), flags=re.S)


def _fit_lines() -> list[str]:
    lines = []
    for block in _blocks("bash"):
        joined = block.replace("\\\n", " ")
        lines += [line.strip() for line in joined.splitlines() if line.strip().startswith("acorm-pl fit")]
    return lines


@pytest.fixture
def guide_package(workdir, monkeypatch):
    """The guide's files, written as it says, importable as ``mypkg``."""
    root = workdir / "src"
    (root / "mypkg").mkdir(parents=True)
    (root / "mypkg" / "__init__.py").write_text("")
    for block in _blocks("python"):
        first, _, body = block.partition("\n")
        assert first.startswith("# file: "), first
        (root / first.removeprefix("# file: ").strip()).write_text(body)
    monkeypatch.syspath_prepend(str(root))
    monkeypatch.chdir(REPO)  # the guide's config paths are relative to the repository
    return workdir


def test_the_guide_has_three_recipes_with_files_and_fits():
    files = [b.partition("\n")[0] for b in _blocks("python")]
    assert files == ["# file: mypkg/halfsum.py", "# file: mypkg/mpe.py", "# file: mypkg/clustering.py"]
    assert len(_fit_lines()) == 4


@pytest.mark.slow
@pytest.mark.parametrize("index", range(4))
def test_each_fit_of_the_guide_runs(guide_package, index):
    line = _fit_lines()[index]
    store = guide_package / "mlruns.db"
    args = shlex.split(line)[1:] + QUICK + BUDGET + [
        "--trainer.logger.init_args.tracking_uri", f"sqlite:///{store}",
        "--trainer.logger.init_args.experiment_name", "extending",
        "--trainer.logger.init_args.artifact_location", (guide_package / "artifacts").as_uri()]
    main(args)
    ckpt = next((guide_package / "artifacts").rglob("last.ckpt"))
    model, data = load_checkpoint(ckpt)  # rebuilt from the checkpoint, with the guide's classes
    assert all(torch.isfinite(p).all() for p in model.parameters())
    if "VDNPlusValue" in line:  # the mixer's V(s) was trained: the soft-updated target lags behind it
        assert type(model.mixer).__name__ == "VDNPlusValueMixer"
        assert not torch.equal(model.mixer.value.weight, model.target_mixer.value.weight)
    if "mpe" in line:
        assert data["env"] == "mypkg.mpe.FAMILY" and model.info.n_agents == 3 and model.info.episode_limit == 25
    if "DistanceBands" in line:
        assert type(model.clustering).__name__ == "DistanceBands"
    client = MlflowClient(f"sqlite:///{store}")
    run = client.search_runs([client.get_experiment_by_name("extending").experiment_id])[0]
    assert run.info.status == "FINISHED" and client.get_metric_history(run.info.run_id, "test/return_mean")
    if "acorm_3m" in line:  # the contrastive step ran (roles.interval 2), with the guide's clustering where named
        assert client.get_metric_history(run.info.run_id, "roles/contrastive_loss")


def test_unknown_env_family_is_one_line(workdir, capsys):
    config = config_args("qmix", "3m")
    assert_one_line_error(["fit", *config, "--data.env", "nopkg.mpe.FAMILY"], capsys,
                          "unknown environment family 'nopkg.mpe.FAMILY'; available: football, smac, smax, or "
                          "the import path of a pair (env_info, make)")
    assert_one_line_error(["fit", *config, "--data.env", "acorm_pl.envs.FAMILIES"], capsys,
                          "the import path of a pair (env_info, make)")
