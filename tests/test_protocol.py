"""One split protocol for every command (#23.1, #23.3): duplicate clusters grouped by default (cached),
``--split FILE`` driving train / benchmark / tune / evaluate, the same test side for every family."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from leukoscope.audit import audit
from leukoscope.audit.groups import duplicate_clusters
from leukoscope.cli.verbs import app
from leukoscope.data.readers import read
from leukoscope.data.splits import NO_DEDUPE_WARNING, apply_split, describe_split, read_split, write_split
from leukoscope.errors import DataError
from leukoscope.train.data import protocol_split

runner = CliRunner()
SEEDS = range(6)


def _sides(split: pd.DataFrame) -> dict[str, str]:
    return dict(zip(split["path"].astype(str), split["side"].astype(str), strict=True))


def _straddling(split: pd.DataFrame, clusters: list[pd.DataFrame]) -> int:
    side = _sides(split)
    return sum(len({side[p] for p in c["path"] if p in side}) > 1 for c in clusters)


@pytest.mark.parametrize("folders", [["allidb2"], ["cnmc_sample", "cnmc_cells"]])
def test_default_split_keeps_every_audit_cluster_on_one_side(data: Path, tmp_path: Path,
                                                             folders: list[str]) -> None:
    m = read([data / f for f in folders])
    clusters = audit(m).clusters()
    assert clusters  # the audit finds copies in both (ALL-IDB2: 11 clusters; C-NMC: H6/H2 and others)
    straddled_without = 0
    for seed in SEEDS:
        split = protocol_split(m, val=0.15, test=0.15, seed=seed, cache=tmp_path)
        assert _straddling(split, clusters) == 0, f"seed {seed}"
        info = describe_split(split)
        assert info["dedupe"] and NO_DEDUPE_WARNING not in info.get("warning", "")
        plain = protocol_split(m, val=0.15, test=0.15, seed=seed, dedupe=False, cache=tmp_path)
        straddled_without += _straddling(plain, clusters)
        assert NO_DEDUPE_WARNING in describe_split(plain)["warning"]
    assert straddled_without > 0  # what the default prevents: copies on two sides


def test_clusters_are_cached_by_content(data: Path, tmp_path: Path) -> None:
    m = read([data / "cnmc_sample"])
    first = duplicate_clusters(m, cache=tmp_path)
    assert first and all(len(c) > 1 for c in first)
    files = list((tmp_path / "audit").glob("*.json"))
    assert len(files) == 1
    files[0].write_text(json.dumps({"clusters": []}))  # a second use reads the cache, not the audit
    assert duplicate_clusters(m, cache=tmp_path) == []
    assert duplicate_clusters(m.iloc[:-1], cache=tmp_path)  # other files, other key: audited again
    assert len(list((tmp_path / "audit").glob("*.json"))) == 2


@pytest.fixture(scope="module")
def allidb_subset(data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CSV manifest of 72 ALL-IDB2 cells: the first 36 of each class, with duplicate clusters in it."""
    m = read([data / "allidb2"])
    rows = pd.concat([part.head(36) for _, part in m.groupby("label")])
    out = tmp_path_factory.mktemp("allidb") / "subset.csv"
    rows[["path", "label"]].to_csv(out, index=False)
    return out


def test_split_file_drives_train_benchmark_tune_and_evaluate(allidb_subset: Path, tmp_path: Path) -> None:
    s = tmp_path / "s.csv"
    res = runner.invoke(app, ["data", "split", str(allidb_subset), "--out", str(s), "--seed", "3"])
    assert res.exit_code == 0, res.output
    assert "duplicate cluster(s) merged" in res.output
    want = _sides(read_split(s))

    run = tmp_path / "run"
    res = runner.invoke(app, ["train", str(allidb_subset), "--split", str(s), "--model",
                              "logistic_regression", "--out", str(run)])
    assert res.exit_code == 0, res.output
    assert "by side (images)" in res.output  # the figures name their side
    trained = json.loads((run / "bundle" / "metrics.json").read_text())
    assert _sides(read_split(run / "bundle" / "split.csv")) == want and trained["dedupe"]
    assert trained["sides"]["test"] == trained["test"]["n"] == list(want.values()).count("test")

    best, board = tmp_path / "best", tmp_path / "board"
    res = runner.invoke(app, ["benchmark", str(allidb_subset), "--split", str(s), "--models", "lda",
                              "--cv", "3", "--jobs", "1", "--out", str(board), "--save-best", str(best)])
    assert res.exit_code == 0, res.output
    assert _sides(read_split(best / "split.csv")) == want
    run_json = json.loads((board / "run.json").read_text())
    n_test = list(want.values()).count("test")
    assert run_json["held_out_test"] == n_test and run_json["images"] == len(want) - n_test
    assert "train+val" in run_json["figures_from"] and "train+val" in (board / "leaderboard.md").read_text()
    saved = json.loads((best / "metrics.json").read_text())
    assert saved["test"]["n"] == n_test and saved["cross_validation_on"] == run_json["figures_from"]

    res = runner.invoke(app, ["evaluate", str(best), str(allidb_subset), "--side", "test", "--out",
                              str(tmp_path / "ev")])
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "ev" / "metrics.json").read_text())["evaluated"] == n_test
    res = runner.invoke(app, ["evaluate", str(run / "bundle"), str(allidb_subset), "--split", str(s), "--out",
                              str(tmp_path / "ev2")])
    assert res.exit_code == 0, res.output
    ev = json.loads((tmp_path / "ev2" / "metrics.json").read_text())
    assert ev["side"] == "test" and ev["evaluated"] == n_test and str(s) in ev["side_of"]
    assert ev["cell"]["accuracy"] == pytest.approx(trained["test"]["accuracy"])  # one test side, one figure

    res = runner.invoke(app, ["tune", str(allidb_subset), "--model", "lda", "--trials", "1", "--cv", "2",
                              "--repeats", "1", "--split", str(s), "--out", str(tmp_path / "tune")])
    assert res.exit_code == 0, res.output
    tuned = json.loads((tmp_path / "tune" / "best.json").read_text())
    assert tuned["split"]["test"] == n_test and tuned["split"]["train"] == len(want) - n_test


