"""What ``train`` and ``benchmark`` are given besides good colour cells: grey images among them, a run's
config.yaml with the class map it recorded, an --out that is a file or cannot be written. Tiny trainings:
15 real PBC cells of three classes, logistic regression (seconds)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import typer
from PIL import Image
from typer.testing import CliRunner, Result

from leukoscope.bundle import load_bundle
from leukoscope.cli.app import guarded
from leukoscope.cli.verbs import app
from link_support import link_files

runner = CliRunner()
CLASSES = ("basophil", "eosinophil", "lymphocyte")


def _cells(data: Path, root: Path, grey: int = 0) -> Path:
    """15 PBC cells per class of ``CLASSES``; the first ``grey`` of each class as a grey PNG instead
    (8-bit L, grey + alpha and 16-bit grey in turn)."""
    for c in CLASSES:
        files = sorted((data / "pbc" / c).glob("*.jpg"))[:15]
        link_files(files[grey:], root / c)
        for i, p in enumerate(files[:grey]):
            rgb = Image.open(p)
            img = {0: rgb.convert("L"), 1: rgb.convert("LA"),
                   2: Image.fromarray(np.asarray(rgb.convert("L"), np.uint16) * 257)}[i % 3]
            img.save(root / c / f"{p.stem}.png")
    return root


def _train(cells: Path, out: Path, *options: str) -> Result:
    return runner.invoke(app, ["train", str(cells), "--model", "logistic_regression", "--min-cells", "0",
                               "--out", str(out), *options])


def _one_line(res: Result, *words: str) -> None:
    """Exit 1 with one ``error:`` line holding ``words``, no traceback."""
    assert res.exit_code == 1, res.output
    assert "Traceback" not in res.output and res.output.count("error:") == 1, res.output
    line = next(x for x in res.output.splitlines() if x.startswith("error:"))
    assert all(w in line for w in words), line


def test_grey_cells_leave_a_bundle_that_loads_and_flags_them(data: Path, tmp_path: Path) -> None:
    """Grey images have no measurable colour features (NaN): the classifier imputes them, the unfamiliarity
    score leaves them out of its fit and threshold (it wrote a NaN threshold the bundle refused)."""
    cells = _cells(data, tmp_path / "cells", grey=2)
    res = _train(cells, tmp_path / "run")
    assert res.exit_code == 0, res.output
    bundle = load_bundle(tmp_path / "run" / "bundle")
    split = bundle.split()
    assert split is not None
    greys = split[split["path"].str.endswith(".png")]
    assert {"train", "val"} <= set(greys["side"])  # both the fit and the threshold saw grey cells
    assert bundle.unfamiliar is not None and math.isfinite(bundle.unfamiliar.threshold)
    _, scores = bundle.assess(list(greys["path"]))
    assert scores is not None and bundle.unfamiliar.flag(scores).all()  # no score, flagged

    res = runner.invoke(app, ["benchmark", str(cells), "--models", "logistic_regression", "--cv", "2",
                              "--min-cells", "0", "--out", str(tmp_path / "lb"), "--save-best",
                              str(tmp_path / "best")])
    assert res.exit_code == 0, res.output
    best = load_bundle(tmp_path / "best")
    assert best.unfamiliar is not None and math.isfinite(best.unfamiliar.threshold)


def test_config_of_a_run_applies_its_class_map(data: Path, tmp_path: Path) -> None:
    """``train --config RUN/config.yaml`` maps the labels with the map that config records (it was kept
    in the new bundle's config but not applied: classes and map disagreed); --class-map wins over it."""
    cells = _cells(data, tmp_path / "cells")
    cmap = tmp_path / "cmap.yaml"
    cmap.write_text("classes:\n  granulocyte: [basophil, eosinophil]\n  lymphocyte:\n")
    assert _train(cells, tmp_path / "r1", "--class-map", str(cmap)).exit_code == 0
    res = runner.invoke(app, ["train", str(cells), "--config", str(tmp_path / "r1" / "config.yaml"),
                              "--out", str(tmp_path / "r2")])
    assert res.exit_code == 0, res.output
    said = " ".join(res.output.split())
    assert f"class map: none given, so the one {tmp_path / 'r1' / 'config.yaml'} records" in said
    config = json.loads((tmp_path / "r2" / "bundle" / "config.json").read_text())
    assert config["classes"] == ["granulocyte", "lymphocyte"] and config["class_map"]["name"] == str(cmap)
    res = runner.invoke(app, ["evaluate", str(tmp_path / "r2" / "bundle"), str(cells), "--out",
                              str(tmp_path / "ev")])
    assert res.exit_code == 0, res.output

    other = tmp_path / "other.yaml"
    other.write_text("classes:\n  eosinophil: [basophil, eosinophil]\n  lymphocyte:\n")
    res = runner.invoke(app, ["train", str(cells), "--config", str(tmp_path / "r1" / "config.yaml"),
                              "--class-map", str(other), "--out", str(tmp_path / "r3")])
    assert res.exit_code == 0, res.output
    assert f"using --class-map {other}" in " ".join(res.output.split())
    config = json.loads((tmp_path / "r3" / "bundle" / "config.json").read_text())
    assert config["classes"] == ["eosinophil", "lymphocyte"] and config["class_map"]["name"] == str(other)


def test_an_out_that_is_a_file_is_one_line(data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                           ) -> None:
    """A file where --out's folder goes: one line, and benchmark says so before its cross-validation."""
    import leukoscope.leaderboard

    def no_work(*args: object, **kwargs: object) -> None:
        raise AssertionError("benchmark ran its cross-validation before refusing --out")

    monkeypatch.setattr(leukoscope.leaderboard, "benchmark", no_work)
    cells = _cells(data, tmp_path / "cells")
    afile = tmp_path / "afile"
    afile.write_text("")
    _one_line(_train(cells, afile), f"--out {afile}: a file, not a folder")
    _one_line(_train(cells, afile / "run"), f"--out {afile / 'run'}: {afile} is a file, not a folder")
    res = runner.invoke(app, ["benchmark", str(cells), "--out", str(afile)])
    _one_line(res, f"--out {afile}: a file, not a folder")
    res = runner.invoke(app, ["tune", str(cells), "--model", "logistic_regression", "--out", str(afile)])
    _one_line(res, f"--out {afile}: a file, not a folder")


def test_an_os_error_is_one_line_naming_the_file(data: Path, tmp_path: Path) -> None:
    """An OSError that escapes a command names its file and the OS's reason; other errors are bugs and
    stay tracebacks."""
    def denied() -> None:
        raise PermissionError(13, "Permission denied", str(tmp_path / "x"))

    def bug() -> None:
        raise KeyError("oops")

    with pytest.raises(typer.Exit) as e:
        guarded(denied)()
    assert e.value.exit_code == 1
    with pytest.raises(KeyError):
        guarded(bug)()
    res = runner.invoke(app, ["data", "split", str(data / "cnmc_sample"), "--out", "/proc/leukoscope.csv"])
    _one_line(res, "/proc/", "No such file or directory")
    afile = tmp_path / "afile"
    afile.write_text("")
    res = runner.invoke(app, ["data", "split", str(data / "cnmc_sample"), "--out", str(afile / "s.csv")])
    _one_line(res, str(afile))


def test_unreadable_images_are_said_by_train_with_one_reason_format(data: Path, tmp_path: Path) -> None:
    """train lists the images it could not use (only skipped.json did), networks and classical alike."""
    cells = _cells(data, tmp_path / "cells")
    bad = cells / CLASSES[0] / "broken.jpg"
    bad.write_text("not an image")
    for model in ("logistic_regression", "leukonet"):
        extra = ["--img-size", "32", "--epochs", "1"] if model == "leukonet" else []
        res = runner.invoke(app, ["train", str(cells), "--model", model, "--min-cells", "0", "--out",
                                  str(tmp_path / model), *extra])
        assert res.exit_code == 0, res.output
        said = " ".join(res.output.split())
        assert f"skipped 1 unreadable image(s): {bad}: not a readable image" in said, said
        record = json.loads((tmp_path / model / "skipped.json").read_text())
        assert record == [{"path": str(bad), "reason": "not a readable image"}]


def test_out_inside_a_folder_the_command_reads_is_refused(data: Path, tmp_path: Path) -> None:
    """A run written into its data set became part of it (its curves.png a class of the next read)."""
    cells = _cells(data, tmp_path / "cells")
    res = _train(cells, cells / "run")
    _one_line(res, f"--out {cells / 'run'} is inside {cells}, which this command reads")
    assert not (cells / "run").exists()


def test_a_network_split_without_a_validation_side_trains_on_its_training_loss(data, tmp_path):
    """Its epochs were scored -loss, never above a new run's best of -1 once the loss passed 1, so no best
    weights were written and the run failed on a checkpoint that did not exist."""
    import pandas as pd

    split = tmp_path / "split.csv"
    assert CliRunner().invoke(app, ["data", "split", str(data / "pbc"), "--out", str(split)]).exit_code == 0
    rows = pd.read_csv(split)
    rows.loc[rows["side"] == "val", "side"] = "train"
    rows.to_csv(split, index=False)
    res = CliRunner().invoke(app, ["train", str(data / "pbc"), "--model", "leukonet", "--img-size", "32",
                                   "--epochs", "2", "--split", str(split), "--out", str(tmp_path / "run")])
    assert res.exit_code == 0, res.output
    history = load_bundle(tmp_path / "run" / "bundle").history()
    assert history is not None and history["train_loss"].iloc[0] > 1 and history["val_loss"].isna().all()


def test_a_broken_link_in_the_data_is_a_counted_skip_with_the_default_dedupe(data, tmp_path):
    """The duplicate check hashed every file unguarded: one broken link stopped train and data split."""
    for cls in ("basophil", "eosinophil"):
        (tmp_path / "cells" / cls).mkdir(parents=True)
        for p in sorted((data / "pbc" / cls).iterdir())[:6]:
            (tmp_path / "cells" / cls / p.name).symlink_to(p)
    (tmp_path / "cells" / "basophil" / "gone.jpg").symlink_to(tmp_path / "nowhere.jpg")
    res = CliRunner().invoke(app, ["train", str(tmp_path / "cells"), "--model", "logistic_regression",
                                   "--out", str(tmp_path / "run")])
    assert res.exit_code == 0, res.output
    skipped = json.loads((tmp_path / "run" / "skipped.json").read_text())  # the link, not its missing target
    assert [s["path"] for s in skipped] == [str(tmp_path / "cells" / "basophil" / "gone.jpg")]
