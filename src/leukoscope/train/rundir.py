"""The run directory every ``train`` writes into, and what protects it.

::

    config.json / config.yaml   the resolved TrainConfig (``--config out/config.yaml`` replays it)
    data.json                   which images and labels it was given (names, not folders: data may move)
    metrics.json                validation and test figures
    bundle/                     the model bundle (``load_bundle(out / "bundle")``)
    .done                       the run finished: rerunning returns its bundle, nothing is retrained
    skipped.json                images that could not be used, with the reason
    (networks) checkpoint.safetensors, best.safetensors, history.csv, curves.png

A directory holding another run's progress is never mixed with a new one, nor written by two runs at
once (``<out>.lock`` beside it is held while a run writes it).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from leukoscope.bundle import load_bundle, write_json
from leukoscope.errors import ConfigError, DataError
from leukoscope.filenames import NAME_ERRORS
from leukoscope.locks import exclusive
from leukoscope.train import checkpoint
from leukoscope.train.config import TrainConfig

if TYPE_CHECKING:
    from leukoscope.bundle import Bundle
    from leukoscope.data.manifest import Manifest

BUNDLE = "bundle"
DONE = ".done"
DATA = "data.json"
SKIPPED = "skipped.json"


def data_record(m: Manifest, outliers: Manifest | None = None) -> dict[str, Any]:
    """The images and labels a run was given, as a digest of their file names and labels (not their
    folders, so a moved data set is still the same data); with ``--outliers``, theirs too."""
    rows = sorted(f"{Path(p).name}\0{label}" for p, label in zip(m["path"], m["label"], strict=True))
    digest = hashlib.sha1("\n".join(rows).encode("utf-8", NAME_ERRORS)).hexdigest()
    return {"images": len(rows), "digest": digest} | ({} if outliers is None else
                                                     {"outliers": data_record(outliers)})


@contextmanager
def held(out: Path) -> Iterator[None]:
    """``out`` for this run alone while it lasts: a second ``train`` into it is refused at once (two
    runs shared its checkpoints, and the last to finish overwrote the other's bundle and figures)."""
    out = Path(out)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DataError(f"{out}: cannot create its folder {out.parent} ({e.strerror})") from None
    with exclusive(out.with_name(out.name + ".lock"), f"another train is writing {out}"):
        yield


def begin(config: TrainConfig, out: Path, family: str, m: Manifest, outliers: Manifest | None = None
          ) -> tuple[Path, TrainConfig, Bundle | None]:
    """Open the run of ``config`` (a model of ``family``) on ``m`` (and ``outliers``, ``train.outliers``) in
    ``out``: its resolved settings, and its bundle when the run already finished. Otherwise ``out`` is
    claimed (refused if it holds another run's progress) and the settings and data record are written
    into it."""
    out, cfg = Path(out), config.resolved()
    if cfg.family != family:
        raise ConfigError(f"--model {cfg.model} is a {cfg.family} model, not a {family} one")
    record = data_record(m, outliers)
    if (out / DONE).exists() and (out / BUNDLE).is_dir():
        check_same(out, cfg, record)
        return out, cfg, load_bundle(out / BUNDLE)
    out.mkdir(parents=True, exist_ok=True)
    check_same(out, cfg, record)
    checkpoint.find(out)  # an old pickle checkpoint is refused now, not after decoding every image
    claim(out, cfg, record)
    return out, cfg, None


def claim(out: Path, cfg: TrainConfig, record: dict[str, Any]) -> None:
    """Write the settings and the data record (``data_record``) of the run that now owns ``out``."""
    cfg.write(out)
    write_json(out / DATA, record)


def check_same(out: Path, cfg: TrainConfig, record: dict[str, Any]) -> None:
    """Refuse to mix two different runs in one directory: other settings, other data, or progress with no
    record of either. A directory with no finished epoch (a start that failed before its first checkpoint,
    leaving only its config) holds nothing to protect: the corrected command takes it over."""
    if not has_progress(out):
        return
    f, d = out / "config.json", out / DATA
    settings = _record(f)
    if settings is None:
        raise ConfigError(f"{out} holds a run without a readable record of its settings ({f.name}); use "
                          "another --out, or delete it to start over")
    if not cfg.same_as(settings):
        raise ConfigError(f"{out} holds a run with other settings (see {f}); "
                          "use another --out, or delete it to start over")
    given = _record(d)
    if given is not None and "outliers" not in given:  # written before outliers were recorded: not known
        record = {k: v for k, v in record.items() if k != "outliers"}
    if given is not None and given != record:  # runs written before data.json: not known
        outliers = [r["outliers"].get("images") if isinstance(r.get("outliers"), dict) else 0
                    for r in (given, record)]
        also = f"; outliers: {outliers[0]} then, {outliers[1]} now" if given.get("outliers") != \
            record.get("outliers") else ""
        raise ConfigError(f"{out} holds a run on other data ({given.get('images')} images then, "
                          f"{record['images']} now{also}; see {d}); use another --out, or delete it to start "
                          "over")


def _record(f: Path) -> dict[str, Any] | None:
    """A JSON object from ``f``, or None when it is missing, unreadable or not an object."""
    try:
        data = json.loads(f.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def has_progress(out: Path) -> bool:
    """Whether ``out`` (or one of its CV folds) holds a finished epoch or a finished run."""
    return any((run / name).exists() for run in (out, *out.glob("fold-*"))
               for name in (checkpoint.NAME, checkpoint.LEGACY, DONE))


def mark_done(out: Path) -> None:
    (out / DONE).write_text("ok\n")


def write_skipped(out: Path, skipped: list[tuple[str, str]]) -> None:
    """``skipped.json``: the images a run could not use and why (nothing when there were none)."""
    if skipped:
        write_json(out / SKIPPED, [{"path": p, "reason": r} for p, r in skipped])


def read_skipped(out: Path) -> list[tuple[str, str]]:
    """What ``write_skipped`` wrote into ``out``: ``(path, reason)`` pairs, none when it wrote nothing."""
    f = out / SKIPPED
    return [(s["path"], s["reason"]) for s in json.loads(f.read_text())] if f.is_file() else []
