"""compare: paired tests checked against scipy and brute force; two real bundles on the same cells."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from sklearn.metrics import roc_auc_score
from typer.testing import CliRunner

from leukoscope.bundle import load_bundle
from leukoscope.cli.verbs import app
from leukoscope.evaluate.metrics import roc_auc
from leukoscope.evaluate.paired import delong, macro_auc, mcnemar_exact, paired_bootstrap
from use_support import _once, network_bundle  # noqa: F401

runner = CliRunner()


@pytest.mark.parametrize("seed", range(6))
def test_mcnemar_is_scipys_exact_binomial_test(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(5, 80))
    a, b = rng.random(n) < rng.uniform(0.5, 0.95), rng.random(n) < rng.uniform(0.5, 0.95)
    r = mcnemar_exact(a, b)
    assert r["a_only"] + r["b_only"] + r["both"] + r["neither"] == n
    discordant = r["a_only"] + r["b_only"]
    expected = stats.binomtest(r["a_only"], discordant, 0.5).pvalue if discordant else 1.0
    assert r["p_value"] == pytest.approx(expected, rel=1e-9)


def test_mcnemar_textbook_counts() -> None:
    """7 discordant cells all one way: p = 2 / 2**7."""
    a = np.array([True] * 30 + [True] * 7)
    b = np.array([True] * 30 + [False] * 7)
    assert mcnemar_exact(a, b)["p_value"] == pytest.approx(2 / 2**7)
    assert mcnemar_exact(a, a)["p_value"] == 1.0


def _scores(n: int, seed: int, ties: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Two correlated, informative scores for n cells (rounded to force ties)."""
    rng = np.random.default_rng(seed)
    y = rng.random(n) < 0.4
    shared = rng.normal(size=n)
    a = 1.0 * y + shared + 0.7 * rng.normal(size=n)
    b = 1.4 * y + shared + 0.7 * rng.normal(size=n)
    if ties:
        a, b = a.round(0), b.round(0)
    return y, a, b


