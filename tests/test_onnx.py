"""ONNX export: fp32 parity with PyTorch, int8 agreement, runtime selection, stale and bad exports."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from leukoscope.bundle import load_bundle
from leukoscope.bundle.export import export_onnx
from leukoscope.bundle.onnx import OnnxBundle
from leukoscope.data.images import load_rgb
from leukoscope.errors import BundleError
from use_support import classical_bundle, network_bundle, onnx_bundle, sample_paths  # noqa: F401


@pytest.fixture(scope="module")
def sample(data):
    return [load_rgb(p) for p in sample_paths(data, n_allidb=60)]


def test_fp32_matches_pytorch(onnx_bundle, sample):  # noqa: F811
    torch_b, onnx_b = load_bundle(onnx_bundle, runtime="torch"), load_bundle(onnx_bundle, runtime="onnx")
    assert isinstance(onnx_b, OnnxBundle) and onnx_b.model_file == "model.onnx"
    assert not isinstance(torch_b, OnnxBundle)
    p_torch = torch_b.predict_proba(sample)
    p_onnx = onnx_b.predict_proba(sample)
    assert np.abs(p_torch - p_onnx).max() <= 1e-4
    # dynamic batch axis: one image at a time gives the same numbers
    single = np.concatenate([onnx_b.predict_proba([im]) for im in sample[:5]])
    assert np.abs(single - p_onnx[:5]).max() <= 1e-5


def test_bundle_trained_with_tta_matches_too(onnx_bundle, sample, tmp_path):  # noqa: F811
    copy = tmp_path / "b"
    shutil.copytree(onnx_bundle, copy)
    cfg = json.loads((copy / "config.json").read_text())
    (copy / "config.json").write_text(json.dumps({**cfg, "tta": True}))
    p_torch = load_bundle(copy, runtime="torch").predict_proba(sample[:20])
    p_onnx = load_bundle(copy, runtime="onnx").predict_proba(sample[:20])
    assert np.abs(p_torch - p_onnx).max() <= 1e-4
    assert np.abs(p_onnx - load_bundle(onnx_bundle, runtime="onnx").predict_proba(sample[:20])).max() > 1e-6


def test_int8_agrees_on_labels(onnx_bundle, sample):  # noqa: F811
    cfg = json.loads((onnx_bundle / "config.json").read_text())["onnx"]
    assert cfg["int8"] == "model.int8.onnx" and cfg["int8_calibration_images"] > 0
    int8 = load_bundle(onnx_bundle, runtime="onnx-int8")
    assert int8.model_file == "model.int8.onnx"
    p_torch = load_bundle(onnx_bundle, runtime="torch").predict_proba(sample)
    p_int8 = int8.predict_proba(sample)
    agree = (p_torch.argmax(axis=1) == p_int8.argmax(axis=1)).mean()
    assert len(sample) >= 90 and agree >= 0.99
    import onnx

    ops = {n.op_type for n in onnx.load(str(onnx_bundle / "model.int8.onnx")).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops  # static QDQ, not dynamic quantisation


def test_int8_biases_cancel_the_weight_rounding_shift(onnx_bundle, tmp_path, monkeypatch):  # noqa: F811
    """The exported int8 convolutions carry bias correction: their penultimate features (what the
    unfamiliarity score reads) drift less from fp32 on average, over the bundle's own cells, than
    the same export without it."""
    from leukoscope.bundle import export

    cells = [load_rgb(p) for p in export.calibration_paths(onnx_bundle)]

    plain = tmp_path / "plain"
    shutil.copytree(onnx_bundle, plain)
    monkeypatch.setattr(export, "_correct_biases", lambda *args: 0)
    export_onnx(plain, int8=True)
    fp32 = load_bundle(onnx_bundle, runtime="onnx").embed_logits(cells)[1]

    def shift(bundle_dir):
        emb = load_bundle(bundle_dir, runtime="onnx-int8").embed_logits(cells)[1]
        return float(np.linalg.norm((emb - fp32).mean(axis=0)) / np.linalg.norm(fp32.mean(axis=0)))

    corrected, uncorrected = shift(onnx_bundle), shift(plain)
    assert corrected < 0.5 * uncorrected, (corrected, uncorrected)  # measured: 0.0033 vs 0.0094
    assert "biases corrected" in json.loads((onnx_bundle / "config.json").read_text())["onnx"]["int8_scheme"]


def test_fp32_nodes_are_the_leading_convolutions_up_to_a_quarter_and_the_classifier():
    import onnx

    from leukoscope.bundle.export import fp32_nodes

    def graph(n_convs: int) -> onnx.ModelProto:
        nodes = [onnx.helper.make_node("Conv", [f"x{i}", f"w{i}"], [f"x{i + 1}"], name=f"conv{i}")
                 for i in range(n_convs)]
        nodes.append(onnx.helper.make_node("Gemm", [f"x{n_convs}", "w", "b"], ["y"], name="head"))
        return onnx.helper.make_model(onnx.helper.make_graph(nodes, "g", [], []))

    assert fp32_nodes(graph(49), 3) == ["conv0", "conv1", "conv2", "head"]  # Lite0 has 49
    assert fp32_nodes(graph(49), 7) == [f"conv{i}" for i in range(7)] + ["head"]
    assert fp32_nodes(graph(8), 7) == ["conv0", "conv1", "head"]  # a small network: a quarter at most


def test_int8_export_keeps_the_fewest_fp32_convolutions_whose_calls_agree(network_bundle, tmp_path,  # noqa: F811
                                                                        monkeypatch):
    """Export tries ``INT8_FP32_CONVS`` fewest first and keeps the first count whose held-out calls
    agree with fp32's as ``--runtime auto`` asks; where none agrees, or too few cells are held out to
    tell, the most it may keep."""
    import onnx

    import leukoscope.bundle.onnx as bundle_onnx
    from leukoscope.bundle.export import INT8_FP32_CONVS, calibration_paths

    b = tmp_path / "b"
    shutil.copytree(network_bundle, b)
    calibration = calibration_paths(b, 16)  # the rest of the tiny bundle's train / val cells are held out
    monkeypatch.setattr(bundle_onnx, "AUTO_INT8_AGREEMENT", 0.0)
    tried = export_onnx(b, int8=True, calibration=calibration)["int8_scheme"]
    assert f"({INT8_FP32_CONVS[-1]} tried;" in tried
    monkeypatch.setattr(bundle_onnx, "AUTO_INT8_IMAGES", 1)  # now those few are enough to tell
    for agreement, kept in ((0.0, INT8_FP32_CONVS[0]), (1.01, INT8_FP32_CONVS[-1])):
        monkeypatch.setattr(bundle_onnx, "AUTO_INT8_AGREEMENT", agreement)
        info = export_onnx(b, int8=True, calibration=calibration)
        assert f"({kept} tried;" in info["int8_scheme"] and info["int8_agreement_images"] > 0
        model = onnx.load(str(b / "model.int8.onnx"))
        producer = {o: n.op_type for n in model.graph.node for o in n.output}
        convs = [n for n in model.graph.node if n.op_type == "Conv"]
        float_convs = [n for n in convs if producer.get(n.input[1]) != "DequantizeLinear"]
        assert len(float_convs) == min(kept, len(convs) // 4)  # leukonet: too few convolutions to keep any
        assert info["int8_fp32_convs"] == len(float_convs)  # what it kept, not what it tried
        assert f"first {len(float_convs)} convolutions" in info["int8_scheme"]


def test_each_export_has_a_twin_optimised_for_this_machine_and_only_this_machine_opens_it(
        onnx_bundle, sample, tmp_path, monkeypatch):  # noqa: F811
    """Export writes ``model.opt.onnx`` and ``model.int8.opt.onnx``: the graphs as ONNX Runtime
    optimises them on this CPU, recorded with its ``cpu_signature``. On this machine a session
    opens from the twin (so it runs even with model.onnx damaged) with the same outputs; a bundle
    recorded for another machine, or a twin that will not open or is not what export wrote, is read
    from model.onnx."""
    import hashlib

    import leukoscope.models.onnx as models_onnx
    from leukoscope.bundle.verify import declared_files
    from leukoscope.models.onnx import cpu_signature

    config = json.loads((onnx_bundle / "config.json").read_text())
    assert config["onnx"]["optimized_for"] == cpu_signature() and cpu_signature().startswith("onnxruntime-")
    assert {"model.opt.onnx", "model.int8.opt.onnx"} <= set(declared_files(config))
    want = {rt: load_bundle(onnx_bundle, runtime=rt).predict_proba(sample) for rt in ("onnx", "onnx-int8")}

    b = tmp_path / "b"
    shutil.copytree(onnx_bundle, b)
    (b / "model.onnx").write_bytes(b"not a model")
    (b / "model.int8.onnx").write_bytes(b"not a model")
    for rt in ("onnx", "onnx-int8"):  # opened from the twins
        np.testing.assert_array_equal(load_bundle(b, runtime=rt).predict_proba(sample), want[rt])
    config["onnx"]["optimized_for"] = "onnxruntime-0.0 another machine"
    (b / "config.json").write_text(json.dumps(config))
    with pytest.raises(BundleError, match="model.onnx: not the file export wrote"):
        load_bundle(b, runtime="onnx")
    config["onnx"]["sha256"]["model.onnx"] = hashlib.sha256(b"not a model").hexdigest()
    (b / "config.json").write_text(json.dumps(config))
    with pytest.raises(BundleError, match="model.onnx: cannot load"):
        load_bundle(b, runtime="onnx")

    c = tmp_path / "c"
    shutil.copytree(onnx_bundle, c)
    (c / "model.opt.onnx").write_bytes(b"damaged")
    np.testing.assert_array_equal(load_bundle(c, runtime="onnx").predict_proba(sample), want["onnx"])

    monkeypatch.setattr(models_onnx, "cpu_signature", lambda: None)  # flags unreadable: no twin
    assert export_onnx(c)["optimized_for"] is None and not (c / "model.opt.onnx").exists()
    assert "model.opt.onnx" not in declared_files(json.loads((c / "config.json").read_text()))


def test_export_records_the_sha256_of_every_onnx_file_it_writes(onnx_bundle, tmp_path):  # noqa: F811
    import hashlib

    info = json.loads((onnx_bundle / "config.json").read_text())["onnx"]
    assert set(info["sha256"]) == {"model.onnx", "model.int8.onnx", "model.opt.onnx", "model.int8.opt.onnx"}
    for name, digest in info["sha256"].items():
        assert hashlib.sha256((onnx_bundle / name).read_bytes()).hexdigest() == digest
    copy = tmp_path / "b"
    shutil.copytree(onnx_bundle, copy)
    cfg = json.loads((copy / "config.json").read_text())
    cfg["onnx"]["sha256"] = ["model.onnx"]
    (copy / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(BundleError, match=r"config\.json: onnx\.sha256 must be an object of file name"):
        load_bundle(copy, runtime="torch")


def test_stale_export_is_not_used(onnx_bundle, tmp_path):  # noqa: F811
    copy = tmp_path / "b"
    shutil.copytree(onnx_bundle, copy)
    cfg = json.loads((copy / "config.json").read_text())
    cfg["onnx"]["weights_digest"] = "0" * 40  # as if the weights changed after export
    (copy / "config.json").write_text(json.dumps(cfg))
    assert not isinstance(load_bundle(copy), OnnxBundle)  # auto falls back to torch
    with pytest.raises(BundleError, match="other weights"):
        load_bundle(copy, runtime="onnx")


def test_unexported_and_classical_bundles(network_bundle, classical_bundle):  # noqa: F811
    assert not isinstance(load_bundle(network_bundle), OnnxBundle)
    with pytest.raises(BundleError, match="leukoscope export"):
        load_bundle(network_bundle, runtime="onnx")
    with pytest.raises(BundleError, match="ONNX export is for network bundles"):
        export_onnx(classical_bundle)
    with pytest.raises(BundleError, match="for network bundles"):
        load_bundle(classical_bundle, runtime="onnx")
    with pytest.raises(BundleError, match="runtime"):
        load_bundle(network_bundle, runtime="tensorrt")


def test_int8_with_no_readable_calibration_image_is_one_line(network_bundle, data, tmp_path):  # noqa: F811
    """Every calibration image unreadable (or none given): one red line, and nothing written."""
    from typer.testing import CliRunner

    from imagefiles import truncated_copy
    from leukoscope.cli.verbs import app

    copy, cal, empty = tmp_path / "b", tmp_path / "cal", tmp_path / "empty"
    shutil.copytree(network_bundle, copy)
    cal.mkdir()
    empty.mkdir()
    (cal / "a.png").write_bytes(b"not an image")
    truncated_copy(data / "aria_all" / "Benign" / "WBC-Benign-001.jpg", cal / "b.jpg", keep=0.02)
    unreadable = "none of the 2 int8 calibration image(s) can be read (first: "
    cases = ((cal, f"{unreadable}{cal / 'a.png'}: not a readable image)"),
             (empty, "--calibration: no images found for int8 calibration"))
    for folder, message in cases:
        r = CliRunner().invoke(app, ["export", str(copy), "--onnx", "--int8", "--calibration", str(folder)])
        assert r.exit_code == 1 and isinstance(r.exception, SystemExit)
        assert r.stderr.strip().splitlines() == [f"error: {message}"]
        assert not (copy / "model.onnx").exists() and not (copy / "model.int8.onnx").exists()


def test_calibration_images_named_through_links_are_not_held_out(network_bundle, tmp_path):  # noqa: F811
    """int8's agreement is measured on train / val cells not used to calibrate, compared by file (a linked
    folder names the same images otherwise, and they were counted as held out)."""
    from leukoscope.bundle.export import calibration_paths, held_out_images

    calibration = calibration_paths(network_bundle, 16)
    links = []
    for i, p in enumerate(calibration):
        links.append(tmp_path / f"{i}{Path(p).suffix}")
        links[-1].symlink_to(p)
    by_name = held_out_images(network_bundle, calibration)
    by_link = held_out_images(network_bundle, [str(x) for x in links])
    assert len(by_link) == len(by_name)
    assert all(np.array_equal(a, b) for a, b in zip(by_link, by_name, strict=True))


def test_an_onnx_model_with_external_weights_is_refused(onnx_bundle, sample, tmp_path, monkeypatch):  # noqa: F811
    """Opened from bytes, ONNX Runtime would read external data relative to the working directory: a hostile
    bundle could have a user's own file taken in as weights. It is refused before a session opens."""
    import hashlib

    import onnx

    b = tmp_path / "b"
    shutil.copytree(onnx_bundle, b)
    model = onnx.load(str(b / "model.onnx"))
    monkeypatch.chdir(tmp_path)  # where the runtime would look for weights.bin
    onnx.save_model(model, str(b / "model.onnx"), save_as_external_data=True, location="weights.bin",
                    size_threshold=0)
    shutil.move(b / "weights.bin", tmp_path / "weights.bin")
    config = json.loads((b / "config.json").read_text())
    config["onnx"]["sha256"]["model.onnx"] = hashlib.sha256((b / "model.onnx").read_bytes()).hexdigest()
    config["onnx"]["optimized_for"] = None  # no twin: the file itself is opened
    (b / "config.json").write_text(json.dumps(config))
    refused = r"model\.onnx: tensor '.+' refers to an external data file \('weights\.bin'\); a bundle's ONNX"
    with pytest.raises(BundleError, match=refused):
        load_bundle(b, runtime="onnx")
