"""Batch predict: CSV columns, inputs, corrupt files, resume after a kill, TTA, streaming."""

from __future__ import annotations

import csv
import itertools
import os
import shutil
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from imagefiles import truncated_copy
from leukoscope.batches import ordered_map
from leukoscope.bundle import load_bundle
from leukoscope.cli.verbs import app
from leukoscope.data.images import load_rgb
from leukoscope.errors import ConfigError, DataError
from leukoscope.geometry import dihedral
from leukoscope.predict import get_engine
from leukoscope.predict.local import iter_inputs, partial_path, predict, run_record_path
from leukoscope.predict.tta import predict_proba
from leukoscope.progress import Counting
from use_support import classical_bundle, cnmc_train, network_bundle, onnx_bundle  # noqa: F401

runner = CliRunner()


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
    assert list(rows[0]) == ["path", "subject", "predicted", "p_all", "p_hem", "unfamiliarity", "unfamiliar"]
    assert len(rows) == s.rows == s.predicted == 12 and not s.skipped
    assert len({r["path"] for r in rows}) == 12
    assert not partial_path(out).exists()
    probs = np.array([[float(r["p_all"]), float(r["p_hem"])] for r in rows])
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    flagged = [r["unfamiliar"] == "true" for r in rows]
    assert [r["predicted"] for r in rows] == ["unfamiliar" if f else bundle.classes[i]
                                              for i, f in zip(probs.argmax(axis=1), flagged, strict=True)]
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
        predict(bundle, [images], out, batch_size=3, progress=Counting(kill_after_two_batches))
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
    path = next((images / "png").iterdir())
    img = load_rgb(path)
    views = dihedral(img)
    assert len(views) == 8 and np.array_equal(views[0], img)
    assert len({v.tobytes() for v in views}) == 8  # a real cell has no symmetry
    expected = bundle.predict_proba(views).mean(axis=0)
    np.testing.assert_allclose(predict_proba(bundle, [img], tta=True)[0], expected, atol=1e-6)
    np.testing.assert_allclose(predict_proba(bundle, [path], tta=True)[0], expected, atol=1e-6)  # a path too
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


def test_ordered_map_keeps_order_and_takes_a_bounded_number_of_items_ahead():
    produced = itertools.count()

    def source():
        for i in range(1000):
            next(produced)
            yield i

    def slow_when_even(i: int) -> int:
        time.sleep(0.002 if i % 2 == 0 else 0)  # later items finish first: order must still hold
        return i * i

    it = ordered_map(slow_when_even, source(), workers=2)
    assert next(it) == 0
    time.sleep(0.3)  # give the workers every chance to run ahead
    assert next(produced) <= 5  # 1 consumed + 2 workers + 1 queued (+ this call)
    assert list(it) == [i * i for i in range(1, 1000)]


def test_ordered_map_runs_items_at_once_and_reraises_at_the_failing_item():
    started = threading.Barrier(2, timeout=5)

    def meet(i: int) -> int:
        started.wait()  # returns only when two items run at the same time (else BrokenBarrierError)
        return i

    assert list(ordered_map(meet, range(4), workers=2)) == [0, 1, 2, 3]

    def fail_at_3(i: int) -> int:
        if i == 3:
            raise ValueError("item 3")
        return i

    it = ordered_map(fail_at_3, range(10), workers=2)
    assert [next(it) for _ in range(3)] == [0, 1, 2]
    with pytest.raises(ValueError, match="item 3"):
        next(it)


def _kill_after(rows: int) -> Callable[[int, int], None]:
    """A ``Counting`` callback that stops a run once ``rows`` inputs are done, as a kill would."""
    def hook(done: int, total: int) -> None:
        if done >= rows:
            raise _Killed
    return hook


