"""Patient cohorts: DeepAPL as published (real sample), a user's cohort with --subjects built from real
DeepAPL files in tmp dirs, and each bad input (one red line naming the file, or a counted skip)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from imagefiles import png_bytes
from leukoscope.cli.verbs import app
from leukoscope.data.cohort import (
    OVERVIEW_MIN_SIDE,
    Header,
    label_conflicts,
    load_subjects,
    patient_folders,
    read_header,
    scan_cohort,
    snake_case,
    subject_labels,
)
from leukoscope.data.images import image_size
from leukoscope.data.manifest import UNLABELLED, classes, protocol
from leukoscope.data.readers import detect_layout, read
from leukoscope.errors import DataError, ImageError

runner = CliRunner()
ALL = Path("Data") / "All"
#: Real DeepAPL files used to build small cohorts: two signed cells of two types, an unsigned cell,
#: and a whole-field overview (2,920 x 2,960).
MONO = ALL / "Patient_06" / "Signed slides" / "Blast, no lineage spec"
OVERVIEW = ALL / "Patient_00" / "Unsigned slides" / "10027293117_001.jpg"


def run(*args: object) -> tuple[int, str, str]:
    r = runner.invoke(app, [str(a) for a in args])
    if r.exception is not None and not isinstance(r.exception, SystemExit):
        raise r.exception
    return r.exit_code, r.stdout, r.stderr


def one_error_line(*args: object) -> str:
    code, out, err = run(*args)
    lines = err.strip().splitlines()
    assert code == 1 and len(lines) == 1 and "Traceback" not in out + err, (code, out, err)
    return lines[0]


@pytest.fixture(scope="module")
def deepapl(data: Path) -> Path:
    return data / "deepapl"


# ---- DeepAPL as published -------------------------------------------------------------------------


def test_every_shared_folder_detects_as_before_and_deepapl_as_a_cohort(data: Path) -> None:
    found = {d.name: detect_layout(d) for d in sorted(data.iterdir()) if d.is_dir()}
    assert found == {"allidb2": "label-in-name", "aria_all": "class-folders", "bccd": "class-folders",
                     "cnmc_cells": "class-folders", "cnmc_sample": "cnmc", "deepapl": "cohort",
                     "pbc": "class-folders"}
    # from its Data folder too (the table beside All/)
    assert detect_layout(data / "deepapl" / "Data") == "cohort"


def test_deepapl_reader_counts(deepapl: Path) -> None:
    m = read([deepapl])
    assert set(m["layout"]) == {"cohort"} and set(m["dataset"]) == {"deepapl"}
    assert len(m) == 2624 + 148
    assert m["source_split"].value_counts().to_dict() == {"train": 2624, "unlabelled": 148}
    assert (m.loc[m["source_split"] == "unlabelled", "label"] == UNLABELLED).all()
    types = classes(m)
    assert len(types) == 18
    assert {"Blast, no lineage spec", "Lymphocyte, variant", "Promyelocyte"} <= set(types)
    assert m["subject"].nunique() == 82 and protocol(m) == "subject-grouped"
    assert (m["group"] == "subject:" + m["subject"]).all()
    assert {"diagnosis", "cohort", "age_at_diagnosis", "gender", "subjects_file"} <= set(m.columns)
    patients = m.drop_duplicates("subject").set_index("subject")
    assert patients["diagnosis"].value_counts().to_dict() == {"AML": 60, "APL": 22}
    assert patients.loc["Patient_00", ["diagnosis", "cohort", "age_at_diagnosis", "gender"]].tolist() == [
        "APL", "Discovery", 29, "Female"]
    assert pd.api.types.is_integer_dtype(m["age_at_diagnosis"])
    # every cell's patient is the Patient_XX folder of its path, and its type the folder holding it
    parts = m["path"].map(lambda p: Path(p).relative_to((deepapl / ALL).resolve()).parts)
    assert (parts.str[0] == m["subject"]).all()
    typed = m["source_split"] == "train"
    assert (parts[typed].str[-2] == m.loc[typed, "label"]).all()
    assert (parts[typed].str[-3] == "Signed slides").all()
    assert (parts[~typed].str[-2] == "Unsigned slides").all()


def test_cells_under_an_accession_or_date_level_keep_their_patient(deepapl: Path) -> None:
    m = read([deepapl])
    parts = m["path"].map(lambda p: Path(p).relative_to((deepapl / ALL).resolve()).parts)
    slides = parts.map(lambda ps: next(i for i, x in enumerate(ps) if x.endswith("igned slides")))
    nested = m[slides == 2]  # Patient_XX/<accession or date>/{Signed,Unsigned} slides/...
    assert nested["subject"].nunique() == 9 and nested["subject"].str.startswith("Patient_").all()
    assert (parts[slides == 2].str[0] == nested["subject"]).all()
    assert not nested["label"].isin(["Signed slides", "Unsigned slides"]).any()
    p60 = m[m["subject"] == "Patient_60"]
    assert p60["path"].str.contains("/Patient_60/2018-12-16_2346/", regex=False).all()
    assert p60["source_split"].value_counts().to_dict() == {"train": 32, "unlabelled": 4}
    assert set(m["subject"]) == set(pd.read_csv(deepapl / "Data" / "master.csv")["Patient_ID"])


def test_cohort_scan_and_patient_report_sort_files_by_one_header_rule(deepapl: Path, tmp_path: Path) -> None:
    """A real cell, a real whole-field overview and an empty file: ``read_header`` sorts them, and the cohort
    scan (overview kept apart) and the patient report (overview skipped) agree with it, reasons and all."""
    from leukoscope.patients.report import scan_patient

    folder = tmp_path / "cohort" / "P1"
    folder.mkdir(parents=True)
    cell = sorted((deepapl / MONO).glob("*.jpg"))[0]
    (folder / "a_cell.jpg").symlink_to(cell)
    (folder / "b_field.jpg").symlink_to(deepapl / OVERVIEW)
    (folder / "c_empty.jpg").write_bytes(b"")
    skipped: list[tuple[str, str]] = []
    head = read_header(folder / "a_cell.jpg", skipped)
    assert head == Header(*image_size(cell)) and not head.overview
    field = read_header(folder / "b_field.jpg", skipped)
    assert field == Header(2920, 2960) and field.overview
    assert read_header(folder / "c_empty.jpg", skipped) is None
    assert skipped == [(str(folder / "c_empty.jpg"), "empty file (0 bytes)")]
    report = scan_patient(folder)
    assert report.cells == [folder / "a_cell.jpg"]
    overview = "overview image 2920x2960 (a whole field, not one cell)"
    assert report.skipped == [(str(folder / "b_field.jpg"), overview), *skipped]
    table = tmp_path / "subjects.csv"
    table.write_text("patient,diagnosis\nP1,AML\n")
    c = scan_cohort(tmp_path / "cohort", load_subjects(table))
    assert c.cells["path"].tolist() == [str((folder / "a_cell.jpg").resolve())]
    assert c.overviews[["width", "height"]].values.tolist() == [[2920, 2960]] and c.skipped == skipped


def test_symlinked_patient_folders_are_followed_each_real_folder_once(deepapl: Path, tmp_path: Path) -> None:
    """A cohort assembled from links (table and patient folders) is scanned like the folders it links to;
    a link back to an ancestor and a second link to a patient's folder add nothing and never loop."""
    from leukoscope.patients.report import scan_patient

    data = tmp_path / "linked" / "Data"
    (data / "All" / "extra").mkdir(parents=True)
    (data / "master.csv").symlink_to(deepapl / "Data" / "master.csv")
    for pid in ("Patient_05", "Patient_06"):
        (data / "All" / pid).symlink_to(deepapl / ALL / pid, target_is_directory=True)
    (data / "All" / "extra" / "loop").symlink_to(data / "All", target_is_directory=True)
    (data / "All" / "zz_again").symlink_to(deepapl / ALL / "Patient_06", target_is_directory=True)
    c = scan_cohort(tmp_path / "linked")
    per = c.cells["subject"].value_counts().to_dict()
    assert per == {pid: len(scan_patient(deepapl / ALL / pid).cells) for pid in ("Patient_05", "Patient_06")}
    assert c.cells["path"].is_unique and c.unlisted_folders == {} and c.skipped == []
    assert len(c.patients_without_cells) == len(c.subjects.table) - 2
    assert patient_folders(data / "All", c.subjects) == ({pid: [data / "All" / pid]
                                                          for pid in ("Patient_05", "Patient_06")}, [])


