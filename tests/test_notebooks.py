"""The notebooks run top to bottom (nbclient, a real kernel) on the session's tiny ACORM checkpoint, with
their seconds-long settings (ACORM_NOTEBOOK_QUICK=1), and draw their figures."""

# ruff: noqa: I001  (acorm_pl must be imported before torch: it sets OMP_WAIT_POLICY)
from __future__ import annotations

from pathlib import Path

import acorm_pl  # noqa: F401
import nbformat
import pytest
from nbclient import NotebookClient

from tiny_runs import tiny_acorm_checkpoint

pytestmark = pytest.mark.slow  # each starts a kernel that imports torch and compiles SMAX (tens of seconds)

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
# notebook -> (figures it must draw, files it must write)
FIGURES = {"01_inspect_roles.ipynb": (2, {"role_map.png", "role_map.json", "records.pt"}),
           "02_attention_weights.ipynb": (2, {"attention.png", "attention.csv"}),
           "03_compare_runs.ipynb": (2, {"curves.png", "summary.json"})}


def test_every_notebook_is_tested_and_stored_without_outputs():
    assert sorted(p.name for p in NOTEBOOKS.glob("*.ipynb")) == sorted(FIGURES)
    for name in FIGURES:
        nb = nbformat.read(NOTEBOOKS / name, as_version=4)
        assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), name


@pytest.mark.parametrize("name", sorted(FIGURES))
def test_notebook_runs_top_to_bottom(name, tmp_path, tmp_path_factory, monkeypatch):
    monkeypatch.setenv("ACORM_NOTEBOOK_QUICK", "1")
    monkeypatch.setenv("ACORM_NOTEBOOK_CHECKPOINT", str(tiny_acorm_checkpoint(tmp_path_factory)))
    monkeypatch.setenv("ACORM_NOTEBOOK_WORKDIR", str(tmp_path))
    monkeypatch.delenv("ACORM_NOTEBOOK_STORES", raising=False)
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOKS)}}).execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    n_figures, files = FIGURES[name]
    assert len(images) == n_figures, [o.get("data", {}).keys() for o in outputs]
    written = {p.name for p in tmp_path.rglob("*") if p.is_file()}
    assert files <= written, written
