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
from patients_support import cohort, run_dir  # noqa: F401
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
        "config.json", "format_version", "config", "files", "metrics.json", "split.csv",
        "model.onnx", "model.int8.onnx", "model.opt.onnx", "model.int8.opt.onnx",
        "weights (torch)", "predict (torch)", "weights (onnx)", "predict (onnx)",
        "weights (onnx-int8)", "predict (onnx-int8)"]
    assert findings[1].detail == str(FORMAT_VERSION)
    assert "model.safetensors" in findings[3].detail and "model.int8.onnx" in findings[3].detail


def test_a_split_csv_that_is_not_a_split_fails(network_bundle: Path, tmp_path: Path) -> None:  # noqa: F811
    """split.csv feeds --side, export --int8 and --adapt: garbage there is a finding, not a traceback."""
    b = shutil.copytree(network_bundle, tmp_path / "b")
    (b / "split.csv").write_text("nothing,here\n1,2\n")
    [split] = [f for f in verify(b) if f.check == "split.csv"]
    assert not split.ok and "a split needs the column(s) path, label" in split.detail


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
    assert len(lines) == len(verify(network_bundle)) == 8
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


def _findings(bundle: Path) -> dict[str, tuple[bool, str]]:
    return {f.check: (f.ok, f.detail) for f in verify(bundle)}


def test_onnx_files_copied_from_another_bundle_of_the_network_are_refused(onnx_bundle: Path,  # noqa: F811
                                                                          tmp_path: Path) -> None:
    """Only the weights' digest was recorded: another bundle's model.onnx (and its twin) passed verify, and
    predict ran the other network. Every ONNX file's SHA-256 is recorded now, and checked as it opens."""
    from safetensors.torch import load_file, save_file

    from leukoscope.bundle.export import export_onnx

    other = Path(shutil.copytree(onnx_bundle, tmp_path / "other"))
    tensors = load_file(str(other / "model.safetensors"))
    tensors["head.weight"].mul_(-1.0)  # the same network, other weights
    save_file(tensors, str(other / "model.safetensors"))
    export_onnx(other)
    bundle = _copy(onnx_bundle, tmp_path)
    for name in ("model.onnx", "model.opt.onnx"):
        shutil.copy(other / name, bundle / name)
    found = _findings(bundle)
    for check in ("model.onnx", "model.opt.onnx", "weights (onnx)"):
        ok, detail = found[check]
        assert not ok and "not the file export wrote" in detail
        assert detail.endswith(f"re-export: `leukoscope export {bundle} --onnx`")
    assert found["model.int8.onnx"][0] and found["weights (onnx-int8)"][0]
    with pytest.raises(BundleError, match=r"model\.onnx: not the file export wrote"):
        load_bundle(bundle, runtime="onnx")
    shutil.copy(onnx_bundle / "model.onnx", bundle / "model.onnx")  # the twin alone: skipped, the file runs
    assert load_bundle(bundle, runtime="onnx").predict_proba([]).shape == (0, 2)


def test_verify_opens_model_onnx_itself_not_only_this_machines_twin(onnx_bundle: Path,  # noqa: F811
                                                                    tmp_path: Path) -> None:
    """On the exporting machine sessions open from model.opt.onnx, so a truncated model.onnx passed verify
    and failed only where the bundle was shared; verify opens model.onnx itself too."""
    import hashlib

    bundle = _copy(onnx_bundle, tmp_path)
    truncated = (onnx_bundle / "model.onnx").read_bytes()[:100]
    (bundle / "model.onnx").write_bytes(truncated)
    config = json.loads((bundle / "config.json").read_text())
    config["onnx"]["sha256"]["model.onnx"] = hashlib.sha256(truncated).hexdigest()  # the digest no help
    (bundle / "config.json").write_text(json.dumps(config))
    found = _findings(bundle)
    ok, detail = found["model.onnx"]
    assert not ok and detail.startswith(f"{bundle / 'model.onnx'}: cannot load")
    assert found["weights (onnx)"][0] and found["predict (onnx)"][0]  # what predict uses here: the twin


def test_an_export_from_before_digests_were_recorded_asks_for_a_re_export(onnx_bundle: Path,  # noqa: F811
                                                                          tmp_path: Path) -> None:
    from leukoscope.bundle.onnx import OnnxBundle

    bundle = _copy(onnx_bundle, tmp_path)
    config = json.loads((bundle / "config.json").read_text())
    del config["onnx"]["sha256"]
    (bundle / "config.json").write_text(json.dumps(config))
    assert not isinstance(load_bundle(bundle), OnnxBundle)  # auto: torch, which it can trust
    with pytest.raises(BundleError, match=r"model\.int8\.onnx: no SHA-256 .* --onnx --int8`$"):
        load_bundle(bundle, runtime="onnx-int8")
    found = _findings(bundle)
    assert not found["model.onnx"][0] and "re-export: `leukoscope export" in found["model.onnx"][1]
    assert not found["weights (onnx)"][0] and found["weights (torch)"][0]


def test_a_freshly_exported_patient_bundle_passes(run_dir: Path, tmp_path: Path) -> None:  # noqa: F811
    """Its model.onnx is the embedding network for other tools: checked as a file, never loaded as the
    onnx runtime, which is for network bundles."""
    bundle = _copy(run_dir / "bundle", tmp_path)
    exported = runner.invoke(app, ["export", str(bundle), "--onnx"])
    assert exported.exit_code == 0, exported.output
    findings = verify(bundle)
    assert all(f.ok for f in findings), findings
    assert [f.check for f in findings][-3:] == ["model.onnx", "weights", "predict"]
    (bundle / "model.onnx").write_bytes((bundle / "model.onnx").read_bytes()[:-1] + b"\0")
    ok, detail = _findings(bundle)["model.onnx"]
    assert not ok and "not the file export wrote" in detail


def test_an_unreadable_metrics_json_fails(network_bundle: Path, tmp_path: Path) -> None:  # noqa: F811
    bundle = _copy(network_bundle, tmp_path)
    (bundle / "metrics.json").write_text('{"validation": {"accuracy": 0.9')
    ok, detail = _findings(bundle)["metrics.json"]
    assert not ok and detail.startswith(f"{bundle / 'metrics.json'}: invalid JSON (")
    with pytest.raises(BundleError, match="metrics.json: invalid JSON"):
        load_bundle(bundle).metrics()
    (bundle / "metrics.json").write_text("[1, 2]")
    with pytest.raises(BundleError, match="metrics.json: must be a JSON object, got list"):
        load_bundle(bundle).metrics()
