"""``leukoscope report``: a patient bundle's call per patient folder of real DeepAPL cells, as HTML (with a
chromium screenshot), CSV and JSON; the exact binomial interval; bad input one line or a counted skip."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path
from typing import Any

import pytest

from leukoscope.data.cohort import OVERVIEW_MIN_SIDE
from leukoscope.data.images import file_digest, image_size
from leukoscope.patients.report import clopper_pearson, percent, scan_patient
from patients_support import TRUNCATED, _link, cohort, later_cohort, run, run_dir  # noqa: F401
from serve_support import ARTIFACTS, browser, network_bundle  # noqa: F401

#: Whole patient folders as published: Patient_00 holds an overview field and byte copies among its
#: unsigned cells; Patient_80 has an accession-number folder between it and its slides.
PATIENTS = ("Patient_00", "Patient_80")



def _overview(data: Path) -> Path:
    return next(p for p in sorted((data / "deepapl" / "Data" / "All" / "Patient_00").rglob("*.jpg"))
                if max(image_size(p)) >= OVERVIEW_MIN_SIDE)


@pytest.fixture(scope="module")
def report(run_dir: Path, data: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:  # noqa: F811
    """The report on two whole DeepAPL patients, one patient with a single cell (too few for a call),
    a folder holding only an overview field and a note, and an empty folder."""
    tmp = tmp_path_factory.mktemp("report")
    all_ = data / "deepapl" / "Data" / "All"
    one = next((all_ / "Patient_05").rglob("BL_*.jpg"))
    _link(one, tmp / "Patient_05" / one.name)
    _link(_overview(data), tmp / "Patient_09" / "field.jpg")
    (tmp / "Patient_09" / "notes.txt").write_text("slide 3, stained 2019")
    (tmp / "Patient_10").mkdir()
    folders = [all_ / p for p in PATIENTS] + [tmp / "Patient_05", tmp / "Patient_09", tmp / "Patient_10"]
    code, out = run("report", run_dir / "bundle", *folders, "--out", tmp / "out")
    min_cells = json.loads((run_dir / "bundle" / "config.json").read_text())["min_cells"]
    return {"code": code, "out": out, "dir": tmp / "out", "folders": folders, "min_cells": min_cells,
            "json": json.loads((tmp / "out" / "patients.json").read_text()) if code == 0 else None}


def test_clopper_pearson_known_values() -> None:
    from scipy.stats import binomtest

    # k = 0 and k = n have closed forms: (0, 1 - (a/2)^(1/n)) and ((a/2)^(1/n), 1)
    assert clopper_pearson(0, 10) == (0.0, pytest.approx(1 - 0.025 ** (1 / 10)))
    assert clopper_pearson(10, 10) == (pytest.approx(0.025 ** (1 / 10)), 1.0)
    assert clopper_pearson(0, 12)[1] == pytest.approx(0.2646, abs=1e-4)  # 0 blasts in 12 cells: up to 26 %
    assert clopper_pearson(5, 10) == (pytest.approx(0.1871, abs=1e-4), pytest.approx(0.8129, abs=1e-4))
    for k, n in [(1, 1), (1, 7), (3, 34), (17, 34), (33, 34), (250, 1000)]:
        ci = binomtest(k, n).proportion_ci(0.95, method="exact")  # scipy's own exact interval
        assert clopper_pearson(k, n) == (pytest.approx(ci.low), pytest.approx(ci.high))
    assert clopper_pearson(3, 34, 0.99)[1] > clopper_pearson(3, 34)[1]
    for k, n in [(0, 0), (5, 4), (-1, 3)]:
        with pytest.raises(ValueError):
            clopper_pearson(k, n)


def test_percent_never_says_certain() -> None:
    assert [percent(p) for p in (1.0, 0.9996, 0.5, 0.0004, 0.0)] == [
        "> 99.9 %", "> 99.9 %", "50.0 %", "< 0.1 %", "< 0.1 %"]


def test_report_lines_and_counted_skips(report: dict[str, Any]) -> None:
    assert report["code"] == 0, report["out"]
    out = report["out"]
    for p in PATIENTS:
        assert re.search(rf"{p}: (AML|APL)  P\(APL\) ", out), out
    assert "Patient_05: no call: too few cells" in out and "1 cell(s) used" in out
    assert "2 folder(s) not reported" in out
    assert "Patient_09: no cell image (1 whole-field overview(s), 1 other skipped file(s))" in out
    assert "Patient_10: no image in the folder" in out
    assert "Traceback" not in out


def test_json_holds_each_call_with_its_composition(report: dict[str, Any], data: Path) -> None:
    j = report["json"]
    assert j["positive"] == "APL" and j["target"] == "diagnosis"
    assert [p["subject"] for p in j["patients"]] == [*PATIENTS, "Patient_05"]
    assert len(j["not_reported"]) == 2
    for p in j["patients"]:
        lo, hi = p["interval"]
        assert lo <= p["probability"] <= hi and 0 <= p["threshold"] <= 1
        assert p["cells_used"] + p["cells_unfamiliar"] == len(p["cells"])  # unfamiliar cells: not used
        assert p["cells_used"] == sum(s["count"] for s in p["composition_ci95"])
        assert sum(p["composition"].values()) == p["cells_used"]
        for s in p["composition_ci95"]:
            assert s["low"] <= s["share"] <= s["high"]
            assert (s["low"], s["high"]) == pytest.approx(clopper_pearson(s["count"], p["cells_used"]))
        assert p["call"] in (None, "AML", "APL") and p["composition_method"].startswith("Clopper-Pearson")
    first = j["patients"][0]
    folder = data / "deepapl" / "Data" / "All" / "Patient_00"
    images = [f for f in folder.rglob("*.jpg")]
    cells = [f for f in images if max(image_size(f)) < OVERVIEW_MIN_SIDE]
    assert len(first["cells"]) == len({file_digest(f) for f in cells})  # byte copies once, no overview
    reasons = [s["reason"] for s in first["skipped"]]
    assert sum(r.startswith("overview image") for r in reasons) == len(images) - len(cells) == 1
    assert sum(r.startswith("byte copy of") for r in reasons) == len(cells) - len(first["cells"])
    few = j["patients"][2]
    assert few["too_few"] and few["call"] is None and few["cells_used"] == 1 < few["min_cells"]


def test_csv_has_one_row_per_patient(report: dict[str, Any]) -> None:
    rows = list(csv.DictReader((report["dir"] / "patients.csv").open(newline="")))
    j = {p["subject"]: p for p in report["json"]["patients"]}
    assert [r["subject"] for r in rows] == list(j)
    for r in rows:
        p = j[r["subject"]]
        assert int(r["cells_used"]) == p["cells_used"] and int(r["cells_skipped"]) == len(p["skipped"])
        assert float(r["p_APL"]) == pytest.approx(p["probability"], abs=1e-6)
        assert r["call"] == (p["call"] or "") and r["too_few"] == str(p["too_few"])
        shares = [float(v) for k, v in r.items() if k.startswith("share_") and "_ci95_" not in k]
        assert sum(shares) == pytest.approx(1, abs=1e-4)
        assert int(r["n_Blast, no lineage spec"]) == p["composition"].get("Blast, no lineage spec", 0)


def test_html_is_self_contained_and_says_what_matters(report: dict[str, Any]) -> None:
    html = (report["dir"] / "report.html").read_text()
    assert "<script" not in html and "<link" not in html and "http://" not in html and "https://" not in html
    srcs = re.findall(r'<img src="([^"]+)"', html)
    assert len(srcs) > 2 * 8 and all(s.startswith("data:image/png;base64,") for s in srcs)
    for text in [*PATIENTS, "Patient_05", "Cell-type composition", "Clopper-Pearson exact binomial, 95%",
                 "Cells that drove the call", "Too few cells to be sure",
                 f"no call below {report['min_cells']}", "overview image", "byte copy of", "Patient_09",
                 "no cell image (1 whole-field overview(s)"]:
        assert text in " ".join(html.split()), text
    assert not re.search(r"P\(APL\) = 100", html) and "= 0.0 %" not in html


def test_report_screenshot_in_chromium(report: dict[str, Any], browser: Any) -> None:  # noqa: F811
    outside: list[str] = []
    page = browser.new_page(viewport={"width": 1200, "height": 900})
    page.on("request", lambda r: None if r.url.startswith(("file:", "data:")) else outside.append(r.url))
    page.goto((report["dir"] / "report.html").as_uri())
    assert page.locator("section.patient").count() == 3
    gallery = page.locator("section.patient .grid img")
    assert gallery.first.evaluate("img => img.complete && img.naturalWidth > 0")
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "patient_report.png"), full_page=True)
    page.close()
    assert outside == []
    assert (ARTIFACTS / "patient_report.png").stat().st_size > 50_000


def test_cohort_option_reports_every_patient(run_dir: Path, later_cohort: Path, tmp_path: Path) -> None:  # noqa: F811
    code, out = run("report", run_dir / "bundle", later_cohort, "--cohort", "--out", tmp_path)
    assert code == 0, out
    j = json.loads((tmp_path / "patients.json").read_text())
    assert len(j["patients"]) == 8 and all(len(p["cells"]) >= 8 for p in j["patients"])


def test_cohort_option_finds_patients_however_deep(run_dir: Path, later_cohort: Path,  # noqa: F811
                                                   tmp_path: Path) -> None:
    """``--cohort`` finds patient folders by the cohort scan's rule: here one level below ``All`` (a site),
    reached through symlinks; each patient is named by its folder as given."""
    src = later_cohort / "Data"
    data = tmp_path / "sites" / "Data"
    data.mkdir(parents=True)
    (data / "master.csv").symlink_to(src / "master.csv")
    ids = sorted(p.name for p in (src / "All").iterdir())
    folders = {}
    for n, pid in enumerate(ids):
        folders[pid] = data / "All" / ("siteA" if n % 2 else "siteB") / pid
        folders[pid].parent.mkdir(parents=True, exist_ok=True)
        folders[pid].symlink_to(src / "All" / pid, target_is_directory=True)
    code, out = run("report", run_dir / "bundle", tmp_path / "sites", "--cohort", "--out", tmp_path / "out")
    assert code == 0, out
    j = json.loads((tmp_path / "out" / "patients.json").read_text())
    assert {p["subject"]: p["folder"] for p in j["patients"]} == {i: str(f) for i, f in folders.items()}
    assert j["not_reported"] == []


def test_a_patient_filed_at_two_sites_is_one_patient(run_dir: Path, later_cohort: Path,  # noqa: F811
                                                      tmp_path: Path) -> None:
    """``--cohort`` pools a patient's folders at two sites into one call, as training and ``data describe``
    pool them: the same cells and the same probability as the patient's one folder, both folders named."""
    src = later_cohort / "Data"
    pid = sorted(p.name for p in (src / "All").iterdir())[0]
    data = tmp_path / "split" / "Data"
    data.mkdir(parents=True)
    (data / "master.csv").symlink_to(src / "master.csv")
    cells = sorted(f for f in (src / "All" / pid).rglob("*.jpg"))
    for n, f in enumerate(cells):
        _link(f, data / "All" / ("siteA" if n % 2 else "siteB") / pid / f.relative_to(src / "All" / pid))
    code, out = run("report", run_dir / "bundle", tmp_path / "split", "--cohort", "--out", tmp_path / "out")
    assert code == 0, out
    code, out = run("report", run_dir / "bundle", src / "All" / pid, "--out", tmp_path / "whole")
    assert code == 0, out
    split, whole = (json.loads((tmp_path / d / "patients.json").read_text())["patients"]
                    for d in ("out", "whole"))
    (one,) = split
    assert one["subject"] == pid and len(one["cells"]) == len(whole[0]["cells"]) == len(cells)
    assert one["probability"] == pytest.approx(whole[0]["probability"])
    assert one["folder"] == f"{data / 'All' / 'siteA' / pid}; {data / 'All' / 'siteB' / pid}"
    rows = list(csv.DictReader((tmp_path / "out" / "patients.csv").open()))
    assert [r["subject"] for r in rows] == [pid]


