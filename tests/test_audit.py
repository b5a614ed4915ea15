"""Data audit on real cells: planted copies are found, distinct cells are left alone, leaks are reported."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from typer.testing import CliRunner

from leukoscope.audit import EMBED_THRESHOLD, THRESHOLD, AuditResult, audit, dedupe_groups, write_audit
from leukoscope.cli.verbs import app
from leukoscope.data.images import load_rgb
from leukoscope.data.readers import read, read_csv_manifest, subject_from_name
from leukoscope.data.splits import read_split, train_val_test, write_split
from leukoscope.features import extract

runner = CliRunner()


def _crop(img: np.ndarray, seed: int) -> np.ndarray:
    """Remove 2-5 % of the side from each edge (a light, uneven crop)."""
    h, w = img.shape[:2]
    t, left, b, r = np.random.default_rng(seed).integers(int(0.02 * h), int(0.05 * h) + 1, 4)
    return img[t:h - b, left:w - r]


#: How a copy is made: a transform of the pixels and the format it is saved in.
PLANTS: dict[str, tuple[Callable[[np.ndarray, int], np.ndarray], str]] = {
    "flip": (lambda img, _: img[:, ::-1], ".png"),
    "rot90": (lambda img, _: np.rot90(img), ".png"),
    "jpeg85": (lambda img, _: img, ".jpg"),
    "png": (lambda img, _: img, ".png"),  # BMP -> PNG for the C-NMC cells
    "crop": (_crop, ".png"),
}


def _sources(data: Path) -> list[tuple[Path, str]]:
    """36 distinct real cells with labels: 12 C-NMC BMPs, 12 ALL-IDB2 TIFFs, 12 smear JPEGs."""
    cnmc = sorted((data / "cnmc_sample/C-NMC_Leukemia/training_data/fold_1").rglob("*.bmp"))
    allidb = [data / f"allidb2/Im{i:03d}_1.tif" for i in range(1, 13)]
    aria = sorted((data / "aria_all").rglob("*.jpg"))[::100]
    return ([(p, p.parent.name) for p in cnmc] + [(p, "all") for p in allidb]
            + [(p, p.parent.name) for p in aria])


def _write_csv(rows: list[dict], path: Path) -> Path:
    pd.DataFrame(rows, columns=["path", "label", "subject"]).to_csv(path, index=False)
    return path


@pytest.fixture(scope="module")
def planted(data: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The 36 cells plus one copy each (cycling through PLANTS); the last copy has a wrong label."""
    out = tmp_path_factory.mktemp("planted")
    rows, copies = [], []
    sources = _sources(data)
    for i, (src, label) in enumerate(sources):
        kind = list(PLANTS)[i % len(PLANTS)]
        fn, suffix = PLANTS[kind]
        dst = out / f"copy{i:02d}_{kind}{suffix}"
        Image.fromarray(np.ascontiguousarray(fn(load_rgb(src), i))).save(dst, quality=85)
        subject = subject_from_name(src.name)
        rows.append(dict(path=str(src), label=label, subject=subject))
        conflict = i == len(sources) - 1
        rows.append(dict(path=str(dst), label="hem" if conflict else label, subject=None))
        copies.append((str(src), str(dst.resolve()), kind))
    csv = _write_csv(rows, out / "manifest.csv")
    m = read_csv_manifest(csv)
    return {"csv": csv, "manifest": m, "copies": copies, "result": audit(m), "out": out}


def _pairs(result: AuditResult) -> set[frozenset[str]]:
    m = result.manifest
    return {frozenset((m["path"].iloc[a], m["path"].iloc[b])) for a, b in zip(result.pairs["a"],
                                                                              result.pairs["b"], strict=True)}


def test_distinct_real_cells_have_no_near_duplicates(data: Path, tmp_path: Path) -> None:
    paths = [str(p) for p, _ in _sources(data)]
    paths += [str(p) for p in sorted((data / "cnmc_cells").rglob("*.png"))]
    csv = _write_csv([dict(path=p, label="x", subject=None) for p in paths], tmp_path / "m.csv")
    result = audit(read_csv_manifest(csv))
    assert len(result.manifest) == len(paths) == 47
    assert result.pairs.empty, result.pair_records()
    assert result.summary()["clusters"] == 0


