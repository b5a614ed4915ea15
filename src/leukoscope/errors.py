"""One error family for everything a user can get wrong.

The CLI turns any ``LeukoscopeError`` into a single red line and a non-zero exit, so every
message must name the file or the setting at fault.
"""


class LeukoscopeError(Exception):
    """Base class for user-facing errors (bad input, bad settings, missing files)."""


class DataError(LeukoscopeError):
    """A data set, folder, CSV or manifest that cannot be used as given."""


class ImageError(DataError):
    """One image that cannot be decoded (corrupt, truncated, not an image, too large)."""


class LeakageError(LeukoscopeError):
    """A split that puts one subject (or duplicate cluster) on two sides."""


class ConfigError(LeukoscopeError):
    """An option, config file or model name that is not valid."""


class BundleError(LeukoscopeError):
    """A model bundle directory that is missing files or is inconsistent."""
