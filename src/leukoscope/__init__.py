"""leukoscope: trustworthy classification of single blood-cell images.

Import the pieces you need from their modules (``leukoscope.data.readers``,
``leukoscope.bundle``, ...); this package root stays light so the CLI starts instantly.
"""

import os

# OpenMP threads that wait passively instead of spinning between parallel regions: on a shared, busy
# machine the spinning threads burn the time slices the working ones need (fine-tuning at 128 px on 2
# cores at load ~20: 1.0 -> 9.9 cells/s, benchmarks/finetune_throughput.py). Read once, when torch
# loads its OpenMP runtime, so it is set here, before any torch import; a user's own setting wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

#: The version, written here only: the package metadata (pyproject's dynamic version), ``leukoscope
#: --version``, the reports and the web API all read it.
__version__ = "0.1.0"
