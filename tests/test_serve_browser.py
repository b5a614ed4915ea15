"""A real browser (Debian's chromium, driven by Playwright) against a real ``leukoscope serve`` process."""

from __future__ import annotations

import csv
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from leukoscope.serve.background import serving
from patients_support import cohort, run_dir  # noqa: F401 - fixtures used by name
from serve_support import ARTIFACTS, browser, network_bundle, sample_images  # noqa: F401 - fixtures by name
from unfamiliar_support import allidb2_bundle  # noqa: F401 - fixture used by name
from use_support import classical_bundle  # noqa: F401 - fixture used by name


def downloaded_csv(page: Any, saved: Path) -> list[dict[str, str]]:
    """The rows of the page's CSV download (its CSV button), saved at ``saved``."""
    with page.expect_download() as dl:
        page.click("#csv")
    dl.value.save_as(saved)
    return list(csv.DictReader(saved.open(newline="")))


@pytest.fixture(scope="module")
def server(network_bundle: Path) -> Iterator[str]:  # noqa: F811
    # two files per request, so three dropped files take two requests, and the first two (a 450x450
    # BMP and a 224x224 JPEG) are over the pixels a request may have; a generous start-up wait
    with serving(network_bundle, "--max-files", "2", "--max-request-pixels", "250000",
                 timeout=300) as running:
        yield running.url


def test_page_classifies_a_dropped_image_and_shows_the_heat_map(browser: Any, server: str,  # noqa: F811
                                                               data: Path, tmp_path: Path) -> None:
    from playwright.sync_api import expect

    images = sample_images(data)
    page = browser.new_page(viewport={"width": 1280, "height": 900}, accept_downloads=True)
    problems: list[str] = []
    # the deliberately bad file below, and the first batch, too many pixels together
    expected_4xx = ("the server responded with a status of 422", "the server responded with a status of 413")
    page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}")
            if m.type == "error" and not any(e in m.text for e in expected_4xx) else None)
    statuses: list[int] = []
    page.on("response", lambda r: statuses.append(r.status) if "/api/predict" in r.url else None)
    page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
    page.on("request", lambda r: None if r.url.startswith((server, "data:", "blob:"))
            else problems.append(f"request outside the server: {r.url}"))

    page.goto(server + "/")
    page.wait_for_selector("#card dl")  # the model card arrived from /api/model
    card = page.inner_text("#card")
    assert "all (ALL blast), hem (normal)" in card and "Research use only" in card  # display names
    # figures only: split sizes and timings are not metric columns
    assert page.locator("#card .metrics th").all_inner_texts() == ["metric", "validation", "test"]

    dropped = [images["bmp"], images["jpeg"], images["tiff"]]
    page.set_input_files("#files", [str(p) for p in dropped])
    done = page.locator(".result[data-label]")
    expect(done).to_have_count(3, timeout=60_000)  # locators, not eval: the page's CSP forbids eval
    # a JPEG of aria_all and a TIFF of ALL-IDB2 sent to a C-NMC model may be called "unfamiliar"
    assert set(done.locator(".label").all_inner_texts()) <= {"all (ALL blast)", "hem (normal)", "unfamiliar"}
    heat = done.locator(".heatmap")
    expect(heat.first).to_be_visible()
    for i in range(3):
        assert heat.nth(i).get_attribute("src").startswith("data:image/png;base64,")
        # every picture is really drawn, the TIFF too (its thumbnail comes decoded from the server)
        for img in (heat.nth(i), done.nth(i).locator(".thumb")):
            assert img.evaluate("img => img.complete && img.naturalWidth > 0")
    expect(done.locator(".bars li")).to_have_count(6)  # two classes, three images

    page.set_input_files("#files", {"name": "notes.png", "mimeType": "image/png", "buffer": b"not pixels"})
    page.wait_for_selector(".result.failed .error")
    assert "notes.png: not a readable image" in page.inner_text(".result.failed .error")
    assert statuses == [413, 200, 200, 200, 422]  # the page halved the refused batch and went on

    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "serve-page.png"), full_page=True)

    rows = downloaded_csv(page, tmp_path / "results.csv")
    # in the order the page shows them: the later drop on top, each drop in the order chosen
    shown = [t.split("\n")[0] for t in page.locator(".result .name").all_inner_texts()]
    assert [r["file"] for r in rows] == ["notes.png"] + [p.name for p in dropped] == shown
    assert list(rows[0])[:3] == ["file", "subject", "predicted"]  # predict's CSV columns (file for path)
    assert rows[1]["predicted"] in ("all", "hem") and rows[0]["error"] and not rows[1]["error"]
    assert abs(float(rows[1]["p_all"]) + float(rows[1]["p_hem"]) - 1) < 1e-4
    assert problems == []
    page.close()


