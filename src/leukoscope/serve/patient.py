"""``POST /api/patient``: many cells of one patient in, the patient bundle's call and each cell out.

The same safety as ``/api/predict`` (body cap and place in line from ``Admission``, files counted while
parsing, pixels summed from headers, one safe decoder); all the patient's cells come in one request,
because a call is made from them together. A byte copy of a cell already sent is counted once, as
``diagnose`` does for files; a whole-field overview is a counted skip, by ``diagnose``'s rule. Cells unlike
the training cohort's (the bundle's unfamiliarity score) are labelled ``unfamiliar``, left out of the call
and counted in the summary, as in ``leukoscope report``.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import numpy as np
from pydantic import BaseModel

from leukoscope.bundle.patient import PatientBundle, overview_skip
from leukoscope.bundle.patient_call import PatientCall
from leukoscope.errors import LeukoscopeError
from leukoscope.patients.protocol import sigmoid
from leukoscope.patients.report import COMPOSITION_METHOD, PatientReport, TypeShare, composition
from leukoscope.predict.unfamiliar import UNFAMILIAR
from leukoscope.reports.html import image_to_data_uri

#: Cells marked as drivers of the call in the page's cell list: at most this many, and at most a third
#: of the cells (with six cells, a badge on each would single none out).
DRIVERS = 8


class CellResult(BaseModel):
    """One uploaded cell: as a bag of one cell (label, probabilities), its predicted type and what it
    contributed to the patient's score; or why it was not used."""

    name: str
    label: str | None = None
    probabilities: dict[str, float] | None = None
    cell_type: str | None = None
    cell_type_probability: float | None = None
    contribution: float | None = None
    driver: bool = False
    thumbnail: str | None = None
    #: higher = less like the training cohort's cells; ``unfamiliar``: above ``threshold``, so left out
    #: of the call and ``label`` is "unfamiliar" (None, None: the bundle has no score)
    unfamiliarity: float | None = None
    unfamiliar: bool | None = None
    threshold: float | None = None
    error: str | None = None


class Share(BaseModel):
    cell_type: str
    count: int
    share: float
    low: float
    high: float


class Skip(BaseModel):
    name: str
    reason: str


class PatientSummary(BaseModel):
    subject: str | None
    positive: str
    #: None when too few cells were given to make one
    call: str | None
    #: None (both) when no cell is left to call from: every readable cell unfamiliar
    probability: float | None
    interval: tuple[float, float] | None
    interval_method: str
    threshold: float
    too_few: bool
    min_cells: int
    #: the 95% interval spans the threshold
    uncertain: bool
    cells_used: int
    #: cells left out of the call as unlike the training cohort's (None: the bundle has no score)
    cells_unfamiliar: int | None
    #: the same in words, e.g. "12 of 30 cells unlike the training cohort's; the call rests on 18"
    unfamiliar_note: str | None
    skipped: list[Skip]
    composition: list[Share]
    composition_method: str


class PatientResponse(BaseModel):
    model: str
    classes: list[str]
    patient: PatientSummary
    results: list[CellResult]


def _summary(call: PatientCall, shares: list[TypeShare], skipped: list[Skip]) -> PatientSummary:
    report = PatientReport("", call, shares)
    none = math.isnan(call.probability)
    return PatientSummary(
        subject=call.subject, positive=call.positive, call=call.call,
        probability=None if none else call.probability, interval=None if none else call.interval,
        interval_method=call.interval_method, threshold=call.threshold, too_few=call.too_few,
        min_cells=call.min_cells, uncertain=report.uncertain(), cells_used=call.cells_used,
        cells_unfamiliar=call.cells_unfamiliar if call.unfamiliar_checked else None,
        unfamiliar_note=call.unfamiliar_note(), skipped=skipped,
        composition=[Share(**vars(s)) for s in shares],
        composition_method=COMPOSITION_METHOD)


async def diagnose_uploads(bundle: PatientBundle, uploads: list[tuple[str, bytes]],
                           decode: Callable[[str, bytes], np.ndarray],
                           lane: Callable[..., Awaitable[Any]], subject: str | None = None,
                           thumbnail: bool = False) -> tuple[list[CellResult], PatientResponse | None]:
    """Each upload's result, and the call on every readable, distinct one (None when not one could be
    read as an image).

    ``decode(name, data)`` is the server's decoder under its limits; ``lane(fn, *args)`` runs the model
    where the server runs every model call (one at a time, off the event loop).
    """
    results = [CellResult(name=name) for name, _ in uploads]
    images: list[np.ndarray] = []
    used: list[CellResult] = []
    first: dict[str, str] = {}
    for (name, data), res in zip(uploads, results, strict=True):
        digest = hashlib.sha1(data).hexdigest()
        if digest in first:
            res.error = f"byte copy of {first[digest]} (counted once)"
            continue
        try:
            img = await anyio.to_thread.run_sync(decode, name, data)
        except LeukoscopeError as e:
            res.error = str(e)
            continue
        first[digest] = name
        if (why := overview_skip(img)) is not None:  # skipped here, so each cell's result stays on its file
            res.error = why
            continue
        images.append(img)
        used.append(res)
        if thumbnail:
            res.thumbnail = await anyio.to_thread.run_sync(image_to_data_uri, img, 128)
    if not images:
        return results, None
    call: PatientCall = await lane(bundle.diagnose, images, subject)
    toward = -1.0 if call.call is not None and call.call != call.positive else 1.0
    most = min(DRIVERS, math.ceil(call.cells_used / 3))
    drivers = {id(c) for c in call.drivers(most) if toward * c.contribution > 0}  # pushed the call's way
    for res, cell in zip(used, call.cells, strict=True):  # diagnose keeps every array, in the order given
        p = float(sigmoid(cell.log_odds))
        res.probabilities = {c: round(p if c == call.positive else 1 - p, 6) for c in call.classes}
        res.label = call.positive if p >= 0.5 else next(c for c in call.classes if c != call.positive)
        if cell.unfamiliarity is not None and bundle.unfamiliar is not None:
            res.unfamiliarity, res.unfamiliar = round(cell.unfamiliarity, 6), cell.unfamiliar
            res.threshold = bundle.unfamiliar.threshold
            res.label = UNFAMILIAR if cell.unfamiliar else res.label
        res.cell_type, res.cell_type_probability = cell.cell_type, round(cell.cell_type_probability, 6)
        res.contribution, res.driver = round(cell.contribution, 6), id(cell) in drivers
    skipped = [Skip(name=r.name, reason=r.error.removeprefix(f"{r.name}: ")) for r in results if r.error]
    summary = _summary(call, composition(call, bundle.cell_types), skipped)
    return results, PatientResponse(model=str(bundle.config.get("model", bundle.family)),
                                    classes=bundle.classes, patient=summary, results=results)
