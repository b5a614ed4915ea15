"""Bundles from disk run no code: the skops allow-list is exact and complete, tampered pipelines are
refused before anything in them is built, corrupt weight files and tampered configs give one line, and
bundles are written with the modes the umask asks for."""

from __future__ import annotations

import importlib
import inspect
import json
import os
import shutil
import stat
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from leukoscope.bundle import load_bundle, verify
from leukoscope.bundle.classical import ALLOWED_TYPES, WEIGHTS, load_pipeline, save_pipeline
from leukoscope.cli.verbs import app
from leukoscope.data.images import load_rgb
from leukoscope.errors import BundleError
from leukoscope.features import get_extractor
from leukoscope.models.onnx import optimized_twin
from leukoscope.models.registry import get_model, list_models
from patients_support import cohort, run_dir  # noqa: F401 - fixtures used by name
from use_support import classical_bundle, network_bundle, onnx_bundle  # noqa: F401

CLASSICAL = list_models(family="classical")


# ---- the allow-list: exactly what a leukoscope pipeline holds -------------------------------------

@pytest.fixture(scope="module")
def features(data: Path) -> tuple[np.ndarray, np.ndarray]:
    """Handcrafted features of 32 real aria_all cells, 8 per class (4 classes)."""
    classes = sorted(p.name for p in (data / "aria_all").iterdir() if p.is_dir())
    paths = [p for c in classes for p in sorted((data / "aria_all" / c).glob("*.jpg"))[:8]]
    X = get_extractor("handcrafted").compute([load_rgb(p) for p in paths])
    return X, np.repeat(np.arange(len(classes)), 8)


@pytest.fixture(scope="module")
def dumps(features: tuple[np.ndarray, np.ndarray], tmp_path_factory: pytest.TempPathFactory
          ) -> dict[str, Path]:
    """Every registered classical model, fitted and saved the way ``save_best`` saves it."""
    X, y = features
    folder = tmp_path_factory.mktemp("dumps")
    out = {}
    for name in CLASSICAL:
        out[name] = folder / f"{name}.skops"
        save_pipeline(get_model(name).build(seed=0).fit(X, y), out[name])
    return out


@pytest.mark.parametrize("name", CLASSICAL)
def test_every_registered_model_loads(name: str, dumps: dict[str, Path],
                                      features: tuple[np.ndarray, np.ndarray]) -> None:
    import skops.io as sio

    assert set(sio.get_untrusted_types(file=dumps[name])) <= ALLOWED_TYPES
    proba = load_pipeline(dumps[name]).predict_proba(features[0])
    assert proba.shape == (len(features[0]), 4)


def test_allow_list_has_nothing_no_model_needs(dumps: dict[str, Path]) -> None:
    import skops.io as sio

    needed = set().union(*(sio.get_untrusted_types(file=f) for f in dumps.values()))
    assert needed == ALLOWED_TYPES


@pytest.mark.parametrize("name", sorted(ALLOWED_TYPES))
def test_allow_list_holds_classes_only(name: str) -> None:
    module, attr = name.rsplit(".", 1)
    obj = getattr(importlib.import_module(module), attr)
    assert inspect.isclass(obj), f"{name} is a function, not a class"
    assert module.split(".")[0] not in {"builtins", "os", "posix", "subprocess", "operator", "functools"}
    assert "_testing" not in module


# ---- tampered pipelines: each gadget would create a marker file if it were built ------------------

def _json(v: Any) -> dict[str, Any]:
    return {"__class__": type(v).__name__, "__module__": "builtins", "__loader__": "JsonNode",
            "content": json.dumps(v), "is_json": True}


def _tuple(*items: dict[str, Any]) -> dict[str, Any]:
    return {"__class__": "tuple", "__module__": "builtins", "__loader__": "TupleNode", "content": list(items)}


def _list(*items: dict[str, Any]) -> dict[str, Any]:
    return {"__class__": "list", "__module__": "builtins", "__loader__": "ListNode", "content": list(items)}


def _call(module: str, name: str, *args: dict[str, Any]) -> dict[str, Any]:
    """skops builds this node as ``module.name(*args)``."""
    return {"__class__": name, "__module__": module, "__loader__": "ConstructorFromReduceNode",
            "content": _tuple(*args)}


def _operator(name: str, *args: dict[str, Any]) -> dict[str, Any]:
    """skops builds this node as ``operator.name(*args)``."""
    return {"__class__": name, "__module__": "operator", "__loader__": "OperatorFuncNode",
            "attrs": _tuple(*args)}


def _partial(module: str, name: str, *args: dict[str, Any]) -> dict[str, Any]:
    func = {"__class__": name, "__module__": module, "__loader__": "FunctionNode"}
    return {"__class__": "partial", "__module__": "functools", "__loader__": "PartialNode",
            "content": {"func": func, "args": _tuple(*args), "namespace": _json(None),
                        "kwds": {"__class__": "dict", "__module__": "builtins", "__loader__": "DictNode",
                                 "content": {}, "key_types": _list()}}}