@pytest.fixture(scope="module")
def patient_server(run_dir: Path) -> Iterator[str]:  # noqa: F811
    with serving(run_dir / "bundle", timeout=300) as running:
        yield running.url


def test_patient_view_shows_the_summary_above_the_cells(browser: Any, patient_server: str,  # noqa: F811
                                                        cohort: Path, run_dir: Path,  # noqa: F811
                                                        tmp_path: Path) -> None:
    from playwright.sync_api import expect

    from leukoscope.bundle import load_bundle

    n = max(6, load_bundle(run_dir / "bundle").min_cells)  # enough cells for a call
    cells = sorted((cohort / "Data" / "All" / "Patient_32").rglob("*.jpg"))[:n]
    assert len(cells) == n
    page = browser.new_page(viewport={"width": 1280, "height": 900}, accept_downloads=True)
    problems: list[str] = []
    page.on("console", lambda m: problems.append(f"console: {m.text}") if m.type == "error" else None)
    page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
    page.on("request", lambda r: None if r.url.startswith((patient_server, "data:", "blob:"))
            else problems.append(f"request outside the server: {r.url}"))
    page.goto(patient_server + "/")
    page.wait_for_selector("#card dl")
    assert page.inner_text("#drop-title") == "Drop the cells of one patient here"
    auc = next(r for r in page.locator("#card .metrics tr").all_inner_texts() if r.startswith("roc auc"))
    assert re.search(r"\d\.\d{3} \[\d\.\d{3}, \d\.\d{3}\]", auc), auc  # the patient AUC with its interval

    page.set_input_files("#files", [str(cells[0])])  # one cell: below the bundle's min_cells
    summary = page.locator("#patient")
    expect(summary.locator(".too-few")).to_contain_text("Too few cells to be sure: 1 cell(s)")
    expect(summary.locator(".verdict-call")).to_have_text("No call")

    page.set_input_files("#files", [str(c) for c in cells[1:]] + [str(cells[0])])  # the rest, one again
    expect(page.locator(".result[data-label]")).to_have_count(n, timeout=60_000)
    expect(summary.locator(".verdict-call")).to_have_text(re.compile(r"^Call: (AML|APL)$"))
    text = summary.inner_text()
    assert re.search(r"P\(APL\) (\d+\.\d%|[<>] \S+%) \(95% interval ", text), text
    assert f"{n} cell(s) used, 1 skipped" in text and "100%" not in text and "100.0%" not in text
    assert page.inner_text("#status") == f"{n} of {n + 1} cell(s) used; 1 skipped"  # the summary's counts
    assert summary.locator(".too-few").count() == 0
    rows = summary.locator("table.composition tr")
    assert rows.count() >= 2  # header + at least one type
    assert sum(int(rows.nth(i).locator("td").nth(1).inner_text()) for i in range(1, rows.count())) == n
    assert "byte copy of" in page.inner_text(".result.failed .error")
    box, first = summary.bounding_box(), page.locator(".result").first.bounding_box()
    assert box is not None and first is not None and box["y"] + box["height"] <= first["y"]  # above
    assert page.locator(".result.driver .badge").count() >= 1

    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "serve-patient.png"), full_page=True)
    got = downloaded_csv(page, tmp_path / "cells.csv")
    assert len(got) == n + 1 and all(r["cell_type"] for r in got if not r["error"])
    page.click("#clear")
    expect(summary).to_be_hidden()
    assert problems == []
    page.close()


@pytest.fixture(scope="module")
def allidb2_server(allidb2_bundle: Path) -> Iterator[str]:  # noqa: F811
    with serving(allidb2_bundle, timeout=300) as running:
        yield running.url


def test_page_calls_a_foreign_cell_unfamiliar_not_a_class_at_100(browser: Any, allidb2_server: str,  # noqa: F811
                                                                  data: Path) -> None:
    from playwright.sync_api import expect

    cnmc = sorted((data / "cnmc_cells" / "hem").glob("*.png"))[0]  # a C-NMC cell, sent to an ALL-IDB2 model
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    problems: list[str] = []
    page.on("console", lambda m: problems.append(f"console: {m.text}") if m.type == "error" else None)
    page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
    page.goto(allidb2_server + "/")
    page.wait_for_selector("#card dl")
    page.set_input_files("#files", [str(cnmc)])
    result = page.locator(".result[data-label]")
    expect(result).to_have_count(1, timeout=60_000)
    expect(result.locator(".label")).to_have_text("unfamiliar")
    assert result.get_attribute("data-label") == "unfamiliar"
    info = result.locator(".unfamiliar-info")
    expect(info).to_be_visible()
    assert re.search(r"unfamiliarity \d+\.\d+ > threshold \d+\.\d+", info.inner_text())
    assert result.locator(".bars li.top").count() == 0  # no class drawn as the winner
    assert result.locator(".bars li").count() == 2
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "serve-unfamiliar.png"), full_page=True)
    assert problems == []
    page.close()


