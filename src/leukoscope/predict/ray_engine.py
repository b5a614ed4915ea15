"""Batch prediction on a Ray cluster (Ray Data): the local engine's inputs, columns and numbers, scaled out.

The driver expands the inputs exactly as the local engine does (files, folders, globs), so both
engines see the same paths. Ray Data spreads the paths over a pool of actors, one per CPU of the
cluster, each holding the bundle once (its files travel through the object store, so the bundle
folder need not exist on the workers) with a single-threaded model: actors fill the cores, and
ONNX Runtime threads on top of them would only fight. Each actor decodes its batch with the local
engine's pipeline (``local.scored_batches``: the same decode, preprocessing and model, the ONNX
model for an exported network bundle), so the probabilities are the local engine's. Unreadable files come
back as rows with an error instead of failing the job. Batches travel as Arrow tables of fixed types, so a
column whose values are all missing (no subject in the names, no call in an unreadable batch) stays a
string column instead of becoming whatever type Ray or pandas would guess.

Results are small (a path and a few numbers per image), so they stream back to the driver, which
writes ``predictions.parquet`` (and ``predictions.csv`` on request) into the output folder
atomically, in input order, with the local engine's columns; ``skipped.csv`` lists unreadable files.
A run without ``--csv`` removes the predictions.csv of an earlier one: the folder holds one run.
The images themselves must be readable by every worker at the same path (a shared file system).

Paths travel as their bytes, so a name that is not UTF-8 is still predicted (dropping a readable cell
over its name would lose output). The CSV and skipped.csv write it as it is on disk, as the local
engine does; Parquet strings must be UTF-8, so predictions.parquet has its undecodable bytes as
``\\xNN`` escapes.
"""

from __future__ import annotations

import csv
import logging
import math
import os
import tempfile
import time
from collections.abc import Iterable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from leukoscope.bundle import Bundle, load_bundle
from leukoscope.data.names import subject_from_name
from leukoscope.errors import ConfigError, DataError
from leukoscope.filenames import NAME_ERRORS, printable
from leukoscope.io import atomic_path
from leukoscope.predict import ENGINES, unfamiliar
from leukoscope.predict.local import (
    PredictSummary,
    check_inputs,
    csv_row,
    header,
    iter_inputs,
    prob_columns,
    runtime_name,
    scored_batches,
)
from leukoscope.predict.tta import proba_from_views
from leukoscope.progress import SILENT, Progress

INSTALL_HINT = "the ray engine needs Ray: pip install -e .[ray]"
PARQUET, CSV, SKIPPED = "predictions.parquet", "predictions.csv", "skipped.csv"
#: Input blocks per actor: enough to balance the pool and report progress, few enough to stay cheap.
BLOCKS_PER_ACTOR = 16
#: Seconds to reach a cluster's head (``--address host:port``) before saying it cannot be reached: Ray
#: itself retries for minutes without a word.
CONNECT_TIMEOUT_S = 5.0


def import_ray() -> Any:
    """``ray`` with usage statistics off, or a one-line ConfigError saying how to install it."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    try:
        import ray
        import ray.data  # noqa: F401 - the [data] extra, not only ray core
    except ImportError:
        raise ConfigError(INSTALL_HINT) from None
    return ray


@contextmanager
def ray_session(address: str | None = None, num_cpus: int | None = None) -> Iterator[Any]:
    """Connect to the cluster at ``address`` or start a local instance; shut down only what we started.

    An already initialised Ray (a test, a notebook) is used as it is.
    """
    if address and address.startswith("ray://"):  # ray-project/ray#42739: Ray Data needs a cluster node
        raise ConfigError(f"--address {address}: Ray Data cannot run through Ray Client (ray://); run "
                          "the command on a machine of the cluster with --address auto, or submit it there "
                          "with `ray job submit`")
    ray = import_ray()
    if ray.is_initialized():
        yield ray
        return
    quiet = {"log_to_driver": False, "logging_level": logging.ERROR}
    if address:
        if num_cpus is not None:
            raise ConfigError("--num-cpus sizes a local Ray instance; with --address the cluster's CPUs "
                              "are used")
        try:
            _reachable(address)
            with _utf8_argv():
                ray.init(address=address, **quiet)
        except (ConnectionError, RuntimeError, ValueError) as e:
            raise ConfigError(f"--address {address}: cannot connect to a Ray cluster ({e}); start one "
                              "with `ray start --head`") from None
    else:
        if num_cpus is not None and num_cpus < 1:
            raise ConfigError(f"--num-cpus must be at least 1, got {num_cpus}")
        # "local": a new instance even if `ray start` left a cluster running here or RAY_ADDRESS is set
        with _utf8_argv():
            ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, **quiet)
    try:
        yield ray
    finally:
        ray.shutdown()


def _reachable(address: str) -> None:
    """A ``ConnectionError`` unless a ``host:port`` address answers within ``CONNECT_TIMEOUT_S`` (``auto``
    and the like are Ray's to resolve)."""
    import socket

    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        return
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as e:
        raise ConnectionError(f"nothing answers at {address} within {CONNECT_TIMEOUT_S:g} s ({e})") from None


@contextmanager
def _utf8_argv() -> Iterator[None]:
    """``sys.argv`` as valid UTF-8 while Ray starts: it records the command line, and an argument that is
    not UTF-8 (a folder name in Latin-1, say) stopped it with a UnicodeEncodeError."""
    import sys

    saved = sys.argv
    sys.argv = [printable(a) for a in saved]
    try:
        yield
    finally:
        sys.argv = saved


def _bundle_files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(Path(folder).iterdir()) if p.is_file()}


