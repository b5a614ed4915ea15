"""The README's Python API section runs as written, and ``predict_proba`` takes paths as well as arrays."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from leukoscope.bundle import load_bundle
from leukoscope.data.images import load_rgb
from leukoscope.errors import ImageError
from use_support import classical_bundle, cnmc_train, network_bundle  # noqa: F401

README = Path(__file__).resolve().parents[1] / "README.md"


def _api_snippets() -> list[str]:
    text = README.read_text()
    section = text[text.index("## Python API"):]
    section = section[:section.index("\n## ", 1)]
    return re.findall(r"```python\n(.*?)```", section, re.S)


def test_readme_python_api_runs_as_written(network_bundle: Path, data: Path, tmp_path: Path,  # noqa: F811
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """In a folder laid out as after the tour: the data at ../shared/data, a bundle at runs/lite0/bundle."""
    snippets = _api_snippets()
    assert len(snippets) == 3
    repo = tmp_path / "repo"
    (repo / "runs" / "lite0").mkdir(parents=True)
    (repo / "runs" / "lite0" / "bundle").symlink_to(network_bundle, target_is_directory=True)
    (tmp_path / "shared").mkdir()
    (tmp_path / "shared" / "data").symlink_to(data, target_is_directory=True)
    monkeypatch.chdir(repo)
    namespace: dict[str, object] = {}
    for code in snippets:
        exec(compile(code, str(README), "exec"), namespace)  # noqa: S102 - the README's own code
    probs = np.asarray(namespace["probs"])
    assert probs.shape == (4, 2) and np.allclose(probs.sum(axis=1), 1.0)
    np.testing.assert_array_equal(probs, namespace["same"])
    assert (repo / "runs" / "quick" / "bundle" / "config.json").is_file()


def test_predict_proba_takes_paths_arrays_or_both(network_bundle: Path, classical_bundle: Path,  # noqa: F811
                                                  data: Path) -> None:
    paths = sorted(cnmc_train(data).rglob("*.bmp"))[:3]
    arrays = [load_rgb(p) for p in paths]
    for folder in (network_bundle, classical_bundle):
        bundle = load_bundle(folder)
        expected = bundle.predict_proba(arrays)
        np.testing.assert_array_equal(bundle.predict_proba(paths), expected)
        np.testing.assert_array_equal(bundle.predict_proba([str(p) for p in paths]), expected)
        mixed = [arrays[0], paths[1], os.fspath(paths[2])]
        np.testing.assert_array_equal(bundle.predict_proba(mixed), expected)
        one = bundle.predict_proba(str(paths[0]))  # one path alone: one row
        np.testing.assert_array_equal(one, bundle.predict_proba(arrays[:1]))


def test_unreadable_paths_raise_one_image_error_naming_the_file(network_bundle: Path, data: Path,  # noqa: F811
                                                               tmp_path: Path) -> None:
    bundle = load_bundle(network_bundle)
    good = sorted(cnmc_train(data).rglob("*.bmp"))[0]
    broken = tmp_path / "broken.bmp"
    broken.write_bytes(good.read_bytes()[:200])
    with pytest.raises(ImageError, match=rf"^{re.escape(str(broken))}: "):
        bundle.predict_proba([good, broken])
    with pytest.raises(ImageError, match=r"missing\.png: .*\(and 1 more unreadable\)$"):
        bundle.predict_proba([tmp_path / "missing.png", broken, good])
    shutil.copy(good, tmp_path / "copy.bmp")
    assert bundle.predict_proba([tmp_path / "copy.bmp"]).shape == (1, 2)