def test_deepapl_overviews_are_listed_apart_never_cells(deepapl: Path) -> None:
    c = scan_cohort(deepapl)
    assert len(c.overviews) == 6
    assert c.overviews["subject"].tolist() == ["Patient_00", "Patient_08", "Patient_09", "Patient_10",
                                               "Patient_14", "Patient_15"]
    assert (c.overviews[["width", "height"]].min(axis=1) >= OVERVIEW_MIN_SIDE).all()
    assert not set(c.overviews["path"]) & set(c.cells["path"])
    assert str((deepapl / OVERVIEW).resolve()) in set(c.overviews["path"])
    assert max(max(image_size(p)) for p in c.cells["path"]) < OVERVIEW_MIN_SIDE
    assert c.skipped == [] and c.unlisted_folders == {} and c.patients_without_cells == []
    # the same with the table named: the patient level is found two folders down, the table is no skip
    named = scan_cohort(deepapl, load_subjects(deepapl / "Data" / "master.csv", "Patient_ID"))
    assert named.cells["path"].tolist() == c.cells["path"].tolist() and named.skipped == []


def test_describe_deepapl_json(deepapl: Path) -> None:
    code, out, err = run("data", "describe", deepapl, "--json")
    assert code == 0, err
    info = json.loads(out)
    c = info["cohort"]
    assert c["patients"] == 82 and c["patients_per_diagnosis"] == {"AML": 60, "APL": 22}
    assert c["typed_cells"] == 2624 and c["cell_types"] == 18 and len(c["cells_per_type"]) == 18
    assert sum(c["cells_per_type"].values()) == 2624 and c["cells_per_type"]["Promyelocyte"] == 92
    assert c["unlabelled_cells"] == 148 and c["overview_images"] == 6 and c["skipped_files"] == 0
    assert c["cells_per_patient"] == {"min": 32, "median": 32.0, "max": 36}
    # the existing keys keep their meaning: the 6 overviews are no images of the manifest
    assert info["images"] == 2772 and info["subjects"] == 82 and info["layouts"] == ["cohort"]
    assert info["source_splits"]["unlabelled"]["images"] == 148
    assert info["source_splits"]["train"]["classes"]["Lymphocyte, variant"]["images"] == 137
    assert sum(info["sizes"].values()) + len(info["unreadable"]) == 2772
    assert all(max(map(int, s.split("x"))) < OVERVIEW_MIN_SIDE for s in info["sizes"])
    # two signed JPEGs of the published set are truncated: cells by their header, named as unreadable
    assert sorted(Path(u["path"]).name for u in info["unreadable"]) == ["BL_7821735.jpg", "SMU_15364290.jpg"]


