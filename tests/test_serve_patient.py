"""``POST /api/patient`` over a real patient bundle and real DeepAPL cells: the call as the library makes it,
too few cells, byte copies and bad files counted, the server's limits, and a cell bundle refused."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from leukoscope.bundle import load_bundle
from leukoscope.data.images import image_size
from leukoscope.serve.app import create_app
from leukoscope.serve.limits import ServeSettings
from patients_support import cohort, run_dir  # noqa: F401 - fixtures used by name
from serve_support import network_bundle  # noqa: F401

pytestmark = pytest.mark.filterwarnings("ignore:Using `httpx` with `starlette.testclient`")

#: DeepAPL cells are ~360x363 px (130,680 pixels): six fit in a request, eight do not.
LIMITS = ServeSettings(max_files=20, max_request_pixels=2_500_000, max_body=8 * 2**20)


@pytest.fixture(scope="module")
def client(run_dir: Path) -> Iterator[Any]:  # noqa: F811
    from fastapi.testclient import TestClient

    with TestClient(create_app(run_dir / "bundle", LIMITS)) as c:
        yield c


@pytest.fixture(scope="module")
def cells(cohort: Path, run_dir: Path) -> list[Path]:  # noqa: F811
    """Enough of one patient's cells for a call: the bundle's min_cells, and at least 6."""
    need = max(6, load_bundle(run_dir / "bundle").min_cells)
    found = sorted((cohort / "Data" / "All" / "Patient_32").rglob("*.jpg"))[:need]
    assert len(found) == need
    assert all(image_size(p) == (360, 363) for p in found)
    return found


def files(*parts: tuple[str, bytes]) -> dict[str, Any]:
    return {"files": [("files", (name, data, "image/jpeg")) for name, data in parts]}


def test_patient_call_is_the_librarys(client: Any, cells: list[Path], run_dir: Path) -> None:  # noqa: F811
    sent = [(p.name, p.read_bytes()) for p in cells] + [("again.jpg", cells[0].read_bytes()),
                                                         ("notes.jpg", b"slide 3")]
    r = client.post("/api/patient?thumbnail=true&subject=P32", **files(*sent))
    assert r.status_code == 200, r.text
    body = r.json()
    p = body["patient"]
    expected = load_bundle(run_dir / "bundle").diagnose([str(c) for c in cells], subject="P32")
    assert p["subject"] == "P32" and p["call"] == expected.call and p["positive"] == "APL"
    assert p["probability"] == pytest.approx(expected.probability, abs=1e-6)
    assert p["interval"] == pytest.approx(list(expected.interval), abs=1e-6)
    assert p["cells_used"] == len(cells) and not p["too_few"] and p["min_cells"] == expected.min_cells
    assert p["skipped"] == [{"name": "again.jpg", "reason": f"byte copy of {cells[0].name} (counted once)"},
                            {"name": "notes.jpg", "reason": "not a readable image"}]
    counts = {s["cell_type"]: s["count"] for s in p["composition"]}
    assert counts == {**dict.fromkeys(counts, 0), **expected.composition()}
    assert sum(counts.values()) == len(cells)
    assert all(s["low"] <= s["share"] <= s["high"] for s in p["composition"])
    results = body["results"]
    assert [x["name"] for x in results] == [n for n, _ in sent]
    n = len(cells)
    assert [x["cell_type"] for x in results[:n]] == [c.cell_type for c in expected.cells]
    assert all(x["thumbnail"].startswith("data:image/png;base64,") for x in results[:n])
    assert results[n]["error"].startswith("byte copy of")
    assert results[n + 1]["error"] == "notes.jpg: not a readable image"
    toward = 1 if p["call"] == "APL" else -1
    drivers = [x for x in results if x["driver"]]
    assert 1 <= len(drivers) <= -(-n // 3)  # a third of the cells at most
    assert all(toward * x["contribution"] > 0 for x in drivers)


def test_the_interval_does_not_depend_on_the_order_of_the_cells(client: Any, cells: list[Path]) -> None:
    """The page sends cells in the order they were dropped, report in the folder's order: one interval."""
    orders = (cells, cells[::-1], cells[1::2] + cells[::2])
    sent = [[(p.name, p.read_bytes()) for p in order] for order in orders]
    calls = [client.post("/api/patient", **files(*cells_sent)).json()["patient"] for cells_sent in sent]
    assert all(c["interval"] == pytest.approx(calls[0]["interval"], abs=1e-12) for c in calls)
    assert all(c["probability"] == pytest.approx(calls[0]["probability"], abs=1e-12) for c in calls)


