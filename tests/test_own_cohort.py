"""A user's own patient cohort (README "Your own patient cohort"): folders named by their own ids, any layout
under them, a patients table with its own column names; trained, evaluated and reported through the CLI
with ``--subjects --subject-id --diagnosis``, and what the scan leaves out is said."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from patients_support import SIZE, patients, run

#: A folder the table does not list: left out, one line.
UNLISTED = "Visitor 99"



def _own_id(i: int) -> str:
    return f"Fall {i:02d} Zürich"  # a space and a non-ASCII character, as a user's ids may have


@pytest.fixture(scope="module")
def own(data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """4 APL + 4 AML DeepAPL patients renamed, 8 cells each: even ones under <id>/<type>/, odd ones
    directly in <id>/ (unlabelled); patients.csv names its columns "Case No." and "Outcome"; one
    folder and one non-image file the table does not explain."""
    src = data / "deepapl" / "Data"
    master = pd.read_csv(src / "master.csv").set_index("Patient_ID")
    root = tmp_path_factory.mktemp("own") / "my cohort"
    rows = []
    for i, pid in enumerate(patients(data, 4)):
        own_id = _own_id(i)
        files = sorted(p for p in (src / "All" / pid).rglob("*.jpg") if p.stat().st_size < 200_000)[:8]
        for f in files:
            dst = root / own_id / (f.parent.name if i % 2 == 0 else "") / f.name
            dst.parent.mkdir(parents=True, exist_ok=True)
            dst.symlink_to(f)
        rows.append({"Case No.": own_id, "Outcome": master.loc[pid, "Diagnosis"]})
    (root / UNLISTED).mkdir()
    (root / UNLISTED / "cell.jpg").symlink_to(files[0])
    (root / _own_id(0) / "Thumbs.db").write_bytes(b"\0" * 16)
    pd.DataFrame(rows).to_csv(root / "patients.csv", index=False)
    return root


def _table(own: Path) -> list[object]:
    return ["--subjects", own / "patients.csv", "--subject-id", "Case No.", "--diagnosis", "Outcome"]


def test_train_evaluate_report_own_cohort(own: Path, tmp_path: Path) -> None:
    code, out = run("train", own, *_table(own), "--target", "diagnosis", "--img-size", SIZE, "--cv", 2,
                    "--repeats", 1, "--out", tmp_path / "run")
    assert code == 0, out
    flat = " ".join(out.split())  # Rich wraps long lines
    assert f"{own / UNLISTED}: folder not in the patients table patients.csv (1 file(s))" in flat
    assert "Thumbs.db: not an image" in flat
    config = json.loads((tmp_path / "run" / "bundle" / "config.json").read_text())
    assert config["target"] == "outcome" and config["positive"] == "APL"
    assert json.loads((tmp_path / "run" / "cv.json").read_text())["n_patients"] == 8

    code, out = run("evaluate", tmp_path / "run" / "bundle", own, *_table(own), "--out", tmp_path / "ev")
    assert code == 0, out
    assert json.loads((tmp_path / "ev" / "metrics.json").read_text())["patient"]["n_patients"] == 8

    code, out = run("report", tmp_path / "run" / "bundle", own / _own_id(1), "--out", tmp_path / "report")
    assert code == 0, out
    assert _own_id(1) in out and (tmp_path / "report" / "patients.csv").is_file()
    code, out = run("report", tmp_path / "run" / "bundle", own, "--cohort", *_table(own), "--out",
                    tmp_path / "report-all")  # every patient of the table, found as the scan finds them
    assert code == 0, out
    reported = pd.read_csv(tmp_path / "report-all" / "patients.csv")
    assert sorted(reported["subject"].astype(str)) == [_own_id(i) for i in range(8)]
    not_reported = json.loads((tmp_path / "report-all" / "patients.json").read_text())["not_reported"]
    assert {"folder": str(own / UNLISTED), "reason": "folder not in the patients table patients.csv"} \
        in not_reported
    code, out = run("report", tmp_path / "run" / "bundle", own / _own_id(1), *_table(own), "--out",
                    tmp_path / "r")
    assert code == 1 and "--subjects: a table of patients goes with --cohort" in " ".join(out.split())


def test_without_a_table_train_says_how_to_give_one(own: Path, tmp_path: Path) -> None:
    code, out = run("train", own / _own_id(0), "--target", "diagnosis", "--out", tmp_path)  # class folders
    assert code == 1 and "give --subjects FILE" in " ".join(out.split())


@pytest.mark.parametrize("verb", ["train", "evaluate"])
def test_columns_without_the_table_are_refused(own: Path, tmp_path: Path, verb: str) -> None:
    args = [tmp_path / "bundle"] if verb == "evaluate" else []
    code, out = run(verb, *args, own, "--diagnosis", "Outcome", "--out", tmp_path / "o")
    assert code == 1 and "--subject-id and --diagnosis name columns of --subjects FILE; give it too" in out


def _relabelled(own: Path, tmp_path: Path, header: str, row) -> Path:  # type: ignore[no-untyped-def]
    """A table of ``own``'s patients with other columns, plus a patient who has no folder."""
    table = pd.read_csv(own / "patients.csv")
    rows = [header] + [row(r["Case No."], r["Outcome"]) for _, r in table.iterrows()]
    rows.append(row("Fall 98 Genf", "AML"))
    path = tmp_path / f"{header.split(',')[-1]}.csv"
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return path


def test_the_diagnosis_column_is_the_one_named_by_train_and_evaluate(own: Path, tmp_path: Path) -> None:
    """--diagnosis names the label also beside a column called Diagnosis (here the opposite one), in train
    and in evaluate, whose table may call it anything; a patient of the table without cells is said."""
    flip = {"APL": "AML", "AML": "APL"}
    both = _relabelled(own, tmp_path, "Case No.,Diagnosis,Outcome", lambda i, d: f"{i},{flip[d]},{d}")
    code, out = run("train", own, "--subjects", both, "--subject-id", "Case No.", "--diagnosis", "Outcome",
                    "--target", "diagnosis", "--img-size", SIZE, "--cv", 2, "--repeats", 1, "--out",
                    tmp_path / "run")
    assert code == 0, out
    assert "patient Fall 98 Genf of Outcome.csv has no cell" in " ".join(out.split())
    truth = pd.read_csv(own / "patients.csv").set_index("Case No.")["Outcome"]
    cv = pd.read_csv(tmp_path / "run" / "patients.csv").set_index("subject")
    assert cv["outcome"].to_dict() == truth.to_dict()
    figures = {}
    for column, header, row in (("Result", "Case No.,Result", lambda i, d: f"{i},{d}"),
                                ("Diagnosis", "Case No.,Diagnosis", lambda i, d: f"{i},{flip[d]}")):
        table = _relabelled(own, tmp_path, header, row)
        code, out = run("evaluate", tmp_path / "run" / "bundle", own, "--subjects", table, "--subject-id",
                        "Case No.", "--diagnosis", column, "--out", tmp_path / column)
        assert code == 0, out
        metrics = json.loads((tmp_path / column / "metrics.json").read_text())
        assert "patient Fall 98 Genf" in " ".join(s["path"] + " " + s["reason"] for s in metrics["skipped"])
        figures[column] = metrics["patient"]
    assert figures["Result"]["n_patients"] == 8
    assert figures["Diagnosis"]["roc_auc"] == pytest.approx(1 - figures["Result"]["roc_auc"])