@pytest.fixture(scope="module")
def operating_server(data: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A bundle with an operating point (eosinophil at validation sensitivity 1.0) on 15 + 15 PBC cells:
    for some basophils the call is eosinophil although basophil is the more probable class."""
    from typer.testing import CliRunner

    from leukoscope.cli.verbs import app

    root = tmp_path_factory.mktemp("op-pbc")
    for cls in ("basophil", "eosinophil"):
        (root / "pbc" / cls).mkdir(parents=True)
        for f in sorted((data / "pbc" / cls).glob("*.jpg"))[:15]:
            (root / "pbc" / cls / f.name).symlink_to(f)
    res = CliRunner().invoke(app, ["train", str(root / "pbc"), "--model", "logistic_regression",
                                   "--min-cells", "0", "--positive", "eosinophil",
                                   "--target-sensitivity", "1.0", "--out", str(root / "run")])
    assert res.exit_code == 0, res.output
    with serving(root / "run" / "bundle", timeout=300) as running:
        yield running.url


def test_the_accent_goes_to_the_call_and_the_csv_keeps_numbers(browser: Any, operating_server: str,  # noqa: F811
                                                               data: Path, tmp_path: Path) -> None:
    import json

    from playwright.sync_api import expect

    basophils = sorted((data / "pbc" / "basophil").glob("*.jpg"))[:15]
    page = browser.new_page(viewport={"width": 1280, "height": 900}, accept_downloads=True)
    problems: list[str] = []
    page.on("console", lambda m: problems.append(f"console: {m.text}")
            if m.type == "error" and "status of 502" not in m.text else None)
    page.on("pageerror", lambda e: problems.append(f"page error: {e}"))

    def negative_unfamiliarity(route: Any) -> None:  # a score below zero must reach the CSV as a number
        response = route.fetch()
        body = response.json()
        for res in body["results"]:
            if res.get("unfamiliarity") is not None:
                res["unfamiliarity"] = -0.048735
        route.fulfill(response=response, body=json.dumps(body))

    page.route("**/api/predict*", negative_unfamiliarity)
    page.goto(operating_server + "/")
    page.wait_for_selector("#card dl")
    named = {"name": '-cell "q".jpg', "mimeType": "image/jpeg", "buffer": basophils[1].read_bytes()}
    chosen = [basophils[0], basophils[2], basophils[3]]
    payloads = [{"name": p.name, "mimeType": "image/jpeg", "buffer": p.read_bytes()} for p in chosen]
    page.set_input_files("#files", [named] + payloads)
    done = page.locator(".result[data-label]")
    expect(done).to_have_count(4, timeout=60_000)
    names = [named["name"]] + [p.name for p in chosen]
    assert page.locator(".result .name").all_inner_texts() == names  # the order chosen

    differs = 0
    for i in range(4):
        result = done.nth(i)
        label = result.get_attribute("data-label")
        bars = result.locator(".bars li")
        probs = [float(t.rstrip("%")) for t in bars.locator(".p").all_inner_texts()]
        assert probs == sorted(probs, reverse=True)  # still sorted by probability
        if label == "unfamiliar":
            assert result.locator(".bars li.top").count() == 0
            continue
        assert result.locator(".bars li.top").count() == 1
        assert result.locator(".bars li.top .cls").inner_text() == label  # the accent on the call
        differs += bars.first.locator(".cls").inner_text() != label
    assert differs >= 1  # the operating point made a call other than the most probable class

    rows = downloaded_csv(page, tmp_path / "op.csv")
    assert [r["file"] for r in rows] == ["'" + names[0]] + names[1:]  # the chosen name, guarded as text
    assert all(r["unfamiliarity"] == "-0.048735" for r in rows)  # a number, not the text '-0.048735
    assert all(float(r["p_basophil"]) >= 0 for r in rows)

    # a proxy's HTML error page: the status, not a JSON parse error
    page.unroute("**/api/predict*")
    page.route("**/api/predict*", lambda route: route.fulfill(
        status=502, content_type="text/html", body="<html><body>Bad Gateway</body></html>"))
    page.set_input_files("#files", [str(basophils[4])])
    error = page.locator(".result.failed .error")
    expect(error).to_have_text(re.compile(r"^request failed: HTTP 502\b"))
    assert "Unexpected token" not in error.inner_text()
    assert problems == []
    page.close()


def test_a_second_drop_while_the_first_call_is_in_flight_leaves_no_stale_rows(
        browser: Any, patient_server: str, cohort: Path, run_dir: Path, tmp_path: Path) -> None:  # noqa: F811
    from playwright.sync_api import expect

    from leukoscope.bundle import load_bundle

    n = max(6, load_bundle(run_dir / "bundle").min_cells)
    cells = sorted((cohort / "Data" / "All" / "Patient_32").rglob("*.jpg"))[:n]
    page = browser.new_page(viewport={"width": 1280, "height": 900}, accept_downloads=True)
    problems: list[str] = []
    page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
    held: list[Any] = []

    def hold_the_first(route: Any) -> None:  # the first call answers only after the second one
        if held:
            route.continue_()
        else:
            held.append(route)

    page.route("**/api/patient*", hold_the_first)
    page.goto(patient_server + "/")
    page.wait_for_selector("#card dl")
    page.set_input_files("#files", [str(c) for c in cells[:3]])
    expect(page.locator(".result")).to_have_count(3)
    page.wait_for_function("() => document.querySelector('#status').textContent.startsWith('Calling')")
    assert len(held) == 1
    page.set_input_files("#files", [str(c) for c in cells[3:]])
    expect(page.locator(".result[data-label]")).to_have_count(n, timeout=60_000)
    expect(page.locator("#status")).to_have_text(f"{n} of {n} cell(s) used")
    held[0].continue_()  # the superseded call answers now
    expect(page.locator("#clear")).to_be_enabled(timeout=60_000)  # nothing in flight any more
    expect(page.locator("#status")).to_have_text(f"{n} of {n} cell(s) used")
    assert page.locator(".result").count() == n
    shown = [page.locator(".result .thumb").nth(i).get_attribute("alt") for i in range(n)]
    assert shown == [c.name for c in cells]  # the order chosen
    assert f"{n} cell(s) used" in page.inner_text("#patient")
    got = downloaded_csv(page, tmp_path / "cells.csv")
    assert [r["file"] for r in got] == [c.name for c in cells]  # no duplicates, the order chosen
    for r in got:
        assert not r["contribution"].startswith("'")
        float(r["contribution"])  # a number, negative ones too
    assert problems == []
    page.close()


@pytest.fixture(scope="module")
def classical_server(classical_bundle: Path) -> Iterator[str]:  # noqa: F811
    with serving(classical_bundle, timeout=300) as running:
        yield running.url


def test_a_figure_that_cannot_be_computed_shows_na_not_null(browser: Any, classical_server: str,  # noqa: F811
                                                            data: Path, tmp_path: Path) -> None:
    """A black 1x1 image has no nucleus: its handcrafted features and unfamiliarity are not numbers (null in
    the JSON); the page says "n/a" for them."""
    import numpy as np
    from PIL import Image
    from playwright.sync_api import expect

    Image.fromarray(np.zeros((1, 1, 3), np.uint8)).save(tmp_path / "dot.png")
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.goto(classical_server + "/")
    page.wait_for_selector("#card dl")
    cell = sorted((data / "cnmc_cells" / "all").glob("*.png"))[0]
    page.set_input_files("#files", [str(tmp_path / "dot.png"), str(cell)])
    result = page.locator(".result[data-label]")
    expect(result).to_have_count(2, timeout=60_000)
    text = result.nth(0).inner_text()
    assert "unfamiliarity n/a" in text and "null" not in text
    # a real cell's features, as changes in the log-odds of the call (probabilities saturate)
    features = result.nth(1).locator(".features li").all_inner_texts()
    assert features and all(re.search(r": [+−]\d+\.\d\d log-odds (towards|against) the call$", f)
                            for f in features), features
    page.close()


def test_the_page_fits_a_phone_and_keeps_one_focus_stop_for_the_drop_zone(browser: Any, server: str,  # noqa: F811
                                                                          data: Path) -> None:
    from playwright.sync_api import expect

    images = sample_images(data)
    page = browser.new_page(viewport={"width": 375, "height": 800})
    page.goto(server + "/")
    page.wait_for_selector("#card dl")
    page.set_input_files("#files", [str(images["png"])])
    expect(page.locator(".result[data-label]")).to_have_count(1, timeout=60_000)
    assert page.evaluate("document.documentElement.scrollWidth") <= 375  # no sideways scrolling
    widths = [b["width"] for b in (page.locator(".bars .bar").nth(i).bounding_box()
                                   for i in range(page.locator(".bars .bar").count())) if b]
    assert widths and min(widths) >= 40  # the bars are drawn, not squeezed to nothing
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.id") == "drop"
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.id") != "files"  # no second, invisible stop
    page.focus("#clear")
    page.keyboard.press("Enter")
    assert page.evaluate("document.activeElement.id") == "drop"  # not lost to the body
    page.close()
