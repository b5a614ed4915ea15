"""Where cli/evaluate.py finds the options of the commands that use a bundle: they are defined in
``cli.options`` (and ``say`` in ``cli.app``) now; this module goes once evaluate imports them there."""

from leukoscope.cli.app import say
from leukoscope.cli.options import BatchOpt, BundleArg, RuntimeOpt, TtaOpt

__all__ = ["BatchOpt", "BundleArg", "RuntimeOpt", "TtaOpt", "say"]