def test_planted_copies_are_found(planted: dict) -> None:
    found = _pairs(planted["result"])
    hits = {kind: [] for kind in PLANTS}
    for src, dst, kind in planted["copies"]:
        hits[kind].append(frozenset((str(Path(src).resolve()), dst)) in found)
    rate = sum(map(sum, hits.values())) / len(planted["copies"])
    assert rate >= 0.95, {k: f"{sum(v)}/{len(v)}" for k, v in hits.items()}
    assert all(any(v) for v in hits.values())  # every kind of copy is caught at least once
    # nothing but the planted pairs: distinct cells never join a cluster
    expected = {frozenset((str(Path(s).resolve()), d)) for s, d, _ in planted["copies"]}
    assert found <= expected
    kinds = {frozenset((r["a"]["path"], r["b"]["path"])): r["kind"] for r in planted["result"].pair_records()}
    png_from_bmp = [frozenset((str(Path(s).resolve()), d)) for s, d, k in planted["copies"]
                    if k == "png" and s.endswith(".bmp")]
    assert png_from_bmp and all(kinds.get(p) == "exact" for p in png_from_bmp)  # same pixels, new format
    assert all(THRESHOLD <= r["similarity"] <= 1.0 for r in planted["result"].pair_records()
               if r["kind"] == "near")


def test_label_conflict_is_reported(planted: dict) -> None:
    result = planted["result"]
    conflicts = [r for r in result.pair_records() if r["label_conflict"]]
    src, dst, _ = planted["copies"][-1]
    assert [frozenset((r["a"]["path"], r["b"]["path"])) for r in conflicts] == [
        frozenset((str(Path(src).resolve()), dst))]
    assert result.summary()["label_conflicts"] == 1
    assert len(result.label_conflicts()) == 1


def test_cross_split_copy_is_leakage(planted: dict) -> None:
    m = planted["manifest"].copy()
    src, dst, _ = planted["copies"][3]
    m["side"] = np.where(m["path"] == dst, "test", "train")
    keep = m["path"].isin([str(Path(src).resolve()), dst]) | (m.index < 6)
    result = audit(m[keep], m)
    info = result.summary()
    assert info["sides_from"] == "split (side)"
    assert info["leaking_clusters"] == 1
    assert info["side_pairs"] == {"test/train": {"pairs": 1, "clusters": 1}}
    leaks = [r for r in result.pair_records() if r["cross_side"]]
    assert len(leaks) == 1 and {leaks[0]["a"]["side"], leaks[0]["b"]["side"]} == {"train", "test"}


def test_dedupe_groups_keeps_clusters_on_one_side(planted: dict) -> None:
    m = planted["manifest"]
    merged_m, merged = dedupe_groups(m, result=planted["result"])
    assert merged == len(planted["result"].clusters()) >= 35  # every cluster joined two groups
    clusters = planted["result"].manifest.set_index("path")["cluster"]
    for seed in range(3):
        s = train_val_test(merged_m, val=0.2, test=0.2, seed=seed)
        sides = s.assign(cluster=s["path"].map(clusters)).query("cluster >= 0")
        assert sides.groupby("cluster")["side"].nunique().max() == 1
    # without --dedupe the copies (no subject ids) are split apart at least once
    leaky = train_val_test(m, val=0.2, test=0.2, seed=0)
    straddle = leaky.assign(cluster=leaky["path"].map(clusters)).query("cluster >= 0")
    assert straddle.groupby("cluster")["side"].nunique().max() > 1


def test_report_files(planted: dict, tmp_path: Path) -> None:
    json_path, html_path = write_audit(planted["result"], tmp_path / "report")
    data = json.loads(json_path.read_text())
    assert data["summary"] == json.loads(json.dumps(planted["result"].summary()))
    assert len(data["pairs"]) == len(planted["result"].pairs) and len(data["clusters"]) >= 35
    html = html_path.read_text()
    assert html.count("data:image/png;base64,") >= 2 * 35 and "label conflict" in html
    assert "http://" not in html and "https://" not in html  # self-contained


