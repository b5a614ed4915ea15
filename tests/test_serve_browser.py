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

    with page.expect_download() as dl:
        page.click("#csv")
    saved = tmp_path / "results.csv"
    dl.value.save_as(saved)
    rows = list(csv.DictReader(saved.open(newline="")))
    assert [r["file"] for r in rows] == [p.name for p in dropped] + ["notes.png"]
    assert list(rows[0])[:3] == ["file", "subject", "predicted"]  # predict's CSV columns (file for path)
    assert rows[0]["predicted"] in ("all", "hem") and rows[3]["error"] and not rows[0]["error"]
    assert abs(float(rows[0]["p_all"]) + float(rows[0]["p_hem"]) - 1) < 1e-4
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
    with page.expect_download() as dl:
        page.click("#csv")
    saved = tmp_path / "cells.csv"
    dl.value.save_as(saved)
    got = list(csv.DictReader(saved.open(newline="")))
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
