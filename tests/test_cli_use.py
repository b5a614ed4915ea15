"""The CLI verbs that use a bundle, over bundles of both families, and their one-line errors."""

from __future__ import annotations

import csv
import shutil

import pytest
from typer.testing import CliRunner

from leukoscope.cli.verbs import app
from use_support import classical_bundle, cnmc_train, network_bundle  # noqa: F401

runner = CliRunner()


@pytest.fixture(params=["network", "classical"])
def bundle(request, network_bundle, classical_bundle):  # noqa: F811
    return {"network": network_bundle, "classical": classical_bundle}[request.param]


def test_predict_evaluate_explain(bundle, data, tmp_path):
    cells = data / "cnmc_cells"
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n broken")
    res = runner.invoke(app, ["predict", str(bundle), str(cells), str(bad), "--out", str(tmp_path / "p.csv"),
                              "--batch-size", "4"])
    assert res.exit_code == 0, res.output
    assert "wrote 11 rows" in res.output and "1 unreadable file(s) skipped" in res.output
    assert "broken.png: not a readable image" in res.output
    with open(tmp_path / "p.csv", newline="") as f:
        assert next(csv.reader(f)) == ["path", "subject", "predicted", "p_all", "p_hem", "unfamiliarity",
                                       "unfamiliar"]

    res = runner.invoke(app, ["evaluate", str(bundle), str(cells), "--out", str(tmp_path / "ev")])
    assert res.exit_code == 0, res.output
    assert "subject level" in res.output and "ECE before / after" in res.output
    assert (tmp_path / "ev" / "report.html").is_file() and (tmp_path / "ev" / "metrics.json").is_file()

    one = sorted((cells / "hem").glob("*.png"))[0]
    res = runner.invoke(app, ["explain", str(bundle), str(one), "--out", str(tmp_path / "ex")])
    assert res.exit_code == 0, res.output
    assert "wrote 1 explanation(s)" in res.output and len(list((tmp_path / "ex").glob("*.png"))) == 1


def test_export_network_then_predict_uses_onnx(network_bundle, data, tmp_path):  # noqa: F811
    b = tmp_path / "b"
    shutil.copytree(network_bundle, b)
    res = runner.invoke(app, ["export", str(b), "--onnx"])
    assert res.exit_code == 0, res.output
    assert (b / "model.onnx").is_file() and not (b / "model.int8.onnx").exists()
    assert "and model.opt.onnx: optimised for this machine" in res.output and (b / "model.opt.onnx").is_file()
    res = runner.invoke(app, ["predict", str(b), str(data / "cnmc_cells"), "--out", str(tmp_path / "p.csv")])
    assert res.exit_code == 0 and "OnnxBundle" in res.output
    res = runner.invoke(app, ["predict", str(b), str(data / "cnmc_cells"), "--out", str(tmp_path / "q.csv"),
                              "--runtime", "onnx-int8"])
    assert res.exit_code == 1 and "model.int8.onnx" in res.output and "Traceback" not in res.output


@pytest.mark.parametrize("args, message", [
    (["export", "{classical}", "--onnx"], "ONNX export is for network bundles"),
    (["export", "{network}"], "--onnx"),
    (["predict", "{network}", "{missing}", "--out", "{out}"], "no such file or folder"),
    (["predict", "{network}", "{data}", "--out", "{out}", "--engine", "spark"], "--engine"),
    (["predict", "{missing}", "{data}", "--out", "{out}"], "not a model bundle"),
    (["evaluate", "{network}", "{data}", "--out", "{out}", "--side", "nowhere"], "--side"),
])
def test_errors_are_one_red_line(args, message, network_bundle, classical_bundle, data, tmp_path):  # noqa: F811
    fill = {"classical": classical_bundle, "network": network_bundle, "missing": tmp_path / "missing",
            "out": tmp_path / "out", "data": data / "cnmc_cells"}
    res = runner.invoke(app, [a.format(**fill) for a in args])
    assert res.exit_code == 1
    assert message in res.output and "Traceback" not in res.output
    assert res.output.count("error:") == 1


def test_an_error_naming_a_file_that_is_not_utf8_is_one_line(tmp_path):
    """A bundle path with bytes that are not UTF-8 is named with \\x escapes, not a UnicodeEncodeError."""
    import os

    folder = os.fsdecode(os.fsencode(str(tmp_path)) + b"/caf\xe9-bundle")
    os.mkdir(folder)
    r = runner.invoke(app, ["predict", folder, str(tmp_path), "--out", str(tmp_path / "p.csv")])
    assert r.exit_code == 1, r.output
    assert "caf\\xe9-bundle" in r.output and "not a model bundle" in r.output
    assert "Traceback" not in r.output and len(r.output.strip().splitlines()) == 1
