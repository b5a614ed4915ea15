"""A bundle's config.json is checked on load (types, ranges) and against its weights (pipeline,
safetensors, ONNX): each bad case is one ``BundleError`` naming the file and the key."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from leukoscope.bundle import CONFIG, load_bundle
from leukoscope.bundle.format import _STAIN_PARAMS
from leukoscope.cli.verbs import app
from leukoscope.data.images import load_rgb
from leukoscope.errors import BundleError
from leukoscope.models.registry import list_models
from use_support import classical_bundle, network_bundle, onnx_bundle  # noqa: F401


def edited(source: Path, folder: Path, **edits: Any) -> Path:
    """A copy of the bundle ``source`` with config keys set (dotted keys reach into sections)."""
    shutil.copytree(source, folder)
    config = json.loads((folder / CONFIG).read_text())
    for dotted, value in edits.items():
        *parents, key = dotted.split("__")
        section = config
        for p in parents:
            section = section[p]
        section[key] = value
    (folder / CONFIG).write_text(json.dumps(config))
    return folder


def refused(folder: Path, key: str, file: str = CONFIG, runtime: str = "torch") -> str:
    with pytest.raises(BundleError) as e:
        load_bundle(folder, runtime=runtime)
    message = str(e.value)
    assert message.startswith(str(folder / file)) and key in message and "\n" not in message, message
    return message


# ``a__b``: key b of section a
NETWORK_BAD = [
    ({"temperature": 0}, "temperature"),  # NaN probabilities, exit 0
    ({"temperature": -1.5}, "temperature"),  # every call inverted
    ({"temperature": float("nan")}, "temperature"),
    ({"temperature": "1.0"}, "temperature"),
    ({"temperature": True}, "temperature"),
    ({"input_size": 20000, "preprocessing__input_size": 20000}, "preprocessing.input_size"),  # OOM kill
    ({"preprocessing__input_size": 8}, "preprocessing.input_size"),
    ({"preprocessing__input_size": 64.5}, "preprocessing.input_size"),
    ({"input_size": 64}, "input_size"),  # disagrees with preprocessing
    ({"classes": ["all"]}, "classes"),
    ({"classes": ["all", "all"]}, "classes"),
    ({"classes": "all,hem"}, "classes"),
    ({"classes": ["all", 3]}, "classes"),
    ({"classes": ["all", " "]}, "classes"),
    ({"mean_logits": [0.5]}, "mean_logits must be a list of 2 finite numbers"),  # one per class
    ({"mean_logits": [0.5, float("inf")]}, "mean_logits"),
    ({"family": "svm"}, "family"),
    ({"model": 7}, "model"),
    ({"model": "svc"}, "model 'svc' is not a registered network; choose from: efficientnet_lite0, leukonet"),
    ({"model": "resnet9000"}, "model 'resnet9000' is not a registered network"),
    ({"model_params": {"depth": 3}}, "model_params"),
    ({"model_params": [3]}, "model_params"),
    ({"preprocessing": None}, "preprocessing"),
    ({"preprocessing__mean": [0.5, 0.5]}, "preprocessing.mean"),
    ({"preprocessing__std": [0.2, 0.0, 0.2]}, "preprocessing.std"),
    ({"preprocessing__std": ["0.2", 0.2, 0.2]}, "preprocessing.std"),
    ({"preprocessing__grayscale": "no"}, "preprocessing.grayscale"),
    ({"preprocessing__stain": {"method": "magic"}}, "preprocessing.stain.method"),
    ({"preprocessing__stain": {"method": "reinhard", "mean": [50, 0, 0]}}, "preprocessing.stain.std"),
    ({"preprocessing__stain": {"method": "macenko", "HERef": [[1, 2]] * 3, "maxCRef": [1]}},
     "preprocessing.stain.maxCRef"),
    ({"tta": "yes"}, "tta"),
    ({"versions": "1.0"}, "versions"),
    ({"onnx": {"weights_digest": 5}}, "onnx.weights_digest"),
    ({"preprocessing__std": [1e-300, 0.2, 0.2]}, "preprocessing.std"),  # NaN probabilities, exit 0
    ({"preprocessing__mean": [1e308, 0.5, 0.5]}, "preprocessing.mean"),
    ({"onnx": {"int8_agreement": "0.99"}}, "onnx.int8_agreement"),  # a TypeError at load
    ({"onnx": {"int8_agreement": 1.5}}, "onnx.int8_agreement"),
    ({"onnx": {"int8_agreement_images": "100"}}, "onnx.int8_agreement_images"),
    ({"unfamiliar__target_false_flag_rate": [1]}, "unfamiliar.target_false_flag_rate"),  # a TypeError
]


@pytest.mark.parametrize("edits, key", NETWORK_BAD, ids=[str(e) for e, _ in NETWORK_BAD])
def test_bad_network_config(edits: dict[str, Any], key: str, network_bundle: Path,  # noqa: F811
                            tmp_path: Path) -> None:
    refused(edited(network_bundle, tmp_path / "b", **edits), key)


CLASSICAL_BAD = [
    ({"temperature": 0}, "temperature"),
    ({"features": None}, "features"),
    ({"features": {"params": {}}}, "features"),
    ({"features": {"kind": "shape"}}, "features: unknown feature kind 'shape'"),
    ({"features": {"kind": "handcrafted", "params": {"size": 4}}}, "features: handcrafted features: size"),
    ({"features": {"kind": "deep", "params": {"input_size": 20000}}}, "features.params.input_size"),
    ({"features": {"kind": "both", "params": {"deep": {"input_size": 20000}}}},
     "features.params.deep.input_size"),
]


@pytest.mark.parametrize("edits, key", CLASSICAL_BAD, ids=[str(e) for e, _ in CLASSICAL_BAD])
def test_bad_classical_config(edits: dict[str, Any], key: str, classical_bundle: Path,  # noqa: F811
                              tmp_path: Path) -> None:
    refused(edited(classical_bundle, tmp_path / "b", **edits), key)


def test_config_that_is_not_an_object(network_bundle: Path, tmp_path: Path) -> None:  # noqa: F811
    copy = edited(network_bundle, tmp_path / "b")
    (copy / CONFIG).write_text("[1, 2]")
    refused(copy, "JSON object")


def test_stain_methods_match_training() -> None:
    from leukoscope.models.stain import METHODS

    assert set(_STAIN_PARAMS) == set(METHODS)


def test_good_configs_still_load(network_bundle: Path, classical_bundle: Path,  # noqa: F811
                                 tmp_path: Path) -> None:
    """Edge values inside the ranges, and keys nothing reads, are accepted."""
    b = load_bundle(edited(network_bundle, tmp_path / "n", temperature=0.05, tta=True, note={"any": 1},
                           preprocessing__stain=None), runtime="torch")
    assert b.temperature == 0.05
    assert load_bundle(edited(classical_bundle, tmp_path / "c", temperature=20)).temperature == 20


# ---- consistency with the weights ----------------------------------------------------------------

def test_network_head_must_fit_the_classes(network_bundle: Path, tmp_path: Path) -> None:  # noqa: F811
    refused(edited(network_bundle, tmp_path / "b", classes=["all", "hem", "other"], mean_logits=[0.0] * 3),
            "classifier has 2 outputs, but config.json lists 3 classes", file="model.safetensors")


@pytest.mark.parametrize("change, message", [("drop", "1 missing"), ("half", "1 of another shape or type"),
                                             ("nan", "NaN or infinite")])
def test_network_tensors_must_fit(change: str, message: str, network_bundle: Path,  # noqa: F811
                                  tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    copy = edited(network_bundle, tmp_path / "b")
    tensors = load_file(str(copy / "model.safetensors"))
    name = sorted(k for k in tensors if k.endswith("weight"))[0]
    if change == "drop":
        del tensors[name]
    elif change == "half":
        tensors[name] = tensors[name].half()
    else:
        tensors[name][0] = float("nan")
    save_file(tensors, str(copy / "model.safetensors"))
    refused(copy, message, file="model.safetensors")


def test_huge_model_params_allocate_nothing(network_bundle: Path, tmp_path: Path) -> None:  # noqa: F811
    """The network is first built on the meta device: a width of 100,000 (720 GB of weights) is
    refused for not fitting the weights file, not attempted."""
    refused(edited(network_bundle, tmp_path / "b", model_params={"width": 100_000}), "do not fit model",
            file="model.safetensors")


@pytest.mark.parametrize("name", list_models(family="network"))
def test_every_network_round_trips(name: str, tmp_path: Path) -> None:
    import torch

    from leukoscope.bundle import finish_bundle, writing_bundle
    from leukoscope.bundle.network import save_weights
    from leukoscope.models.networks import network_class
    from leukoscope.models.preprocess import preprocessing_config

    cls = network_class(name)
    module = cls(num_classes=3, pretrained=False).eval()
    config = {"family": "network", "model": name, "classes": ["a", "b", "c"],
              "preprocessing": preprocessing_config(64, cls.mean, cls.std)}
    with writing_bundle(tmp_path / "b") as folder:
        save_weights(module, folder)
        finish_bundle(folder, config, {})
    loaded: Any = load_bundle(tmp_path / "b", runtime="torch")
    tensors = [*loaded.module.parameters(), *loaded.module.buffers()]
    assert tensors and not any(t.is_meta for t in tensors)
    x = torch.rand(2, 3, 64, 64)
    with torch.inference_mode():
        torch.testing.assert_close(loaded.module(x), module(x))


@pytest.mark.parametrize("runtime", ["onnx", "onnx-int8"])
def test_onnx_outputs_must_fit_the_classes(runtime: str, onnx_bundle: Path, tmp_path: Path) -> None:  # noqa: F811
    file = {"onnx": "model.onnx", "onnx-int8": "model.int8.onnx"}[runtime]
    copy = edited(onnx_bundle, tmp_path / "b", classes=["all", "hem", "other"], mean_logits=[0.0] * 3)
    refused(copy, "gives 2 scores per image, but config.json lists 3 classes", file=file, runtime=runtime)
    refused(copy, "2 outputs", file="model.safetensors", runtime="torch")


def test_onnx_input_must_fit_the_input_size(onnx_bundle: Path, tmp_path: Path) -> None:  # noqa: F811
    copy = edited(onnx_bundle, tmp_path / "b", input_size=64, preprocessing__input_size=64)
    refused(copy, "takes input of shape", file="model.onnx", runtime="onnx")
    assert load_bundle(copy, runtime="torch").predict_proba([np.zeros((40, 40, 3), np.uint8)]).shape == (1, 2)


def test_serve_refuses_a_mismatched_onnx_bundle(onnx_bundle: Path, tmp_path: Path) -> None:  # noqa: F811
    from leukoscope.serve.app import create_app

    with pytest.raises(BundleError, match="scores per image"):
        create_app(edited(onnx_bundle, tmp_path / "b", classes=["all", "hem", "other"],
                          mean_logits=[0.0] * 3))


@pytest.fixture(scope="module")
def four_class_pipeline(data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Logistic regression on handcrafted features of 32 real aria_all cells (four classes)."""
    from leukoscope.bundle.classical import save_pipeline
    from leukoscope.features import get_extractor
    from leukoscope.models.registry import get_model

    classes = sorted(p.name for p in (data / "aria_all").iterdir() if p.is_dir())
    paths = [p for c in classes for p in sorted((data / "aria_all" / c).glob("*.jpg"))[:8]]
    X = get_extractor("handcrafted").compute([load_rgb(p) for p in paths])
    out = tmp_path_factory.mktemp("four") / "pipeline.skops"
    save_pipeline(get_model("logistic_regression").build().fit(X, np.repeat(np.arange(4), 8)), out)
    return out