@pytest.mark.parametrize("change, message", [
    ("bundle", "bundle {classical} (was {network})"),
    ("tta", "--tta on (was off)"),
    ("inputs", "inputs (4 images, was 12)"),
    ("runtime", "runtime onnx (was torch)"),
])
def test_resume_refuses_the_rows_of_another_run(change, message, network_bundle, classical_bundle,  # noqa: F811
                                                onnx_bundle, images, tmp_path):  # noqa: F811
    out = tmp_path / "p.csv"
    first = load_bundle(onnx_bundle if change == "runtime" else network_bundle, runtime="torch")
    with pytest.raises(_Killed):
        predict(first, [images], out, batch_size=3, progress=Counting(_kill_after(6)))
    partial = partial_path(out)
    kept = partial.read_bytes()
    again = {"bundle": (load_bundle(classical_bundle), [images], False),
             "tta": (first, [images], True),
             "inputs": (first, [images / "png"], False),
             "runtime": (load_bundle(onnx_bundle, runtime="onnx"), [images], False)}[change]
    bundle, inputs, tta = again
    expected = message.format(classical=classical_bundle, network=network_bundle)
    with pytest.raises(DataError, match="--restart") as e:
        predict(bundle, inputs, out, batch_size=3, tta=tta)
    assert str(e.value).startswith(f"{partial}: ") and expected in str(e.value)
    assert partial.read_bytes() == kept and not out.exists()  # refused: nothing touched
    s = predict(bundle, inputs, out, batch_size=3, tta=tta, restart=True)
    clean = tmp_path / "clean.csv"
    predict(bundle, inputs, clean, batch_size=3, tta=tta)
    assert s.resumed == 0 and _rows(out) == _rows(clean)


def test_bundle_digest_sees_rewritten_weights_and_ignores_documents(tmp_path):
    """Resume safety: a rewritten weight file (big ones by size and time, small by bytes) or config
    makes another bundle; a changed document (metrics, card) does not."""
    from leukoscope.predict.local import bundle_digest

    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "metrics.json").write_text("{}")
    big = tmp_path / "model.onnx"
    big.write_bytes(b"\0" * (2 << 20))
    before = bundle_digest(tmp_path)
    (tmp_path / "metrics.json").write_text('{"accuracy": 1}')
    assert bundle_digest(tmp_path) == before
    os.utime(big, ns=(big.stat().st_atime_ns, big.stat().st_mtime_ns + 10**9))  # rewritten later
    assert bundle_digest(tmp_path) != before
    after_big = bundle_digest(tmp_path)
    (tmp_path / "config.json").write_text('{"classes": []}')
    assert bundle_digest(tmp_path) != after_big


def test_a_partial_without_a_record_is_refused(network_bundle, images, tmp_path):  # noqa: F811
    """A partial file whose run left no record (an older leukoscope) cannot be trusted to match."""
    bundle = load_bundle(network_bundle)
    out = tmp_path / "p.csv"
    with pytest.raises(_Killed):
        predict(bundle, [images], out, batch_size=3, progress=Counting(_kill_after(3)))
    record = run_record_path(out)
    assert record.is_file()
    for text in ("[]", "null"):  # JSON, but not a record
        record.write_text(text)
        with pytest.raises(DataError, match=f"no record of the run that wrote it .*{record.name}.*--restart"):
            predict(bundle, [images], out, batch_size=3)
    record.unlink()
    with pytest.raises(DataError, match=f"no record of the run that wrote it .*{record.name}.*--restart"):
        predict(bundle, [images], out, batch_size=3)


def test_out_never_overwrites_an_input_image_or_the_bundle(network_bundle, images, tmp_path):  # noqa: F811
    bundle = load_bundle(network_bundle)
    first = next(iter_inputs([images]))
    before = first.read_bytes()
    with pytest.raises(DataError, match="--out is one of the input images"):
        predict(bundle, [images], first)
    assert first.read_bytes() == before
    with pytest.raises(DataError, match="--out is inside the bundle"):
        predict(bundle, [images], network_bundle / "config.json")


def test_cli_restart_starts_over_and_the_help_says_so(network_bundle, images, tmp_path):  # noqa: F811
    out = tmp_path / "p.csv"
    with pytest.raises(_Killed):
        predict(load_bundle(network_bundle), [images], out, batch_size=3, progress=Counting(_kill_after(3)))
    base = ["predict", str(network_bundle), str(images), "--out", str(out), "--batch-size", "3"]
    res = runner.invoke(app, [*base, "--tta"])
    assert res.exit_code == 1 and res.output.count("error:") == 1 and "--tta on (was off)" in res.output
    res = runner.invoke(app, [*base, "--tta", "--restart"])
    assert res.exit_code == 0, res.output
    assert "wrote 12 rows" in res.output and "kept from an interrupted run" not in res.output
    assert not run_record_path(out).exists() and not partial_path(out).exists()
    help_text = " ".join(runner.invoke(app, ["predict", "--help"]).output.split())
    assert "--restart" in help_text and "refused" in help_text
    res = runner.invoke(app, [*base, "--engine", "ray", "--restart"])
    assert res.exit_code == 1 and "--restart: not an option of --engine ray" in res.output


