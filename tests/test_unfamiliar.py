"""Unfamiliarity: every bundle family carries a score fitted at train time, predict / evaluate use it,
and bundles written without one still load (on real data: ALL-IDB2 models and C-NMC cells)."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from leukoscope.bundle import load_bundle
from leukoscope.cli.verbs import app
from leukoscope.errors import BundleError
from leukoscope.evaluate.coverage import risk_coverage
from leukoscope.models.unfamiliar import DEFAULT_METHOD, fit_unfamiliar, load_scorer
from unfamiliar_support import allidb2_bundle  # noqa: F401 - fixture used by name
from use_support import classical_bundle, network_bundle, onnx_bundle, sample_paths  # noqa: F401

runner = CliRunner()


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _test_side(bundle_dir: Path) -> list[str]:
    split = load_bundle(bundle_dir).split()
    assert split is not None
    return list(split.loc[split["side"] == "test", "path"])


def test_allidb2_model_calls_cnmc_cells_unfamiliar(allidb2_bundle, data, tmp_path):  # noqa: F811
    cnmc = sorted((data / "cnmc_sample").rglob("*.bmp")) + sorted((data / "cnmc_cells").rglob("*.png"))
    own = _test_side(allidb2_bundle)
    out = tmp_path / "p.csv"
    res = runner.invoke(app, ["predict", str(allidb2_bundle), *map(str, cnmc), *own, "--out", str(out)])
    assert res.exit_code == 0, res.output
    rows = _rows(out)
    assert list(rows[0])[-2:] == ["unfamiliarity", "unfamiliar"]
    by_path = {r["path"]: r for r in rows}
    foreign = [by_path[str(p)] for p in cnmc]
    familiar = [by_path[p] for p in own]
    share = np.mean([r["unfamiliar"] == "true" for r in foreign])
    assert share >= 0.9, share  # C-NMC cells (black background, another lab) are not ALL-IDB2 cells
    assert np.mean([r["unfamiliar"] == "true" for r in familiar]) <= 0.3
    assert all(r["predicted"] == "unfamiliar" for r in foreign if r["unfamiliar"] == "true")
    familiar_median = np.median([float(r["unfamiliarity"]) for r in familiar])
    assert min(float(r["unfamiliarity"]) for r in foreign) > familiar_median


def test_bundle_stores_the_score_and_old_bundles_load_without_it(network_bundle, data, tmp_path):  # noqa: F811
    config = json.loads((network_bundle / "config.json").read_text())
    u = config["unfamiliar"]
    assert u["method"] == DEFAULT_METHOD and u["target_false_flag_rate"] == 0.05
    assert np.isfinite(u["threshold"])
    assert (network_bundle / "unfamiliar.safetensors").is_file()

    old = tmp_path / "old"
    shutil.copytree(network_bundle, old)
    (old / "unfamiliar.safetensors").unlink()
    (old / "config.json").write_text(json.dumps({k: v for k, v in config.items() if k != "unfamiliar"}))
    bundle = load_bundle(old)
    assert bundle.unfamiliar is None
    out = tmp_path / "p.csv"
    res = runner.invoke(app, ["predict", str(old), str(data / "cnmc_cells"), "--out", str(out)])
    assert res.exit_code == 0, res.output
    # no score: the columns are omitted
    assert list(_rows(out)[0]) == ["path", "subject", "predicted", "p_all", "p_hem"]

    (old / "config.json").write_text(json.dumps(config))  # the key without its file
    with pytest.raises(BundleError, match="unfamiliar.safetensors: missing"):
        load_bundle(old)
    (old / "unfamiliar.safetensors").write_bytes(  # truncated, then not safetensors at all
        (network_bundle / "unfamiliar.safetensors").read_bytes()[:100])
    with pytest.raises(BundleError, match=r"unfamiliar.safetensors: cannot read \(.*header"):
        load_bundle(old)
    (old / "unfamiliar.safetensors").write_bytes(b"\xff" * 4096)
    with pytest.raises(BundleError, match=r"unfamiliar.safetensors: cannot read"):
        load_bundle(old)
    (old / "config.json").write_text(json.dumps({**config, "unfamiliar": {**u, "method": "oracle"}}))
    with pytest.raises(BundleError, match="unfamiliar.method must be one of knn"):
        load_bundle(old)


def test_classical_and_onnx_bundles_carry_the_score(classical_bundle, network_bundle, onnx_bundle,  # noqa: F811
                                                    data):
    images = [str(p) for p in sample_paths(data, 6)]
    classical = load_bundle(classical_bundle)
    assert classical.unfamiliar is not None and classical.unfamiliar.standardise  # feature rows, standardised
    probs, scores = classical.assess(images)
    assert scores is not None and np.isfinite(scores).all() and probs.shape == (len(images), 2)

    torch_scores = load_bundle(network_bundle, runtime="torch").assess(images)[1]
    onnx = load_bundle(onnx_bundle, runtime="onnx")
    assert type(onnx).__name__ == "OnnxBundle"
    # far cells score ~1e5 with Mahalanobis: compare to float32's relative precision
    np.testing.assert_allclose(onnx.assess(images)[1], torch_scores, rtol=1e-5, atol=1e-3)


def test_blank_images_are_unfamiliar_not_called(classical_bundle, tmp_path):  # noqa: F811
    """A blank field (no cell: black, white, one pixel) has no measurable features, so no score (NaN);
    no score is no business calling it a class: flagged, in predict's CSV and in the web page's marks."""
    from PIL import Image

    from leukoscope.predict import unfamiliar

    blank = tmp_path / "blank"
    blank.mkdir()
    for name, size, colour in (("black", 300, (0, 0, 0)), ("white", 300, (255, 255, 255)),
                               ("one", 1, (200, 100, 50))):
        Image.new("RGB", (size, size), colour).save(blank / f"{name}.png")
    out = tmp_path / "p.csv"
    res = runner.invoke(app, ["predict", str(classical_bundle), str(blank), "--out", str(out)])
    assert res.exit_code == 0, res.output
    rows = _rows(out)
    assert len(rows) == 3 and all(r["unfamiliar"] == "true" and r["predicted"] == "unfamiliar" for r in rows)
    bundle = load_bundle(classical_bundle)
    images = [np.asarray(Image.open(p).convert("RGB")) for p in sorted(blank.iterdir())]
    scores = bundle.assess(images)[1]
    assert scores is not None and np.isnan(scores).all()  # what makes them unfamiliar: no score at all
    assert all(m is not None and m[1] for m in unfamiliar.marks(bundle, scores, len(images)))


def test_risk_coverage_by_hand():
    # accepted in order of uncertainty: right, right, wrong, right -> risks 0, 0, 1/3, 1/4
    r = risk_coverage(np.array([True, True, False, True]), np.array([0.1, 0.2, 0.3, 0.4]))
    assert r["aurc"] == pytest.approx((0 + 0 + 1 / 3 + 1 / 4) / 4)
    assert r["accuracy_at_90"] == pytest.approx(0.75)  # 90 % of 4 cells rounds up to all 4
    assert r["coverage"] == [0.25, 0.5, 0.75, 1.0]


def test_evaluate_reports_risk_coverage_and_flags(allidb2_bundle, data, tmp_path):  # noqa: F811
    own = _test_side(allidb2_bundle)
    res = runner.invoke(app, ["evaluate", str(allidb2_bundle), str(data / "allidb2"), "--side", "test",
                              "--out", str(tmp_path / "ev")])
    assert res.exit_code == 0, res.output
    assert "cells unfamiliar; risk-coverage by unfamiliarity: AURC 0." in res.output
    m = json.loads((tmp_path / "ev" / "metrics.json").read_text())["unfamiliar"]
    assert m["method"] == DEFAULT_METHOD and 0 <= m["flagged"] <= m["n"] == len(own)
    for key in ("by_unfamiliarity", "by_confidence"):
        assert 0 <= m[key]["aurc"] <= 1 and 0 <= m[key]["accuracy_at_90"] <= 1
    html = (tmp_path / "ev" / "report.html").read_text()
    assert "Unfamiliar cells and risk-coverage" in html and 'alt="risk-coverage curve"' in html
    rows = _rows(tmp_path / "ev" / "predictions.csv")
    assert {"unfamiliarity", "unfamiliar", "call"} <= set(rows[0])
    # C-NMC cells, which an ALL-IDB2 model has no business calling: the call says so, as predict's does
    res = runner.invoke(app, ["evaluate", str(allidb2_bundle), str(data / "cnmc_cells"), "--out",
                              str(tmp_path / "foreign")])
    assert res.exit_code == 0, res.output
    foreign = _rows(tmp_path / "foreign" / "predictions.csv")
    assert any(r["unfamiliar"] == "True" for r in foreign)
    for r in rows + foreign:
        assert r["call"] == ("unfamiliar" if r["unfamiliar"] == "True" else r["predicted"]), r


def test_relative_mahalanobis_flags_cnmc_cells_and_round_trips(allidb2_bundle, data, tmp_path):  # noqa: F811
    """Relative Mahalanobis (class-conditional distance minus the distance to one Gaussian of all
    training cells) on a real ALL-IDB2 model's embeddings: C-NMC cells score above its own test cells,
    and the bundle file format keeps the four tensors it needs."""
    from safetensors.numpy import save_file
    from sklearn.metrics import roc_auc_score

    from leukoscope.data.images import load_batch

    bundle = load_bundle(allidb2_bundle, runtime="torch")
    split = bundle.split()
    assert split is not None

    def embed(paths: list[str]) -> tuple[np.ndarray, np.ndarray]:
        logits, emb = bundle.embed_logits(load_batch(paths)[1])
        assert emb is not None
        return logits, emb

    side = {s: list(split.loc[split["side"] == s, "path"]) for s in ("train", "val", "test")}
    (_, train), (val_logits, val), (test_logits, test) = (embed(side[s]) for s in ("train", "val", "test"))
    y = np.asarray([bundle.classes.index(c) for c in split.loc[split["side"] == "train", "label"]])
    cnmc = [str(p) for p in sorted((data / "cnmc_cells").rglob("*.png"))]
    cnmc_logits, foreign = embed(cnmc)

    rel = fit_unfamiliar(train, y, val, val_logits, bundle.temperature, method="relative_mahalanobis")
    maha = fit_unfamiliar(train, y, val, val_logits, bundle.temperature, method="mahalanobis")
    t = rel.tensors
    x = rel._embed(foreign) - t["background_mean"]
    background = ((x @ t["background_precision"]) * x).sum(1)
    np.testing.assert_allclose(rel.score(foreign, cnmc_logits), maha.score(foreign, cnmc_logits) - background,
                               rtol=1e-4, atol=1e-4)
    familiar, strange = rel.score(test, test_logits), rel.score(foreign, cnmc_logits)
    auc = roc_auc_score(np.r_[np.zeros(len(familiar)), np.ones(len(strange))], np.r_[familiar, strange])
    assert auc >= 0.9, auc
    assert rel.flag(strange).mean() >= 0.5 and rel.flag(familiar).mean() <= 0.3

    rel.save(tmp_path / "u.safetensors")
    back = load_scorer(tmp_path / "u.safetensors", rel.config())
    assert back.method == "relative_mahalanobis" and back.threshold == rel.threshold
    np.testing.assert_allclose(back.score(foreign, cnmc_logits), strange, rtol=1e-6)
    partial = {k: v for k, v in rel.tensors.items() if k != "background_precision"}
    save_file(partial, str(tmp_path / "partial.safetensors"))
    with pytest.raises(ValueError, match="missing tensor\\(s\\) background_precision"):
        load_scorer(tmp_path / "partial.safetensors", rel.config())


def test_rows_without_features_are_left_out_of_the_fit_and_the_threshold():
    """A grey or blank image's handcrafted features are NaN (81 of 83): such rows are left out of the fit
    and of the threshold's quantile (a NaN threshold made a bundle that could not load), and still score
    NaN, flagged."""
    from leukoscope.errors import DataError
    from leukoscope.models.unfamiliar import set_threshold

    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(60, 83)) + np.repeat(np.eye(3, 83) * 4, 20, axis=0), np.repeat(np.arange(3), 20)
    val, val_logits = rng.normal(size=(20, 83)), rng.normal(size=(20, 3))
    grey_x, grey_val = x.copy(), val.copy()
    grey_x[::7, 2:] = np.nan
    grey_val[::5, 2:] = np.nan
    for method in ("mahalanobis", "relative_mahalanobis", "knn"):
        s = fit_unfamiliar(grey_x, y, grey_val, val_logits, 1.0, method=method, standardise=True)
        ok = np.isfinite(grey_x).all(axis=1)
        clean = fit_unfamiliar(x[ok], y[ok], val, val_logits, 1.0, method=method, standardise=True)
        assert all(np.isfinite(t).all() for t in s.tensors.values()) and np.isfinite(s.threshold)
        for name, t in clean.tensors.items():
            np.testing.assert_allclose(s.tensors[name].astype(np.float32), t.astype(np.float32), rtol=1e-5,
                                       atol=1e-5)
        scores = s.score(grey_val, val_logits)
        assert np.isnan(scores[::5]).all() and s.flag(scores[::5]).all()
        assert s.threshold == np.quantile(scores[np.isfinite(scores)], 0.95)
    with pytest.raises(DataError, match="none of the 3 validation cells has a finite score"):
        set_threshold(s, np.array([np.nan, np.nan, np.nan]))
    with pytest.raises(DataError, match="none of the 60 training cells has measurable features"):
        fit_unfamiliar(np.full_like(x, np.nan), y, val, val_logits, 1.0, standardise=True)


def test_a_scorer_of_another_width_is_one_line(classical_bundle, network_bundle, data, tmp_path):  # noqa: F811
    """Tensors that do not fit the model's embeddings (cut, or copied from another bundle) load, but scoring
    refuses them naming the file and both widths: one line from predict, not a broadcasting traceback."""
    from safetensors.numpy import load_file, save_file

    cut = tmp_path / "cut"
    shutil.copytree(classical_bundle, cut)
    tensors = load_file(str(cut / "unfamiliar.safetensors"))
    save_file({k: np.ascontiguousarray(v[:64, :64] if k == "precision" else v[..., :64])
               for k, v in tensors.items()}, str(cut / "unfamiliar.safetensors"))
    copied = tmp_path / "copied"
    shutil.copytree(network_bundle, copied)
    shutil.copy(classical_bundle / "unfamiliar.safetensors", copied / "unfamiliar.safetensors")
    width = int(load_file(str(network_bundle / "unfamiliar.safetensors"))["means"].shape[1])
    cells, features = data / "cnmc_cells", tensors["mean"].shape[0]
    for bundle, theirs, ours in ((cut, 64, features), (copied, features, width)):
        scorer = load_bundle(bundle).unfamiliar
        assert scorer is not None
        with pytest.raises(ValueError, match=f"unfamiliar.safetensors: tensors of width {theirs}, but the "
                                             f"model gives embeddings of width {ours}"):
            scorer.score(np.zeros((2, ours), np.float32), np.zeros((2, 2)))
        res = runner.invoke(app, ["predict", str(bundle), str(cells), "--out", str(tmp_path / "p.csv")])
        assert res.exit_code == 1 and "Traceback" not in res.output, res.output
        assert res.output.count("error:") == 1, res.output
        assert f"unfamiliar.safetensors: tensors of width {theirs}" in " ".join(res.output.split())
