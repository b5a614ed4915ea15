"""leukoscope: trustworthy classification of single blood-cell images.

Import the pieces you need from their modules (``leukoscope.data.readers``,
``leukoscope.bundle``, ...); this package root stays light so the CLI starts instantly.
"""

#: The version, written here only: the package metadata (pyproject's dynamic version), ``leukoscope
#: --version``, the reports and the web API all read it.
__version__ = "0.1.0"
