"""Every registry, parametrized over every name it lists: each name loads and does its job on real data.

Models (builds, fits, predicts) have their own per-name tests in test_registry.py (classical) and
test_networks.py (networks); here every model name loads as its declared family. Listing the names
of any registry imports none of the heavy libraries its entries need.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from leukoscope.bundle import load_bundle
from leukoscope.bundle.format import EXPORT_FILES, EXPORTS, FAMILIES, RUNTIMES
from leukoscope.data.images import load_rgb
from leukoscope.data.manifest import validate
from leukoscope.data.readers import LAYOUTS, detect_layout, read
from leukoscope.errors import ConfigError
from leukoscope.explain import EXPLAINERS
from leukoscope.features import from_spec, get_extractor, list_feature_kinds
from leukoscope.models.registry import MODULES, get_model, list_models
from leukoscope.predict import ENGINES
from leukoscope.registry import Registry
from patients_support import cohort, run_dir  # noqa: F401
from use_support import classical_bundle, network_bundle, onnx_bundle  # noqa: F401

#: Families whose calls are explained by the cells that drove them (``PatientCall.drivers``, shown by
#: ``leukoscope report`` and the page's patient view), not by a per-cell explainer.
EXPLAINED_BY_DRIVERS = {"patient"}


@pytest.fixture(scope="module")
def patient_bundle(run_dir: Path) -> Path:  # noqa: F811
    return run_dir / "bundle"

#: A small real sample of each layout (a new layout needs one here).
LAYOUT_SAMPLES = {
    "cnmc": "cnmc_sample",
    "label-in-name": "allidb2",
    "cohort": "deepapl",
    "class-folders": "cnmc_cells",
    "csv": None,  # written from two ALL-IDB2 images
}
#: Small settings for each feature kind, so the test is quick (a new kind needs an entry here).
FEATURE_PARAMS = {
    "handcrafted": {"size": 64},
    "deep": {"input_size": 64},
    "both": {"handcrafted": {"size": 64}, "deep": {"input_size": 64}},
    "colour": {"size": 64},
}


def _cells(data: Path, n: int = 2) -> list[np.ndarray]:
    return [load_rgb(p) for p in sorted((data / "cnmc_cells" / "all").glob("*.png"))[:n]]


@pytest.mark.parametrize("name", list_models())
def test_every_model_loads_as_its_family(name: str) -> None:
    spec = get_model(name)
    assert spec.name == name and spec.doc
    assert name in list_models(family=spec.family)
    assert spec.builder.__module__ == MODULES[spec.family]


@pytest.mark.parametrize("kind", list_feature_kinds())
def test_every_feature_kind_computes_named_rows(kind: str, data: Path) -> None:
    extractor = get_extractor(kind, **FEATURE_PARAMS[kind])
    rows = extractor.compute(_cells(data))
    names = extractor.names()
    assert rows.shape == (2, len(names)) and len(set(names)) == len(names)
    assert extractor.kind == kind and from_spec(extractor.spec()).params() == extractor.params()


@pytest.mark.parametrize("name", LAYOUTS.names())
def test_every_layout_detects_and_reads_its_sample(name: str, data: Path, tmp_path: Path) -> None:
    sample = LAYOUT_SAMPLES[name]
    if sample is None:
        path = tmp_path / "manifest.csv"
        images = sorted((data / "allidb2").glob("*.tif"))[:2]
        path.write_text("path,label\n" + "".join(f"{p},{p.stem[-1]}\n" for p in images))
    else:
        path = data / sample
    assert detect_layout(path) == name
    m = read([path], name)
    validate(m)
    assert len(m) > 0 and LAYOUTS[name].doc


@pytest.mark.parametrize("family", FAMILIES.names())
def test_every_bundle_family_loads_predicts_and_is_explained(family: str, data: Path,
                                                             request: pytest.FixtureRequest) -> None:
    bundle = load_bundle(request.getfixturevalue(f"{family}_bundle"))
    assert type(bundle) is FAMILIES[family] and bundle.family == family
    p = bundle.predict_proba(_cells(data))
    np.testing.assert_allclose(p.sum(axis=1), 1.0, atol=1e-6)
    if family in EXPLAINED_BY_DRIVERS:
        call = bundle.diagnose(_cells(data), subject="any")  # type: ignore[attr-defined]
        # C-NMC cells are unlike the DeepAPL cohort's: those flagged unfamiliar are left out of the call
        assert call.cells_used + call.cells_unfamiliar == len(p) and call.unfamiliar_checked
        assert call.drivers() or call.cells_used == 0
        return
    e = EXPLAINERS[family].explain(bundle, _cells(data, 1)[0], int(p[0].argmax()), None)
    assert e.overlay is not None or e.features is not None


@pytest.mark.parametrize("runtime", EXPORTS.names())
def test_every_export_runtime_loads_its_file(runtime: str, data: Path, onnx_bundle: Path) -> None:  # noqa: F811
    bundle = load_bundle(onnx_bundle, runtime=runtime)
    assert type(bundle) is EXPORTS[runtime] and bundle.model_file == EXPORT_FILES[runtime]  # type: ignore[attr-defined]
    assert runtime in RUNTIMES
    np.testing.assert_allclose(bundle.predict_proba(_cells(data)).sum(axis=1), 1.0, atol=1e-5)


def test_explainers_and_engines_cover_their_choices() -> None:
    # every family's calls are explained: by an explainer, or by the cells that drove them
    assert sorted(EXPLAINERS.names()) == sorted(set(FAMILIES.names()) - EXPLAINED_BY_DRIVERS)
    assert ENGINES.names() == ["local", "ray"]
    for name in ENGINES.names():
        assert callable(ENGINES[name])


def test_listing_names_imports_no_heavy_library() -> None:
    code = ("import sys\n"
            "from leukoscope.data import LAYOUTS\n"
            "from leukoscope.models.registry import list_models\n"
            "from leukoscope.features import list_feature_kinds\n"
            "from leukoscope.bundle.format import EXPORTS, FAMILIES\n"
            "from leukoscope.predict import ENGINES\n"
            "assert len(list_models()) == 18 and list_feature_kinds() and len(LAYOUTS.names()) == 5\n"
            "assert FAMILIES.names() and EXPORTS.names() and ENGINES.names()\n"
            "print(sorted(m for m in ('torch', 'sklearn', 'onnxruntime', 'ray', 'scipy', 'skops') "
            "if m in sys.modules))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_a_registry_names_its_choices_and_checks_where_entries_come_from() -> None:
    reg: Registry[object] = Registry("widget", {"light": "leukoscope.errors"})
    assert reg.names() == ["light"] and "light" in reg and "heavy" not in reg
    with pytest.raises(ConfigError, match=r"unknown widget 'heavy'; choose from: light"):
        reg["heavy"]
    with pytest.raises(ValueError, match="declared in leukoscope.errors, registered in elsewhere"):
        reg.add("light", object(), "elsewhere")
    with pytest.raises(RuntimeError, match="declares widget 'light' but does not register it"):
        reg["light"]  # leukoscope.errors is imported, and registers nothing
    reg.add("extra", entry := object(), __name__)
    assert reg["extra"] is entry and reg.get("nothing") is None and reg.names("e*") == ["extra"]
    with pytest.raises(ValueError, match="registered twice"):
        reg.add("extra", object(), __name__)
