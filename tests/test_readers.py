"""Every reader on the real sample data, layout detection, and malformed layouts built in tmp dirs."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pandas as pd
import pytest

from imagefiles import CNMC_TRAIN, cnmc_copy
from leukoscope.data.manifest import (
    COLUMNS,
    classes,
    has_subjects,
    label_indices,
    make_manifest,
    protocol,
    skipped_files,
    validate,
)
from leukoscope.data.readers import LAYOUTS, detect_layout, drop_unreadable, read, subject_from_name
from leukoscope.errors import DataError


def _counts(m: pd.DataFrame) -> dict[tuple[str, str], tuple[int, int]]:
    """(source_split, label) -> (images, subjects)."""
    g = m.groupby(["source_split", "label"])
    return {k: (int(len(v)), int(v["subject"].nunique())) for k, v in g}


def test_cnmc_download_layout(data: Path) -> None:
    m = read([data / "cnmc_sample"])
    assert list(m.columns[:5]) == COLUMNS
    assert set(m["layout"]) == {"cnmc"} and set(m["dataset"]) == {"cnmc_sample"}
    assert _counts(m) == {("train", "all"): (26, 13), ("train", "hem"): (26, 13),
                          ("val", "all"): (1, 1), ("val", "hem"): (1, 1)}
    val = m[m["source_split"] == "val"].set_index(m.loc[m["source_split"] == "val", "path"].map(
        lambda p: Path(p).name))
    assert val.loc["1002.bmp", "original_name"] == "UID_H49_5_2_hem.bmp"
    assert val.loc["1002.bmp", ["label", "subject"]].tolist() == ["hem", "H49"]
    assert val.loc["1005.bmp", "original_name"] == "UID_57_6_4_all.bmp"
    assert val.loc["1005.bmp", ["label", "subject"]].tolist() == ["all", "57"]
    train = m[m["source_split"] == "train"]
    assert sorted(set(train["source_fold"])) == ["fold_0", "fold_1", "fold_2"]
    fold2_hem = set(train.loc[(train["source_fold"] == "fold_2") & (train["label"] == "hem"), "subject"])
    assert fold2_hem == {"H1", "H2", "H3", "H4", "H5"}  # UID_h3_ read as H3
    assert all(Path(p).is_absolute() and Path(p).is_file() for p in m["path"])
    assert m["group"].map(lambda g: g.startswith("subject:")).all()
    assert protocol(m) == "subject-grouped"


def test_cnmc_reads_from_its_parent_or_inner_folder(data: Path) -> None:
    outer = read([data / "cnmc_sample"])
    inner = read([data / "cnmc_sample" / "C-NMC_Leukemia"])
    assert sorted(outer["path"]) == sorted(inner["path"])


def test_class_folders_with_cnmc_names(data: Path) -> None:
    m = read([data / "cnmc_cells"])
    assert set(m["layout"]) == {"class-folders"}
    assert _counts(m) == {("train", "all"): (7, 5), ("train", "hem"): (4, 2)}
    assert set(m.loc[m["label"] == "all", "subject"]) == {"1", "3", "53", "67", "68"}
    assert set(m.loc[m["label"] == "hem", "subject"]) == {"H6", "H10"}


def test_label_in_name_allidb2(data: Path) -> None:
    m = read([data / "allidb2"])
    assert set(m["layout"]) == {"label-in-name"}
    assert m["label"].value_counts().to_dict() == {"all": 130, "hem": 130}
    blasts = m.loc[m["label"] == "all", "path"].map(lambda p: Path(p).stem)
    assert blasts.str.endswith("_1").all()
    assert m["subject"].isna().all() and not has_subjects(m)
    assert m["group"].nunique() == 260
    assert protocol(m) == "image-level"


def test_label_in_name_accepts_jpg_and_rejects_strays(data: Path, tmp_path: Path) -> None:
    shutil.copy(data / "allidb2" / "Im001_1.tif", tmp_path / "Im001_1.jpg")
    shutil.copy(data / "allidb2" / "Im131_0.tif", tmp_path / "Im131_0.tif")
    assert read([tmp_path])["label"].tolist() == ["all", "hem"]
    shutil.copy(data / "allidb2" / "Im002_1.tif", tmp_path / "cell.tif")
    with pytest.raises(DataError, match="cell.tif: name is not ImXXX_Y"):
        read([tmp_path], layout="label-in-name")


def test_four_class_folders(data: Path) -> None:
    m = read([data / "aria_all"])
    assert m["label"].value_counts().to_dict() == {"Benign": 300, "Early": 300, "Pre": 300, "Pro": 300}
    assert classes(m) == ["Benign", "Early", "Pre", "Pro"]
    assert protocol(m) == "image-level"


@pytest.mark.parametrize("name, subject", [
    ("UID_57_6_4_all.bmp", "57"), ("UID_H49_5_2_hem.bmp", "H49"), ("UID_h3_1_1_hem.bmp", "H3"),
    ("uid_h10_2_1_hem.png", "H10"), ("Im001_1.tif", None), ("1002.bmp", None), ("UID__1_all.bmp", None),
])
def test_subject_from_name(name: str, subject: str | None) -> None:
    assert subject_from_name(name) == subject


def test_several_paths_give_one_manifest(data: Path) -> None:
    m = read([data / "cnmc_sample", data / "cnmc_cells"])
    assert len(m) == 54 + 11
    assert m["path"].is_unique
    by_set = m.groupby("dataset")["subject"].apply(set)
    assert {"1", "3", "H6", "H10"} <= by_set["cnmc_sample"] & by_set["cnmc_cells"]
    shared = m[m["subject"] == "H6"]
    assert shared["group"].nunique() == 1 and set(shared["dataset"]) == {"cnmc_sample", "cnmc_cells"}


def test_inputs_whose_classes_disagree(data: Path, tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"classes.*cnmc_cells: \['all', 'hem'\]; .*aria_all: \['Be"):
        read([data / "cnmc_cells", data / "aria_all"])
    # two inputs with the same folder name must still be compared
    for side, cls in (("a", "blast"), ("b", "mono")):
        for c in (cls, "normal"):
            (tmp_path / side / "cells" / c).mkdir(parents=True)
            shutil.copy(data / "allidb2" / "Im001_1.tif", tmp_path / side / "cells" / c / "x.tif")
    with pytest.raises(DataError, match=r"different classes.*'blast'.*'mono'"):
        read([tmp_path / "a" / "cells", tmp_path / "b" / "cells"])


def test_same_folder_twice_is_rejected(data: Path) -> None:
    with pytest.raises(DataError, match="same image twice"):
        read([data / "cnmc_cells", data / "cnmc_cells"])


def test_cnmc_labels_csv_rows_for_missing_files(data: Path, tmp_path: Path) -> None:
    root = cnmc_copy(data, tmp_path, extra_rows=("2001.bmp", "2002.bmp", "2003.bmp", "2004.bmp"))
    with pytest.raises(DataError) as e:
        read([root])
    msg = str(e.value)
    assert "C-NMC_test_prelim_phase_data_labels.csv does not match" in msg
    assert "4 row(s) name missing files (2001.bmp, 2002.bmp, 2003.bmp, ...)" in msg
    assert "no row" not in msg


def test_cnmc_labels_csv_files_without_rows(data: Path, tmp_path: Path) -> None:
    root = cnmc_copy(data, tmp_path, extra_rows=("2001.bmp",), extra_files=("3001.bmp", "3002.bmp"))
    with pytest.raises(DataError) as e:
        read([root])
    msg = str(e.value)
    assert "1 row(s) name missing files (2001.bmp)" in msg
    assert "2 file(s) have no row (3001.bmp, 3002.bmp)" in msg


def test_cnmc_copy_without_mismatch_reads(data: Path, tmp_path: Path) -> None:
    m = read([cnmc_copy(data, tmp_path)])
    assert sorted(m["subject"]) == sorted(["1", "H6", "H3", "H49", "57"])
    assert len(m) == len(CNMC_TRAIN) + 2


def test_cnmc_validation_without_csv_and_bad_labels(data: Path, tmp_path: Path) -> None:
    root = cnmc_copy(data, tmp_path)
    csv = root / "C-NMC_Leukemia" / "validation_data" / "C-NMC_test_prelim_phase_data_labels.csv"
    csv.write_text(csv.read_text().replace(",0", ",2"))
    with pytest.raises(DataError, match=r"labels.csv: label '2' for 1002.bmp is not 0 or 1"):
        read([root])
    csv.write_text("name,label\r\n1002.bmp,0\r\n")
    with pytest.raises(DataError, match=r"labels.csv: expected columns"):
        read([root])
    csv.unlink()
    with pytest.raises(DataError, match=r"validation_data: images but no labels CSV"):
        read([root])


def test_cnmc_testing_data_is_unlabelled(data: Path, tmp_path: Path) -> None:
    root = cnmc_copy(data, tmp_path)
    test_dir = root / "C-NMC_Leukemia" / "testing_data" / "C-NMC_test_final_phase_data"
    test_dir.mkdir(parents=True)
    shutil.copy(data / "cnmc_cells" / "all" / "UID_53_4_8_all.png", test_dir / "1.png")
    m = read([root])
    row = m[m["source_split"] == "unlabelled"]
    assert len(row) == 1 and row["label"].iloc[0] == "" and row["subject"].isna().all()
    assert "" not in classes(m)


def test_class_folder_names_with_spaces_brackets_and_non_ascii(data: Path, tmp_path: Path) -> None:
    root = tmp_path / "ALL set (Tëst)"
    names = {"Benign": "Benign", "[Malignant] early Pre-B": "Early", "[Malignant] Pre-B": "Pre",
             "Zelle ü": "Pro"}
    for folder, src in names.items():
        (root / folder).mkdir(parents=True)
        for f in sorted((data / "aria_all" / src).iterdir())[:2]:
            shutil.copy(f, root / folder / f"cell {f.name}")
    m = read([root])
    assert classes(m) == sorted(names)
    assert m["label"].value_counts().to_dict() == dict.fromkeys(names, 2)
    assert all(Path(p).is_file() for p in m["path"])


def test_class_folders_mixing_named_and_unnamed_subjects(data: Path, tmp_path: Path) -> None:
    for cls in ("all", "hem"):
        shutil.copytree(data / "cnmc_cells" / cls, tmp_path / cls)
    shutil.copy(data / "aria_all" / "Pro" / "WBC-Malignant-Pro-001.jpg", tmp_path / "all" / "x.jpg")
    with pytest.raises(DataError, match=r"1 image\(s\) have no UID_<subject>_"):
        read([tmp_path])


def _write_csv(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_csv_manifest_relative_absolute_and_subjects(data: Path, tmp_path: Path) -> None:
    (tmp_path / "imgs ü").mkdir()
    shutil.copy(data / "cnmc_cells" / "all" / "UID_1_3_1_all.png", tmp_path / "imgs ü" / "a 1.png")
    absolute = data / "cnmc_cells" / "hem" / "UID_H6_5_1_hem.png"
    csv = _write_csv(tmp_path / "manifest.csv",
                     f"path,label,subject\nimgs ü/a 1.png,all,P1\n{absolute},hem,\n")
    assert detect_layout(csv) == "csv"
    m = read([csv])
    assert m["path"].tolist() == [str((tmp_path / "imgs ü" / "a 1.png").resolve()), str(absolute.resolve())]
    assert m["label"].tolist() == ["all", "hem"]
    assert m["subject"].tolist() == ["P1", None]
    assert m["group"].tolist() == ["subject:P1", f"image:{absolute.resolve()}"]


def test_csv_manifest_without_subject_column(data: Path, tmp_path: Path) -> None:
    f = data / "allidb2" / "Im001_1.tif"
    m = read([_write_csv(tmp_path / "m.csv", f"label,path\nblast,{f}\n")])
    assert m["subject"].isna().all() and protocol(m) == "image-level"


def test_csv_manifest_missing_files_and_bad_shape(tmp_path: Path) -> None:
    csv = _write_csv(tmp_path / "m.csv", "path,label\na.png,x\nb.png,y\nc.png,x\nd.png,y\n")
    with pytest.raises(DataError, match=r"m.csv: 4 row\(s\) name missing files \(a.png, b.png, c.png, ...\)"):
        read([csv])
    with pytest.raises(DataError, match="m2.csv: a manifest CSV needs columns path,label"):
        read([_write_csv(tmp_path / "m2.csv", "file,class\na.png,x\n")])
    with pytest.raises(DataError, match="m3.csv: not a readable CSV"):
        read([_write_csv(tmp_path / "m3.csv", "")])
    with pytest.raises(DataError, match="m4.csv: no rows"):
        read([_write_csv(tmp_path / "m4.csv", "path,label\n")])
    with pytest.raises(DataError, match=r"m5.csv: 1 row\(s\) have no label \(b.png\)"):
        read([_write_csv(tmp_path / "m5.csv", "path,label\na.png,x\nb.png, \n")])


@pytest.mark.parametrize(("text", "message"), [
    ("path,label\n{f},all\n,hem\n", "line 3 has a blank 'path' cell"),
    ("path,label\n{f},all\n{f}\n", "line 3 has 1 field(s), the header has 2"),
    ("path,label\n{f},all,P1\n{f},hem\n", "line 2 has 3 field(s), the header has 2"),  # pandas shifted it
    ("path,label,subject\n{f},all\n\n{f},hem,\n{f},hem\n",
     "line 2 has 2 field(s), the header has 3 (1 more such line(s))"),
    ("path,label,path\n{f},all,{f}\n", "column(s) 'path' appear more than once"),
])
def test_csv_manifest_blank_cells_and_ragged_rows(data: Path, tmp_path: Path, text: str,
                                                  message: str) -> None:
    csv = _write_csv(tmp_path / "m.csv", text.format(f=data / "allidb2" / "Im001_1.tif"))
    with pytest.raises(DataError, match=f"^{re.escape(f'{csv}: {message}')}$"):
        read([csv])


def test_csv_manifest_from_a_spreadsheet(data: Path, tmp_path: Path) -> None:
    f = data / "cnmc_cells" / "hem" / "UID_H6_5_1_hem.png"
    csv = tmp_path / "excel.csv"
    csv.write_bytes(f"\ufeffpath, label, subject\r\n{f}, hem , H6\r\n".encode())
    m = read([csv])
    assert m[["label", "subject"]].values.tolist() == [["hem", "H6"]]


def test_unknown_empty_and_missing_inputs(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"empty: empty folder"):
        read([tmp_path / "empty"])
    (tmp_path / "odd").mkdir()
    (tmp_path / "odd" / "notes.txt").write_text("hi")
    with pytest.raises(DataError, match=r"odd: unknown layout; expected one of cnmc, "):
        read([tmp_path / "odd"])
    with pytest.raises(DataError, match="nowhere: no such file or folder"):
        read([tmp_path / "nowhere"])
    with pytest.raises(DataError, match="--layout 'imagenet' is not one of"):
        read([tmp_path / "odd"], layout="imagenet")
    with pytest.raises(DataError, match="no input paths"):
        read([])


def test_class_folders_with_no_images(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "a" / "readme.txt").write_text("nothing here")
    with pytest.raises(DataError, match="no images found in its sub-folders"):
        read([tmp_path])


def test_layout_override_and_registry(data: Path) -> None:
    assert set(LAYOUTS) == {"cnmc", "class-folders", "label-in-name", "csv", "cohort"}
    assert all(lay.doc for lay in LAYOUTS.values())
    # cnmc_cells detected as class folders; forcing label-in-name must fail clearly, not misread
    with pytest.raises(DataError, match="cnmc_cells: no images found"):
        read([data / "cnmc_cells"], layout="label-in-name")


def test_drop_unreadable_counts_and_names(data: Path, tmp_path: Path) -> None:
    for cls in ("all", "hem"):
        shutil.copytree(data / "cnmc_cells" / cls, tmp_path / cls)
    (tmp_path / "all" / "UID_9_1_1_all.png").write_bytes(b"")
    (tmp_path / "hem" / "UID_H9_1_1_hem.png").write_text("not an image")
    m, skipped = drop_unreadable(read([tmp_path]))
    assert len(m) == 11
    assert sorted((Path(p).name, r) for p, r in skipped) == [
        ("UID_9_1_1_all.png", "empty file (0 bytes)"), ("UID_H9_1_1_hem.png", "not a readable image")]


def test_manifest_schema_is_enforced() -> None:
    m = make_manifest([dict(path="/a.png", label="b", subject="7"), dict(path="/c.png", label="a")])
    assert list(m.columns) == COLUMNS and m["group"].tolist() == ["subject:7", "image:/c.png"]
    assert classes(m) == ["a", "b"] and label_indices(m, ["a", "b"]) == [1, 0]
    with pytest.raises(DataError, match=r"labels \['b'\] are not among the model's classes \['a'\]"):
        label_indices(m, ["a"])
    with pytest.raises(DataError, match=r"unknown source_split value\(s\): \['holdout'\]"):
        make_manifest([dict(path="/a.png", label="b", source_split="holdout")])
    with pytest.raises(DataError, match=r"missing column\(s\): group, source_split"):
        validate(pd.DataFrame({"path": ["/a.png"], "label": ["x"], "subject": [None]}))


def test_empty_class_folder_is_named(tmp_path: Path) -> None:
    from leukoscope.data.synthetic import make_synthetic
    from leukoscope.errors import DataError

    root = make_synthetic(tmp_path / "cells", n_subjects=2, per_subject=1, size=32)
    (root / "Pro").mkdir()
    with pytest.raises(DataError, match="class folder.*Pro"):
        read([root])


def test_file_name_not_utf8_is_a_counted_skip_in_every_layout(data: Path, tmp_path: Path) -> None:
    bad = os.fsdecode(b"UID_9_9_9_all\xfe.png")  # the bytes reach str as a surrogate escape
    reason = "file or folder name is not valid UTF-8; rename it"
    root = tmp_path / "cells"
    for cls in ("all", "hem"):
        shutil.copytree(data / "cnmc_cells" / cls, root / cls)
    shutil.copy(next((root / "all").iterdir()), root / "all" / bad)
    m = read([root])
    assert len(m) == 11 and skipped_files(m) == [(f"{root}/all/UID_9_9_9_all\\xfe.png", reason)]
    csv = _write_csv(tmp_path / "m.csv", f"path,label\n{m['path'][0]},all\nlink.png,all\n")
    (tmp_path / "link.png").symlink_to(root / "all" / bad)  # resolves to the name that is not UTF-8
    m = read([csv])
    assert len(m) == 1 and [r for _, r in skipped_files(m)] == [reason]
    only = tmp_path / "only" / "all"
    only.mkdir(parents=True)
    shutil.copy(root / "all" / bad, only / bad)
    with pytest.raises(DataError, match=r"none of the 1 file\(s\) has a valid UTF-8 name; rename them "
                                        r"\(e.g. .*UID_9_9_9_all\\xfe.png\)"):
        read([tmp_path / "only"])


@pytest.mark.parametrize(("one", "other"), [("Benign", "benign"), ("B\u00e9nin", "Be\u0301nin")])
def test_labels_differing_only_in_case_or_unicode_form_are_refused(data: Path, tmp_path: Path, one: str,
                                                                   other: str) -> None:
    files = sorted((data / "aria_all" / "Benign").iterdir())[:4]
    rows = "\n".join(f"{f},{one if i % 2 else other}" for i, f in enumerate(files))
    with pytest.raises(DataError, match="differ only in case, surrounding spaces or Unicode form would be "
                                        f"separate classes: '{other}', '{one}'|'{one}', '{other}'"):
        read([_write_csv(tmp_path / "case.csv", "path,label\n" + rows + "\n")])


def test_a_class_folder_with_a_trailing_space_is_refused(data: Path, tmp_path: Path) -> None:
    for name in ("Benign", "Benign ", "Pre"):
        (tmp_path / "set" / name).mkdir(parents=True)
        start = 2 if name.endswith(" ") else 0  # other cells than the folder spelt without the space
        for f in sorted((data / "aria_all" / name.strip()).iterdir())[start:start + 2]:
            (tmp_path / "set" / name / f.name).symlink_to(f)
    with pytest.raises(DataError, match="'Benign', 'Benign '; spell each class one way"):
        read([tmp_path / "set"])


def test_subjects_differing_only_in_case_are_one_patient(data: Path, tmp_path: Path) -> None:
    files = [f for cls in ("Benign", "Pre") for f in sorted((data / "aria_all" / cls).iterdir())[:6]]
    subjects = ["H6", "h6", "H6", "P1", "P2", "P3"] * 2
    rows = "\n".join(f"{f},{f.parent.name},{s}" for f, s in zip(files, subjects, strict=True))
    m = read([_write_csv(tmp_path / "s.csv", "path,label,subject\n" + rows + "\n")])
    assert set(m["subject"]) == {"H6", "P1", "P2", "P3"} and m["group"].nunique() == 4


def test_a_symlinked_sub_folder_of_a_class_is_read(data: Path, tmp_path: Path) -> None:
    for cls in ("basophil", "eosinophil"):
        (tmp_path / "set" / cls).mkdir(parents=True)
    (tmp_path / "set" / "basophil" / "more").symlink_to(data / "pbc" / "basophil")
    (tmp_path / "set" / "basophil" / "again").symlink_to(data / "pbc" / "basophil")  # counted once
    (tmp_path / "set" / "basophil" / "up").symlink_to(tmp_path / "set" / "basophil")  # a circle: not followed
    (tmp_path / "set" / "eosinophil" / "e").symlink_to(data / "pbc" / "eosinophil")
    m = read([tmp_path / "set"])
    assert m["label"].value_counts().to_dict() == {"basophil": 150, "eosinophil": 150}


def test_an_image_beside_the_class_folders_is_listed(data: Path, tmp_path: Path) -> None:
    for cls in ("Benign", "Pro"):
        (tmp_path / "set" / cls).mkdir(parents=True)
        for f in sorted((data / "aria_all" / cls).iterdir())[:3]:
            shutil.copy(f, tmp_path / "set" / cls / f.name)
    loose = tmp_path / "set" / "stray.jpg"
    shutil.copy(next((data / "aria_all" / "Early").iterdir()), loose)
    m = read([tmp_path / "set"])
    assert len(m) == 6 and skipped_files(m) == [(str(loose), "beside the class folders, in none of them")]


def test_links_in_a_circle_are_rows_that_decode_to_a_counted_skip(data, tmp_path):
    """Path.resolve raised on them (a traceback from every reader); they are read as rows and skipped with
    a reason when decoded, as a link to nowhere is."""
    for label, cls in (("a", "basophil"), ("b", "eosinophil")):
        (tmp_path / "cells" / label).mkdir(parents=True)
        for p in sorted((data / "pbc" / cls).iterdir())[:2]:
            (tmp_path / "cells" / label / p.name).symlink_to(p)
    (tmp_path / "cells" / "a" / "loop1.jpg").symlink_to(tmp_path / "cells" / "a" / "loop2.jpg")
    (tmp_path / "cells" / "a" / "loop2.jpg").symlink_to(tmp_path / "cells" / "a" / "loop1.jpg")
    assert len(read([tmp_path / "cells"])) == 6
    from typer.testing import CliRunner

    from leukoscope.cli.verbs import app

    res = CliRunner().invoke(app, ["data", "describe", str(tmp_path / "cells")])
    assert res.exit_code == 0 and "loop1.jpg: broken link (no target, or links in a circle)" in res.output, \
        res.output