def test_describe_deepapl_table_output(deepapl: Path) -> None:
    code, out, _ = run("data", "describe", deepapl)
    assert code == 0
    assert "82 patients (diagnosis: AML 60, APL 22)" in " ".join(out.split())
    assert "6 overview image(s), not cells" in " ".join(out.split())


def test_label_conflicts_in_deepapl(deepapl: Path) -> None:
    clash = label_conflicts(read([deepapl]))
    assert list(clash.columns) == ["subject", "sha1", "label", "path"]
    pairs = clash.groupby(["subject", "sha1"])["label"].agg(tuple)
    assert len(pairs) == 8 and clash["subject"].nunique() == 7
    assert ("Basophil", "Monocyte") in set(pairs.loc["Patient_09"])
    for _, rows in clash.groupby(["subject", "sha1"]):
        assert len({Path(p).read_bytes() for p in rows["path"]}) == 1
        assert rows["label"].nunique() == len(rows) == 2


def test_subject_labels_for_patient_level_training(deepapl: Path, data: Path) -> None:
    m = read([deepapl])
    y = subject_labels(m, "Diagnosis")
    assert len(y) == 82 and y.value_counts().to_dict() == {"AML": 60, "APL": 22}
    assert y["Patient_00"] == "APL" and y.name == "diagnosis"
    with pytest.raises(DataError, match=r"master.csv: no column 'outcome' \(columns: Patient_ID, Diagnosis, "
                                        r"Cohort, Age at Diagnosis, Gender\) for --target"):
        subject_labels(m, "outcome")
    with pytest.raises(DataError, match="--target 'diagnosis': these data have no subjects table"):
        subject_labels(read([data / "cnmc_cells"]), "diagnosis")


# ---- a user's own cohort (--subjects), built from real DeepAPL files ------------------------------