_HOLD = """
import sys, time
from pathlib import Path
from leukoscope.bundle import load_bundle
from leukoscope.predict.local import predict
from leukoscope.progress import Counting
bundle, images, out, ready = sys.argv[1:]

def hold(done, total):
    if done >= 3:  # the first batch is written: say so and wait to be killed
        Path(ready).touch()
        time.sleep(600)

predict(load_bundle(bundle), [images], out, batch_size=3, progress=Counting(hold))
"""


def test_a_second_run_on_the_same_out_is_refused(network_bundle, images, tmp_path):  # noqa: F811
    """Two real processes: a predict paused mid-run holds the output, and a second one (this process)
    is refused with the first one's pid without touching its rows; once the first is killed (SIGKILL,
    its lock file left behind), a rerun resumes."""
    import leukoscope

    out, ready = tmp_path / "p.csv", tmp_path / "ready"
    env = {**os.environ, "PYTHONPATH": str(Path(leukoscope.__file__).parents[1])}
    first = subprocess.Popen([sys.executable, "-c", _HOLD, str(network_bundle), str(images), str(out),
                              str(ready)], env=env, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not ready.exists():
            assert first.poll() is None, first.communicate()[1]
            assert time.monotonic() < deadline, "the first run never started"
            time.sleep(0.05)
        kept = partial_path(out).read_bytes()
        res = runner.invoke(app, ["predict", str(network_bundle), str(images), "--out", str(out)])
        assert res.exit_code == 1
        refusal = f"error: another predict is writing {out} (pid {first.pid})"
        assert res.output.strip().splitlines() == [refusal]
        assert partial_path(out).read_bytes() == kept and len(_rows(partial_path(out))) == 3
    finally:
        first.kill()
        first.communicate(timeout=120)
    assert out.with_name("p.csv.lock").exists()  # left by the killed run; it holds nothing now
    res = runner.invoke(app, ["predict", str(network_bundle), str(images), "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "wrote 12 rows" in res.output and "(3 kept from an interrupted run)" in res.output
    rows = _rows(out)
    assert len(rows) == len({r["path"] for r in rows}) == 12
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cells", "p.csv", "ready"]  # nothing else left


def test_file_names_that_are_not_utf8_are_written_losslessly(network_bundle, data, tmp_path):  # noqa: F811
    """A name with bytes that are not UTF-8 (latin-1 'é', a stray 0xff) round-trips through the CSV
    and through a resume; a corrupt one is listed by the CLI."""
    bundle = load_bundle(network_bundle)
    root = tmp_path / "cells"
    root.mkdir()
    cells = sorted((data / "cnmc_cells").rglob("*.png"))[:4]
    names = [b"a-caf\xe9.png", b"b-\xff\xfe.png", b"c-plain.png", b"d-\xe9t\xe9.png"]
    for src, name in zip(cells, names, strict=True):
        shutil.copy(src, os.path.join(os.fsencode(root), name))
    out = tmp_path / "p.csv"
    with pytest.raises(_Killed):  # the kill leaves a partial file holding a name that is not UTF-8
        predict(bundle, [root], out, batch_size=2, progress=Counting(_kill_after(2)))
    s = predict(bundle, [root], out, batch_size=2)
    assert s.resumed == 2 and s.predicted == 2 and not s.skipped
    with open(out, newline="", encoding="utf-8", errors="surrogateescape") as f:
        rows = list(csv.DictReader(f))
    assert [os.fsencode(r["path"]) for r in rows] == [os.path.join(os.fsencode(root), n) for n in names]
    direct = bundle.predict_proba([load_rgb(r["path"]) for r in rows])
    np.testing.assert_allclose([[float(r["p_all"]), float(r["p_hem"])] for r in rows], direct, atol=1e-6)

    (root / os.fsdecode(b"e-\xff.png")).write_bytes(b"not an image")
    res = runner.invoke(app, ["predict", str(network_bundle), str(root), "--out", str(tmp_path / "q.csv")])
    assert res.exit_code == 0, res.output
    assert "wrote 4 rows" in res.output and "e-\\xff.png: not a readable image" in res.output


def test_names_that_look_like_emoji_codes_are_printed_as_they_are(network_bundle, data, tmp_path):  # noqa: F811
    """Rich turns ``:name:`` into an emoji: file and folder names must reach the terminal unchanged."""
    root = tmp_path / "run:thumbs_up:"
    root.mkdir()
    shutil.copy(sorted((data / "cnmc_cells").rglob("*.png"))[0], root / "ok.png")
    (root / "x:smile:.png").write_bytes(b"not an image")
    out = root / "p:+1:.csv"
    res = runner.invoke(app, ["predict", str(network_bundle), str(root), "--out", str(out)])
    assert res.exit_code == 0, res.output
    flat = res.output.replace("\n", "")
    assert f"wrote 1 rows to {out}" in flat and "x:smile:.png: not a readable image" in flat


def test_out_that_cannot_be_a_csv_is_refused_before_any_work(network_bundle, images, tmp_path):  # noqa: F811
    bundle = load_bundle(network_bundle)
    calls: list[int] = []
    (tmp_path / "file").write_text("")
    for out, message in [(tmp_path, "--out is a folder"), (tmp_path / "file" / "p.csv", "cannot create")]:
        with pytest.raises(DataError, match=message) as e:
            predict(bundle, [images], out, progress=Counting(lambda done, total: calls.append(done)))
        assert str(e.value).startswith(str(out))
    assert not calls  # nothing was predicted
    res = runner.invoke(app, ["predict", str(network_bundle), str(images), "--out", str(tmp_path)])
    assert res.exit_code == 1 and res.output.count("error:") == 1 and "--out is a folder" in res.output


def test_nothing_readable_exits_non_zero_and_lists_the_files(network_bundle, tmp_path):  # noqa: F811
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "text.png").write_text("not an image")
    (bad / "empty.jpg").write_bytes(b"")
    res = runner.invoke(app, ["predict", str(network_bundle), str(bad), "--out", str(tmp_path / "p.csv")])
    assert res.exit_code == 1
    assert "text.png: not a readable image" in res.output and "empty.jpg" in res.output
    assert res.output.count("error:") == 1 and "nothing predicted" in res.output


#: Every line break that ``str.splitlines`` splits at; CSV keeps them in a quoted field.
_BREAKS = ["\n", "\r", "\r\n", "\u2028", "\x85", "\x0b", "\x0c", "\x1c", "\x1d", "\x1e"]


@pytest.fixture
def line_break_names(images: Path, tmp_path: Path) -> Path:
    """The 12 cells of ``images`` in one folder, the first 10 under names holding a line break each."""
    root = tmp_path / "breaks"
    root.mkdir()
    for i, (p, brk) in enumerate(zip(sorted(images.rglob("*.*")), [*_BREAKS, "", ""], strict=True)):
        shutil.copy(p, root / f"{i:02d}-a{brk}b{p.suffix}")
    return root


def test_resume_keeps_the_rows_of_names_with_line_breaks(network_bundle, line_break_names, tmp_path):  # noqa: F811
    """Rows are read back as CSV records, not lines: a name with a line break was predicted twice."""
    bundle = load_bundle(network_bundle)
    clean, out = tmp_path / "clean.csv", tmp_path / "p.csv"
    predict(bundle, [line_break_names], clean, batch_size=2)
    with pytest.raises(_Killed):
        predict(bundle, [line_break_names], out, batch_size=2, progress=Counting(_kill_after(8)))
    s = predict(bundle, [line_break_names], out, batch_size=2)
    assert s.resumed == 8 and s.predicted == 4
    assert out.read_bytes() == clean.read_bytes()


def test_resume_cuts_a_row_torn_inside_a_quoted_name(network_bundle, line_break_names, tmp_path):  # noqa: F811
    """A kill that tears the next row anywhere, even just after a line break inside its quoted name, leaves
    the rows before it only: the torn fragment was kept and merged with the next row written."""
    bundle = load_bundle(network_bundle)
    clean, out = tmp_path / "clean.csv", tmp_path / "p.csv"
    predict(bundle, [line_break_names], clean, batch_size=2)
    with pytest.raises(_Killed):
        predict(bundle, [line_break_names], out, batch_size=2, progress=Counting(_kill_after(2)))
    kept, record = partial_path(out).read_bytes(), run_record_path(out).read_bytes()
    whole = clean.read_bytes()
    rest = whole[len(kept):]
    assert whole.startswith(kept) and rest.startswith(b'"') and b"a\r\nb" in rest  # the next name: quoted
    end = rest.index(b"\n", rest.index(b'"', 1)) + 1
    cuts = [i + 1 for i in range(end - 1) if rest[i] in b"\r\n,"]
    assert len(cuts) >= 8  # after \r and \n in the name, after each comma, between the row's \r and \n
    for cut in cuts:
        partial_path(out).write_bytes(kept + rest[:cut])
        run_record_path(out).write_bytes(record)
        s = predict(bundle, [line_break_names], out, batch_size=2)
        assert (s.resumed, s.predicted) == (2, 10), rest[:cut]
        assert out.read_bytes() == whole, rest[:cut]


def test_a_symlink_loop_under_a_recursive_glob_gives_each_file_once(images):
    """A recursive glob follows a link back to its folder (~40 spellings of each file); files are told
    apart by their real path, each kept as first spelled, as folder input (which follows no link) has them."""
    (images / "selfdir").symlink_to(".")
    folder = list(iter_inputs([images]))
    assert len(folder) == 12
    assert list(iter_inputs([f"{images}/**/*.png"])) == [p for p in folder if p.suffix == ".png"]
    assert list(iter_inputs([f"{images}/**"])) == folder


def test_float_images_with_nan_or_infinite_pixels_are_skipped(network_bundle, images, tmp_path):  # noqa: F811
    """NaN has no gray level: numpy warned on the cast and the garbage pixels were predicted."""
    from PIL import Image

    bad = images / "float"
    bad.mkdir()
    nan = np.full((40, 40), np.nan, dtype=np.float32)
    inf = np.ones((40, 40), dtype=np.float32)
    inf[3, 4] = np.inf
    for name, pixels in [("nan.tif", nan), ("inf.tif", inf)]:
        im = Image.fromarray(pixels)
        assert im.mode == "F"
        im.save(bad / name)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        s = predict(load_bundle(network_bundle), [images], tmp_path / "p.csv")
    reason = "not a readable image (NaN or infinite pixel values)"
    assert s.predicted == 12 and s.skipped == [(str(bad / "inf.tif"), reason), (str(bad / "nan.tif"), reason)]


def test_a_broken_link_in_a_folder_is_a_counted_skip(network_bundle, images, tmp_path):  # noqa: F811
    folder = tmp_path / "links"
    folder.mkdir()
    shutil.copy(next(iter_inputs([images])), folder / "x.png")
    (folder / "dangling.png").symlink_to(tmp_path / "nowhere.png")
    (folder / "l1.png").symlink_to(folder / "l2.png")
    (folder / "l2.png").symlink_to(folder / "l1.png")
    s = predict(load_bundle(network_bundle), [folder], tmp_path / "p.csv")
    assert s.rows == 1
    broken = "broken link (no target, or links in a circle)"
    assert sorted((Path(p).name, r) for p, r in s.skipped) == [
        (name, broken) for name in ("dangling.png", "l1.png", "l2.png")]


@pytest.mark.parametrize("bad", [np.zeros((0, 0, 3), np.uint8), np.zeros((0, 50, 3), np.uint8),
                                 np.zeros((40, 50, 3), np.float64), np.zeros((40, 50), np.uint8),
                                 np.zeros((40, 50, 4), np.uint8), np.zeros((40, 50, 3), np.uint16)])
def test_arrays_a_model_cannot_read_are_one_image_error(network_bundle, classical_bundle, bad):  # noqa: F811
    """The library takes H x W x 3 uint8 RGB arrays (load_rgb makes one of any file): an empty image got a
    confident call, other shapes and dtypes raised numpy or PIL errors."""
    from leukoscope.errors import ImageError

    for path in (network_bundle, classical_bundle):
        with pytest.raises(ImageError, match=r"image 0: expected an H x W x 3 uint8 RGB array"):
            load_bundle(path).predict_proba([bad])


def test_a_lone_array_is_refused_and_a_generator_is_read(network_bundle):  # noqa: F811
    from leukoscope.errors import ImageError

    bundle, cell = load_bundle(network_bundle), np.full((40, 50, 3), 128, np.uint8)
    with pytest.raises(ImageError, match="an array of images must be N x H x W x 3"):
        bundle.predict_proba(cell)  # one image, not a list: its rows would be read as images
    np.testing.assert_allclose(bundle.predict_proba(im for im in [cell]), bundle.predict_proba([cell]))