def test_a_linked_patient_folder_is_named_as_given(tmp_path: Path) -> None:
    (tmp_path / "slides of the week").mkdir()
    (tmp_path / "Patient_07").symlink_to(tmp_path / "slides of the week", target_is_directory=True)
    assert scan_patient(tmp_path / "Patient_07").subject == "Patient_07"


def test_bad_input_is_one_line(run_dir: Path, network_bundle: Path, data: Path,  # noqa: F811
                               tmp_path: Path) -> None:
    bundle = run_dir / "bundle"
    _link(_overview(data), tmp_path / "only_overview" / "field.jpg")
    (tmp_path / "empty").mkdir()
    _link(data / "deepapl" / "Data" / "All" / TRUNCATED, tmp_path / "broken" / "cell.jpg")
    for args, message in [
        ([bundle, tmp_path / "only_overview", tmp_path / "empty", tmp_path / "broken"],
         "no patient could be reported from 3 folder(s) given: "
         f"{tmp_path / 'only_overview'}: no cell image (1 whole-field overview(s), 0 other skipped file(s)); "
         f"{tmp_path / 'empty'}: no image in the folder; "
         f"{tmp_path / 'broken'}: none of its 1 cell image(s) could be read"),
        ([bundle, tmp_path / "nowhere"], f"{tmp_path / 'nowhere'}: not a folder"),
        ([bundle, tmp_path / "empty", "--cohort"], "not a cohort folder (--cohort needs master.csv"),
        ([network_bundle, tmp_path / "broken"], "a network bundle answers per cell; a patient report needs "
         "a patient bundle"),
    ]:
        code, out = run("report", *args, "--out", tmp_path / "out")
        assert code == 1 and message in " ".join(out.split()) and "Traceback" not in out, (args, out)
    assert not (tmp_path / "out").exists()


