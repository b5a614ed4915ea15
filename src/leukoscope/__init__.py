"""leukoscope: trustworthy classification of single blood-cell images.

Import the pieces you need from their modules (``leukoscope.data.readers``,
``leukoscope.bundle``, ...); this package root stays light so the CLI starts instantly.
"""

__version__ = "0.1.0"