def test_an_overview_is_a_counted_skip_and_results_stay_on_their_files(run_dir: Path,  # noqa: F811
                                                                       cells: list[Path], data: Path) -> None:
    """A whole-field overview among the cells (within every limit) is skipped by diagnose's rule, as
    ``diagnose`` skips it from a file, and each cell's result stays on its own file (it was a 500)."""
    from fastapi.testclient import TestClient

    overview = data / "deepapl" / "Data" / "All" / "Patient_14" / "Unsigned slides" / "D0000000JWU_001.jpg"
    assert image_size(overview) == (2920, 2962)
    sent = [("c1.jpg", cells[0].read_bytes()), ("overview.jpg", overview.read_bytes()),
            ("c2.jpg", cells[1].read_bytes())]
    with TestClient(create_app(run_dir / "bundle")) as c:  # default limits: 8.6 Mpx is within them
        r = c.post("/api/patient", **files(*sent))
    assert r.status_code == 200, r.text
    body = r.json()
    why = "whole-field overview (2920x2962), not a cell"
    assert body["patient"]["skipped"] == [{"name": "overview.jpg", "reason": why}]
    assert body["patient"]["cells_used"] == 2
    expected = load_bundle(run_dir / "bundle").diagnose([str(cells[0]), str(overview), str(cells[1])])
    assert expected.skipped == [(str(overview), why)]
    results = body["results"]
    assert [x["name"] for x in results] == ["c1.jpg", "overview.jpg", "c2.jpg"]
    assert results[1]["error"] == why and results[1]["label"] is None and results[1]["contribution"] is None
    cell_results = [results[0], results[2]]
    assert [x["cell_type"] for x in cell_results] == [c.cell_type for c in expected.cells]
    contributions = [c.contribution for c in expected.cells]
    assert [x["contribution"] for x in cell_results] == pytest.approx(contributions, abs=1e-6)
    assert body["patient"]["probability"] == pytest.approx(expected.probability, abs=1e-6)


def test_too_few_cells_make_no_call(client: Any, cells: list[Path]) -> None:
    r = client.post("/api/patient", **files((cells[0].name, cells[0].read_bytes())))
    assert r.status_code == 200, r.text
    p = r.json()["patient"]
    assert p["too_few"] and p["call"] is None and p["cells_used"] == 1 < p["min_cells"]


def test_limits_apply_to_patient_requests(client: Any, cells: list[Path]) -> None:
    cell = cells[0].read_bytes()
    r = client.post("/api/patient", **files(*[(f"c{i}.jpg", cell) for i in range(21)]))
    assert r.status_code == 413 and r.json()["detail"] == "too many files: at most 20 per request"
    r = client.post("/api/patient", **files(*[(f"c{i}.jpg", cell) for i in range(20)]))  # 20 x 130,680 px
    assert r.status_code == 413 and "pixels, over the limit of 2,500,000 per request" in r.json()["detail"]
    r = client.post("/api/patient", content=b"x" * (LIMITS.max_body + 1),
                    headers={"content-type": "multipart/form-data; boundary=b"})
    assert r.status_code == 413 and "request body exceeds the limit" in r.json()["detail"]
    r = client.post("/api/patient", **files(("a.jpg", b"no"), ("b.png", b"")))
    assert r.status_code == 422
    assert r.json()["detail"] == ("no uploaded file could be read as an image: a.jpg: not a readable image; "
                                  "b.png: empty file (0 bytes)")


def test_cell_bundle_has_no_patient_call(network_bundle: Path, cells: list[Path]) -> None:  # noqa: F811
    from fastapi.testclient import TestClient

    with TestClient(create_app(network_bundle)) as c:
        r = c.post("/api/patient", **files((cells[0].name, cells[0].read_bytes())))
    assert r.status_code == 400
    assert "a network bundle) answers per cell; use /api/predict" in r.json()["detail"]