def test_classical_pipeline_must_fit_the_classes(classical_bundle: Path, four_class_pipeline: Path,  # noqa: F811
                                                 tmp_path: Path) -> None:
    copy = edited(classical_bundle, tmp_path / "b")
    shutil.copy(four_class_pipeline, copy / "pipeline.skops")
    refused(copy, "predicts classes [0, 1, 2, 3], but config.json lists 2", file="pipeline.skops")
    # the same pipeline under a config naming its four classes loads
    fixed = edited(copy, tmp_path / "c", classes=["Benign", "Early", "Pre", "Pro"])
    assert load_bundle(fixed).classes == ["Benign", "Early", "Pre", "Pro"]


def test_classical_pipeline_must_fit_the_features(classical_bundle: Path, tmp_path: Path) -> None:  # noqa: F811
    copy = edited(classical_bundle, tmp_path / "b", features={"kind": "deep", "params": {}})
    refused(copy, "takes 83 features, but the config.json 'features' settings give 1280",
            file="pipeline.skops")


# ---- through the command line ------------------------------------------------------------------

@pytest.mark.parametrize("edits, key", [({"temperature": 0}, "temperature"),
                                        ({"classes": ["all", "hem", "other"], "mean_logits": [0.0] * 3},
                                         "3 classes")])
