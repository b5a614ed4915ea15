"""File names as the file system gives them: bytes, which need not be valid UTF-8.

Python hands such bytes to strings as surrogate escapes. ``NAME_ERRORS`` writes them back as the same bytes
(CSV files that must name the file exactly); ``printable`` shows them as ``\\xff`` escapes (the terminal,
Parquet, manifests: text that must be valid UTF-8). This module is the bottom layer: it imports nothing.
"""

#: The ``errors`` of ``open`` / ``encode`` that keep a file name's bytes as they are.
NAME_ERRORS = "surrogateescape"


def printable(text: str) -> str:
    """``text`` with the bytes of a file name that is not UTF-8 shown as ``\\xff`` escapes.

    Such names reach strings as surrogate escapes; printing them raw raises UnicodeEncodeError.
    """
    return text.encode("utf-8", NAME_ERRORS).decode("utf-8", "backslashreplace")
