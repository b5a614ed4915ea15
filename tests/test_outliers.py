"""``train --outliers``: the unfamiliarity score taught what a model must not call (outlier exposure).

Real data: PBC's normal cells are the training set, ALL-IDB2's blasts the outliers (its normal cells the
familiar cells of that lab), and DeepAPL's blasts against DeepAPL's cells of PBC's types the test that
matters: another lab's blasts the model never saw, against that lab's familiar cells."""

from __future__ import annotations

import csv
import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score
from typer.testing import CliRunner

from leukoscope.bundle import load_bundle
from leukoscope.cli.verbs import app
from leukoscope.data.images import load_batch
from leukoscope.errors import BundleError
from leukoscope.models.unfamiliar import fit_exposure
from leukoscope.train.outliers import read_outliers
from use_support import _once

runner = CliRunner()
PBC_SUBSET = "0.3"  # 360 cells: seconds for a classical model


def _train(args: list[str], out: Path) -> Path:
    res = runner.invoke(app, ["train", *args, "--out", str(out)])
    assert res.exit_code == 0, res.output
    return out


@pytest.fixture(scope="module")
def runs(data: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two classical PBC runs on the same cells: the default score, and one taught ALL-IDB2's blasts."""
    base = ["train", str(data / "pbc"), "--model", "logistic_regression", "--subset", PBC_SUBSET]

    def run(extra: list[str]) -> Callable[[Path], Path]:
        def make(out: Path) -> Path:
            res = runner.invoke(app, [*base, *extra, "--out", str(out)])
            assert res.exit_code == 0, res.output
            (out / "output.txt").write_text(res.output)
            return out
        return make

    return {"plain": _once("oe-plain", tmp_path_factory, run([])),
            "exposed": _once("oe-exposed", tmp_path_factory,
                             run(["--outliers", str(data / "allidb2"), "--outlier-class", "all"]))}


def _deepapl(data: Path, folders: tuple[str, ...], n: int) -> list[np.ndarray]:
    paths = sorted(p for p in (data / "deepapl" / "Data" / "All").rglob("*.jpg")
                   if p.parent.name in folders and "Signed slides" in p.parts)
    _, images, _ = load_batch([str(paths[i]) for i in np.linspace(0, len(paths) - 1, n).astype(int)])
    return images


KNOWN = ("Lymphocyte", "Monocyte", "Segmented neutrophils", "Band neutrophils", "Eosinophils", "Basophil",
         "Erythroblast", "Myelocyte", "Metamyelocyte", "Promyelocyte", "Giant thrombocyte")


def test_taught_score_tells_another_labs_blasts_from_its_known_cells(runs, data):
    blasts, known = _deepapl(data, ("Blast, no lineage spec",), 80), _deepapl(data, KNOWN, 80)
    y = np.r_[np.ones(len(blasts)), np.zeros(len(known))]
    auc = {}
    for name, run in runs.items():
        bundle = load_bundle(run / "bundle")
        auc[name] = roc_auc_score(y, np.r_[bundle.assess(blasts)[1], bundle.assess(known)[1]])
    # measured: 0.45 with the distance alone (DeepAPL's blasts are no farther from PBC than its other
    # cells), 0.76 taught ALL-IDB2's blasts
    assert auc["exposed"] >= 0.65 and auc["exposed"] >= auc["plain"] + 0.15, auc


def test_outlier_run_records_its_score_sides_and_figures(runs, data, tmp_path):
    run = runs["exposed"]
    config = json.loads((run / "bundle" / "config.json").read_text())
    u = config["unfamiliar"]
    assert u["method"] == "exposure" and u["standardise"] is True
    assert set(u["exposure"]) == {"offset", "centre", "scale", "backstop", "backstop_scale", "C"}
    figures = json.loads((run / "bundle" / "metrics.json").read_text())["outliers"]
    cells = figures["cells"]
    # ALL-IDB2's 130 blasts (1) and 130 normal cells (0)
    assert sum(cells["outlier"].values()) == 130 and sum(cells["familiar"].values()) == 130
    assert figures["test_outliers_flagged"] >= 0.8 and figures["test_auc"] >= 0.9, figures
    assert "of held-out outliers flagged" in (run / "output.txt").read_text()
    card = (run / "bundle" / "MODEL_CARD.md").read_text()
    n = cells["outlier"]
    assert (f"- unfamiliarity score: exposure (outlier exposure: taught 130 cells of class 'all' of "
            f"{data / 'allidb2'} ({n['train']} learnt, {n['val']} to choose its regularisation, {n['test']} "
            f"held out), 130 others of it as familiar; 100.0% of the held-out ones flagged, and ") in card
    assert 0 <= figures["test_others_flagged"] <= 1  # ALL-IDB2's own normal cells: did it learn the lab?

    with open(run / "outliers.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert {r["side"] for r in rows} == {"train", "val", "test"} and len(rows) == 260
    held = [r["path"] for r in rows if r["side"] == "test" and r["label"] == "outlier"]
    assert all(Path(p).name.endswith("_1.tif") for p in held) and len(held) == cells["outlier"]["test"]
    out = tmp_path / "p.csv"
    res = runner.invoke(app, ["predict", str(run / "bundle"), *held, "--out", str(out)])
    assert res.exit_code == 0, res.output
    with open(out, newline="") as f:
        flagged = [r["unfamiliar"] == "true" for r in csv.DictReader(f)]
    assert np.mean(flagged) == pytest.approx(figures["test_outliers_flagged"])
    assert runner.invoke(app, ["verify", str(run / "bundle")]).exit_code == 0


def test_a_tampered_exposure_setting_is_refused_at_load(runs, tmp_path):
    copy = tmp_path / "b"
    shutil.copytree(runs["exposed"] / "bundle", copy)
    config = json.loads((copy / "config.json").read_text())
    for bad in ({**config["unfamiliar"]["exposure"], "scale": 0.0}, {"offset": 1.0}, "x"):
        (copy / "config.json").write_text(json.dumps({**config, "unfamiliar": {**config["unfamiliar"],
                                                                               "exposure": bad}}))
        with pytest.raises(BundleError, match="unfamiliar.exposure must be"):
            load_bundle(copy)


def test_network_run_learns_outliers_and_counts_an_unreadable_one(data, tmp_path):
    outliers = tmp_path / "blasts"
    outliers.mkdir()
    for p in sorted(data.glob("allidb2/*_1.tif"))[:30]:
        (outliers / p.name).symlink_to(p)
    (outliers / "Im999_1.tif").write_bytes(b"not an image")
    out = _train([str(data / "pbc"), "--model", "leukonet", "--img-size", "32", "--epochs", "1",
                  "--subset", "0.2", "--outliers", str(outliers)], tmp_path / "run")
    bundle = load_bundle(out / "bundle")
    assert bundle.unfamiliar is not None and bundle.unfamiliar.method == "exposure"
    assert bundle.unfamiliar.tensors["direction"].shape == (1, bundle.unfamiliar.tensors["means"].shape[1])
    figures = bundle.metrics()["outliers"]
    assert sum(figures["cells"]["outlier"].values()) == 30 and figures["class"] is None
    skipped = json.loads((out / "skipped.json").read_text())
    assert any(str(outliers / "Im999_1.tif") in json.dumps(s) for s in skipped)


@pytest.mark.parametrize(("extra", "message"), [
    (["--outliers", "{allidb2}", "--outlier-class", "blast"], "--outlier-class 'blast' is not a class of"),
    (["--outlier-class", "all"], "--outlier-class needs --outliers DATA"),
    (["--outliers", "{pbc}/basophil"], "are also training cells"),
    (["--outliers", "{copies}"], "are byte-identical copies of training cells"),
    (["--outliers", "{few}"], "1 usable outlier cell(s) in 1 group(s) (1 train, 0 val, 0 test); at least 10"),
    (["--outliers", "{allidb2}", "--cv", "3"], "--outliers fits the unfamiliarity score on one split"),
    (["--outliers", "{missing}"], "not found"),
    (["--outliers", ""], "--outliers: empty path"),
    (["--outliers", "{allidb2}", "--target", "diagnosis"], "--outliers teaches a cell-level model's score"),
])
def test_bad_outlier_settings_are_one_line_errors(data, tmp_path, extra, message):
    few = tmp_path / "few"
    few.mkdir()
    (few / "Im001_1.tif").symlink_to(data / "allidb2" / "Im001_1.tif")
    copies = tmp_path / "copies"
    copies.mkdir()
    for p in sorted((data / "pbc" / "basophil").iterdir())[:12]:  # at another path: the same cells
        shutil.copy(p, copies / p.name)
    where = {"allidb2": data / "allidb2", "pbc": data / "pbc", "few": few, "missing": tmp_path / "nope",
             "copies": copies}
    args = [a.format(**where) for a in extra]
    res = runner.invoke(app, ["train", str(data / "pbc"), "--model", "logistic_regression", "--subset", "0.2",
                              *args, "--out", str(tmp_path / "run")])
    assert res.exit_code != 0 and message in res.output, res.output
    assert "Traceback" not in res.output


def test_backstop_flags_a_cell_unlike_both_the_training_cells_and_the_outliers():
    """The regression only looks along one direction; the distance still flags what lies elsewhere."""
    rng = np.random.default_rng(0)
    d = 16
    centre = np.eye(d)[0] * 4

    def cells(n: int, mean: np.ndarray) -> np.ndarray:
        return rng.normal(size=(n, d)) + mean

    train, val = cells(200, centre), cells(100, centre)
    y = np.zeros(200, int)
    outliers = {s: cells(60, centre + np.eye(d)[1] * 6) for s in ("train", "val")}
    s = fit_exposure(train, y, val, np.zeros((100, 1)), 1.0, outliers, {})
    assert np.mean(s.flag(s.score(val, np.zeros((100, 1))))) == pytest.approx(0.05, abs=0.02)
    new_outliers = cells(100, centre + np.eye(d)[1] * 6)
    assert np.mean(s.flag(s.score(new_outliers, np.zeros((100, 1))))) >= 0.9
    elsewhere = cells(100, centre + np.eye(d)[2] * 20)  # orthogonal to the outliers' direction
    odds = s._embed(elsewhere) @ s.tensors["direction"][0] + s.exposure["offset"]
    regression = (odds - s.exposure["centre"]) / s.exposure["scale"]
    assert np.mean(regression > s.threshold) <= 0.1  # the regression alone would let them through
    assert np.mean(s.flag(s.score(elsewhere, np.zeros((100, 1))))) >= 0.9


def _pbc(data: Path) -> pd.DataFrame:
    from leukoscope.data.readers import read

    return read([data / "pbc"])


def test_a_cohort_keeps_its_patients_whole_and_its_unlabelled_cells_and_overviews_out(data):
    cohort = data / "deepapl"
    blasts = read_outliers(str(cohort), "Blast, no lineage spec", _pbc(data), 0)
    assert not blasts["path"].str.contains("Unsigned slides").any()  # no type: neither outlier nor familiar
    assert set(blasts["label"]) == {"outlier", "familiar"}
    every = read_outliers(str(cohort), None, _pbc(data), 0)
    assert every["path"].str.contains("Unsigned slides").any()  # every cell of the set, typed or not
    for m in (blasts, every):
        assert m.groupby("group")["side"].nunique().max() == 1  # no patient on two sides
        assert m["group"].str.startswith("subject:").all()
    from leukoscope.data.readers import read_with_cohorts

    overviews = set(read_with_cohorts([cohort])[1][0].overviews["path"])
    assert len(overviews) == 6 and not overviews & set(every["path"])  # whole fields are not cells


def test_unusable_outliers_are_refused_before_training(data, tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    for p in sorted(data.glob("allidb2/*_1.tif"))[:4]:
        (bad / p.name).symlink_to(p)
    for i in range(12):
        (bad / f"x{i}.tif").write_bytes(b"version https://git-lfs.github.com/spec/v1\n")  # an LFS pointer
    (bad / "loop1.tif").symlink_to(bad / "loop2.tif")
    (bad / "loop2.tif").symlink_to(bad / "loop1.tif")
    for model in (["logistic_regression"], ["leukonet", "--img-size", "32", "--epochs", "1"]):
        res = runner.invoke(app, ["train", str(data / "pbc"), "--model", *model, "--subset", "0.2",
                                  "--outliers", str(bad), "--out", str(tmp_path / model[0])])
        assert res.exit_code != 0 and "Traceback" not in res.output, res.output
        assert "4 usable outlier cell(s) in 4 group(s)" in res.output
        assert not (tmp_path / model[0] / "checkpoint.safetensors").exists()  # refused before any epoch
        assert not (tmp_path / model[0] / "outliers.csv").exists()


def test_grey_outliers_of_a_classical_model_are_skipped_not_learnt(data, tmp_path):
    from PIL import Image

    mixed = tmp_path / "mixed"
    mixed.mkdir()
    blasts = sorted(data.glob("allidb2/*_1.tif"))
    for p in blasts[:12]:
        (mixed / p.name).symlink_to(p)
    for p in blasts[12:17]:  # grey: the handcrafted features cannot be measured
        Image.open(p).convert("L").save(mixed / f"{p.stem}_grey.png")
    out = _train([str(data / "pbc"), "--model", "logistic_regression", "--subset", "0.2", "--outliers",
                  str(mixed)], tmp_path / "run")
    figures = json.loads((out / "bundle" / "metrics.json").read_text())["outliers"]
    assert sum(figures["cells"]["outlier"].values()) == 12
    skipped = json.loads((out / "skipped.json").read_text())
    assert sum("grey or blank" in s["reason"] for s in skipped) == 5
    with open(out / "outliers.csv", newline="") as f:
        assert not any(r["path"].endswith("_grey.png") for r in csv.DictReader(f))


def test_changed_outliers_are_another_run_and_config_paths_are_where_they_were_given(data, tmp_path,
                                                                                       monkeypatch):
    folder = tmp_path / "blasts"
    folder.mkdir()
    blasts = sorted(data.glob("allidb2/*_1.tif"))
    for p in blasts[:20]:
        (folder / p.name).symlink_to(p)
    base = ["train", str(data / "pbc"), "--model", "logistic_regression", "--subset", "0.2",
            "--out", str(tmp_path / "run")]
    assert runner.invoke(app, [*base, "--outliers", str(folder)]).exit_code == 0
    for p in blasts[20:30]:
        (folder / p.name).symlink_to(p)
    res = runner.invoke(app, [*base, "--outliers", str(folder)])
    assert res.exit_code != 0 and "holds a run on other data" in res.output and "outliers: 20 then, 30 now" \
        in res.output, res.output

    monkeypatch.chdir(tmp_path)
    (tmp_path / "run.yaml").write_text("outliers: blasts\n")
    res = runner.invoke(app, ["train", str(data / "pbc"), "--model", "logistic_regression", "--subset", "0.2",
                              "--config", "run.yaml", "--out", str(tmp_path / "run2")])
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "run2" / "config.json").read_text())["outliers"] == str(folder)
    (tmp_path / "empty.yaml").write_text('outliers: ""\n')
    res = runner.invoke(app, ["train", str(data / "pbc"), "--model", "logistic_regression", "--config",
                              "empty.yaml", "--out", str(tmp_path / "run3")])
    assert res.exit_code != 0 and "--outliers: empty path" in res.output, res.output


def test_what_the_outliers_reader_leaves_out_is_counted(data, tmp_path):
    folder = tmp_path / "cls"
    for label in ("all", "hem"):
        (folder / label).mkdir(parents=True)
        for p in sorted(data.glob(f"allidb2/*_{int(label == 'all')}.tif"))[:15]:
            (folder / label / p.name).symlink_to(p)
    loose = folder / "loose.tif"
    loose.symlink_to(sorted(data.glob("allidb2/*_1.tif"))[20])
    out = _train([str(data / "pbc"), "--model", "logistic_regression", "--subset", "0.2", "--outliers",
                  str(folder), "--outlier-class", "all"], tmp_path / "run")
    skipped = json.loads((out / "skipped.json").read_text())
    assert [s["path"] for s in skipped] == [str(loose)]


@pytest.mark.parametrize("edit", ["no rows", "two rows", "bfloat16", "int64", "huge offset", "other width",
                                  "zero std"])
def test_a_hostile_exposure_score_is_one_line_from_verify_and_predict(runs, data, tmp_path, edit):
    import torch
    from safetensors.numpy import load_file, save_file
    from safetensors.torch import save_file as save_torch

    copy = tmp_path / "b"
    shutil.copytree(runs["exposed"] / "bundle", copy)
    f = copy / "unfamiliar.safetensors"
    t = load_file(str(f))
    d = t["direction"]
    if edit == "no rows":
        save_file({**t, "direction": d[:0]}, str(f))
    elif edit == "two rows":
        save_file({**t, "direction": np.concatenate([0 * d, d])}, str(f))
    elif edit == "int64":
        save_file({**t, "direction": (d * 100).astype(np.int64)}, str(f))
    elif edit == "bfloat16":
        tensors = {k: torch.from_numpy(v) for k, v in t.items()}
        save_torch(tensors | {"direction": tensors["direction"].bfloat16()}, str(f))
    elif edit == "zero std":  # every score NaN: every cell flagged, and verify passed it
        save_file({**t, "std": np.zeros_like(t["std"])}, str(f))
    elif edit == "other width":
        save_file({k: v[..., :10] if k != "precision" else v[:10, :10] for k, v in t.items()}, str(f))
    else:
        config = json.loads((copy / "config.json").read_text())
        (copy / "config.json").write_text(json.dumps(config).replace(
            f'"offset": {json.dumps(config["unfamiliar"]["exposure"]["offset"])}', '"offset": 1' + "0" * 400))
    res = runner.invoke(app, ["verify", str(copy)])
    assert res.exit_code != 0 and "Traceback" not in res.output, res.output
    out = tmp_path / "p.csv"
    cell = str(sorted(data.glob("allidb2/*.tif"))[0])
    res = runner.invoke(app, ["predict", str(copy), cell, "--out", str(out)])
    assert res.exit_code != 0 and "Traceback" not in res.output, res.output
    assert len(res.output.strip().splitlines()) == 1, res.output


def test_outlier_runs_check_their_split_and_out_folder_and_old_records_still_resume(data, tmp_path):
    split = tmp_path / "split.csv"
    assert runner.invoke(app, ["data", "split", str(data / "pbc"), "--out", str(split)]).exit_code == 0
    rows = pd.read_csv(split)
    rows.loc[rows["side"] == "val", "side"] = "train"
    rows.to_csv(tmp_path / "noval.csv", index=False)
    base = ["train", str(data / "pbc"), "--model", "logistic_regression"]
    noval = ["--split", str(tmp_path / "noval.csv"), "--out", str(tmp_path / "noval")]
    res = runner.invoke(app, [*base, *noval, "--outliers", str(data / "allidb2"), "--outlier-class", "all"])
    assert res.exit_code != 0 and "has no validation side, which --outliers" in res.output, res.output
    assert not (tmp_path / "noval" / "bundle").exists()

    folder = tmp_path / "blasts"
    folder.mkdir()
    for p in sorted(data.glob("allidb2/*_1.tif"))[:20]:
        (folder / p.name).symlink_to(p)
    (tmp_path / "run.yaml").write_text(f"outliers: {folder}\n")
    res = runner.invoke(app, [*base, "--subset", "0.2", "--config", str(tmp_path / "run.yaml"),
                              "--out", str(folder / "run")])
    assert res.exit_code != 0 and f"is inside {folder}, which this command reads" in res.output, res.output

    out = _train([str(data / "pbc"), "--model", "logistic_regression", "--subset", "0.2", "--outliers",
                  str(folder)], tmp_path / "run")
    record = json.loads((out / "data.json").read_text())
    assert record["outliers"]["images"] == 20
    del record["outliers"]  # as a run written before outliers were recorded
    (out / "data.json").write_text(json.dumps(record))
    res = runner.invoke(app, [*base, "--subset", "0.2", "--outliers", str(folder), "--out", str(out)])
    assert res.exit_code == 0, res.output  # handed back, not "other data"