def test_cli_predict_refuses_with_one_line(edits: dict[str, Any], key: str, onnx_bundle: Path,  # noqa: F811
                                           data: Path, tmp_path: Path) -> None:
    copy = edited(onnx_bundle, tmp_path / "b", **edits)
    res = CliRunner().invoke(app, ["predict", str(copy), str(data / "cnmc_cells"), "--out",
                                   str(tmp_path / "p.csv")])
    assert res.exit_code == 1 and "Traceback" not in res.output
    assert res.output.count("error:") == 1 and key in res.output
    assert not (tmp_path / "p.csv").exists()


@pytest.mark.parametrize("text, said", [("", "not a readable split"), ("path,side\nx.png,train\n",
                                                                      "a split needs the column(s) label"),
                                        (b"path,label\n\xff\xfe,all\n", "not a readable split")])
def test_a_bad_split_csv_is_one_line(text: str | bytes, said: str, network_bundle: Path,  # noqa: F811
                                     tmp_path: Path) -> None:
    """split.csv feeds export --int8's calibration, --adapt's training frequencies and the shortcut row."""
    from leukoscope.bundle.export import calibration_paths

    folder = edited(network_bundle, tmp_path / "b")
    (folder / "split.csv").write_bytes(text.encode() if isinstance(text, str) else text)
    for read in (lambda: load_bundle(folder).split(), lambda: calibration_paths(folder)):
        with pytest.raises(BundleError) as e:
            read()
        assert str(e.value).startswith(str(folder / "split.csv")) and said in str(e.value)


