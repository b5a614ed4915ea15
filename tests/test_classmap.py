"""Class maps (``--class-map``): the shipped PBC <-> DeepAPL map on the real data sets, the map file checks
(one line naming the file), and train / benchmark / evaluate across the two labs through the CLI."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from leukoscope.bundle import CARD, CONFIG, load_bundle
from leukoscope.cli.verbs import app
from leukoscope.data.classmap import from_json, load_class_map, shipped_maps
from leukoscope.data.manifest import labelled
from leukoscope.data.readers import read
from leukoscope.errors import BundleError, ConfigError, DataError
from link_support import link_files

runner = CliRunner()
MAPPED = {
    "lymphocyte": 609,
    "neutrophil": 479,
    "monocyte": 254,
    "ig": 193,
    "erythroblast": 119,
    "eosinophil": 70,
    "platelet": 41,
    "basophil": 37,
}
LEFT_OUT = {
    "Blast, no lineage spec": 387,
    "Plasma cells": 12,
    "Prolymphocyte": 1,
    "Promonocyte": 25,
    "Smudge cells": 397,
}


def test_shipped_map_puts_deepapl_in_pbc_vocabulary(data: Path) -> None:
    assert shipped_maps() == ["pbc-deepapl"]
    cmap = load_class_map("pbc-deepapl")
    m = read([data / "deepapl"])
    out, dropped = cmap.apply(m)
    assert dropped == LEFT_OUT
    lab = labelled(out)
    assert lab["label"].value_counts().to_dict() == MAPPED
    assert set(lab.loc[lab["label"] == "ig", "source_label"]) == {
        "Promyelocyte",
        "Myelocyte",
        "Metamyelocyte",
    }
    # unlabelled cells pass through; subjects stay, so DeepAPL splits are still grouped by patient
    assert (out["source_split"] == "unlabelled").sum() == (m["source_split"] == "unlabelled").sum()
    assert lab["subject"].notna().all() and lab["subject"].nunique() == 82
    pbc, none = cmap.apply(read([data / "pbc"]))
    assert none == {} and sorted(set(pbc["label"])) == sorted(MAPPED)


def _write(tmp_path: Path, name: str, text: str) -> Path:
    f = tmp_path / name
    f.write_text(text)
    return f


@pytest.mark.parametrize(
    ("name", "text", "why"),
    [
        ("dup.yaml", "classes:\n  a: [X]\n  b: [x]\n", "label 'x' is listed twice (already under 'a')"),
        ("dupkey.yaml", "classes:\n  a: [X]\n  a: [Y]\n", "key(s) ['a'] appear twice"),
        ("both.yaml", "classes:\n  a: [X]\ndrop: [X]\n", "label 'X' is listed twice (already under 'a')"),
        ("self.yaml", "classes:\n  a: [b]\n  b: [Y]\n", "common label(s) ['b'] are mapped elsewhere"),
        ("extra.yaml", "classes:\n  a: [X]\ntargets: [a]\n", "unknown key(s) ['targets']"),
        ("shape.yaml", "- a\n- b\n", "expected a 'classes:' mapping"),
        ("bad.yaml", "classes: [a\n", "not readable YAML"),
        ("cols.csv", "from,to\nX,a\n", "expected columns source,target"),
        ("dup.csv", "source,target\nX,a\nX,b\n", "label 'X' is listed twice"),
        ("blank.yaml", 'classes:\n  "": []\n  a: [X]\n', "a blank common label"),
        ("extra.csv", "source,target\nneutrophil,neutrophil,extra\n",
         "line 2: 3 fields, but the header names 2 (source,target); name the extra column"),
        ("nofield.csv", "source,target\nX,a\nneutrophil\n",
         "line 3: 1 field(s), but a row needs its source and target (columns source,target)"),
        ("twice.csv", "source,target,target\nX,a,b\n", "expected columns source,target (once each)"),
        ("quote.csv", 'source,target\nX,"a\n', "not a readable CSV"),
        ("empty.csv", "", "empty (expected columns source,target)"),
        ("map.txt", "X,a\n", "a class map is a .yaml, .yml or .csv file"),
    ],
)
def test_bad_map_files_are_one_line_naming_the_file(tmp_path: Path, name: str, text: str, why: str) -> None:
    _refused(_write(tmp_path, name, text), why)


def _refused(f: Path, why: str) -> None:
    with pytest.raises(ConfigError) as e:
        load_class_map(f)
    assert str(e.value).startswith(f"{f}: ") and why in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize(
    ("name", "raw", "why"),
    [
        ("notepad.yaml", "classes:\n  a: [X]\n".encode("utf-16"), "not readable YAML (not UTF-8: "),
        ("latin1.yaml", "classes:\n  a: [Café]\n".encode("latin-1"), "not readable YAML (not UTF-8: "),
        ("latin1.csv", "source,target\nCafé,a\n".encode("latin-1"), "not a readable CSV (not UTF-8: "),
    ],
)
def test_map_files_not_in_utf8_are_one_line(tmp_path: Path, name: str, raw: bytes, why: str) -> None:
    f = tmp_path / name
    f.write_bytes(raw)
    _refused(f, why)


def test_csv_map_ignores_empty_trailing_fields_and_reads_columns_by_name(tmp_path: Path) -> None:
    """Excel's trailing commas and a named comment column are harmless; the header names the columns."""
    excel = load_class_map(_write(tmp_path, "excel.csv", "source,target\nX,a,\n,,\nY,,\n"))
    noted = load_class_map(_write(tmp_path, "noted.csv", "note,target,source\nwhy,a,X\n,,Y\n"))
    for cmap in (excel, noted):
        assert cmap.classes == ("a",) and cmap.targets == {"x": "a", "a": "a"} and cmap.drop == {"y"}