class Predictor:
    """A Ray Data actor: the bundle, loaded once, scoring batches of paths (bytes) into result columns."""

    def __init__(self, files: dict[str, bytes], runtime: str, tta: bool):
        os.environ["OMP_NUM_THREADS"] = "1"  # one actor per CPU: the model runs single-threaded
        with tempfile.TemporaryDirectory(prefix="leukoscope-bundle-") as tmp:
            for name, data in files.items():
                (Path(tmp) / name).write_bytes(data)
            self.bundle = load_bundle(tmp, runtime=runtime)  # weights now in memory; the folder may go
        self.classes = np.asarray(self.bundle.classes, dtype=object)
        self.schema = _results(_schema(self.bundle.classes, self.bundle.unfamiliar is not None))
        self.tta = tta

    def __call__(self, batch: Any) -> Any:
        """``batch``: Arrow table of raw paths; returns the Parquet columns (paths raw) and ``error``."""
        import pyarrow as pa

        raw = batch.column("path").to_pylist()
        paths = [Path(os.fsdecode(p)) for p in raw]
        none: tuple[list[Path], np.ndarray, np.ndarray | None, list[tuple[str, str]]] = (
            [], np.zeros((0, 1, len(self.classes))), None, [])
        ok, views, scores, skipped = next(scored_batches(self.bundle, paths, len(paths) or 1, self.tta), none)
        decoded = set(ok)
        readable = np.array([p in decoded for p in paths], dtype=bool)
        probs = np.full((len(paths), len(self.classes)), np.nan)
        label = np.full(len(paths), None, dtype=object)  # the called class
        score = np.full(len(paths), np.nan)
        if ok:
            probs[readable] = proba_from_views(views, self.bundle.temperature)
            label[readable] = self.classes[self.bundle.decide(probs[readable])]
            if scores is not None:
                score[readable] = scores
        extra = {}
        if self.bundle.unfamiliar is not None:  # the columns unfamiliarity, unfamiliar; label says so
            flagged = readable & self.bundle.unfamiliar.flag(score)  # an unreadable row has no call
            label[flagged] = unfamiliar.UNFAMILIAR
            extra = {"unfamiliarity": score, "unfamiliar": flagged}
        error = np.full(len(paths), None, dtype=object)  # None = read fine
        error[~readable] = [reason for _, reason in skipped]
        subject = [s and printable(s) for s in map(subject_from_name, (p.name for p in paths))]
        columns = {"path": raw, "subject": subject, "predicted": label,
                   **{f"p_{c}": probs[:, k] for k, c in enumerate(self.classes)}, **extra, "error": error}
        return pa.table(columns, schema=self.schema)


def _configure_data(ray: Any) -> None:
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False  # the CLI draws its own bar
    ctx.print_on_execution_start = False
    ctx.execution_options.preserve_order = True  # rows in input order, like the local engine
    logging.getLogger("ray.data").setLevel(logging.ERROR)  # e.g. "progress bars disabled"


def _schema(classes: list[str], scored: bool = False) -> Any:
    import pyarrow as pa

    more = [("unfamiliarity", pa.float64()), ("unfamiliar", pa.bool_())] if scored else []
    return pa.schema([("path", pa.string()), ("subject", pa.string()), ("predicted", pa.string()),
                      *[(c, pa.float64()) for c in prob_columns(classes)], *more])


def _results(schema: Any) -> Any:
    """What the actors return: the Parquet columns with raw paths (bytes, whatever the encoding), and
    ``error``, the reason a file could not be read (null where it could)."""
    import pyarrow as pa

    return schema.set(0, pa.field("path", pa.binary())).append(pa.field("error", pa.string()))


