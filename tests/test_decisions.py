"""Operating points and intervals (#22.5): a threshold chosen on validation for a positive class,
stored in the bundle and used by predict, serve and evaluate; a 95% interval on every headline
figure; a test side too small to rank models flagged."""

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
from leukoscope.errors import BundleError, ConfigError
from leukoscope.evaluate.intervals import too_small, wilson
from leukoscope.evaluate.operating import choose
from leukoscope.probability import decide
from link_support import allidb2_cells

runner = CliRunner()


@pytest.fixture(scope="module")
def cells(data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """60 real ALL-IDB2 cells, 30 blasts (``all``) and 30 normal (``hem``), linked into a tmp folder."""
    return allidb2_cells(data, tmp_path_factory.mktemp("allidb60") / "allidb2", per_class=30, step=4)


@pytest.fixture(scope="module")
def run(cells: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A classical run with an operating point for ``all`` at 95% validation sensitivity (via the CLI)."""
    out = tmp_path_factory.mktemp("op") / "run"
    res = runner.invoke(app, ["train", str(cells), "--model", "logistic_regression", "--out", str(out),
                              "--positive", "all", "--target-sensitivity", "0.95"])
    assert res.exit_code == 0, res.output
    assert "operating point: all when p(all) >=" in res.output and "sensitivity>=0.95" in res.output
    return out


def test_wilson_matches_the_published_values() -> None:
    # Wilson (1927) / Newcombe (1998) table: 8 of 10 -> 0.490-0.943; 0 of 10 -> 0-0.278
    lo, hi = wilson(8, 10)
    assert (round(lo, 3), round(hi, 3)) == (0.490, 0.943)
    lo, hi = wilson(0, 10)
    assert lo == 0.0 and round(hi, 3) == 0.278
    assert wilson(0, 0) is None


def test_decide_is_argmax_without_an_operating_point_and_one_vs_rest_with_one() -> None:
    classes = ["a", "b", "c"]
    probs = np.array([[0.5, 0.2, 0.3], [0.1, 0.45, 0.45]])
    assert decide(probs, classes).tolist() == [0, 1]  # old bundles: argmax
    assert decide(probs, classes, {"positive": "c", "threshold": 0.25}).tolist() == [2, 2]
    # below the threshold: the most probable *other* class, even where c ties for first
    assert decide(probs, classes, {"positive": "c", "threshold": 0.5}).tolist() == [0, 1]


def test_threshold_reaches_the_target_sensitivity_or_youden() -> None:
    y = np.array([0] * 10 + [1] * 10)
    p1 = np.concatenate([np.linspace(0.05, 0.5, 10), np.linspace(0.3, 0.95, 10)])
    probs = np.column_stack([1 - p1, p1])
    op = choose(y, probs, ["hem", "all"], "all", target_sensitivity=1.0)
    # the lowest positive scores 0.3, the next lower cell 0.25: halfway between
    assert op["val_sensitivity"] == 1.0 and op["threshold"] == pytest.approx(0.275)
    youden = choose(y, probs, ["hem", "all"], "all")
    assert youden["rule"] == "youden" and youden["threshold"] > op["threshold"]
    j = {r["rule"]: r["val_sensitivity"] + r["val_specificity"] for r in (op, youden)}
    assert j["youden"] > j["sensitivity>=1"]
    with pytest.raises(ConfigError, match="--positive 'blast'"):
        choose(y, probs, ["hem", "all"], "blast")


def test_train_stores_the_operating_point_and_predict_label_flips_with_it(run: Path, cells: Path,
                                                                           tmp_path: Path) -> None:
    bundle = load_bundle(run / "bundle")
    op = bundle.operating_point
    assert op is not None and op["positive"] == "all" and op["rule"] == "sensitivity>=0.95"
    assert op["val_sensitivity"] >= 0.95 and 0 <= op["threshold"] <= 1
    assert "test" in bundle.metrics()["operating_point"]
    assert "- operating point: all when p(all) >= " in (run / "bundle" / "MODEL_CARD.md").read_text()

    paths = sorted(cells.iterdir())
    p = bundle.predict_proba([str(q) for q in paths])[:, bundle.classes.index("all")]
    # the model is often sure of every cell (p near 0 or 1): take the likeliest "all" among the cells it
    # calls hem, since small probabilities keep their precision where ones near 1 round to 1
    hem = np.flatnonzero(p < 0.5)
    assert hem.size, "no cell the model calls hem"
    one, p_all = paths[int(hem[np.argmax(p[hem])])], float(p[hem].max())
    assert p_all > 0  # a threshold below it can still call it "all"

    def label_at(threshold: float) -> str:
        copy = _bundle_at(run, tmp_path / "bundle", threshold)
        out = tmp_path / f"p{threshold}.csv"
        res = runner.invoke(app, ["predict", str(copy), str(one), "--out", str(out)])
        assert res.exit_code == 0, res.output
        with open(out, newline="") as f:
            rows = list(csv.DictReader(f))
        assert float(rows[0]["p_all"]) == pytest.approx(p_all, abs=1e-6)  # probabilities untouched
        return rows[0]["predicted"]

    assert label_at(p_all / 2) == "all"
    assert label_at(min(0.5, 2 * p_all)) == "hem"


def _bundle_at(run: Path, folder: Path, threshold: float) -> Path:
    """``folder``: a copy of the run's bundle (made once) with its operating threshold at ``threshold``."""
    if not folder.exists():
        shutil.copytree(run / "bundle", folder)
    cfg = json.loads((folder / "config.json").read_text())
    cfg["operating_point"]["threshold"] = threshold
    (folder / "config.json").write_text(json.dumps(cfg))
    return folder


@pytest.mark.filterwarnings("ignore:Using `httpx` with `starlette.testclient`")
def test_serve_calls_at_the_bundle_threshold(run: Path, cells: Path, tmp_path: Path) -> None:
    from fastapi.testclient import TestClient

    from leukoscope.serve.app import create_app

    copy = _bundle_at(run, tmp_path / "bundle", 0.0)  # every cell reaches it: always "all"
    hem = next(p for p in sorted(cells.iterdir()) if p.stem.endswith("_0"))
    with TestClient(create_app(copy)) as client:
        r = client.post("/api/predict", files=[("files", (hem.name, hem.read_bytes(), "image/tiff"))])
    assert r.status_code == 200, r.text
    res = r.json()["results"][0]
    assert res["label"] == "all" and set(res["probabilities"]) == {"all", "hem"}


def test_a_bad_operating_point_is_refused_at_load(run: Path, tmp_path: Path) -> None:
    copy = _bundle_at(run, tmp_path / "bundle", 1.5)
    with pytest.raises(BundleError, match="operating_point.threshold"):
        load_bundle(copy)


def test_evaluate_names_the_positive_class_and_gives_every_figure_an_interval(run: Path, cells: Path,
                                                                              tmp_path: Path) -> None:
    out = tmp_path / "ev"
    res = runner.invoke(app, ["evaluate", str(run / "bundle"), str(cells), "--side", "test",
                              "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "sensitivity for all at p >=" in res.output and "specificity for all" in res.output
    assert "too small to rank models" in res.output  # 60 cells, a 15% test side
    r = json.loads((out / "metrics.json").read_text())
    op = r["operating_point"]
    assert op["positive"] == "all" and op["negative"] == "hem"
    for name in ("sensitivity", "specificity"):
        lo, hi = op[name]["ci95_wilson"]
        assert lo <= op[name]["value"] <= hi and "ci95_subjects" not in op[name]  # no subject ids
    assert set(r["cell"]["ci95"]) == {"accuracy", "balanced_accuracy", "f1_macro", "f1_weighted", "roc_auc"}
    lo, hi = r["cell"]["ci95"]["accuracy"]
    assert lo <= r["cell"]["accuracy"] <= hi and "Wilson for accuracy" in r["cell"]["ci95_method"]
    assert r["too_small"] and any("too small to rank models" in w for w in r["warnings"])
    html = (out / "report.html").read_text()
    assert "Operating point: all vs hem" in html and "sensitivity for all" in html
    assert "too small to rank models" in html and "bootstrap over images" in html


def test_evaluate_resamples_by_subject_where_subjects_are_known(data: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    cnmc = data / "cnmc_sample"
    res = runner.invoke(app, ["train", str(cnmc), "--model", "gaussian_nb", "--out", str(run),
                              "--positive", "all"])
    assert res.exit_code == 0, res.output
    assert "youden on validation" in res.output
    res = runner.invoke(app, ["evaluate", str(run / "bundle"), str(cnmc), "--out", str(tmp_path / "ev")])
    assert res.exit_code == 0, res.output
    r = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert r["cell"]["ci95_method"].startswith("bootstrap over subjects")
    assert r["subject"]["ci95"]["balanced_accuracy"] is not None
    sens = r["operating_point"]["sensitivity"]
    assert sens["ci95_subjects"] is not None and sens["n"] == 27
    assert not r["too_small"]  # 54 cells of 28 subjects


def test_operating_point_settings_are_checked(cells: Path, tmp_path: Path) -> None:
    res = runner.invoke(app, ["train", str(cells), "--model", "lda", "--out", str(tmp_path / "a"),
                              "--target-sensitivity", "0.9"])
    assert res.exit_code != 0 and "--target-sensitivity needs --positive" in res.output
    res = runner.invoke(app, ["train", str(cells), "--model", "lda", "--out", str(tmp_path / "b"),
                              "--positive", "blast"])
    assert res.exit_code != 0 and "--positive 'blast'" in res.output and "Traceback" not in res.output


def test_too_small_flags_cells_and_subjects() -> None:
    assert too_small(49, None) and too_small(500, 9) and too_small(50, 10) is None
    assert too_small(50, None) is None


def test_rank_auc_equals_roc_auc_with_ties() -> None:
    from leukoscope.evaluate.intervals import rank_auc
    from leukoscope.evaluate.metrics import roc_auc

    rng = np.random.default_rng(1)
    for k in (2, 4):
        y = rng.integers(0, k, 300)
        probs = rng.dirichlet(np.ones(k), 300).round(1)  # rounded: many ties
        assert rank_auc(y, probs) == pytest.approx(roc_auc(y, probs), abs=1e-12)


def test_group_resamples_draw_whole_subjects() -> None:
    from leukoscope.evaluate.metrics import group_resamples

    groups = np.array(["a", "b", "a", "c", "b", "a"])
    rows = {g: set(np.flatnonzero(groups == g)) for g in "abc"}
    for draw in group_resamples(groups, seed=0, n=20):
        drawn = groups[draw]
        for g in set(drawn):  # each drawn subject comes with all its rows, as many times as drawn
            times = list(drawn).count(g) // len(rows[g])
            assert sorted(draw[drawn == g]) == sorted(list(rows[g]) * times)
        assert sum(list(drawn).count(g) // len(rows[g]) for g in "abc") == 3


@pytest.mark.slow
def test_ray_engine_calls_at_the_bundle_threshold(run: Path, cells: Path, tmp_path: Path) -> None:
    import pandas as pd

    copy = _bundle_at(run, tmp_path / "bundle", 0.0)  # every cell reaches it: always "all"
    out = tmp_path / "ray"
    res = runner.invoke(app, ["predict", str(copy), str(cells), "--out", str(out), "--engine", "ray",
                              "--num-cpus", "1", "--csv"])
    assert res.exit_code == 0, res.output
    parquet, written = pd.read_parquet(out / "predictions.parquet"), pd.read_csv(out / "predictions.csv")
    assert set(parquet["predicted"]) == set(written["predicted"]) == {"all"} and len(written) == 60
    assert (written["p_hem"] > 0.5).any()  # the probabilities still say otherwise for some


def test_a_network_run_gets_its_operating_point_too(data: Path, tmp_path: Path) -> None:
    from leukoscope.data.readers import read
    from leukoscope.train import TrainConfig, train

    m = read([data / "cnmc_sample"])
    bundle = train(m, TrainConfig.build(model="leukonet", epochs=1, img_size=32, batch_size=16, seed=0,
                                        positive="hem", target_sensitivity=0.9), tmp_path / "run")
    op = bundle.operating_point
    assert op is not None and op["positive"] == "hem" and op["val_sensitivity"] >= 0.9
    probs = np.array([[1 - op["threshold"], op["threshold"]]])  # exactly at the threshold: hem
    assert bundle.classes == ["all", "hem"] and bundle.decide(probs).tolist() == [1]
    assert bundle.decide(probs + [[1e-6, -1e-6]]).tolist() == [0]


def test_evaluate_scores_the_class_and_shows_the_call_at_the_threshold(run: Path, cells: Path,
                                                                        tmp_path: Path) -> None:
    """predictions.csv: ``predicted`` is the most probable class (what the figures score), ``call`` the
    bundle's call at its threshold (or unfamiliar); the unflagged accuracy is that of the calls made."""
    import pandas as pd

    copy = tmp_path / "bundle"  # a threshold that sets some calls apart from the most probable class
    shutil.copytree(run / "bundle", copy)
    config = json.loads((copy / "config.json").read_text())
    p_all = load_bundle(run / "bundle").predict_proba(sorted(str(f) for f in cells.iterdir()))[:, 0]
    config["operating_point"]["threshold"] = float(np.quantile(p_all[p_all < 0.5], 0.5))
    (copy / "config.json").write_text(json.dumps(config))
    res = runner.invoke(app, ["evaluate", str(copy), str(cells), "--out", str(tmp_path / "ev")])
    assert res.exit_code == 0, res.output
    rows = pd.read_csv(tmp_path / "ev" / "predictions.csv")
    bundle = load_bundle(copy)
    probs = rows[[f"p_{c}" for c in bundle.classes]].to_numpy()
    classes = np.array(bundle.classes)
    assert (rows["predicted"] == classes[probs.argmax(1)]).all()
    decided = np.where(rows["unfamiliar"], "unfamiliar", classes[bundle.decide(probs)])
    assert (rows["call"] == decided).all() and (classes[bundle.decide(probs)] != rows["predicted"]).any()
    m = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert m["cell"]["accuracy"] == pytest.approx((rows["predicted"] == rows["label"]).mean())
    kept = ~rows["unfamiliar"]
    made = classes[bundle.decide(probs)][kept] == rows["label"][kept]
    assert m["unfamiliar"]["accuracy_unflagged"] == pytest.approx(made.mean())