def test_a_linked_folder_inside_a_patient_is_followed(run_dir: Path, later_cohort: Path,  # noqa: F811
                                                      tmp_path: Path) -> None:
    """A patient's slides linked in from elsewhere are that patient's cells, in ``report`` as in the cohort
    scan that train and evaluate read."""
    src = later_cohort / "Data" / "All"
    pid = sorted(p.name for p in src.iterdir())[0]
    (tmp_path / pid).mkdir()
    (tmp_path / pid / "Signed slides").symlink_to(src / pid / "Signed slides", target_is_directory=True)
    code, out = run("report", run_dir / "bundle", tmp_path / pid, "--out", tmp_path / "linked")
    assert code == 0, out
    code, out = run("report", run_dir / "bundle", src / pid / "Signed slides", "--out", tmp_path / "direct")
    assert code == 0, out
    linked, direct = (json.loads((tmp_path / d / "patients.json").read_text())["patients"][0]
                      for d in ("linked", "direct"))
    assert len(linked["cells"]) == len(direct["cells"]) > 0
    assert linked["probability"] == pytest.approx(direct["probability"])


def test_a_cohort_folder_without_cohort_is_refused(run_dir: Path, later_cohort: Path) -> None:  # noqa: F811
    for folder in (later_cohort, later_cohort / "Data", later_cohort / "Data" / "All"):
        code, out = run("report", run_dir / "bundle", folder, "--out", later_cohort.parent / "never")
        flat = " ".join(out.split())
        assert code == 1 and f"{folder}: a cohort of many patients" in flat and "add --cohort" in flat, flat
    assert not (later_cohort.parent / "never").exists()
