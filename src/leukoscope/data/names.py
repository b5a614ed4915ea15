"""What a cell image's file name says, with no data-set reader behind it (no pandas): prediction
writes a subject column for every file and must not pay a data reader's imports at start-up."""

from __future__ import annotations

import re

_SUBJECT = re.compile(r"^UID_([A-Za-z]*\d+)_", re.IGNORECASE)


def subject_from_name(name: str) -> str | None:
    """Patient id from a C-NMC style name, ``UID_<id>_...``; case-folded (``UID_h3`` is H3)."""
    m = _SUBJECT.match(name)
    return m.group(1).upper() if m else None