def test_a_common_label_listing_no_source_maps_to_itself(data: Path, tmp_path: Path) -> None:
    """``lymphocyte: []`` or ``monocyte:`` (labels the data already use) is a common class, and stays one
    in the bundle's record."""
    f = _write(
        tmp_path,
        "some.yaml",
        "classes:\n  neutrophil: [Segmented neutrophils]\n  lymphocyte: []\n  monocyte:\n"
        "  eosinophil: [Eosinophils]\n",
    )
    cmap = load_class_map(f)
    m = read([data / "pbc"])
    part = m[m["label"].isin(["neutrophil", "lymphocyte", "monocyte", "eosinophil"])]
    out, dropped = cmap.apply(part)
    assert dropped == {} and out["label"].value_counts().to_dict() == part["label"].value_counts().to_dict()
    record = json.loads(json.dumps(cmap.to_json()))
    assert record["classes"]["lymphocyte"] == [] and record["classes"]["monocyte"] == []
    back = from_json(record, "x")
    assert back.classes == cmap.classes and back.same_labels(cmap) and back.to_json() == record
    only = load_class_map(_write(tmp_path, "only.yaml", "classes:\n  neutrophil:\n  lymphocyte:\n"))
    assert only.classes == ("lymphocyte", "neutrophil") and from_json(only.to_json(), "x") == only


def test_unknown_map_name_lists_the_shipped_ones() -> None:
    with pytest.raises(
        ConfigError, match=r"--class-map nope: no such file, nor a shipped map \(pbc-deepapl\)"
    ):
        load_class_map("nope")


def test_csv_map_drops_blank_targets_and_refuses_labels_it_does_not_name(data: Path, tmp_path: Path) -> None:
    m = read([data / "deepapl"])
    f = _write(
        tmp_path,
        "map.csv",
        'source,target\nLymphocyte,lymphocyte\n"Lymphocyte, variant",lymphocyte\nSmudge cells,\n',
    )
    with pytest.raises(DataError) as e:
        load_class_map(f).apply(m)
    assert str(e.value).startswith(f"{f}: label(s) of the data not in the map: ['Band neutrophils', ")
    part = m[m["label"].isin(["Lymphocyte", "Lymphocyte, variant", "Smudge cells"])]
    out, dropped = load_class_map(f).apply(part)
    assert dropped == {"Smudge cells": 397} and out["label"].value_counts().to_dict() == {"lymphocyte": 609}