UNPARSABLE = ["[" * 200_000 + "]" * 200_000, '{"family": "network", "x": ' + "9" * 5000 + "}"]


@pytest.mark.parametrize("text", UNPARSABLE)
def test_json_python_cannot_parse_is_one_line(text: str, network_bundle: Path, tmp_path: Path) -> None:  # noqa: F811
    """Deep nesting (RecursionError) and a 5,000-digit number (ValueError) in config.json or metrics.json."""
    for name in (CONFIG, "metrics.json"):
        folder = edited(network_bundle, tmp_path / name)
        (folder / name).write_text(text)
        with pytest.raises(BundleError, match="invalid JSON"):
            load_bundle(folder).metrics() if name == "metrics.json" else load_bundle(folder)


def test_a_pipeline_declaring_gigabytes_is_refused_before_unpacking(classical_bundle: Path,  # noqa: F811
                                                                    tmp_path: Path) -> None:
    """A zip bomb: a few bytes of pipeline.skops declaring a 6 GB array, refused from its .npy header."""
    import io
    import zipfile

    folder = edited(classical_bundle, tmp_path / "b")
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f8", "fortran_order": False,
                                                 "shape": (750_000_000,)})
    with zipfile.ZipFile(folder / "pipeline.skops", "a") as z:
        z.writestr("bomb.npy", header.getvalue())
    with pytest.raises(BundleError, match="its arrays declare 6,000,.* refusing to unpack it"):
        load_bundle(folder)


@pytest.mark.parametrize("shape", [(5, 128), ()])
def test_an_unfamiliarity_tensor_of_the_wrong_shape_is_refused_at_load(shape: tuple[int, ...],
                                                                         network_bundle: Path,  # noqa: F811
                                                                         tmp_path: Path) -> None:
    """A precision that is not d x d (or a scalar) passed verify and failed inside predict's matmul."""
    from safetensors.numpy import load_file, save_file

    folder = edited(network_bundle, tmp_path / "b")
    tensors = load_file(str(folder / "unfamiliar.safetensors"))
    if "precision" not in tensors:
        pytest.skip("this bundle's score keeps no precision")
    width = tensors["precision"].shape[0]
    tensors["precision"] = np.ones(shape if shape else (), np.float32) if shape != (5, 128) \
        else np.ones((5, width), np.float32)
    save_file(tensors, str(folder / "unfamiliar.safetensors"))
    refused(folder, "unfamiliar.safetensors", file="unfamiliar.safetensors")
