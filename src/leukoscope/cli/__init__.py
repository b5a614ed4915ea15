"""The ``leukoscope`` command: one module per verb, each a thin layer over the library.

Every verb module registers its commands on ``app`` or ``data_app`` (from ``leukoscope.cli.app``)
when imported; importing them here builds the whole command, and ``app.PANELS`` orders the verbs
for ``--help``. Heavy libraries are imported inside commands.
"""

from leukoscope.cli import audit as _audit  # noqa: F401
from leukoscope.cli import benchmark as _benchmark  # noqa: F401
from leukoscope.cli import compare as _compare  # noqa: F401
from leukoscope.cli import data as _data  # noqa: F401
from leukoscope.cli import eda as _eda  # noqa: F401
from leukoscope.cli import evaluate as _evaluate  # noqa: F401
from leukoscope.cli import explain as _explain  # noqa: F401
from leukoscope.cli import export as _export  # noqa: F401
from leukoscope.cli import features as _features  # noqa: F401
from leukoscope.cli import predict as _predict  # noqa: F401
from leukoscope.cli import report as _report  # noqa: F401
from leukoscope.cli import serve as _serve  # noqa: F401
from leukoscope.cli import train as _train  # noqa: F401
from leukoscope.cli import tune as _tune  # noqa: F401
from leukoscope.cli import verify as _verify  # noqa: F401
from leukoscope.cli.app import app, main

__all__ = ["app", "main"]