def _small_set(planted: dict, tmp_path: Path) -> tuple[Path, Path]:
    """Three cells and a copy of the first, with a split that puts the copy on the test side."""
    src, dst, _ = planted["copies"][0]
    others = [c[0] for c in planted["copies"][1:4]]
    rows = [dict(path=p, label="all", subject=None) for p in [src, dst, *others]]
    rows[2]["label"] = rows[3]["label"] = "hem"
    csv = _write_csv(rows, tmp_path / "small.csv")
    m = read([csv])
    m["side"] = np.where(m["path"] == dst, "test", "train")
    split = tmp_path / "split.csv"
    write_split(m, split)
    return csv, split


def test_cli_fail_on_leak(planted: dict, tmp_path: Path) -> None:
    csv, split = _small_set(planted, tmp_path)
    ok = runner.invoke(app, ["data", "audit", str(csv), "--split", str(split), "--out", str(tmp_path / "a")])
    assert ok.exit_code == 0, ok.output
    assert (tmp_path / "a/audit.html").is_file()
    assert json.loads((tmp_path / "a/audit.json").read_text())["summary"]["leaking_clusters"] == 1
    bad = runner.invoke(app, ["data", "audit", str(csv), "--split", str(split), "--out", str(tmp_path / "b"),
                              "--fail-on-leak"])
    assert bad.exit_code == 1
    assert "straddle" in bad.output and "Traceback" not in bad.output
    clean = runner.invoke(app, ["data", "audit", str(csv), "--out", str(tmp_path / "c"), "--fail-on-leak"])
    assert clean.exit_code == 0, clean.output  # no sides, so nothing can leak
    wrong = runner.invoke(app, ["data", "audit", str(csv), "--out", str(tmp_path / "d"), "--threshold", "2"])
    assert wrong.exit_code == 1 and "--threshold" in wrong.output


