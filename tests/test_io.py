"""leukoscope.io: outputs appear whole or not at all."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from leukoscope.io import atomic_path, write_csv_atomic, write_json_atomic, write_text_atomic


def test_json_takes_numpy_and_paths(tmp_path: Path) -> None:
    out = write_json_atomic(tmp_path / "a.json", {"n": np.int64(3), "x": np.float32(0.5),
                                                  "v": np.arange(3), "p": tmp_path})
    assert json.loads(out.read_text()) == {"n": 3, "x": 0.5, "v": [0, 1, 2], "p": str(tmp_path)}
    assert out.read_text().endswith("}\n")
    with pytest.raises(TypeError, match="not JSON serialisable: object"):
        write_json_atomic(tmp_path / "b.json", {"o": object()})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json"]  # no half file, no temp file


def test_a_failed_write_keeps_the_old_file(tmp_path: Path) -> None:
    target = write_text_atomic(tmp_path / "t.csv", "old\n")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed mid-write")
    assert target.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["t.csv"]
    write_csv_atomic(target, pd.DataFrame({"a": [1, 2]}))
    assert target.read_text() == "a\n1\n2\n"


def test_the_temporary_file_keeps_the_suffix(tmp_path: Path) -> None:
    """np.save appends .npy to a name without it; the temporary name keeps it, so the rename works."""
    target = tmp_path / "row.npy"
    with atomic_path(target) as tmp:
        np.save(tmp, np.arange(4, dtype=np.float32))
    assert np.array_equal(np.load(target), np.arange(4)) and len(list(tmp_path.iterdir())) == 1
