"""The whole ``leukoscope`` command: importing this registers every verb on ``app``."""

from leukoscope.cli.app import App, register

app: App = register()

__all__ = ["app"]