def test_no_dedupe_is_said(allidb_subset: Path, tmp_path: Path) -> None:
    res = runner.invoke(app, ["train", str(allidb_subset), "--model", "logistic_regression", "--no-dedupe",
                              "--out", str(tmp_path / "run")])
    assert res.exit_code == 0, res.output
    metrics = json.loads((tmp_path / "run" / "bundle" / "metrics.json").read_text())
    assert not metrics["dedupe"] and NO_DEDUPE_WARNING in metrics["split_warning"]
    assert "without the audit's duplicate" in " ".join(res.output.split())
    card = (tmp_path / "run" / "bundle" / "MODEL_CARD.md").read_text()
    assert "not grouped (--no-dedupe)" in card and "`test` the test side" in card
    res = runner.invoke(app, ["evaluate", str(tmp_path / "run" / "bundle"), str(allidb_subset), "--side",
                              "test", "--out", str(tmp_path / "ev")])
    assert res.exit_code == 0, res.output
    warnings = json.loads((tmp_path / "ev" / "metrics.json").read_text())["warnings"]
    assert any(NO_DEDUPE_WARNING in w for w in warnings)


def test_a_split_file_that_does_not_fit_is_refused_in_one_line(data: Path, tmp_path: Path) -> None:
    folder = data / "cnmc_sample"
    split = protocol_split(read([folder]), val=0.15, test=0.15, seed=0, cache=tmp_path)
    missing = split.copy()
    missing.loc[0, "path"] = str(tmp_path / "gone.bmp")
    write_split(missing, tmp_path / "missing.csv")
    relabelled = split.copy()
    relabelled.loc[0, "label"] = "hem" if relabelled.loc[0, "label"] == "all" else "all"
    write_split(relabelled, tmp_path / "labels.csv")
    for name, message in (("missing.csv", "missing or not among the images given"),
                          ("labels.csv", "label(s) disagree")):
        res = runner.invoke(app, ["train", str(folder), "--split", str(tmp_path / name), "--model", "lda",
                                  "--out", str(tmp_path / f"run-{name}")])
        assert res.exit_code != 0 and message in res.output and name in res.output
        assert "Traceback" not in res.output and len(res.output.strip().splitlines()) <= 3


def test_relative_paths_resolve_against_the_data_root(data: Path, tmp_path: Path) -> None:
    folder = data / "cnmc_sample"
    m = read([folder])
    split = protocol_split(m, val=0.15, test=0.15, seed=1, cache=tmp_path)
    rel = split.assign(path=[str(Path(p).relative_to(folder.resolve())) for p in split["path"]])
    write_split(rel, tmp_path / "rel.csv")
    back = apply_split(m, read_split(tmp_path / "rel.csv"))
    assert _sides(back) == _sides(split) and back["group"].tolist() == split["group"].tolist()
    with pytest.raises(DataError, match="rel.csv: 54 of its 54 image"):
        apply_split(read([data / "cnmc_cells"]), read_split(tmp_path / "rel.csv"))


def test_train_benchmark_and_tune_hold_out_one_test_side(data: Path, tmp_path: Path) -> None:
    """With the network run of test_train_classical (same test side as a classical run), every command."""
    from leukoscope.leaderboard import benchmark
    from leukoscope.train import TrainConfig, train
    from leukoscope.tune import holdout

    m = read([data / "cnmc_sample"])
    trained = train(m, TrainConfig.build(model="lda", seed=2), tmp_path / "lda")
    split = trained.split()
    assert split is not None
    test_side = {p for p, s in _sides(split).items() if s == "test"}
    assert test_side and trained.metrics()["sides"]["test"] == len(test_side)
    _, rows, _ = benchmark(m, models=["lda"], k=2, jobs=1, seed=2)
    assert set(rows.loc[rows["side"] == "test", "path"]) == test_side
    tuned = holdout(m, 0.15, 2)
    assert set(tuned.loc[tuned["side"] == "test", "path"]) == test_side


def test_a_csv_manifest_keeps_group_and_side(data: Path, tmp_path: Path) -> None:
    m = read([data / "allidb2"])
    split = protocol_split(m, val=0.15, test=0.15, seed=0, cache=tmp_path)
    write_split(split, tmp_path / "s.csv")
    back = read([tmp_path / "s.csv"])
    assert back["group"].tolist() == split["group"].tolist()
    assert back["side"].tolist() == split["side"].tolist()
    assert back["group"].nunique() < len(back)  # the duplicate clusters' merged groups survive