@pytest.fixture(scope="module")
def two_labs(data: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Real cells in two labs' vocabularies: DeepAPL folders (two neutrophil kinds, smudge cells), PBC's."""
    root = tmp_path_factory.mktemp("labs")
    deep = sorted((data / "deepapl" / "Data" / "All").glob("*/**/Signed slides/*/*.jpg"))
    for kind, n in (
        ("Segmented neutrophils", 10),
        ("Band neutrophils", 10),
        ("Lymphocyte", 12),
        ("Lymphocyte, variant", 8),
        ("Smudge cells", 5),
    ):
        link_files([p for p in deep if p.parent.name == kind][:n], root / "deepapl" / kind)
    for kind in ("lymphocyte", "neutrophil"):
        link_files(sorted((data / "pbc" / kind).glob("*.jpg"))[:10], root / "pbc" / kind)
    return root / "deepapl", root / "pbc"


def _train_mapped(data: Path, model: str, run: Path, class_map: str = "pbc-deepapl") -> Result:
    """``leukoscope train DATA --model MODEL --class-map MAP --min-cells 0 --out RUN``."""
    return runner.invoke(app, ["train", str(data), "--model", model, "--class-map", class_map,
                               "--min-cells", "0", "--out", str(run)])


def test_train_on_one_lab_and_evaluate_on_the_other(two_labs: tuple[Path, Path], tmp_path: Path) -> None:
    deep, pbc = two_labs
    run = tmp_path / "run"
    res = _train_mapped(deep, "logistic_regression", run)
    assert res.exit_code == 0, res.output
    assert (
        "class map pbc-deepapl applied: 40 labelled cell(s) onto 2 common label(s) (lymphocyte 20, "
        "neutrophil 20); left out 5 cell(s) of types it drops (Smudge cells 5)" in res.output
    )
    cfg = json.loads((run / "bundle" / "config.json").read_text())
    assert cfg["classes"] == ["lymphocyte", "neutrophil"]
    # the bundle records the map's content (read back with the same checks), and its card shows it
    assert cfg["class_map"] == load_class_map("pbc-deepapl").to_json()
    assert cfg["class_map"]["classes"]["neutrophil"] == ["Segmented neutrophils", "Band neutrophils"]
    assert from_json(cfg["class_map"], "x") == load_class_map("pbc-deepapl")
    card = (run / "bundle" / CARD).read_text()
    assert "- class map (labels mapped before training): pbc-deepapl: basophil <- Basophil; " in card
    assert "neutrophil <- Segmented neutrophils | Band neutrophils; " in card
    assert "; left out: Blast, no lineage spec, Smudge cells, " in card
    out = tmp_path / "eval"
    res = runner.invoke(
        app, ["evaluate", str(run / "bundle"), str(pbc), "--class-map", "pbc-deepapl", "--out", str(out)]
    )
    assert res.exit_code == 0, res.output
    assert "in-lab (its test side, " in res.output
    side = json.loads((out / "crosslab.json").read_text())
    assert side == json.loads((out / "metrics.json").read_text())["crosslab"]
    assert side["evaluated"] == 20 and 0 <= side["these_data"]["f1_macro"] <= 1
    trained = json.loads((run / "bundle" / "metrics.json").read_text())
    assert side["in_lab"]["f1_macro"] == trained["test"]["f1_macro"]
    assert side["in_lab_side"] == "test" and side["in_lab_images"] == trained["sides"]["test"]
    assert side["class_map"] == {
        "name": "pbc-deepapl",
        "mapped": {"lymphocyte": 10, "neutrophil": 10},
        "left_out": {},
        "left_out_total": 0,
    }


def test_evaluate_refuses_a_mapped_label_the_model_lacks(
    two_labs: tuple[Path, Path], tmp_path: Path, data: Path
) -> None:
    deep, _ = two_labs
    run = tmp_path / "run"
    assert (
        _train_mapped(deep, "lda", run).exit_code
        == 0
    )
    other = tmp_path / "pbc3"
    link_files(sorted((data / "pbc" / "monocyte").glob("*.jpg"))[:3], other / "monocyte")
    res = runner.invoke(
        app,
        [
            "evaluate",
            str(run / "bundle"),
            str(other),
            "--class-map",
            "pbc-deepapl",
            "--out",
            str(tmp_path / "e"),
        ],
    )
    assert res.exit_code != 0
    assert "pbc-deepapl: target label(s) ['monocyte'] are not among the classes of" in res.output


def test_benchmark_scores_a_mapped_lab(two_labs: tuple[Path, Path], tmp_path: Path) -> None:
    deep, _ = two_labs
    res = runner.invoke(
        app,
        [
            "benchmark",
            str(deep),
            "--class-map",
            "pbc-deepapl",
            "--models",
            "lda",
            "--cv",
            "2",
            "--min-cells",
            "0",
            "--jobs",
            "1",
            "--out",
            str(tmp_path / "lb"),
            "--save-best",
            str(tmp_path / "best"),
        ],
    )
    assert res.exit_code == 0, res.output
    # the saved bundle records the map, so evaluate maps the same lab's cells without being told
    assert json.loads((tmp_path / "best" / "config.json").read_text())["class_map"]["name"] == "pbc-deepapl"
    res = runner.invoke(app, ["evaluate", str(tmp_path / "best"), str(deep), "--out", str(tmp_path / "ev")])
    assert res.exit_code == 0, res.output
    assert "none given, so the one the bundle was trained with" in res.output
    # its own lab's cells are in-lab: no cross-lab section (it showed the same figures twice, as cross-lab)
    assert "crosslab" not in json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert not (tmp_path / "ev" / "crosslab.json").exists()
    assert (
        "class map pbc-deepapl applied: 40 labelled cell(s) onto 2 common label(s) (lymphocyte 20, "
        "neutrophil 20); left out 5 cell(s) of types it drops (Smudge cells 5)" in res.output
    )
    # the leaderboard's files say so too
    run = json.loads((tmp_path / "lb" / "run.json").read_text())
    assert run["class_map"] == {
        "name": "pbc-deepapl",
        "mapped": {"lymphocyte": 20, "neutrophil": 20},
        "left_out": {"Smudge cells": 5},
        "left_out_total": 5,
    }
    line = (
        "class map pbc-deepapl applied: 40 labelled cell(s) onto 2 common label(s) (lymphocyte 20, "
        "neutrophil 20); left out 5 cell(s) of types it drops (Smudge cells 5)"
    )
    assert f"- {line}\n" in (tmp_path / "lb" / "leaderboard.md").read_text()
    assert f"<br>{line}." in (tmp_path / "lb" / "leaderboard.html").read_text()
    assert run["images"] + run["held_out_test"] == 40


def _report_rows(html: str) -> str:
    """The in-lab vs cross-lab section of an evaluation report (heading to the end of its table), its
    white space made single spaces."""
    start = html.index("<h2>In-lab vs cross-lab</h2>")
    return " ".join(html[start : html.index("</table>", start)].split())


def test_report_puts_in_lab_beside_cross_lab_and_counts_the_cells_left_out(
    two_labs: tuple[Path, Path], tmp_path: Path
) -> None:
    """PBC -> DeepAPL: DeepAPL cells of types the map drops are counted in metrics.json and report.html."""
    deep, pbc = two_labs
    run = tmp_path / "run"
    res = _train_mapped(pbc, "lda", run)
    assert res.exit_code == 0, res.output
    out = tmp_path / "eval"
    res = runner.invoke(
        app, ["evaluate", str(run / "bundle"), str(deep), "--class-map", "pbc-deepapl", "--out", str(out)]
    )
    assert res.exit_code == 0, res.output
    r = json.loads((out / "metrics.json").read_text())
    x = r["crosslab"]
    trained = json.loads((run / "bundle" / "metrics.json").read_text())
    assert x["class_map"] == {
        "name": "pbc-deepapl",
        "mapped": {"lymphocyte": 20, "neutrophil": 20},
        "left_out": {"Smudge cells": 5},
        "left_out_total": 5,
    }
    assert x["in_lab"] == {k: trained["test"][k] for k in x["figures"]}
    assert x["these_data"] == {k: r["cell"][k] for k in x["figures"]} and x["evaluated"] == 40
    n = trained["sides"]["test"]
    section = _report_rows((out / "report.html").read_text())
    assert f"<th>in-lab (its test side, {n} images)</th><th>cross-lab (these 40 images)</th>" in section
    assert "<b>5 cell(s) left out</b> as types the map drops" in section and "(Smudge cells 5)" in section
    assert "40 labelled cell(s) mapped onto 2 common label(s) (lymphocyte 20, neutrophil 20)" in section
    inlab, here = trained["test"]["f1_macro"], r["cell"]["f1_macro"]
    assert f"<tr><td>f1 macro</td><td>{inlab:.4f}</td><td>{here:.4f}</td></tr>" in section
    # a bundle trained without a map, evaluated without one: no cross-lab section (and no crosslab.json)
    unmapped, plain = tmp_path / "unmapped", tmp_path / "plain"
    res = runner.invoke(
        app, ["train", str(pbc), "--model", "lda", "--min-cells", "0", "--out", str(unmapped)]
    )
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["evaluate", str(unmapped / "bundle"), str(pbc), "--out", str(plain)])
    assert res.exit_code == 0, res.output
    assert "class map" not in res.output
    assert "In-lab vs cross-lab" not in (plain / "report.html").read_text()
    assert not (plain / "crosslab.json").exists() and "crosslab" not in json.loads(
        (plain / "metrics.json").read_text()
    )


def test_evaluate_reuses_the_map_the_bundle_was_trained_with(
    two_labs: tuple[Path, Path], tmp_path: Path
) -> None:
    """A PBC model scored on DeepAPL cells without --class-map: the bundle's recorded map, said in one line;
    an explicit --class-map still wins, and one that maps labels otherwise is said to."""
    deep, pbc = two_labs
    run = tmp_path / "run"
    res = _train_mapped(pbc, "lda", run)
    assert res.exit_code == 0, res.output

    def evaluate(out: str, *extra: str) -> tuple[str, dict]:
        args = ["evaluate", str(run / "bundle"), str(deep), "--out", str(tmp_path / out), *extra]
        res = runner.invoke(app, args)
        assert res.exit_code == 0, res.output
        return " ".join(res.output.split()), json.loads((tmp_path / out / "metrics.json").read_text())

    said, own = evaluate("own")
    assert "class map: none given, so the one the bundle was trained with (pbc-deepapl)" in said
    assert "class map pbc-deepapl applied: 40 labelled cell(s) onto 2 common label(s)" in said
    assert own["crosslab"]["class_map"]["left_out"] == {"Smudge cells": 5} and own["evaluated"] == 40
    said, given = evaluate("given", "--class-map", "pbc-deepapl")
    assert "none given" not in said and "differs" not in said  # the recorded map given again: no note
    assert given["cell"] == own["cell"]
    # a map that also drops the variant lymphocytes wins over the recorded one, and says so
    f = _write(
        tmp_path,
        "strict.csv",
        "source,target\nSegmented neutrophils,neutrophil\nBand neutrophils,neutrophil\n"
        'Lymphocyte,lymphocyte\n"Lymphocyte, variant",\nSmudge cells,\n',
    )
    said, strict = evaluate("strict", "--class-map", str(f))
    assert (
        f"class map: --class-map {f} differs from the one the bundle was trained with (pbc-deepapl); "
        f"using --class-map {f}" in said
    )
    assert strict["crosslab"]["class_map"]["left_out"] == {"Lymphocyte, variant": 8, "Smudge cells": 5}
    assert strict["evaluated"] == 32


def test_bundle_keeps_the_map_after_its_file_moves_and_a_tampered_record_is_refused(
    two_labs: tuple[Path, Path], tmp_path: Path
) -> None:
    deep, _ = two_labs
    f = _write(
        tmp_path,
        "lab.csv",
        "source,target\nSegmented neutrophils,neutrophil\nBand neutrophils,neutrophil\n"
        'Lymphocyte,lymphocyte\n"Lymphocyte, variant",lymphocyte\nSmudge cells,\n',
    )
    run = tmp_path / "run"
    res = _train_mapped(deep, "lda", run, class_map=str(f))
    assert res.exit_code == 0, res.output
    f.unlink()  # the record is the content, not the path
    b = load_bundle(run / "bundle")
    assert b.config["class_map"] == {
        "name": str(f),
        "classes": {
            "lymphocyte": ["Lymphocyte", "Lymphocyte, variant"],
            "neutrophil": ["Segmented neutrophils", "Band neutrophils"],
        },
        "drop": ["Smudge cells"],
    }
    assert (
        f"- class map (labels mapped before training): {f}: lymphocyte <- Lymphocyte | Lymphocyte, variant; "
        "neutrophil <- Segmented neutrophils | Band neutrophils; left out: Smudge cells"
        in (run / "bundle" / CARD).read_text()
    )
    for bad, why in (
        ("lab.csv", "expected an object with a 'name'"),
        ({"name": "m", "classes": {"a": ["X"], "b": ["x"]}}, "label 'x' is listed twice (already under 'a')"),
        ({"name": "m", "classes": {"a": ["X"]}, "drop": "Y"}, "'drop:' must be a list of source labels"),
        ({"name": "m", "classes": {"a": ["X"]}, "targets": []}, "unknown key(s) ['targets']"),
    ):
        copy = tmp_path / f"b{len(list(tmp_path.iterdir()))}"
        shutil.copytree(run / "bundle", copy)
        cfg = json.loads((copy / CONFIG).read_text())
        (copy / CONFIG).write_text(json.dumps(cfg | {"class_map": bad}))
        with pytest.raises(BundleError) as e:
            load_bundle(copy)
        message = str(e.value)
        assert message.startswith(f"{copy / CONFIG}: class_map must be a class map") and why in message
        assert "\n" not in message


def test_train_refuses_a_class_map_with_a_patient_target(two_labs: tuple[Path, Path], tmp_path: Path) -> None:
    deep, _ = two_labs
    res = runner.invoke(
        app,
        [
            "train",
            str(deep),
            "--target",
            "diagnosis",
            "--class-map",
            "pbc-deepapl",
            "--out",
            str(tmp_path / "p"),
        ],
    )
    assert res.exit_code != 0 and "Traceback" not in res.output
    assert "--class-map maps cell labels; it does not apply to --target (patient labels)" in res.output
    assert not (tmp_path / "p").exists()


def test_two_labs_with_their_own_labels_train_together_through_a_class_map(data, tmp_path):
    """PBC's 'basophil' and DeepAPL's 'Basophil' were refused as two inputs with different classes, and as
    labels spelt two ways, before the map could make them one."""
    both = [str(data / "pbc"), str(data / "deepapl")]
    res = CliRunner().invoke(app, ["train", *both, "--model", "logistic_regression", "--subset", "0.1",
                                   "--out", str(tmp_path / "x")])
    assert res.exit_code != 0 and "a --class-map can map them to common ones" in " ".join(res.output.split())
    res = CliRunner().invoke(app, ["train", *both, "--class-map", "pbc-deepapl", "--model",
                                   "logistic_regression", "--subset", "0.1", "--out", str(tmp_path / "run")])
    assert res.exit_code == 0, res.output
    bundle = load_bundle(tmp_path / "run" / "bundle")
    assert bundle.classes == ["basophil", "eosinophil", "erythroblast", "ig", "lymphocyte", "monocyte",
                              "neutrophil", "platelet"]
    split = bundle.split()
    assert split is not None and set(split["dataset"]) == {"pbc", "deepapl"}
    patients = split[split["subject"].notna()]
    assert len(patients) and patients.groupby("subject")["side"].nunique().max() == 1  # each on one side