def _cells(deepapl: Path, n: int) -> list[Path]:
    return sorted((deepapl / MONO).glob("*.jpg"))[:n]


def _put(src: Path, dst: Path) -> Path:
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(src, dst)
    return dst


def _my_cohort(deepapl: Path, root: Path, table: str) -> tuple[Path, Path]:
    """P01: two typed cells (a type name with a comma), one unlabelled, a Thumbs.db; P02 under a date level:
    one typed cell, one directly in the patient folder, a real overview and a header-only 4000x3000 PNG."""
    a, b, c, d = _cells(deepapl, 4)
    cohort = root / "my cohort"
    _put(a, cohort / "P01" / "Blast, no lineage spec" / "a.jpg")
    _put(b, cohort / "P01" / "Blast, no lineage spec" / "b.jpg")
    _put(c, cohort / "P01" / "unlabelled" / "c.jpg")
    (cohort / "P01" / "Blast, no lineage spec" / "Thumbs.db").write_bytes(b"\xd0\xcf\x11\xe0")
    _put(d, cohort / "P02" / "2024-01-05" / "Monocyte" / "d.jpg")
    _put(a, cohort / "P02" / "e.jpg")
    _put(deepapl / OVERVIEW, cohort / "P02" / "2024-01-05" / "field.jpg")
    (cohort / "P02" / "field2.png").write_bytes(png_bytes(None, width=4000, height=3000))
    subjects = root / "patients.csv"
    subjects.write_text(table, encoding="utf-8")
    return cohort, subjects


TABLE = "Patient ID,Outcome,Age (years),Sex\nP01,APL,41,F\nP02,AML,, M \n"


def test_own_cohort_with_subjects_table(deepapl: Path, tmp_path: Path) -> None:
    cohort, subjects = _my_cohort(deepapl, tmp_path, TABLE)
    table = load_subjects(subjects, "Patient ID", "Outcome")
    assert list(table.table.columns) == ["outcome", "age_years", "sex"] and table.diagnosis == "outcome"
    m = read([cohort], subjects=table)
    assert set(m["layout"]) == {"cohort"}
    got = {(Path(p).name, s, lab, sp) for p, s, lab, sp in
           m[["path", "subject", "label", "source_split"]].itertuples(index=False)}
    assert got == {("a.jpg", "P01", "Blast, no lineage spec", "train"),
                   ("b.jpg", "P01", "Blast, no lineage spec", "train"),
                   ("c.jpg", "P01", UNLABELLED, "unlabelled"), ("d.jpg", "P02", "Monocyte", "train"),
                   ("e.jpg", "P02", UNLABELLED, "unlabelled")}
    assert m.set_index("subject")["sex"].to_dict() == {"P01": "F", "P02": "M"}
    assert m.groupby("subject")["age_years"].first().isna().tolist() == [False, True]
    assert subject_labels(m, "Outcome").to_dict() == {"P01": "APL", "P02": "AML"}
    with pytest.raises(DataError, match=r"patients.csv: column 'age_years' is blank for 1 patient\(s\) "
                                        r"\(P02\)"):
        subject_labels(m, "Age (years)")

    code, out, err = run("data", "describe", cohort, "--subjects", subjects, "--subject-id", "Patient ID",
                         "--diagnosis", "Outcome", "--json")
    assert code == 0, err
    c = json.loads(out)["cohort"]
    assert c["patients"] == 2 and c["patients_per_diagnosis"] == {"AML": 1, "APL": 1}
    assert c["diagnosis_column"] == "outcome"
    assert c["typed_cells"] == 3 and c["cells_per_type"] == {"Blast, no lineage spec": 2, "Monocyte": 1}
    assert c["unlabelled_cells"] == 2 and c["cells_per_patient"] == {"min": 2, "median": 2.5, "max": 3}
    assert sorted(o["size"] for o in c["overviews"]) == ["2920x2960", "4000x3000"]
    assert c["skipped_files"] == 1 and c["skipped"][0]["reason"] == "not an image"
    assert c["skipped"][0]["path"].endswith("Thumbs.db")


def test_without_subjects_a_plain_folder_is_not_a_cohort(deepapl: Path, tmp_path: Path) -> None:
    cohort, _ = _my_cohort(deepapl, tmp_path, TABLE)
    assert detect_layout(cohort) == "class-folders"
    with pytest.raises(DataError, match=r"my cohort: no subjects table \(master.csv beside an All folder\); "
                                        r"name one with --subjects FILE"):
        read([cohort], layout="cohort")


