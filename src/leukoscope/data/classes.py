"""Display names of the class codes that data sets use in folders and file names.

A data set names its classes tersely (C-NMC ``all`` / ``hem``, the ALL subtypes ``Early`` / ``Pre`` /
``Pro``); a reader of a report or of the web page should not need the data set's readme to know that ``hem``
is a normal cell. Training stores the names of its known classes in the bundle (config key
``display_names``); a class not listed here, or a bundle from before, shows its code. Reports show a class
through ``shown_classes``: the evaluation report with its bundle's names, the EDA report and the leaderboard
(data no bundle has named yet) with the known ones.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

#: Known class codes (as the readers give them) -> what a person reads.
DISPLAY_NAMES: dict[str, str] = {
    "all": "ALL blast",
    "hem": "normal",
    "Benign": "benign (hematogone)",
    "Early": "Early pre-B ALL",
    "Pre": "pre-B ALL",
    "Pro": "pro-B ALL",
}


def display_names(classes: Sequence[str]) -> dict[str, str]:
    """The display names of those ``classes`` that have one (a bundle's ``display_names``)."""
    return {c: DISPLAY_NAMES[c] for c in classes if c in DISPLAY_NAMES}


def show_class(code: str, names: Mapping[str, str] | None) -> str:
    """``code`` as tables and reports show it: ``hem (normal)``, or the bare code where it has no name."""
    name = (names or {}).get(code)
    return f"{code} ({name})" if name and name != code else code


def shown_classes(classes: Sequence[str], names: Mapping[str, str] | None = None) -> dict[str, str]:
    """Each of ``classes`` -> as reports show it (``show_class``), in order. ``names`` (a bundle's
    ``display_names``) default to the known names of those classes, for reports on data alone."""
    names = display_names(classes) if names is None else names
    return {c: show_class(c, names) for c in classes}
