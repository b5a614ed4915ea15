"""The ``leukoscope`` command: one module per verb, each a thin layer over the library.

Every verb module registers its commands on ``app`` or ``data_app`` (``leukoscope.cli.app``) when
imported. ``main`` (the console script) imports only the module of the verb it runs;
``leukoscope.cli.verbs.app`` is the whole command (every verb: what tests and documentation use).
``app.PANELS`` orders the verbs for ``--help``. Heavy libraries are imported inside commands.
"""

from leukoscope.cli.app import main

__all__ = ["main"]
