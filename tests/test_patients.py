"""Patient-level diagnosis on real DeepAPL cells: bags, every registered method, the nested patient CV,
the patient bundle (round trip, diagnose, PatientCall) and its ONNX export."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from leukoscope.bundle import load_bundle
from leukoscope.data.readers import read
from leukoscope.errors import BundleError, DataError, LeakageError
from leukoscope.models.patient.methods import get_method
from leukoscope.models.patient.scorers import load_scorer
from leukoscope.models.registry import list_models
from leukoscope.patients.bags import load_bags
from leukoscope.patients.protocol import _leak_check, cells_of, figures, run_cv
from patients_support import FEATURES, TRUNCATED, bags, cohort, run_dir  # noqa: F401

METHODS = list_models(family="patient")


def test_every_method_is_registered() -> None:
    assert METHODS == ["attention-mil", "cell-logodds", "composition", "mean-embedding"]


def test_bags_hold_signed_and_unsigned_cells_once(bags) -> None:  # noqa: F811
    cells = bags.cells
    assert len(bags.subjects) == 24 and bags.y.sum() == 12 and bags.positive == "APL"
    assert (cells["cell_type"] == "").any() and (cells["cell_type"] != "").any()
    assert not cells.duplicated(["subject", "sha1"]).any()
    assert str(TRUNCATED) in " ".join(p for p, _ in bags.skipped)  # counted, not fatal
    assert len(bags.X) == len(cells) and np.isfinite(bags.X).all()


@pytest.mark.parametrize("name", METHODS)
def test_every_method_fits_scores_and_round_trips(bags, name: str) -> None:  # noqa: F811
    method = get_method(name)
    train, test = np.arange(0, 24, 2), np.arange(1, 24, 2)  # alternate patients: both classes each side
    scorer = method.fit(cells_of(bags, train), method.grid[:1])[method.grid[0]]
    held = cells_of(bags, test)
    d = scorer.decisions(held.X, held.types, held.patient, len(test))
    assert d.shape == (12,) and np.isfinite(d).all() and d.std() > 0
    s, w = scorer.bag(held.X[held.patient == 0], held.types[held.patient == 0])
    assert np.isclose(np.nan_to_num(s) @ w, d[0]) and np.isclose(w.sum(), 1)  # decision = weighted cells
    again = load_scorer(scorer.spec(), scorer.tensors())
    assert np.allclose(again.decisions(held.X, held.types, held.patient, len(test)), d)


def test_no_patient_is_on_two_sides(bags) -> None:  # noqa: F811
    run = run_cv(get_method("mean-embedding"), bags, folds=3, repeats=2)
    assert (run.fold >= 0).all()  # every patient held out once per repeat
    for r in range(2):
        per_cell = pd.DataFrame({"group": bags.cells["subject"], "fold": run.fold[r][bags.patient]})
        assert per_cell.groupby("group")["fold"].nunique().max() == 1
    with pytest.raises(LeakageError):  # the check the CV runs refuses a patient split across sides
        split = bags.subset(np.arange(24))
        split.cells.loc[split.cells.index[0], "subject"] = bags.subjects[1]
        _leak_check(split, np.array([0]))


def test_short_patient_cv_beats_chance(bags) -> None:  # noqa: F811
    # 12 v 12 patients: the AUC of a random score has sd ~0.12 (Mann-Whitney), so 0.75 is 2 sd above 0.5
    figs = figures(bags, run_cv(get_method("mean-embedding"), bags, folds=3, repeats=2))
    assert figs["roc_auc"] > 0.75, figs["roc_auc"]
    lo, hi = figs["roc_auc_ci95"]
    assert lo <= figs["roc_auc"] <= hi
    assert 0 <= figs["sensitivity"] <= 1 and 0 <= figs["specificity"] <= 1
    assert figs["cell_roc_auc"] > 0.5 and figs["min_cells"] >= 1


def test_too_few_patients_and_one_class_are_one_line(cohort: Path, bags) -> None:  # noqa: F811
    with pytest.raises(DataError, match="too few patients for 5-fold patient CV: class 'AML' has 3"):
        run_cv(get_method("mean-embedding"), bags.subset(np.r_[0:3, 12:24]), folds=5, repeats=1)
    m = read([cohort])
    with pytest.raises(DataError, match="exactly two classes of patient, found 1: AML"):
        load_bags(m[m["diagnosis"] == "AML"], "diagnosis", features=FEATURES)
    with pytest.raises(DataError, match="no column 'stage'"):
        load_bags(m, "stage", features=FEATURES)
    with pytest.raises(DataError, match="--positive 'CML' is not a value of column 'diagnosis'"):
        load_bags(m, "diagnosis", positive="CML", features=FEATURES)


def _cells_of(cohort: Path, subject: str) -> list[Path]:  # noqa: F811
    return sorted((cohort / "Data" / "All" / subject).rglob("*.jpg"))


def test_bundle_round_trip_and_diagnose(run_dir: Path, cohort: Path, bags) -> None:  # noqa: F811
    from leukoscope.bundle.patient import PatientBundle
    from leukoscope.patients.train import fit_bundle

    b = load_bundle(run_dir / "bundle")
    assert isinstance(b, PatientBundle) and b.family == "patient"
    scorer, head, config = fit_bundle(bags, "mean-embedding")
    fresh = PatientBundle(run_dir / "bundle", {**config, "min_cells": b.min_cells,
                                               "unfamiliar": b.config["unfamiliar"]}, scorer, head)
    paths = _cells_of(cohort, "Patient_24")
    call, again = b.diagnose(paths, "Patient_24"), fresh.diagnose(paths, "Patient_24")
    assert call.probability == pytest.approx(again.probability, abs=1e-9)
    assert [c.path for c in call.cells] == [c.path for c in again.cells]
    assert np.allclose([c.contribution for c in call.cells], [c.contribution for c in again.cells])
    assert call.subject == "Patient_24" and call.positive == "APL"
    assert (call.call in ("AML", "APL")) != call.too_few  # too few once unfamiliar cells are left out
    assert call.interval[0] <= call.probability <= call.interval[1]
    assert [reason for _, reason in call.skipped] == [
        "cannot decode image (image file is truncated (15 bytes not processed))"]
    assert len(call.cells) == len(paths) - 1 and call.cells_used + call.cells_unfamiliar == len(call.cells)
    logodds = np.log(call.probability / (1 - call.probability))
    assert sum(c.contribution for c in call.cells) == pytest.approx(logodds, abs=1e-6)
    assert all(c.cell_type in b.cell_types for c in call.cells)
    assert json.loads(call.to_json())["cells_used"] == call.cells_used
    probs = b.predict_proba([np.zeros((40, 40, 3), np.uint8)] * 2)  # the one bundle contract per cell
    assert probs.shape == (2, 2) and np.allclose(probs.sum(axis=1), 1)


def test_diagnose_says_too_few_and_skips_copies_and_overviews(run_dir: Path, cohort: Path,  # noqa: F811
                                                              data: Path) -> None:
    b = load_bundle(run_dir / "bundle")
    one = _cells_of(cohort, "Patient_00")[:1]
    overview = data / "deepapl" / "Data" / "All" / "Patient_00" / "Unsigned slides" / "10027293117_001.jpg"
    call = b.diagnose(one + one + [overview], "Patient_00")
    assert call.cells_used == 1 and call.skipped[0][1] == f"byte copy of {one[0]}"
    assert call.skipped[1] == (str(overview), "whole-field overview (2920x2960), not a cell")
    b.min_cells = 2
    assert b.diagnose(one).too_few and b.diagnose(one).call is None


def test_tampered_weights_are_one_line(run_dir: Path, tmp_path: Path) -> None:  # noqa: F811
    import shutil

    from safetensors.numpy import load_file, save_file

    copy = tmp_path / "bundle"
    shutil.copytree(run_dir / "bundle", copy)
    weights = copy / "patient.safetensors"
    t = load_file(str(weights))
    save_file({**t, "aggregator.coef": t["aggregator.coef"][:-1]}, str(weights))
    with pytest.raises(BundleError, match="tensor 'scale' has shape"):
        load_bundle(copy)
    save_file({**t, "celltype.coef": np.full_like(t["celltype.coef"], np.inf)}, str(weights))
    with pytest.raises(BundleError, match="tensor 'coef' holds NaN or infinite values"):
        load_bundle(copy)
    save_file(t, str(weights))
    cfg = json.loads((copy / "config.json").read_text())
    (copy / "config.json").write_text(json.dumps({**cfg, "platt": "oops"}))
    with pytest.raises(BundleError, match="platt must be two finite numbers"):
        load_bundle(copy)


def test_min_cells_needs_every_larger_count_close_to_all_cells() -> None:
    from leukoscope.patients.protocol import min_cells

    assert min_cells({1: 0.70, 2: 0.88, 4: 0.84, 8: 0.90, 16: 0.91}, 0.92) == 8  # 2 passes, 4 does not
    assert min_cells({1: 0.50, 16: 0.60}, 0.92) == 16


def test_views_average_the_embedding_over_mirrors(bags) -> None:  # noqa: F811
    from leukoscope.data.images import load_rgb
    from leukoscope.errors import ConfigError
    from leukoscope.features import get_extractor

    img = load_rgb(bags.cells["path"].iloc[0])
    one, two = get_extractor("deep", input_size=64), get_extractor("deep", input_size=64, views=2)
    assert "views" not in one.params() and two.params()["views"] == 2  # old cache keys unchanged
    expected = (one.compute([img]) + one.compute([np.ascontiguousarray(img[:, ::-1])])) / 2
    assert np.allclose(two.compute([img]), expected, atol=1e-5)
    with pytest.raises(ConfigError, match="views must be 1..8"):
        get_extractor("deep", views=9)
