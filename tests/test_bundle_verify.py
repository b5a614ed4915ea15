"""``verify`` / ``leukoscope verify``: one finding per check on real bundles, and the format version."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from leukoscope.bundle import FORMAT_VERSION, load_bundle, verify
from leukoscope.cli.verbs import app
from leukoscope.errors import BundleError
from use_support import classical_bundle, network_bundle, onnx_bundle  # noqa: F401

runner = CliRunner()


def _copy(bundle: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(bundle, tmp_path / "bundle"))


def _edit_config(bundle: Path, **changes: object) -> None:
    cfg = bundle / "config.json"
    config = json.loads(cfg.read_text())
    for key, value in changes.items():
        if value is None:
            config.pop(key, None)
        else:
            config[key] = value
    cfg.write_text(json.dumps(config))


def test_a_network_bundle_and_its_exports_pass_every_check(onnx_bundle: Path) -> None:  # noqa: F811
    findings = verify(onnx_bundle)
    assert all(f.ok for f in findings), findings
    assert [f.check for f in findings] == [
        "config.json", "format_version", "config", "files",
        "weights (torch)", "predict (torch)", "weights (onnx)", "predict (onnx)",
        "weights (onnx-int8)", "predict (onnx-int8)"]
    assert findings[1].detail == str(FORMAT_VERSION)
    assert "model.safetensors" in findings[3].detail and "model.int8.onnx" in findings[3].detail


def test_a_classical_bundle_passes(classical_bundle: Path) -> None:  # noqa: F811
    findings = verify(classical_bundle)
    assert all(f.ok for f in findings), findings
    assert [f.check for f in findings][-2:] == ["weights", "predict"]
    assert "pipeline.skops" in findings[3].detail


def test_new_bundles_carry_the_format_version_and_old_ones_still_load(network_bundle: Path,  # noqa: F811
                                                                     tmp_path: Path) -> None:
    assert json.loads((network_bundle / "config.json").read_text())["format_version"] == FORMAT_VERSION
    old = _copy(network_bundle, tmp_path)
    _edit_config(old, format_version=None)  # as written before versions were recorded
    assert load_bundle(old).predict_proba([]).shape == (0, 2)
    findings = verify(old)
    assert all(f.ok for f in findings) and findings[1].detail.startswith("0 (")


@pytest.mark.parametrize("version", [FORMAT_VERSION + 1, "1", -1])
def test_an_unknown_format_version_is_refused(network_bundle: Path, tmp_path: Path,  # noqa: F811
                                              version: object) -> None:
    bundle = _copy(network_bundle, tmp_path)
    _edit_config(bundle, format_version=version)
    with pytest.raises(BundleError, match="format_version must be an integer in 0..1"):
        load_bundle(bundle)
    findings = verify(bundle)
    assert [(f.check, f.ok) for f in findings] == [("config.json", True), ("format_version", False)]


def test_a_missing_declared_file_fails_and_stops(onnx_bundle: Path, tmp_path: Path) -> None:  # noqa: F811
    bundle = _copy(onnx_bundle, tmp_path)
    (bundle / "model.int8.onnx").unlink()
    (bundle / "MODEL_CARD.md").unlink()
    last = verify(bundle)[-1]
    assert (last.check, last.ok, last.detail) == ("files", False, "missing: MODEL_CARD.md, model.int8.onnx")


def test_weights_that_do_not_fit_the_config_fail(network_bundle: Path, tmp_path: Path) -> None:  # noqa: F811
    bundle = _copy(network_bundle, tmp_path)
    _edit_config(bundle, classes=["all", "hem", "other"], mean_logits=[0.0] * 3)
    findings = verify(bundle)
    assert findings[-1].check == "weights (torch)" and not findings[-1].ok
    assert "classifier has 2 outputs" in findings[-1].detail


def test_weights_that_overflow_fail_the_smoke_prediction(network_bundle: Path,  # noqa: F811
                                                         tmp_path: Path) -> None:
    """Finite weights pass the load checks, but a classifier this large gives infinite scores."""
    from safetensors.torch import load_file, save_file

    bundle = _copy(network_bundle, tmp_path)
    tensors = load_file(str(bundle / "model.safetensors"))
    tensors["head.weight"].fill_(3e38)
    tensors["head.bias"].fill_(3e38)
    save_file(tensors, str(bundle / "model.safetensors"))
    findings = verify(bundle)
    assert [(f.check, f.ok) for f in findings][-2:] == [("weights (torch)", True), ("predict (torch)", False)]
    assert "summing to 1" in findings[-1].detail


def test_cli_prints_one_line_per_check_and_exits_1_on_a_failure(network_bundle: Path,  # noqa: F811
                                                                tmp_path: Path) -> None:
    ok = runner.invoke(app, ["verify", str(network_bundle)])
    assert ok.exit_code == 0, ok.output
    lines = ok.output.strip().splitlines()
    assert len(lines) == len(verify(network_bundle)) == 6
    assert all(line.startswith("ok") for line in lines) and lines[-1].startswith("ok   predict (torch):")

    bundle = _copy(network_bundle, tmp_path)
    (bundle / "model.safetensors").unlink()
    bad = runner.invoke(app, ["verify", str(bundle)])
    assert bad.exit_code == 1
    assert bad.output.strip().splitlines()[-1] == "FAIL files: missing: model.safetensors"

    run_folder = runner.invoke(app, ["verify", str(network_bundle.parent)])
    assert run_folder.exit_code == 1 and "a training run folder, not a bundle" in run_folder.output
    nothing = runner.invoke(app, ["verify", str(tmp_path / "nowhere")])
    assert nothing.exit_code == 1 and "not a model bundle (no config.json)" in nothing.output