def gadget(kind: str, marker: Path) -> tuple[dict[str, Any], str]:
    """A schema node that creates ``marker`` when skops builds it, and the type that must be refused."""
    m = str(marker)
    return {
        # the exploit: sklearn.utils._testing re-exports subprocess.check_output
        "check_output": (_call("sklearn.utils._testing", "check_output", _list(_json("touch"), _json(m))),
                         "sklearn.utils._testing.check_output"),
        "os.system": (_call("os", "system", _json(f"touch '{m}'")), "os.system"),
        "builtins.eval": (_call("builtins", "eval", _json(f"__import__('pathlib').Path({m!r}).touch()")),
                          "builtins.eval"),
        # operator.call(operator.call(attrgetter("touch"), Path(m))): Path(m).touch()
        "operator.attrgetter": (_operator("call", _operator("call", _operator("attrgetter", _json("touch")),
                                                            _call("pathlib", "Path", _json(m)))),
                                "operator.attrgetter"),
        "functools.partial": (_operator("call", _partial("os", "system", _json(f"touch '{m}'"))),
                              "functools.partial"),
    }[kind]


GADGETS = ["check_output", "os.system", "builtins.eval", "operator.attrgetter", "functools.partial"]


def tamper(skops_file: Path, node: dict[str, Any]) -> None:
    """Add ``node`` as one more attribute of the saved pipeline, in place."""
    with zipfile.ZipFile(skops_file) as z:
        files = {n: z.read(n) for n in z.namelist()}
    schema = json.loads(files["schema.json"])
    attrs = schema["content"]  # the Pipeline's __dict__
    attrs["content"]["_gadget"] = node
    attrs["key_types"]["content"].append(attrs["key_types"]["content"][0])  # str, like the other keys
    files["schema.json"] = json.dumps(schema).encode()
    with zipfile.ZipFile(skops_file, "w") as z:
        for n, b in files.items():
            z.writestr(n, b)


@pytest.fixture
def tampered(classical_bundle: Path, tmp_path: Path, request: pytest.FixtureRequest  # noqa: F811
             ) -> tuple[Path, Path, str]:
    copy = tmp_path / "bundle"
    shutil.copytree(classical_bundle, copy)
    marker = tmp_path / "marker"
    node, refused = gadget(request.param, marker)
    tamper(copy / WEIGHTS, node)
    return copy, marker, refused


@pytest.mark.parametrize("tampered", GADGETS, indirect=True)
def test_tampered_pipeline_is_refused_and_runs_nothing(tampered: tuple[Path, Path, str]) -> None:
    bundle, marker, refused = tampered
    with pytest.raises(BundleError) as e:
        load_bundle(bundle)
    message = str(e.value)
    assert str(bundle / WEIGHTS) in message and refused in message and "\n" not in message
    assert not marker.exists()


@pytest.mark.parametrize("tampered", GADGETS, indirect=True)
def test_the_gadgets_are_live(tampered: tuple[Path, Path, str]) -> None:
    """Each tampered file does run its command when everything in it is trusted (so the test above
    proves the allow-list stops it, not that the gadget is broken)."""
    import skops.io as sio

    bundle, marker, _ = tampered
    weights = bundle / WEIGHTS
    sio.load(weights, trusted=sio.get_untrusted_types(file=weights))
    assert marker.exists()


@pytest.mark.parametrize("tampered", ["check_output"], indirect=True)
def test_cli_refuses_tampered_bundle(tampered: tuple[Path, Path, str], data: Path, tmp_path: Path) -> None:
    bundle, marker, refused = tampered
    res = CliRunner().invoke(app, ["predict", str(bundle), str(data / "cnmc_cells"),
                                   "--out", str(tmp_path / "p.csv")])
    assert res.exit_code == 1 and "Traceback" not in res.output
    assert res.output.count("error:") == 1 and refused in res.output
    assert not marker.exists() and not (tmp_path / "p.csv").exists()


# ---- corrupt and truncated weight files: one line naming the file -------------------------------

@pytest.mark.parametrize("damage", ["truncated", "garbage"])
@pytest.mark.parametrize("family, file, runtime", [("classical", WEIGHTS, "auto"),
                                                   ("network", "model.safetensors", "torch"),
                                                   ("onnx", "model.onnx", "onnx"),
                                                   ("onnx", "model.int8.onnx", "onnx-int8")])