def test_cli_split_dedupe(planted: dict, tmp_path: Path) -> None:
    csv, _ = _small_set(planted, tmp_path)
    out = tmp_path / "split.csv"
    r = runner.invoke(app, ["data", "split", str(csv), "--k", "2", "--dedupe", "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert "1 duplicate cluster(s) merged" in r.output
    s = read_split(out)
    src, dst, _ = planted["copies"][0]
    fold = dict(zip(s["path"], s["fold"], strict=True))
    assert fold[str(Path(src).resolve())] == fold[dst]


def test_cli_defaults_match_library() -> None:
    from leukoscope.cli import audit as cli_audit

    assert (cli_audit.THRESHOLD, cli_audit.EMBED_THRESHOLD) == (THRESHOLD, EMBED_THRESHOLD)


@pytest.mark.slow
def test_embeddings_find_the_same_copies(planted: dict) -> None:
    """Deep-embedding neighbours (opt-in) run end to end and agree with the pixel-level audit."""
    m = planted["manifest"].iloc[:12]
    result = audit(m, embeddings=extract(m, "deep")[0])
    assert result.summary()["embeddings"] is True
    assert len(result.clusters()) == 6
    assert set(result.pairs["kind"]) <= {"exact", "near", "embedding"}


def test_cnmc_official_folds_share_cells(data: Path) -> None:
    """Real finding: C-NMC's training folds hold the same cells under two subject ids."""
    result = audit(read([data / "cnmc_sample"]))
    info = result.summary()
    assert info["sides_from"] == "the data sets' own partition"
    assert info["leaking_clusters"] >= 1 and info["cross_group_clusters"] >= 1
    pairs = {frozenset(Path(r[k]["path"]).name for k in ("a", "b")): r for r in result.pair_records()}
    h6_h2 = pairs[frozenset(("UID_H6_1_1_hem.bmp", "UID_H2_1_1_hem.bmp"))]
    assert h6_h2["cross_side"]
    assert {h6_h2["a"]["side"], h6_h2["b"]["side"]} == {"train fold_0", "train fold_2"}


def test_unreadable_images_are_skipped_and_listed(planted: dict, tmp_path: Path) -> None:
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    src, dst, _ = planted["copies"][1]
    rows = [dict(path=p, label="all", subject=None) for p in (src, dst, str(bad))]
    csv = _write_csv(rows, tmp_path / "m.csv")
    result = audit(read_csv_manifest(csv))
    assert [p for p, _ in result.skipped] == [str(bad.resolve())]
    assert len(result.manifest) == 2 and len(result.clusters()) == 1
    r = runner.invoke(app, ["data", "audit", str(csv), "--out", str(tmp_path / "out")])
    assert r.exit_code == 0 and "skipped" in r.output and "broken.png" in r.output


def test_long_thin_image_is_a_counted_skip_in_small_memory(data: Path, tmp_path: Path) -> None:
    """A 3 KB PNG of 100000x10 pixels once made the audit pad a 74.5 GiB square."""
    import resource

    cells = tmp_path / "cells" / "Benign"
    cells.mkdir(parents=True)
    for f in sorted((data / "aria_all" / "Benign").glob("*.jpg"))[:3]:
        (cells / f.name).write_bytes(f.read_bytes())
    wide = cells / "wide.png"
    Image.new("RGB", (100_000, 10), (200, 30, 90)).save(wide)
    assert wide.stat().st_size < 10_000
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    r = runner.invoke(app, ["data", "audit", str(tmp_path / "cells"), "--out", str(tmp_path / "out")])
    grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert r.exit_code == 0, r.output
    assert "wide.png: 100000x10 pixels exceeds the limit of 64,000,000 once padded square" in r.output
    summary = json.loads((tmp_path / "out" / "audit.json").read_text())["summary"]
    assert (summary["images"], summary["skipped"]) == (3, 1)
    assert grown_mib < 300, f"peak memory grew by {grown_mib:.0f} MiB"


@pytest.mark.slow
def test_cli_embeddings_are_computed_by_the_cli(planted: dict, tmp_path: Path) -> None:
    """The CLI computes the deep embeddings and hands them to the audit (which imports no model)."""
    csv, _ = _small_set(planted, tmp_path)
    r = runner.invoke(app, ["data", "audit", str(csv), "--embeddings", "--out", str(tmp_path / "e")])
    assert r.exit_code == 0, r.output
    assert "embedding duplicate pairs" in r.output
    summary = json.loads((tmp_path / "e/audit.json").read_text())["summary"]
    assert summary["embeddings"] is True and summary["clusters"] == 1


def test_a_split_of_relative_paths_still_finds_the_leak(planted: dict, tmp_path: Path) -> None:
    """A split whose paths are relative to the data (no recorded data root, as a hand-made one) is matched
    to the images as train and evaluate match it: the copy across sides is still found; a split naming
    none of the images given is refused in one line."""
    import pandas as pd

    csv, split = _small_set(planted, tmp_path)
    table = pd.read_csv(split)
    root = Path(table["data_root"].iloc[0]) if "data_root" in table else None
    table = table.drop(columns=[c for c in ("data_root",) if c in table])
    if root is not None:  # paths as the split wrote them, relative to the root it no longer names
        assert not Path(table["path"].iloc[0]).is_absolute()
    table.to_csv(bare := tmp_path / "bare.csv", index=False)
    res = runner.invoke(app, ["data", "audit", str(csv), "--split", str(bare), "--out", str(tmp_path / "a"),
                              "--fail-on-leak"])
    assert res.exit_code == 1 and "straddle" in res.output, res.output
    table.assign(path="elsewhere/" + table["path"].astype(str)).to_csv(bare, index=False)
    res = runner.invoke(app, ["data", "audit", str(csv), "--split", str(bare), "--out", str(tmp_path / "b")])
    assert res.exit_code == 1 and "names none of the images given" in " ".join(res.output.split())
    assert "Traceback" not in res.output
