"""Unfamiliar cells in patient calls, on real cells: the patient bundle stores a kNN unfamiliarity score
fitted on its training patients' cell embeddings (threshold from held-out patients' cells); ``report`` and
``/api/patient`` count a folder's cells unlike the training cohort's (cells of other data sets put in a
patient folder) and leave them out of the call; a bundle written before the score still reports."""

from __future__ import annotations

import csv
import json
import math
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from leukoscope.bundle import load_bundle
from leukoscope.bundle.format import UNFAMILIAR
from leukoscope.bundle.patient import PatientBundle
from patients_support import _link, bags, cohort, later_cohort, run, run_dir  # noqa: F401
from serve_support import ARTIFACTS, browser  # noqa: F401 - fixture used by name

pytestmark = pytest.mark.filterwarnings("ignore:Using `httpx` with `starlette.testclient`")
#: Cells per foreign folder: ALL-IDB2 (257 px TIFF crops of another lab, microscope and stain) and PBC
#: (CellaVision crops of healthy donors' cell types from another hospital).
FOREIGN = 10



@pytest.fixture(scope="module")
def folders(data: Path, later_cohort: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:  # noqa: F811
    """A patient folder of ALL-IDB2 cells, one of PBC cells (one per type folder, round robin), and one
    DeepAPL patient the bundle never saw."""
    tmp = tmp_path_factory.mktemp("foreign")
    for i, p in enumerate(sorted((data / "allidb2").glob("*.tif"))[:FOREIGN]):
        _link(p, tmp / "ALLIDB2" / f"{i}.tif")
    types = sorted(d for d in (data / "pbc").iterdir() if d.is_dir())
    for i in range(FOREIGN):
        p = sorted(types[i % len(types)].glob("*.jpg"))[i // len(types)]
        _link(p, tmp / "PBC" / p.name)
    own = sorted((later_cohort / "Data" / "All").iterdir())[0]
    return {"ALLIDB2": tmp / "ALLIDB2", "PBC": tmp / "PBC", "own": own}


def test_patient_bundle_stores_the_score(run_dir: Path, bags) -> None:  # noqa: F811
    from leukoscope.patients.train import cell_unfamiliarity

    folder = run_dir / "bundle"
    config = json.loads((folder / "config.json").read_text())
    u = config["unfamiliar"]
    assert u["method"] == "knn" and u["target_false_flag_rate"] == 0.05 and (folder / UNFAMILIAR).is_file()
    b = load_bundle(folder)
    assert isinstance(b, PatientBundle) and b.unfamiliar is not None
    assert b.unfamiliar.threshold == pytest.approx(u["threshold"]) and math.isfinite(u["threshold"])
    again = cell_unfamiliarity(bags)  # what train wrote: the same split, reference and threshold
    assert again is not None and again.threshold == pytest.approx(b.unfamiliar.threshold)
    ref = b.unfamiliar.tensors["reference"]
    assert ref.shape[1] == bags.X.shape[1]
    assert 0.6 * len(bags.X) < len(ref) < len(bags.X)  # the held-out patients' cells are not in it
    assert "unfamiliar cells: kNN unfamiliarity" in (folder / "MODEL_CARD.md").read_text()
    from leukoscope.bundle.verify import verify

    assert all(f.ok for f in verify(folder)), verify(folder)
    probs, scores = b.assess([bags.cells["path"].iloc[0]])  # per cell too (predict, evaluate)
    assert probs.shape == (1, 2) and scores is not None and scores.shape == (1,)
    assert cell_unfamiliarity(bags.subset(np.r_[0:1, 12:24])) is None  # one AML patient: none to hold out


def test_unfamiliar_cells_are_left_out_of_the_call(run_dir: Path, folders: dict[str, Path],  # noqa: F811
                                                   tmp_path: Path) -> None:
    b = load_bundle(run_dir / "bundle")
    assert isinstance(b, PatientBundle) and b.unfamiliar is not None
    paths = sorted(str(p) for p in folders["own"].rglob("*.jpg"))
    call = b.diagnose(paths, "own")
    scores = np.array([c.unfamiliarity for c in call.cells])
    b.unfamiliar.threshold = float(np.median(scores))  # flag the less familiar half
    half = b.diagnose(paths, "own")
    flagged = [c.path for c in half.cells if c.unfamiliar]
    assert 0 < len(flagged) < len(paths) and half.cells_unfamiliar == len(flagged)
    kept = [p for p in paths if p not in flagged]
    b.unfamiliar = None  # as an old bundle: the kept cells alone give the same call
    alone = b.diagnose(kept, "own")
    assert half.probability == pytest.approx(alone.probability, abs=1e-9)
    assert half.interval == pytest.approx(alone.interval, abs=1e-9) and half.call == alone.call
    assert half.cells_used == alone.cells_used == len(kept) and not alone.unfamiliar_checked
    assert all(c.weight == 0 == c.contribution for c in half.cells if c.unfamiliar)
    assert half.unfamiliar_note() == (f"{len(flagged)} of {len(paths)} cells unlike the training cohort's; "
                                      f"the call rests on {len(kept)}"
                                      + (" (over 25% unfamiliar: this folder may come from another lab, "
                                         "stain or scanner than the training cohort; check it before "
                                         "trusting any call)" if len(flagged) / len(paths) > 0.25 else ""))
    b2 = load_bundle(run_dir / "bundle")
    assert isinstance(b2, PatientBundle) and b2.unfamiliar is not None
    b2.unfamiliar.threshold = -1.0  # every cell unfamiliar: no call, no probability, still valid JSON
    none = b2.diagnose(paths, "own")
    assert none.call is None and none.too_few and none.cells_used == 0 and none.cells_unfamiliar == len(paths)
    d = json.loads(none.to_json(), parse_constant=lambda c: pytest.fail(f"{c} in JSON"))
    assert d["probability"] is None and d["unfamiliar_note"].startswith(
        f"{len(paths)} of {len(paths)} cells unlike the training cohort's; no cell is left to make a call")


@pytest.fixture(scope="module")
def run352(cohort: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:  # noqa: F811
    """``run_dir``'s training at the bundle's default embedding resolution (352 px, not the tests' 64 px):
    at 64 px a frozen EfficientNet-Lite0 barely tells ALL-IDB2 cells from DeepAPL ones."""
    from leukoscope.data.readers import read
    from leukoscope.patients.train import train_patients

    out = tmp_path_factory.mktemp("run352") / "run"
    train_patients(read([cohort]), "diagnosis", out, "mean-embedding", repeats=1, folds=3)
    return out


def _report(bundle: Path, folders: dict[str, Path], out: Path) -> dict[str, dict[str, Any]]:
    """``leukoscope report`` on the three folders; checks the count is the same in every place it is shown."""
    code, text = run("report", bundle, folders["ALLIDB2"], folders["PBC"], folders["own"], "--out", out)
    assert code == 0, text
    text = " ".join(text.split())
    j = {p["subject"]: p for p in json.loads((out / "patients.json").read_text())["patients"]}
    assert set(j) == {"ALLIDB2", "PBC", folders["own"].name}
    assert len(j["ALLIDB2"]["cells"]) == len(j["PBC"]["cells"]) == FOREIGN
    rows = {r["subject"]: r for r in csv.DictReader((out / "patients.csv").open(newline=""))}
    html = " ".join((out / "report.html").read_text().split())
    for s, p in j.items():
        assert p["unfamiliar_checked"] and p["cells_unfamiliar"] == sum(c["unfamiliar"] for c in p["cells"])
        assert p["cells_used"] + p["cells_unfamiliar"] == len(p["cells"])
        assert sum(p["composition"].values()) == p["cells_used"]
        assert int(rows[s]["cells_unfamiliar"]) == p["cells_unfamiliar"]
        assert float(rows[s]["unfamiliar_share"]) == pytest.approx(p["unfamiliar_share"], abs=1e-6)
        if p["cells_unfamiliar"]:
            note = f"{p['cells_unfamiliar']} of {len(p['cells'])} cells unlike the training cohort's"
            assert p["unfamiliar_note"].startswith(note) and note in text
            assert p["unfamiliar_note"].replace("'", "&#39;") in html
        else:
            assert p["unfamiliar_note"] is None
    return j


def test_report_counts_foreign_cells(run_dir: Path, folders: dict[str, Path], tmp_path: Path) -> None:  # noqa: F811
    _report(run_dir / "bundle", folders, tmp_path)


@pytest.mark.slow
def test_report_flags_foreign_cells_at_full_resolution(run352: Path, folders: dict[str, Path],
                                                       tmp_path: Path) -> None:
    j = _report(run352 / "bundle", folders, tmp_path)
    print({s: (p["cells_unfamiliar"], len(p["cells"])) for s, p in j.items()})
    foreign, own = j["ALLIDB2"], j[folders["own"].name]
    assert foreign["cells_unfamiliar"] >= FOREIGN // 2
    assert foreign["unfamiliar_share"] > own["unfamiliar_share"]
    assert "may come from another lab" in foreign["unfamiliar_note"]


def test_old_bundle_without_the_score_still_reports(run_dir: Path, folders: dict[str, Path],  # noqa: F811
                                                    tmp_path: Path) -> None:
    old = tmp_path / "old"
    shutil.copytree(run_dir / "bundle", old)
    (old / UNFAMILIAR).unlink()
    config = json.loads((old / "config.json").read_text())
    del config["unfamiliar"]
    (old / "config.json").write_text(json.dumps(config))
    code, out = run("report", old, folders["ALLIDB2"], folders["own"], "--out", tmp_path / "out")
    assert code == 0, out
    assert "unlike the training cohort" not in out
    j = json.loads((tmp_path / "out" / "patients.json").read_text())["patients"]
    for p in j:
        assert not p["unfamiliar_checked"] and p["cells_unfamiliar"] == 0 and p["unfamiliar_note"] is None
        assert p["cells_used"] == len(p["cells"]) and p["call"] in ("AML", "APL")
    rows = list(csv.DictReader((tmp_path / "out" / "patients.csv").open(newline="")))
    assert [r["cells_unfamiliar"] for r in rows] == ["", ""]
    assert "has no unfamiliarity score" in (tmp_path / "out" / "report.html").read_text()


def test_api_patient_counts_foreign_cells(run_dir: Path, folders: dict[str, Path]) -> None:  # noqa: F811
    from fastapi.testclient import TestClient

    from leukoscope.serve.app import create_app

    b = load_bundle(run_dir / "bundle")
    assert isinstance(b, PatientBundle)
    own = sorted(folders["own"].rglob("*.jpg"))[:6]
    foreign = sorted(folders["ALLIDB2"].glob("*.tif"))[:4]
    sent = own + foreign
    expected = b.diagnose([str(p) for p in sent], "P")
    assert expected.unfamiliar_checked
    with TestClient(create_app(run_dir / "bundle")) as client:
        r = client.post("/api/patient?subject=P", files=[("files", (p.name, p.read_bytes(), "image/jpeg"))
                                                         for p in sent])
    assert r.status_code == 200, r.text
    body = r.json()
    p = body["patient"]
    assert p["cells_unfamiliar"] == expected.cells_unfamiliar and p["cells_used"] == expected.cells_used
    assert p["unfamiliar_note"] == expected.unfamiliar_note()
    if expected.cells_used:
        assert p["probability"] == pytest.approx(expected.probability, abs=1e-6)
    for res, cell in zip(body["results"], expected.cells, strict=True):
        assert res["unfamiliar"] == cell.unfamiliar == (res["unfamiliarity"] > res["threshold"])
        assert res["unfamiliarity"] == pytest.approx(cell.unfamiliarity, abs=1e-5)
        assert (res["label"] == "unfamiliar") == cell.unfamiliar


def test_page_shows_the_unfamiliar_count(browser: Any, run_dir: Path, folders: dict[str, Path]) -> None:  # noqa: F811
    from playwright.sync_api import expect

    from leukoscope.serve.background import serving

    sent = sorted(folders["own"].rglob("*.jpg"))[:6] + sorted(folders["ALLIDB2"].glob("*.tif"))
    b = load_bundle(run_dir / "bundle")
    assert isinstance(b, PatientBundle)
    expected = b.diagnose([str(p) for p in sent])
    assert expected.cells_unfamiliar >= 1  # at 64 px: 1 of the 10 ALL-IDB2 cells
    with serving(run_dir / "bundle", timeout=300) as running:
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        problems: list[str] = []
        page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
        page.goto(running.url + "/")
        page.wait_for_selector("#card dl")
        page.set_input_files("#files", [str(p) for p in sent])
        expect(page.locator(".result[data-label]")).to_have_count(len(sent), timeout=120_000)
        note = page.locator("#patient .warning.unfamiliar")
        expect(note).to_have_text(f"{expected.unfamiliar_note()}.")
        assert f"{expected.cells_unfamiliar} unfamiliar (left out)" in page.inner_text("#patient")
        flagged = page.locator(".result.unfamiliar")
        assert flagged.count() == expected.cells_unfamiliar
        expect(flagged.first.locator(".label")).to_have_text("unfamiliar")
        assert "left out of the patient's call" in flagged.first.inner_text()
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "serve-patient-unfamiliar.png"), full_page=True)
        page.close()
    assert problems == []