def test_corrupt_weights_give_one_line(family: str, file: str, runtime: str, damage: str, tmp_path: Path,
                                       classical_bundle: Path, network_bundle: Path,  # noqa: F811
                                       onnx_bundle: Path) -> None:  # noqa: F811
    source = {"classical": classical_bundle, "network": network_bundle, "onnx": onnx_bundle}[family]
    copy = tmp_path / "b"
    shutil.copytree(source, copy)
    twin = optimized_twin(copy / file)  # an export's twin for this machine would stand in for it: damaged too
    for damaged in (copy / file, twin) if twin.is_file() else (copy / file,):
        raw = damaged.read_bytes()
        damaged.write_bytes(raw[:len(raw) // 2] if damage == "truncated" else b"\x00garbage" * 64)
    with pytest.raises(BundleError) as e:
        load_bundle(copy, runtime=runtime)
    assert str(copy / file) in str(e.value) and "\n" not in str(e.value)


# ---- tampered config.json: one line naming the file and the setting, from load and the CLI ------------

def _tampered_config(bundle: Path, tmp_path: Path, edit: Any) -> Path:
    copy = Path(shutil.copytree(bundle, tmp_path / "b"))
    config = json.loads((copy / "config.json").read_text())
    edit(config)
    (copy / "config.json").write_text(json.dumps(config))
    return copy


def _refused_in_one_line(bundle: Path, setting: str) -> None:
    with pytest.raises(BundleError) as e:
        load_bundle(bundle, runtime="torch")
    message = str(e.value)
    assert message.startswith(f"{bundle / 'config.json'}: {setting}") and "\n" not in message, message
    res = CliRunner().invoke(app, ["verify", str(bundle)])
    assert res.exit_code == 1 and isinstance(res.exception, SystemExit), res.exception
    last = res.output.splitlines()[-1]
    assert last.startswith("FAIL weights") and last.endswith(f": {message}"), res.output


@pytest.mark.parametrize("params", [{"width": -1}, {"width": 10**12}])  # torch raises RuntimeError on these
def test_model_params_torch_refuses_give_one_line(params: dict[str, int], network_bundle: Path,  # noqa: F811
                                                  tmp_path: Path) -> None:
    bundle = _tampered_config(network_bundle, tmp_path, lambda c: c.update(model_params=params))
    _refused_in_one_line(bundle, "model_params do not fit model 'leukonet'")


SIZES = "features.params.input_size must be an integer in 16..1024"


@pytest.mark.parametrize("spec, setting", [
    ({"kind": "deep", "params": {"input_size": "abc"}}, SIZES),
    ({"kind": "deep", "params": {"input_size": 50000}}, SIZES),  # loaded, then 60 GB at the first cell
    ({"kind": "deep", "params": {"input_size": 8}}, SIZES),
    ({"kind": "deep", "params": [1]}, "features.params must be a JSON object"),
    ({"kind": "colour", "params": {}}, 'features must be an object {"kind": "deep"'),
    ({"kind": "deep", "params": {"views": 0}}, "features: deep features: views must be 1..8")])
def test_tampered_patient_features_give_one_line(spec: dict[str, Any], setting: str, run_dir: Path,  # noqa: F811
                                                 tmp_path: Path) -> None:
    bundle = _tampered_config(run_dir / "bundle", tmp_path, lambda c: c.update(features=spec))
    _refused_in_one_line(bundle, setting)


def test_verify_checks_the_patient_weights_are_there(run_dir: Path, tmp_path: Path) -> None:  # noqa: F811
    bundle = Path(shutil.copytree(run_dir / "bundle", tmp_path / "b"))
    findings = verify(bundle)
    assert all(f.ok for f in findings), findings
    assert next(f for f in findings if f.check == "files").detail.endswith("patient.safetensors")
    (bundle / "patient.safetensors").unlink()
    files = verify(bundle)[-1]
    assert (files.check, files.ok, files.detail) == ("files", False, "missing: patient.safetensors")


# ---- file modes ------------------------------------------------------------------------------------

@pytest.mark.parametrize("umask, folder_mode, file_mode", [(0o022, 0o755, 0o644), (0o027, 0o750, 0o640)])
def test_bundles_honour_the_umask(umask: int, folder_mode: int, file_mode: int,
                                  features: tuple[np.ndarray, np.ndarray], tmp_path: Path) -> None:
    from leukoscope.bundle import finish_bundle, writing_bundle
    from leukoscope.bundle.network import save_weights
    from leukoscope.models.networks import LeukoNet

    X, y = features
    pipeline = get_model("gaussian_nb").build().fit(X, y)
    old = os.umask(umask)
    try:
        for family, write in [("network", lambda f: save_weights(LeukoNet(num_classes=4), f)),
                              ("classical", lambda f: save_pipeline(pipeline, f / WEIGHTS))]:
            with writing_bundle(tmp_path / family) as folder:
                write(folder)
                finish_bundle(folder, {"family": family, "classes": ["a", "b", "c", "d"]}, {})
            modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in (tmp_path / family).iterdir()}
            assert stat.S_IMODE((tmp_path / family).stat().st_mode) == folder_mode
            assert len(modes) >= 4 and set(modes.values()) == {file_mode}, modes
    finally:
        os.umask(old)