# ---- bad input: one line naming the file and the column, or a counted skip ---------------------------


def test_a_folder_the_table_lacks_is_a_counted_skip(deepapl: Path, tmp_path: Path) -> None:
    cohort, subjects = _my_cohort(deepapl, tmp_path, TABLE)
    for i, f in enumerate(_cells(deepapl, 3)):
        _put(f, cohort / "P03" / "Monocyte" / f"x{i}.jpg")
    _put(_cells(deepapl, 1)[0], cohort / "stray.jpg")
    c = scan_cohort(cohort, load_subjects(subjects, "Patient ID", "Outcome"))
    assert c.unlisted_folders == {"P03": 3}
    assert "P03" not in set(c.cells["subject"]) and len(c.cells) == 5
    reasons = [r for p, r in c.skipped if "/P03/" in p]
    assert reasons == [f"folder 'P03' is not a patient of {subjects}"] * 3
    assert (str(cohort / "stray.jpg"), "not inside a patient folder") in c.skipped
    code, out, _ = run("data", "describe", cohort, "--subjects", subjects, "--subject-id", "Patient ID",
                       "--diagnosis", "Outcome")
    assert code == 0 and "1 folder(s) not in the subjects table: P03" in out


def test_a_patient_with_no_cells_or_only_overviews_is_counted(deepapl: Path, tmp_path: Path) -> None:
    cohort, subjects = _my_cohort(deepapl, tmp_path, TABLE + "P04,AML,50,F\nP05,APL,60,M\n")
    _put(deepapl / OVERVIEW, cohort / "P05" / "Unsigned slides" / "field.jpg")
    (cohort / "P05" / "Unsigned slides" / "Thumbs.db").write_bytes(b"\xd0\xcf")
    (cohort / "P05" / "Unsigned slides" / "empty.jpg").write_bytes(b"")
    code, out, err = run("data", "describe", cohort, "--subjects", subjects, "--subject-id", "Patient ID",
                         "--diagnosis", "Outcome", "--json")
    assert code == 0, err
    c = json.loads(out)["cohort"]
    assert c["patients_without_cells"] == ["P04", "P05"] and c["patients"] == 2
    assert c["overview_images"] == 3 and {o["subject"] for o in c["overviews"]} == {"P02", "P05"}
    reasons = sorted(s["reason"] for s in c["skipped"])
    assert reasons == ["empty file (0 bytes)", "not an image", "not an image"]


def test_a_cohort_of_overview_images_only(deepapl: Path, tmp_path: Path) -> None:
    _put(deepapl / OVERVIEW, tmp_path / "c" / "P01" / "field.jpg")
    (tmp_path / "t.csv").write_text("id,diagnosis\nP01,AML\n")
    line = one_error_line("data", "describe", tmp_path / "c", "--subjects", tmp_path / "t.csv")
    assert line == (f"error: {tmp_path / 'c'}: no cells in the patient folders (1 overview image(s), "
                    f"0 skipped file(s))")


@pytest.mark.parametrize(("table", "options", "message"), [
    (TABLE, ["--subject-id", "Patient ID"], "patients.csv: no column 'diagnosis' (columns: Patient ID, "
     "Outcome, Age (years), Sex); name the patient-level label with --diagnosis"),
    (TABLE, ["--subject-id", "Patient ID", "--diagnosis", "Dx"], "patients.csv: no column 'Dx'"),
    (TABLE, ["--subject-id", "MRN", "--diagnosis", "Outcome"],
     "patients.csv: no column 'MRN' (columns: Patient ID, Outcome, Age (years), Sex) for the patient id"),
    (TABLE + "P01,AML,3,F\n", ["--subject-id", "Patient ID", "--diagnosis", "Outcome"],
     "patients.csv: patient id 'P01' appears 2 times in column 'Patient ID'"),
    (TABLE + " ,AML,3,F\n", ["--subject-id", "Patient ID", "--diagnosis", "Outcome"],
     "patients.csv: 1 row(s) have no patient id in column 'Patient ID'"),
    ("Patient ID,Outcome,Path\nP01,AML,x\n", ["--subject-id", "Patient ID", "--diagnosis", "Outcome"],
     "patients.csv: column(s) ['path'] would overwrite the manifest's own; rename them"),
    ("Patient ID,Outcome,Age,AGE\nP01,AML,1,1\n", ["--diagnosis", "Outcome"],
     "patients.csv: column names ['Age', 'AGE'] are empty or the same once written in snake_case"),
    ("id,diagnosis\nQ1,AML\nQ2,APL\n", [], "my cohort: no folder is named by a patient id of"),
    (TABLE, ["--subject-id", "Patient ID", "--diagnosis", "patient id"],
     "patients.csv: column 'Patient ID' holds the patient id; it cannot be the diagnosis too"),
])
def test_bad_subjects_tables(deepapl: Path, tmp_path: Path, table: str, options: list[str],
                             message: str) -> None:
    cohort, subjects = _my_cohort(deepapl, tmp_path, table)
    line = one_error_line("data", "describe", cohort, "--subjects", subjects, *options)
    assert message in line


