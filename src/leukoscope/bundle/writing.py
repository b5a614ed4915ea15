"""Writing a bundle: the whole folder appears in one rename, with the files every family shares.

A family writes its weights into the folder ``writing_bundle`` yields, then ``finish_bundle``
adds config.json (stamped with ``FORMAT_VERSION``, the time and the library versions), metrics,
split, history and the model card. Until the block ends nothing is at the target, and a crash
leaves any previous bundle there untouched.
"""

from __future__ import annotations

import os
import platform
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from leukoscope.bundle.card import model_card
from leukoscope.bundle.format import CARD, CONFIG, FORMAT_VERSION, HISTORY, METRICS, SPLIT
from leukoscope.data.classes import display_names
from leukoscope.data.paths import stored
from leukoscope.io import write_json_atomic as write_json

if TYPE_CHECKING:  # not imported by ``import leukoscope.bundle`` (a second of every predict's start)
    import pandas as pd

_VERSIONED = ("leukoscope", "numpy", "scikit-learn", "torch", "onnxruntime", "xgboost-cpu",
              "lightgbm", "pillow", "scikit-image")


def library_versions() -> dict[str, str]:
    """Versions of the libraries that shape a model's numbers, for the model card."""
    from importlib import metadata  # 10 ms: only when a bundle is written, not on predict's start-up

    out = {"python": platform.python_version()}
    for name in _VERSIONED:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


@contextmanager
def writing_bundle(out: Path) -> Iterator[Path]:
    """Yield a temp folder beside ``out``; on success it replaces ``out`` in one rename.

    A crash mid-write leaves any previous bundle at ``out`` untouched.
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        yield tmp
        honour_umask(tmp)
        if out.exists():
            old = out.with_name(f".{out.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            out.rename(old)
            tmp.rename(out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _umask() -> int:
    """The process umask. It can only be read by setting it: probe with 0o077, so a file another
    thread creates meanwhile gets stricter modes, never looser."""
    mask = os.umask(0o077)
    os.umask(mask)
    return mask


def honour_umask(path: Path) -> None:
    """Give ``path`` and everything under it the modes a plain ``open`` / ``mkdir`` would.

    ``mkdtemp`` makes 0700 folders and safetensors writes 0600 files whatever the umask, which
    left bundles unreadable to the group and to a server running as another user.
    """
    mask = _umask()
    for p in [path, *path.rglob("*")] if path.is_dir() else [path]:
        if not p.is_symlink():
            p.chmod((0o777 if p.is_dir() else 0o666) & ~mask)


def finish_bundle(folder: Path, config: dict[str, Any], metrics: dict[str, Any],
                  split: pd.DataFrame | None = None, history: pd.DataFrame | None = None) -> None:
    """Write the family-independent files: config, metrics, split, history and the model card. The
    classes' display names (``data.classes``) go into the config where any are known."""
    names = display_names(config.get("classes", []))
    config = {**({"display_names": names} if names else {}), **config, "format_version": FORMAT_VERSION,
              "created": datetime.now(UTC).isoformat(timespec="seconds"), "versions": library_versions()}
    write_json(folder / CONFIG, config)
    write_json(folder / METRICS, metrics)
    if split is not None:
        stored(split).to_csv(folder / SPLIT, index=False)  # paths relative to the data root
    if history is not None:
        history.to_csv(folder / HISTORY, index=False)
    (folder / CARD).write_text(model_card(config, metrics, split))
