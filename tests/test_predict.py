"""Batch predict: CSV columns, inputs, corrupt files, resume after a kill, TTA, streaming."""

from __future__ import annotations

import csv
import itertools
import shutil
from pathlib import Path

import numpy as np
import pytest

from imagefiles import truncated_copy
from leukoscope.bundle import load_bundle
from leukoscope.data.images import load_rgb
from leukoscope.errors import ConfigError, DataError
from leukoscope.predict import get_engine
from leukoscope.predict.local import iter_inputs, partial_path, predict, prefetch
from leukoscope.predict.tta import d4_views, predict_proba
from use_support import cnmc_train, network_bundle  # noqa: F401


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture
def images(data: Path, tmp_path: Path) -> Path:
    """A folder of 12 real cells (BMP and PNG) in two subfolders."""
    root = tmp_path / "cells"
    for i, p in enumerate(sorted(cnmc_train(data).rglob("*.bmp"))[:8]):
        (root / "bmp").mkdir(parents=True, exist_ok=True)
        shutil.copy(p, root / "bmp" / f"{i:02d}_{p.name}")
    for p in sorted((data / "cnmc_cells").rglob("*.png"))[:4]:
        (root / "png").mkdir(parents=True, exist_ok=True)
        shutil.copy(p, root / "png" / p.name)
    return root


def test_columns_rows_and_inputs(network_bundle, images, tmp_path):  # noqa: F811
    bundle = load_bundle(network_bundle)
    out = tmp_path / "out" / "pred.csv"
    one = next((images / "png").iterdir())
    # a folder, a glob over the same files and one explicit file: each image once
    s = predict(bundle, [images, str(images / "bmp" / "*.bmp"), one], out, batch_size=5)
    rows = _rows(out)
    assert list(rows[0]) == ["path", "label", "p_all", "p_hem"]
    assert len(rows) == s.rows == s.predicted == 12 and not s.skipped
    assert len({r["path"] for r in rows}) == 12
    assert not partial_path(out).exists()
    probs = np.array([[float(r["p_all"]), float(r["p_hem"])] for r in rows])
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    assert [r["label"] for r in rows] == [bundle.classes[i] for i in probs.argmax(axis=1)]
    direct = bundle.predict_proba([load_rgb(r["path"]) for r in rows])
    np.testing.assert_allclose(probs, direct, atol=1e-6)


def test_corrupt_inputs_are_skipped_counted_and_listed(network_bundle, images, tmp_path):  # noqa: F811
    bundle = load_bundle(network_bundle)
    bad = images / "bad"
    bad.mkdir()
    truncated_copy(next((images / "bmp").iterdir()), bad / "truncated.bmp")
    (bad / "text.png").write_text("not an image")
    (bad / "empty.jpg").write_bytes(b"")
    s = predict(bundle, [images], tmp_path / "p.csv", batch_size=4)
    assert s.predicted == 12 and len(s.skipped) == 3
    reasons = dict(s.skipped)
    assert set(Path(p).name for p in reasons) == {"truncated.bmp", "text.png", "empty.jpg"}
    assert "0 bytes" in reasons[str(bad / "empty.jpg")]
    assert "not a readable image" in reasons[str(bad / "text.png")]
    assert len(_rows(tmp_path / "p.csv")) == 12


class _Killed(Exception):
    pass


def test_resume_after_kill_without_duplicates_or_losses(network_bundle, images, tmp_path):  # noqa: F811
    bundle = load_bundle(network_bundle)
    clean = tmp_path / "clean.csv"
    predict(bundle, [images], clean, batch_size=3)
    out = tmp_path / "p.csv"

    def kill_after_two_batches(done: int, total: int) -> None:
        if done >= 6:
            raise _Killed

    with pytest.raises(_Killed):
        predict(bundle, [images], out, batch_size=3, on_progress=kill_after_two_batches)
    partial = partial_path(out)
    assert not out.exists() and len(_rows(partial)) == 6
    with open(partial, "a") as f:  # the kill landed in the middle of writing a row
        f.write(f"{images}/png/half-written.png,al")
    s = predict(bundle, [images], out, batch_size=3)
    assert s.resumed == 6 and s.predicted == 6 and not partial.exists()
    rows = _rows(out)
    assert [r["path"] for r in rows] == [r["path"] for r in _rows(clean)]  # same order, none twice
    assert rows == _rows(clean)


def test_partial_from_another_model_is_refused(network_bundle, images, tmp_path):  # noqa: F811
    out = tmp_path / "p.csv"
    partial_path(out).write_text("path,label,p_a,p_b,p_c\n")
    with pytest.raises(DataError, match="other classes"):
        predict(load_bundle(network_bundle), [images], out)


def test_tta_is_the_mean_over_the_eight_views(network_bundle, images, tmp_path):  # noqa: F811
    bundle = load_bundle(network_bundle)
    img = load_rgb(next((images / "png").iterdir()))
    views = d4_views(img)
    assert len(views) == 8 and np.array_equal(views[0], img)
    assert len({v.tobytes() for v in views}) == 8  # a real cell has no symmetry
    expected = bundle.predict_proba(views).mean(axis=0)
    np.testing.assert_allclose(predict_proba(bundle, [img], tta=True)[0], expected, atol=1e-6)
    s = predict(bundle, [images], tmp_path / "tta.csv", tta=True)
    plain = predict(bundle, [images], tmp_path / "plain.csv")
    assert s.rows == plain.rows == 12
    tta_p = [float(r["p_all"]) for r in _rows(tmp_path / "tta.csv")]
    plain_p = [float(r["p_all"]) for r in _rows(tmp_path / "plain.csv")]
    assert tta_p != plain_p


def test_bad_inputs_name_the_input(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        list(iter_inputs([tmp_path / "missing"]))
    with pytest.raises(DataError, match="matches no file"):
        list(iter_inputs([str(tmp_path / "*.png")]))
    with pytest.raises(ConfigError, match="--engine"):
        get_engine("nope")


def test_prefetch_streams_a_bounded_number_of_items_ahead():
    produced = itertools.count()

    def source():
        for i in range(1000):
            next(produced)
            yield i

    it = prefetch(source(), depth=2)
    assert next(it) == 0
    import time

    time.sleep(0.3)  # give the worker every chance to run ahead
    assert next(produced) <= 5  # 1 consumed + 2 queued + 1 blocked in put (+ this call)
    assert list(it) == list(range(1, 1000))
