"""A model trained through a class map whose rarest mapped types were merged into ``other``, evaluated on
another lab's cells: the map's labels go through the same merge before they are checked against the
model's classes, and the report counts the cells evaluated as well as the cells the map mapped."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from leukoscope.cli.verbs import app
from link_support import link_files

runner = CliRunner()


def test_a_mapped_model_with_merged_rare_types_evaluates_on_another_lab(data: Path, tmp_path: Path) -> None:
    deep = sorted((data / "deepapl" / "Data" / "All").glob("*/**/Signed slides/*/*.jpg"))
    for kind, n in (("Lymphocyte", 20), ("Segmented neutrophils", 20), ("Monocyte", 6), ("Eosinophils", 6)):
        link_files([p for p in deep if p.parent.name == kind][:n], tmp_path / "deepapl" / kind)
    for kind, n in (("lymphocyte", 5), ("neutrophil", 5), ("monocyte", 4), ("eosinophil", 3)):
        link_files(sorted((data / "pbc" / kind).glob("*.jpg"))[:n], tmp_path / "pbc" / kind)
    run = tmp_path / "run"
    res = runner.invoke(app, ["train", str(tmp_path / "deepapl"), "--model", "logistic_regression",
                              "--class-map", "pbc-deepapl", "--min-cells", "10", "--out", str(run)])
    assert res.exit_code == 0, res.output
    config = json.loads((run / "bundle" / "config.json").read_text())
    assert config["classes"] == ["lymphocyte", "neutrophil", "other"]  # monocyte and eosinophil merged
    out = tmp_path / "ev"
    res = runner.invoke(app, ["evaluate", str(run / "bundle"), str(tmp_path / "pbc"), "--out", str(out)])
    assert res.exit_code == 0, res.output  # the recorded map, then the recorded merge
    x = json.loads((out / "metrics.json").read_text())["crosslab"]
    assert x["class_map"]["mapped"] == {"eosinophil": 3, "lymphocyte": 5, "monocyte": 4, "neutrophil": 5}
    assert x["evaluated"] == 17 and x["evaluated_by_label"] == {"lymphocyte": 5, "neutrophil": 5, "other": 7}
    assert "Evaluated here:\n17 (lymphocyte 5, neutrophil 5, other 7)" in (out / "report.html").read_text()
    test = tmp_path / "ev-test"  # its own lab's test side: in-lab cells, so no cross-lab section
    res = runner.invoke(app, ["evaluate", str(run / "bundle"), str(tmp_path / "deepapl"), "--side", "test",
                              "--out", str(test)])
    assert res.exit_code == 0, res.output
    assert "crosslab" not in json.loads((test / "metrics.json").read_text())
    assert "In-lab vs cross-lab" not in (test / "report.html").read_text()
