"""The deep feature kind: frozen Lite0 embeddings through the shared feature cache."""

from __future__ import annotations

import numpy as np

from leukoscope.data.readers import read
from leukoscope.features import extract, get_extractor, list_feature_kinds


def test_deep_features_cached_and_parametrised(data, tmp_path):
    assert "deep" in list_feature_kinds()
    m = read([data / "cnmc_cells"]).iloc[:4]
    x, skipped = extract(m, "deep", cache=tmp_path, input_size=64)
    assert skipped == [] and x.shape == (4, 1280) and np.isfinite(x.to_numpy()).all()
    assert list(x.columns[:2]) == ["deep_0000", "deep_0001"]
    again, _ = extract(m, "deep", cache=tmp_path, input_size=64)
    assert np.array_equal(again.to_numpy(), x.to_numpy())
    cropped, _ = extract(m, "deep", cache=tmp_path, input_size=64, crop_to_cell=True)
    assert not np.allclose(cropped.to_numpy(), x.to_numpy())
    ex = get_extractor("deep", input_size=64)
    assert ex.params() == {"backbone": "efficientnet_lite0", "input_size": 64, "crop_to_cell": False,
                           "engine": "onnx"}
    # the ONNX Runtime export and eager torch give the same embeddings
    eager, _ = extract(m, "deep", cache=tmp_path, input_size=64, engine="torch")
    assert np.allclose(eager.to_numpy(), x.to_numpy(), atol=1e-3)
    assert ex.parallel is False
