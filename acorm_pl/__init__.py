"""acorm-pl: ACORM and its baselines for cooperative multi-agent RL, on PyTorch Lightning."""

import os
import sys
import warnings

# libgomp's worker threads spin after every parallel region by default. Next to JAX's thread pool
# (SMAX) on a small CPU that spinning starves both runtimes: measured 15x slower TD updates and 30x
# slower action selection on 2 cores. It only takes effect if set before torch is first imported.
if "OMP_WAIT_POLICY" not in os.environ:
    if "torch" in sys.modules:
        warnings.warn(
            "torch was imported before acorm_pl, so OMP_WAIT_POLICY=PASSIVE cannot take effect; export it "
            "(or import acorm_pl first): without it SMAX training is up to 15x slower on small CPUs",
            RuntimeWarning,
            stacklevel=2,
        )
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"

__version__ = "0.2.0"