def _csv_rows(cols: dict[str, list[Any]], classes: list[str], operating_point: dict[str, Any] | None,
              scored: bool) -> Iterator[list[str]]:
    """The rows the local engine would write (6 decimals, the path as on disk) for readable results."""
    probs = np.column_stack([cols[c] for c in prob_columns(classes)])
    marks = (list(zip(cols["unfamiliarity"], cols["unfamiliar"], strict=True)) if scored
             else [None] * len(probs))
    for p, row, u in zip(cols["path"], probs, marks, strict=True):
        yield csv_row(os.fsdecode(p), row, classes, operating_point, u)


def _write_skipped(out: Path, skipped: list[tuple[str, str]]) -> None:
    target = out / SKIPPED
    target.unlink(missing_ok=True)
    if skipped:
        with atomic_path(target) as tmp, \
                open(tmp, "w", newline="", encoding="utf-8", errors=NAME_ERRORS) as f:
            csv.writer(f).writerows([("path", "reason"), *skipped])


@ENGINES.register("ray")
def predict(bundle: Bundle, inputs: Iterable[str | Path], out: Path | str, batch_size: int = 64,
            tta: bool = False, progress: Progress = SILENT,
            address: str | None = None, num_cpus: int | None = None, write_csv: bool = False
            ) -> PredictSummary:
    """Predict every image under ``inputs`` with Ray Data into the folder ``out``.

    ``address``: a running cluster (``auto``, ``head-host:6379``); without it a local Ray instance
    with ``num_cpus`` CPUs (default: all) is started and shut down. ``write_csv`` also writes
    predictions.csv (else an earlier run's is removed). ``progress`` counts input files as their
    results arrive.
    """
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    import_ray()  # without Ray, say how to install it before any work
    items, total, _ = check_inputs(inputs, batch_size)
    paths = [os.fsencode(p) for p in iter_inputs(items)]  # bytes: any name, UTF-8 or not, travels intact
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise DataError(f"{out}: --out of the ray engine is a folder, and this is a file")
    out.mkdir(parents=True, exist_ok=True)
    scored = bundle.unfamiliar is not None
    classes, schema = bundle.classes, _schema(bundle.classes, scored)
    summary = PredictSummary(out=out / PARQUET)
    start = time.perf_counter()
    with ExitStack() as stack:
        ray = stack.enter_context(ray_session(address, num_cpus))
        tmp = stack.enter_context(atomic_path(out / PARQUET))
        parquet = stack.enter_context(pq.ParquetWriter(tmp, schema))
        writer = None
        if write_csv:
            f = stack.enter_context(open(stack.enter_context(atomic_path(out / CSV)), "w", newline="",
                                         encoding="utf-8", errors=NAME_ERRORS))
            writer = csv.writer(f)
            writer.writerow(header(classes) + (unfamiliar.COLUMNS if scored else []))
        _configure_data(ray)
        batches = math.ceil(total / batch_size)
        actors = max(1, min(int(ray.cluster_resources().get("CPU", 1)), batches))  # one per CPU, none idle
        blocks = min(batches, actors * BLOCKS_PER_ACTOR)
        ds = ray.data.from_items([{"path": p} for p in paths], override_num_blocks=blocks)
        model = {"files": _bundle_files(bundle.path), "runtime": runtime_name(bundle), "tta": tta}
        results = ds.map_batches(Predictor, batch_size=batch_size, batch_format="pyarrow", num_cpus=1,
                                 compute=ray.data.ActorPoolStrategy(size=actors), fn_constructor_kwargs=model)
        advance = progress.task("predicting", total)
        for batch in results.iter_batches(batch_size=None, batch_format="pyarrow"):
            bad = batch.filter(pc.is_valid(batch["error"]))
            summary.skipped += [(os.fsdecode(p), e) for p, e in zip(bad["path"].to_pylist(),
                                                                     bad["error"].to_pylist(), strict=True)]
            rows = batch.filter(pc.is_null(batch["error"])).select(schema.names)
            if writer is not None:
                writer.writerows(_csv_rows(rows.to_pydict(), classes, bundle.operating_point, scored))
            shown = pa.array([printable(os.fsdecode(p)) for p in rows["path"].to_pylist()], pa.string())
            parquet.write_table(rows.set_column(0, "path", shown).cast(schema))
            summary.predicted += rows.num_rows
            advance(batch.num_rows)
        progress.done("predicting")
    if not write_csv:
        (out / CSV).unlink(missing_ok=True)
    _write_skipped(out, summary.skipped)
    summary.seconds = time.perf_counter() - start
    return summary