@pytest.mark.parametrize("ties", [False, True])
def test_delong_auc_and_variance_match_brute_force(ties: bool) -> None:
    """AUCs equal scikit-learn's; the variance equals the pairwise-kernel (Mann-Whitney) formula."""
    y, a, b = _scores(120, 3, ties)
    r = delong(y, a, b)
    assert r["auc_a"] == pytest.approx(roc_auc_score(y, a))
    assert r["auc_b"] == pytest.approx(roc_auc_score(y, b))

    def kernel(s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:  # psi(x, y) = 1, 1/2, 0 for every pair
        pos, neg = s[y][:, None], s[~y][None, :]
        psi = (pos > neg) + 0.5 * (pos == neg)
        return psi.mean(axis=1), psi.mean(axis=0)

    (va_pos, va_neg), (vb_pos, vb_neg) = kernel(a), kernel(b)
    var = (np.var(vb_pos - va_pos, ddof=1) / y.sum() + np.var(vb_neg - va_neg, ddof=1) / (~y).sum())
    assert r["se"] == pytest.approx(np.sqrt(var), rel=1e-9)
    assert r["p_value"] == pytest.approx(2 * stats.norm.sf(abs(r["difference"]) / r["se"]))


def test_delong_standard_error_agrees_with_a_bootstrap() -> None:
    y, a, b = _scores(400, 7)
    r = delong(y, a, b)
    rng = np.random.default_rng(0)
    diffs = []
    for _ in range(3000):
        i = rng.integers(0, len(y), len(y))
        if y[i].all() or not y[i].any():
            continue
        diffs.append(roc_auc_score(y[i], b[i]) - roc_auc_score(y[i], a[i]))
    assert r["se"] == pytest.approx(np.std(diffs), rel=0.1)
    assert r["difference"] > 0 and r["p_value"] < 0.05  # B carries more signal by construction


@pytest.mark.parametrize("k", [2, 4])
def test_macro_auc_by_ranks_is_the_evaluate_roc_auc(k: int) -> None:
    rng = np.random.default_rng(k)
    y = rng.integers(0, k, 90)
    probs = rng.dirichlet(np.ones(k), 90).round(2)  # rounded: ties
    probs[np.arange(90), y] += 0.3
    probs /= probs.sum(axis=1, keepdims=True)
    assert macro_auc(y, probs) == pytest.approx(roc_auc(y, probs))


def test_bootstrap_resamples_whole_subjects() -> None:
    """Ten subjects of ten identical cells: resampling subjects gives a far wider interval of the
    difference than treating the 100 cells as independent; identical models differ by exactly 0."""
    rng = np.random.default_rng(1)
    y = np.repeat(rng.integers(0, 2, 10), 10)
    pa = np.repeat(rng.dirichlet([1, 1], 10), 10, axis=0)
    pb = np.repeat(rng.dirichlet([1, 1], 10), 10, axis=0)
    subjects = np.repeat([f"s{i}" for i in range(10)], 10)
    by_subject = paired_bootstrap(y, pa, pb, subjects, n=500)["accuracy"]["difference"]
    by_cell = paired_bootstrap(y, pa, pb, np.arange(100), n=500)["accuracy"]["difference"]
    assert by_subject[1] - by_subject[0] > 2 * (by_cell[1] - by_cell[0])
    same = paired_bootstrap(y, pa, pa, subjects, n=200)
    assert same["roc_auc"]["difference"] == [0.0, 0.0] and same["accuracy"]["p_value"] == 1.0


def _train(data_set: Path, model: str, out: Path) -> Path:
    from leukoscope.data.readers import read
    from leukoscope.train import TrainConfig, train

    net = {"epochs": 2, "img_size": 32, "batch_size": 16} if model == "leukonet" else {}
    return Path(train(read([data_set]), TrainConfig.build(model=model, seed=0, **net), out).path)


@pytest.fixture(scope="session")
def allidb2_pair(data: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """An SVC and a leukonet trained on ALL-IDB2 with the same seed, so the same test side."""
    return (_once("cmp-svc", tmp_path_factory, lambda out: _train(data / "allidb2", "svc", out)),
            _once("cmp-net", tmp_path_factory, lambda out: _train(data / "allidb2", "leukonet", out)))


def test_compare_cli_scores_both_models_on_the_same_test_cells(allidb2_pair, data, tmp_path) -> None:
    svc, net = allidb2_pair
    res = runner.invoke(app, ["compare", str(svc), str(net), str(data / "allidb2"), "--side", "test",
                              "--bootstrap", "500", "--out", str(tmp_path / "cmp")], terminal_width=160)
    assert res.exit_code == 0, res.output
    assert "McNemar exact" in res.output and "DeLong" in res.output and "image-level" in res.output
    r = json.loads((tmp_path / "cmp" / "comparison.json").read_text())
    split = load_bundle(svc).split()
    test_side = set(split.loc[split["side"] == "test", "path"])
    cells = pd.read_csv(tmp_path / "cmp" / "comparison.csv")
    assert set(cells["path"]) == test_side and r["compared"] == len(test_side) == len(cells)
    # the McNemar counts are those of the per-cell predictions written beside them
    right_a, right_b = cells["predicted_a"] == cells["label"], cells["predicted_b"] == cells["label"]
    assert r["mcnemar"]["a_only"] == int((right_a & ~right_b).sum())
    assert r["mcnemar"]["b_only"] == int((~right_a & right_b).sum())
    rows = {row["figure"]: row for row in r["table"]}
    assert rows["accuracy"]["test"] == "McNemar exact" and rows["roc_auc"]["test"] == "DeLong"
    assert rows["accuracy"]["a"] == pytest.approx(right_a.mean())
    if right_a.all():  # the tiny SVC gets ALL-IDB2's test side right: the note bounds its error instead
        assert any("rule of three" in n and f"below {3 / len(cells):.3f}" in n for n in r["notes"])
    assert rows["roc_auc"]["b"] == pytest.approx(roc_auc_score(cells["label"] == "hem", cells["p_b_hem"]),
                                                 abs=1e-4)
    md = (tmp_path / "cmp" / "comparison.md").read_text()
    assert "| Figure | A: svc | B: leukonet | B - A | p | Test |" in md
    html = (tmp_path / "cmp" / "comparison.html").read_text()
    assert "<th>A: svc</th>" in html and "McNemar" in html and "<script src" not in html


def test_compare_uses_the_intersection_when_the_splits_differ(allidb2_pair, data, tmp_path) -> None:
    svc, net = allidb2_pair
    moved = shutil.copytree(net, tmp_path / "net")
    split = pd.read_csv(moved / "split.csv")
    test_rows = split.index[split["side"] == "test"][:5]
    split.loc[test_rows, "side"] = "train"
    split.to_csv(moved / "split.csv", index=False)
    res = runner.invoke(app, ["compare", str(svc), str(moved), str(data / "allidb2"), "--side", "test",
                              "--bootstrap", "200", "--out", str(tmp_path / "cmp")], terminal_width=200)
    assert res.exit_code == 0, res.output
    r = json.loads((tmp_path / "cmp" / "comparison.json").read_text())
    assert r["compared"] == int((split["side"] == "test").sum())
    assert any("recorded different splits" in n and "dropped 5 only on A's and 0 only on B's" in n
               for n in r["notes"])


def test_compare_refuses_other_classes_and_unknown_sides_in_one_line(allidb2_pair, data, tmp_path) -> None:
    svc, net = allidb2_pair
    res = runner.invoke(app, ["compare", str(svc), str(net), str(data / "allidb2"), "--side", "holdout",
                              "--out", str(tmp_path / "x")])
    assert res.exit_code == 1 and "Traceback" not in res.output
    assert " ".join(res.output.split()).startswith(f"error: --side 'holdout': {svc}/split.csv has sides test")
    other = shutil.copytree(svc, tmp_path / "other")
    config = json.loads((other / "config.json").read_text())
    config["classes"] = ["blast", "normal"]
    (other / "config.json").write_text(json.dumps(config))
    res = runner.invoke(app, ["compare", str(svc), str(other), str(data / "allidb2"),
                              "--out", str(tmp_path / "y")])
    assert res.exit_code == 1 and "predict different classes" in res.output
    assert len(res.output.strip().splitlines()) == 1


def test_compare_resamples_subjects_where_the_data_has_them(network_bundle, data, tmp_path) -> None:  # noqa: F811
    """C-NMC: a classical model and the network, same seed, same subject-grouped test side."""
    from leukoscope.data.readers import read
    from leukoscope.evaluate.compare import compare

    svc = _train(data / "cnmc_sample", "svc", tmp_path / "svc")
    m = read([data / "cnmc_sample"])
    r = compare(load_bundle(svc), load_bundle(network_bundle), m, tmp_path / "cmp", side="test", n_boot=300)
    test = pd.read_csv(network_bundle / "split.csv", dtype={"subject": str})
    test = test[test["side"] == "test"]
    assert r["protocol"] == "subject-grouped" and r["level"] == "subjects"
    assert r["compared"] == len(test) and r["groups"] == test["subject"].nunique() < len(test)
    assert all(row["test"] == "paired bootstrap over subjects" for row in r["table"])
    assert any("not independent" in n for n in r["notes"])


def test_readme_compare_command_runs_as_written(allidb2_pair, data, tmp_path) -> None:
    """The tour's ``leukoscope compare`` line with its options as written; its two bundles and data set
    swapped for the tiny ALL-IDB2 pair here (the tour's take minutes to train), runs/ for a temporary one."""
    import shlex

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    line = next(x for x in readme.splitlines() if x.startswith("leukoscope compare "))
    words = shlex.split(line.split("#")[0])[1:]
    assert words[0] == "compare" and words[3].startswith("$D/")
    svc, net = allidb2_pair
    args = ["compare", str(svc), str(net), str(data / "allidb2"),
            *(w.replace("runs/", f"{tmp_path}/runs/") for w in words[4:])]
    res = runner.invoke(app, [*args, "--bootstrap", "200"], terminal_width=160)
    assert res.exit_code == 0, res.output
    assert "McNemar exact" in res.output and list((tmp_path / "runs").rglob("comparison.md"))


def test_compare_on_a_side_the_models_were_built_from_says_so(allidb2_pair, data, tmp_path) -> None:
    """--side train / val are the models' own cells: the same note as without --side, no rule of three."""
    svc, net = allidb2_pair
    for side in ("train", "val"):
        res = runner.invoke(app, ["compare", str(svc), str(net), str(data / "allidb2"), "--side", side,
                                  "--bootstrap", "200", "--out", str(tmp_path / side)], terminal_width=160)
        assert res.exit_code == 0, res.output
        notes = json.loads((tmp_path / side / "comparison.json").read_text())["notes"]
        assert any("were used to build A" in n and "optimistic" in n for n in notes), notes
        assert not any("rule of three" in n for n in notes)


def test_a_cell_only_one_model_cannot_read_is_listed(allidb2_pair, data, tmp_path, monkeypatch) -> None:
    import leukoscope.evaluate.compare as compare_module
    from leukoscope.data.readers import read
    from leukoscope.evaluate.compare import compare

    svc, net = allidb2_pair
    real, calls = compare_module.score_paths, []

    def score_paths(bundle, paths, *args, **kwargs):  # the second model finds one file unreadable
        calls.append(1)
        ok, logits, skipped = real(bundle, paths, *args, **kwargs)
        if len(calls) == 2:
            return ok[1:], logits[1:], [*skipped, (paths[ok[0]], "unreadable for B")]
        return ok, logits, skipped

    monkeypatch.setattr(compare_module, "score_paths", score_paths)
    r = compare(load_bundle(svc), load_bundle(net), read([data / "allidb2"]), tmp_path / "cmp", side="test",
                n_boot=100)
    assert r["compared"] == r["images"] - 1 and [s["reason"] for s in r["skipped"]] == ["unreadable for B"]


def test_compare_runtime_applies_to_the_network_bundle(allidb2_pair, data, tmp_path) -> None:
    svc, net = allidb2_pair
    exported = shutil.copytree(net, tmp_path / "net")
    assert runner.invoke(app, ["export", str(exported), "--onnx"]).exit_code == 0
    res = runner.invoke(app, ["compare", str(svc), str(exported), str(data / "allidb2"), "--side", "test",
                              "--runtime", "onnx", "--bootstrap", "100", "--out", str(tmp_path / "cmp")])
    assert res.exit_code == 0, res.output  # the classical bundle was refused the runtime
