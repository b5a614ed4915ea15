"""``leukoscope data describe | split | synth`` on the real data and on bad input (one red line, exit 1)."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from typer.testing import CliRunner

from imagefiles import CNMC_CSV, cnmc_copy, png_bytes, truncated_copy
from leukoscope.cli.verbs import app
from leukoscope.data.manifest import IMAGE_LEVEL_WARNING, SYNTHETIC_WARNING

runner = CliRunner()


def run(*args: object) -> tuple[int, str, str]:
    r = runner.invoke(app, [str(a) for a in args])
    if r.exception is not None and not isinstance(r.exception, SystemExit):
        raise r.exception
    return r.exit_code, r.stdout, r.stderr


def describe_json(*paths: Path) -> dict:
    code, out, err = run("data", "describe", *paths, "--json")
    assert code == 0, err
    return json.loads(out)


def _classes(info: dict, split: str) -> dict[str, tuple[int, int]]:
    return {c: (v["images"], v["subjects"]) for c, v in info["source_splits"][split]["classes"].items()}


def test_describe_cnmc_download(data: Path) -> None:
    info = describe_json(data / "cnmc_sample")
    assert info["protocol"] == "subject-grouped" and "warning" not in info
    assert _classes(info, "train") == {"all": (26, 13), "hem": (26, 13)}
    assert _classes(info, "val") == {"all": (1, 1), "hem": (1, 1)}
    assert info["source_splits"]["val"]["classes"]["all"]["subject_ids"] == ["57"]
    assert info["source_splits"]["val"]["classes"]["hem"]["subject_ids"] == ["H49"]
    assert info["source_splits"]["val"]["original_names"] == {
        "1002.bmp": "UID_H49_5_2_hem.bmp", "1005.bmp": "UID_57_6_4_all.bmp"}
    assert "H3" in info["source_splits"]["train"]["classes"]["hem"]["subject_ids"]
    assert info["sizes"] == {"450x450": 54} and info["unreadable"] == []


def test_describe_class_folders_label_in_name_and_four_classes(data: Path) -> None:
    cells = describe_json(data / "cnmc_cells")
    assert _classes(cells, "train") == {"all": (7, 5), "hem": (4, 2)}
    assert cells["modes"] == {"RGB": 11}
    allidb = describe_json(data / "allidb2")
    assert _classes(allidb, "train") == {"all": (130, 0), "hem": (130, 0)}
    assert allidb["protocol"] == "image-level" and allidb["warning"] == IMAGE_LEVEL_WARNING
    assert allidb["sizes"]["257x257"] == 250 and sum(allidb["sizes"].values()) == 260
    aria = describe_json(data / "aria_all")
    assert _classes(aria, "train") == {c: (300, 0) for c in ("Benign", "Early", "Pre", "Pro")}
    assert aria["protocol"] == "image-level" and aria["warning"] == IMAGE_LEVEL_WARNING


def test_describe_table_output(data: Path) -> None:
    code, out, _ = run("data", "describe", data / "cnmc_sample")
    assert code == 0
    assert "cnmc_sample (subject-grouped)" in out and "H49" in out and "450x450" in out


def test_split_two_folders_never_puts_a_subject_on_two_sides(data: Path, tmp_path: Path) -> None:
    out = tmp_path / "s.csv"
    code, stdout, err = run("data", "split", data / "cnmc_sample", data / "cnmc_cells", "--out", out)
    assert code == 0, err
    assert "no group on two sides" in stdout
    s = pd.read_csv(out, dtype={"subject": str})
    assert {"path", "label", "subject", "side"} <= set(s.columns) and len(s) == 65
    both = s.groupby("subject")["dataset"].nunique()
    assert {"1", "3", "H6", "H10"} <= set(both[both == 2].index)
    assert (s.groupby("subject")["side"].nunique() == 1).all()
    assert set(s["side"]) == {"train", "val", "test"}


def test_split_k_fold_and_official(data: Path, tmp_path: Path) -> None:
    code, _, _ = run("data", "split", data / "cnmc_sample", "--k", 3, "--out", tmp_path / "k.csv")
    assert code == 0
    folds = pd.read_csv(tmp_path / "k.csv", dtype={"subject": str})
    assert sorted(folds["fold"].unique()) == [0, 1, 2]
    assert (folds.groupby("subject")["fold"].nunique() == 1).all()
    code, out, _ = run("data", "split", data / "cnmc_sample", "--official", "--out", tmp_path / "o.csv")
    assert code == 0 and "official C-NMC split" in out
    official = pd.read_csv(tmp_path / "o.csv", dtype={"subject": str})
    assert sorted(official.loc[official["side"] == "test", "subject"]) == ["57", "H49"]


def test_split_of_labels_pandas_reads_as_missing_reads_back(data: Path, tmp_path: Path) -> None:
    """Class folders named NA, None, null and nan: the split names them and reads back with them (pandas
    read those words as missing: the split could not be used)."""
    from leukoscope.data.splits import read_split
    from link_support import link_files

    words = ("NA", "None", "null", "nan")
    for word, kind in zip(words, ("basophil", "eosinophil", "lymphocyte", "monocyte"), strict=True):
        link_files(sorted((data / "pbc" / kind).glob("*.jpg"))[:8], tmp_path / "cells" / word)
    code, _, err = run("data", "split", tmp_path / "cells", "--out", tmp_path / "s.csv")
    assert code == 0, err
    back = read_split(tmp_path / "s.csv")
    assert back["label"].value_counts().to_dict() == dict.fromkeys(words, 8)


def test_split_image_level_says_so(data: Path, tmp_path: Path) -> None:
    code, out, _ = run("data", "split", data / "allidb2", "--out", tmp_path / "a.csv")
    assert code == 0
    assert "image-level" in out and "no subject ids" in " ".join(out.split())


def _one_class(data: Path, tmp: Path) -> Path:
    shutil.copytree(data / "cnmc_cells" / "hem", tmp / "only" / "hem")
    return tmp / "only"


def _odd(tmp: Path) -> Path:
    (tmp / "odd").mkdir()
    (tmp / "odd" / "notes.txt").write_text("x")
    return tmp / "odd"


def _empty(tmp: Path) -> Path:
    (tmp / "empty dir").mkdir()
    return tmp / "empty dir"


def _csv_missing(tmp: Path) -> Path:
    (tmp / "list.csv").write_text("path,label\nnope.png,all\n")
    return tmp / "list.csv"


def _labels_csv(data: Path, tmp: Path, text: str) -> Path:
    """A tiny C-NMC copy whose validation labels CSV holds ``text`` (CRLF, as distributed)."""
    root = cnmc_copy(data, tmp)
    (root / "C-NMC_Leukemia" / "validation_data" / CNMC_CSV).write_bytes(text.encode())
    return root


def _describe_cnmc(data: Path, tmp: Path, *lines: str) -> list[object]:
    return ["data", "describe", _labels_csv(data, tmp, "".join(f"{line}\r\n" for line in lines))]


def _split(data: Path, tmp: Path, *options: str) -> list[object]:
    return ["data", "split", data / "cnmc_sample", *options, "--out", tmp / "s.csv"]


def _under_a_file(data: Path, tmp: Path) -> list[object]:
    """``data split`` with --out inside a file (a folder cannot be made there)."""
    (tmp / "afile").write_text("")
    return ["data", "split", data / "cnmc_sample", "--out", tmp / "afile" / "s.csv"]


_HEADER, _ROW = "Patient_ID,new_names,labels", "UID_57_6_4_all.bmp,1005.bmp,1"

BAD: dict[str, tuple[Callable[[Path, Path], list[object]], str]] = {
    "empty folder": (lambda d, t: ["data", "describe", _empty(t)], "empty dir: empty folder"),
    "unknown layout": (lambda d, t: ["data", "describe", _odd(t)], "odd: unknown layout"),
    "missing path": (lambda d, t: ["data", "describe", t / "nowhere"], "nowhere: no such file or folder"),
    "bad --layout": (lambda d, t: ["data", "describe", d / "allidb2", "--layout", "coco"],
                     "--layout 'coco' is not one of"),
    "classes disagree": (lambda d, t: ["data", "split", d / "cnmc_cells", d / "aria_all",
                                       "--out", t / "s.csv"],
                         "the inputs have different classes"),
    "one class, split": (lambda d, t: ["data", "split", _one_class(d, t), "--out", t / "s.csv"],
                         "only: found 1 class(es) ['hem']; need at least 2"),
    "labels CSV mismatch": (lambda d, t: ["data", "describe", cnmc_copy(d, t, extra_rows=("9.bmp",),
                                                                         extra_files=("8.bmp",))],
                            "1 row(s) name missing files (9.bmp); 1 file(s) have no row (8.bmp)"),
    "csv manifest missing file": (lambda d, t: ["data", "describe", _csv_missing(t)],
                                  "list.csv: 1 row(s) name missing files (nope.png)"),
    "synth classes": (lambda d, t: ["data", "synth", t / "syn", "--classes", "9"], "--classes must be 2..4"),
    "labels CSV empty": (lambda d, t: _describe_cnmc(d, t),
                         f"{CNMC_CSV}: not a readable CSV (empty file, no header row)"),
    "labels CSV blank cell": (lambda d, t: _describe_cnmc(d, t, _HEADER, "H49.bmp,,0", _ROW),
                              f"{CNMC_CSV}: line 2 has a blank 'new_names' cell"),
    "labels CSV row too long": (lambda d, t: _describe_cnmc(d, t, _HEADER, "H49.bmp,1002.bmp,0,7", _ROW),
                                f"{CNMC_CSV}: line 2 has 4 field(s), the header has 3"),
    "labels CSV row too short": (lambda d, t: _describe_cnmc(d, t, _HEADER, _ROW, "H49.bmp,1002.bmp"),
                                 f"{CNMC_CSV}: line 3 has 2 field(s), the header has 3"),
    "split --out under a file": (_under_a_file, "afile: File exists"),
    "split --k negative": (lambda d, t: _split(d, t, "--k", "-3"), "--k must be at least 2, got -3"),
    "split --k 0": (lambda d, t: _split(d, t, "--k", "0"), "--k must be at least 2, got 0"),
    "split --val above half": (lambda d, t: _split(d, t, "--val", "0.7", "--test", "0"),
                               "--val 0.7 is more than half: a grouped hold-out is one fold of at least two"),
    "split --val with --test": (lambda d, t: _split(d, t, "--val", "0.5", "--test", "0.4"),
                                "--val 0.5 is more than half of the 0.6 that --test 0.4 leaves"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_is_one_red_line(data: Path, tmp_path: Path, case: str) -> None:
    build, expected = BAD[case]
    code, out, err = run(*build(data, tmp_path))
    assert code == 1
    assert "Traceback" not in out + err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert expected in lines[0]


def test_one_class_folder_still_describes(data: Path, tmp_path: Path) -> None:
    info = describe_json(_one_class(data, tmp_path))
    assert _classes(info, "train") == {"hem": (4, 2)}


def _odd_images(data: Path, root: Path) -> dict[str, str]:
    """Class folders (brackets, spaces, non-ASCII) holding unusual-but-valid and broken files.
    Returns broken file name -> expected reason fragment."""
    good = root / "[malignant] pre-b"
    bad = root / "Benign ü"
    good.mkdir(parents=True)
    bad.mkdir()
    Image.fromarray(np.full((8, 8, 4), 200, np.uint8), "RGBA").save(good / "rgba cell.png")
    (good / "grey16.png").write_bytes(png_bytes(np.full((8, 8), 40000, np.uint16), bit_depth=16,
                                                colour_type=0))
    Image.fromarray(np.full((8, 8), 90, np.uint8), "L").save(good / "grey.png")
    Image.fromarray(np.zeros((8, 8), np.uint8), "P").save(good / "palette.gif")
    shutil.copy(data / "aria_all" / "Pre" / "WBC-Malignant-Pre-001.jpg", bad / "zelle ✓.jpg")
    truncated_copy(data / "aria_all" / "Benign" / "WBC-Benign-001.jpg", bad / "cut.jpg", keep=0.3)
    (bad / "zero.png").touch()
    (bad / "notes.tif").write_text("not a picture")
    (bad / "giant.png").write_bytes(png_bytes(None, width=10_000, height=10_000))
    return {"cut.jpg": "cannot decode", "zero.png": "empty file (0 bytes)",
            "notes.tif": "not a readable image", "giant.png": "10000x10000 pixels exceeds the limit"}


def test_describe_counts_and_lists_unreadable_files(data: Path, tmp_path: Path) -> None:
    broken = _odd_images(data, tmp_path / "odd set")
    info = describe_json(tmp_path / "odd set")
    assert _classes(info, "train") == {"Benign ü": (5, 0), "[malignant] pre-b": (4, 0)}
    reasons = {Path(u["path"]).name: u["reason"] for u in info["unreadable"]}
    assert reasons.keys() == broken.keys()
    for name, fragment in broken.items():
        assert fragment in reasons[name]
    assert sum(info["modes"].values()) == 5
    assert {"RGBA", "I;16", "L", "P", "RGB"} <= set(info["modes"])


def test_describe_table_shows_odd_names_verbatim(data: Path, tmp_path: Path) -> None:
    _odd_images(data, tmp_path / "odd set")
    code, out, _ = run("data", "describe", tmp_path / "odd set")
    assert code == 0
    flat = " ".join(out.split())
    assert "[malignant] pre-b" in flat and "Benign ü" in flat
    assert "4 unreadable file(s)" in flat and "giant.png" in flat


def test_error_messages_keep_brackets(tmp_path: Path) -> None:
    folder = tmp_path / "[b]old [red]set"  # Rich markup tags, if not escaped
    folder.mkdir()
    (folder / "x.txt").write_text("x")
    code, out, err = run("data", "describe", folder)
    assert code == 1 and "Traceback" not in out + err
    assert f"{folder}: unknown layout" in err


def test_synth_then_describe_says_synthetic(tmp_path: Path) -> None:
    code, out, _ = run("data", "synth", tmp_path / "syn", "--subjects", 4, "--per-subject", 2, "--size", 32)
    assert code == 0 and "synthetic" in out
    info = describe_json(tmp_path / "syn")
    assert info["synthetic"] is True and info["warning"] == SYNTHETIC_WARNING
    assert _classes(info, "train") == {"blast": (4, 2), "normal": (4, 2)}
    code, out, _ = run("data", "split", tmp_path / "syn", "--k", 2, "--out", tmp_path / "s.csv")
    assert code == 0 and "SYNTHETIC data" in out and "subject-grouped" in out


def test_a_file_name_not_in_utf8_is_left_out_and_said(data: Path, tmp_path: Path) -> None:
    """Every verb reads data through one reader that says which files it left out: audit names the file
    whose name is not UTF-8 and goes on with the rest; describe lists it among the unreadable files."""
    import os

    root = tmp_path / "cells"
    for cls in ("all", "hem"):
        shutil.copytree(data / "cnmc_cells" / cls, root / cls)
    shutil.copy(next((root / "hem").iterdir()), root / "hem" / os.fsdecode(b"UID_H9_9_9_hem\xfe.png"))
    reason = "file or folder name is not valid UTF-8; rename it"
    info = describe_json(root)
    assert [u["reason"] for u in info["unreadable"]] == [reason] and info["unreadable"][0]["path"].endswith(
        "UID_H9_9_9_hem\\xfe.png")
    code, out, _ = run("data", "audit", root, "--out", tmp_path / "au")
    said = " ".join(out.split())
    assert code == 0, out
    assert f"left out 1 file(s): {root}/hem/UID_H9_9_9_hem\\xfe.png: {reason}" in said


def test_what_the_reader_left_out_is_recorded_by_train_and_evaluate(data: Path, tmp_path: Path) -> None:
    """A file left out when reading (its name is not UTF-8) is written down, not only printed: in the run's
    skipped.json and under ``left_out`` in evaluate's metrics.json and report."""
    import os

    root = tmp_path / "cells"
    for cls in ("Benign", "Pro"):
        (root / cls).mkdir(parents=True)
        for f in sorted((data / "aria_all" / cls).iterdir())[:12]:
            shutil.copy(f, root / cls / f.name)
    odd = root / "Pro" / os.fsdecode(b"cell\xfe.jpg")
    shutil.copy(next((root / "Pro").iterdir()), odd)
    shown = f"{root}/Pro/cell\\xfe.jpg"
    code, out, _ = run("train", root, "--model", "logistic_regression", "--out", tmp_path / "run")
    assert code == 0, out
    skipped = json.loads((tmp_path / "run" / "skipped.json").read_text())
    assert [s["path"] for s in skipped] == [shown] and "not valid UTF-8" in skipped[0]["reason"]
    code, out, _ = run("evaluate", tmp_path / "run" / "bundle", root, "--out", tmp_path / "eval")
    assert code == 0, out
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert [s["path"] for s in metrics["left_out"]] == [shown] and metrics["skipped"] == []
    assert "1 file(s) left out when reading the data" in (tmp_path / "eval" / "report.html").read_text()
