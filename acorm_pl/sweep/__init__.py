"""``acorm-pl sweep``: seeds x variants x grid points as ordinary ``acorm-pl fit`` runs scheduled by Ray, logging
to one MLflow tracking server, resumable across sittings.

- ``spec``: the sweep file, its trials and the checks made before anything starts
- ``runner``: one attempt at one trial (the Ray task), resumed from the trial's newest checkpoint
- ``child``: the trial's process, tied to the Ray worker that started it
- ``server``: the sweep's own ``mlflow server`` on localhost
- ``status``: where the trials stand, from MLflow (``--status`` and the live table)
- ``command``: the command itself
"""

from acorm_pl.sweep.spec import Sweep, Trial, Variant, check_trials, load_sweep

__all__ = ["Sweep", "Trial", "Variant", "check_trials", "load_sweep"]