def test_bad_option_combinations(deepapl: Path, tmp_path: Path) -> None:
    cohort, subjects = _my_cohort(deepapl, tmp_path, TABLE)
    assert "give it too" in one_error_line("data", "describe", deepapl, "--diagnosis", "Cohort")
    assert "--subjects reads patient cohorts; it does not go with --layout class-folders" in one_error_line(
        "data", "describe", cohort, "--subjects", subjects, "--diagnosis", "Outcome", "--layout",
        "class-folders")
    assert "nowhere.csv: subjects table not found" in one_error_line(
        "data", "describe", cohort, "--subjects", tmp_path / "nowhere.csv")


def test_label_conflicts_in_a_small_cohort(deepapl: Path, tmp_path: Path) -> None:
    a, b = _cells(deepapl, 2)
    root = tmp_path / "c"
    _put(a, root / "P01" / "Monocyte" / "a.jpg")
    _put(a, root / "P01" / "Blast" / "a copy.jpg")      # the same bytes, two types: a conflict
    _put(b, root / "P01" / "Blast" / "b.jpg")
    _put(b, root / "P01" / "Blast" / "b again.jpg")     # same bytes, same type: not a conflict
    _put(b, root / "P02" / "Monocyte" / "b.jpg")        # same bytes as P01's Blast, other patient: not one
    _put(a, root / "P02" / "unlabelled" / "a.jpg")      # unlabelled: never a conflict
    (tmp_path / "t.csv").write_text("id,diagnosis\nP01,AML\nP02,APL\n")
    m = read([root], subjects=load_subjects(tmp_path / "t.csv"))
    clash = label_conflicts(m)
    assert clash[["subject", "label"]].values.tolist() == [["P01", "Blast"], ["P01", "Monocyte"]]
    assert clash["sha1"].nunique() == 1 and {Path(p).name for p in clash["path"]} == {"a copy.jpg", "a.jpg"}


def test_image_size_reads_the_header_only(deepapl: Path, tmp_path: Path) -> None:
    assert image_size(deepapl / OVERVIEW) == (2920, 2960)
    giant = tmp_path / "giant.png"
    giant.write_bytes(png_bytes(None, width=4000, height=3000))  # no pixel data at all
    assert image_size(giant) == (4000, 3000)
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "text.jpg").write_text("hello")
    with pytest.raises(ImageError, match="empty.jpg: empty file"):
        image_size(tmp_path / "empty.jpg")
    with pytest.raises(ImageError, match="text.jpg: not a readable image"):
        image_size(tmp_path / "text.jpg")


@pytest.mark.parametrize(("name", "snake"), [("Age at Diagnosis", "age_at_diagnosis"),
                                             ("Patient_ID", "patient_id"), (" Age (years) ", "age_years")])
def test_snake_case(name: str, snake: str) -> None:
    assert snake_case(name) == snake


def test_whole_numbers_stay_whole_beside_a_blank(tmp_path: Path) -> None:
    """A 0/1 diagnosis with a blank (a patient without cells) keeps "1" as its class name, not "1.0";
    ages with a decimal stay decimal."""
    (tmp_path / "t.csv").write_text("id,apl,age\nP1,1,40.5\nP2,0,\nP3,,51\n")
    table = load_subjects(tmp_path / "t.csv", diagnosis="apl").table
    assert table["apl"].dropna().astype(str).tolist() == ["1", "0"] and table["apl"].isna().tolist()[2]
    assert table["age"].tolist()[::2] == [40.5, 51.0]
