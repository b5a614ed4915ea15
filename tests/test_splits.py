"""Splits never put a subject on two sides, stay stratified, and say when they are image-level."""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest

from leukoscope.data.manifest import IMAGE_LEVEL_WARNING
from leukoscope.data.readers import read
from leukoscope.data.splits import (
    NO_DEDUPE_WARNING,
    OFFICIAL_CNMC,
    check_no_leak,
    describe_split,
    kfold,
    mark_dedupe,
    official_cnmc,
    read_split,
    require_classes,
    split_protocol,
    train_val_test,
    write_split,
)
from leukoscope.errors import DataError, LeakageError


@pytest.fixture(scope="module")
def cnmc(data: Path) -> pd.DataFrame:
    """C-NMC download + class folders: subjects 1, 3, H6, H10 appear in both."""
    return read([data / "cnmc_sample", data / "cnmc_cells"])


@pytest.fixture(scope="module")
def aria(data: Path) -> pd.DataFrame:
    return read([data / "aria_all"])


def _sides_per_subject(split: pd.DataFrame, col: str) -> pd.Series:
    """Independent of check_no_leak: how many sides / folds each subject (or image) sits in."""
    key = split["subject"].fillna(split["path"])
    return split.groupby(key)[col].nunique()


def test_check_no_leak_raises_on_hand_made_leaks(cnmc: pd.DataFrame) -> None:
    split = cnmc.copy()
    split["side"] = "train"
    h6 = split.index[split["subject"] == "H6"]
    split.loc[h6[0], "side"] = "test"
    with pytest.raises(LeakageError,
                       match=r"1 group\(s\) sit on more than one side; e.g. subject:H6 in test, train"):
        check_no_leak(split)
    folds = cnmc.copy()
    folds["fold"] = range(len(folds))  # every image its own fold: every multi-image subject leaks
    with pytest.raises(LeakageError, match="sit on more than one fold"):
        check_no_leak(folds)
    ok = cnmc.copy()
    ok["fold"] = ok["group"].rank(method="dense").astype(int) % 3
    check_no_leak(ok)
    regrouped = split.assign(group="image:" + split["path"])  # a split file whose groups were edited
    with pytest.raises(LeakageError, match=r"1 subject\(s\) sit on more than one side; e.g. H6 in test"):
        check_no_leak(regrouped)


def test_kfold_never_leaks_and_stays_stratified(cnmc: pd.DataFrame) -> None:
    for seed in range(8):
        for k in (3, 5):
            s = kfold(cnmc, k=k, seed=seed)
            assert sorted(s["fold"].unique()) == list(range(k))
            assert (_sides_per_subject(s, "fold") == 1).all(), (seed, k)
            for _, part in s.groupby("fold"):
                assert set(part["label"]) == {"all", "hem"}, (seed, k)
                assert 0.25 <= (part["label"] == "all").mean() <= 0.75


def test_train_val_test_never_leaks(cnmc: pd.DataFrame) -> None:
    for seed in range(8):
        s = train_val_test(cnmc, val=0.2, test=0.2, seed=seed)
        assert set(s["side"]) == {"train", "val", "test"}
        assert (_sides_per_subject(s, "side") == 1).all(), seed
        for shared in ("1", "3", "H6", "H10"):  # in both folders, still on one side
            assert s.loc[s["subject"] == shared, "side"].nunique() == 1
        assert len(s) == len(cnmc)


def test_image_level_split_is_stratified_and_warns(data: Path) -> None:
    s = train_val_test(read([data / "allidb2"]), val=0.15, test=0.15, seed=3)
    share = s["side"].value_counts(normalize=True)
    assert 0.10 <= share["test"] <= 0.20 and 0.10 <= share["val"] <= 0.20
    per = pd.crosstab(s["side"], s["label"])
    assert (abs(per["all"] - per["hem"]) <= 0.05 * per.sum(axis=1) + 2).all()
    info = describe_split(s)
    assert info["protocol"] == split_protocol(s) == "image-level"
    assert info["warning"] == f"{IMAGE_LEVEL_WARNING}; {NO_DEDUPE_WARNING}"  # not grouped by the audit
    assert sum(p["images"] for p in info["parts"].values()) == 260
    assert info["parts"]["test"]["groups"] == info["parts"]["test"]["images"]  # one image, one group


def test_subject_grouped_describe_has_no_warning(cnmc: pd.DataFrame) -> None:
    info = describe_split(kfold(mark_dedupe(cnmc, True), k=3, seed=0))
    assert info["protocol"] == "subject-grouped" and info["by"] == "fold"
    assert "warning" not in info and info["dedupe"]
    assert describe_split(kfold(cnmc, k=3, seed=0))["warning"] == NO_DEDUPE_WARNING
    assert sum(p["groups"] for p in info["parts"].values()) == cnmc["group"].nunique()


def test_k_is_capped_by_the_groups_of_the_rarest_class(synthetic2: Path) -> None:
    s = kfold(read([synthetic2]), k=50, seed=0)
    assert s["fold"].nunique() == 4  # 8 synthetic subjects, 4 per class: every fold sees both classes
    assert (s.groupby("fold")["label"].nunique() == 2).all()
    assert (_sides_per_subject(s, "fold") == 1).all()


def test_official_cnmc_protocol(data: Path, aria: pd.DataFrame) -> None:
    m = read([data / "cnmc_sample"])
    s = official_cnmc(m, val=0.2, seed=1)
    test = s[s["side"] == "test"]
    assert sorted(test["subject"]) == ["57", "H49"] and (test["source_split"] == "val").all()
    assert set(s.loc[s["side"] != "test", "source_split"]) == {"train"}
    assert (_sides_per_subject(s, "side") == 1).all()
    assert split_protocol(s) == OFFICIAL_CNMC
    with pytest.raises(DataError, match="official C-NMC split needs a C-NMC download"):
        official_cnmc(aria)


def test_one_class_and_bad_fractions(data: Path, aria: pd.DataFrame) -> None:
    one = read([data / "cnmc_cells"])
    one = one[one["label"] == "all"]
    with pytest.raises(DataError, match=r"cnmc_cells: found 1 class\(es\) \['all'\]; need at least 2"):
        kfold(one)
    with pytest.raises(DataError, match="need at least 2"):
        train_val_test(one)
    require_classes(aria, minimum=4)
    with pytest.raises(DataError, match=r"--test must be a fraction in \[0, 1\), got 1.5"):
        train_val_test(aria, test=1.5)


def test_write_and_read_split_round_trip(cnmc: pd.DataFrame, tmp_path: Path) -> None:
    s = train_val_test(cnmc, seed=2)
    out = tmp_path / "sub dir" / "split.csv"
    write_split(s, out)
    back = read_split(out)
    assert back[["path", "label", "subject", "group", "side"]].equals(
        s[["path", "label", "subject", "group", "side"]])
    assert not list(out.parent.glob("*.tmp"))


def test_labels_that_pandas_reads_as_missing_round_trip(cnmc: pd.DataFrame, tmp_path: Path) -> None:
    """NA, None, null, nan and N/A are labels (and subjects) like any other, not missing values."""
    words = {"all": "NA", "hem": "N/A"}
    s = train_val_test(cnmc.assign(label=cnmc["label"].map(words),
                                   subject=cnmc["subject"].replace({"H6": "null", "1": "nan"})), seed=2)
    write_split(s, tmp_path / "split.csv")
    back = read_split(tmp_path / "split.csv")
    assert back[["label", "subject", "side"]].equals(s[["label", "subject", "side"]])
    assert {"null", "nan"} <= set(back["subject"])


def test_a_blank_side_or_fold_is_refused(cnmc: pd.DataFrame, tmp_path: Path) -> None:
    """A row on no side (in no fold) was silently left out: refused, naming the file and the count."""
    for s, col in ((train_val_test(cnmc, seed=2), "side"), (kfold(cnmc, k=3, seed=0), "fold")):
        write_split(s, tmp_path / "split.csv")
        rows = pd.read_csv(tmp_path / "split.csv", dtype=str, keep_default_na=False)
        rows.loc[rows.index[:3], col] = ""
        rows.to_csv(tmp_path / "blank.csv", index=False)
        with pytest.raises(DataError, match=f"blank.csv: 3 row\\(s\\) with a blank {col}"):
            read_split(tmp_path / "blank.csv")


def test_read_split_rejects_leaks_and_bad_files(cnmc: pd.DataFrame, tmp_path: Path) -> None:
    s = kfold(cnmc, k=3, seed=0)
    h10 = s.index[s["subject"] == "H10"]
    s.loc[h10[0], "fold"] = (s.loc[h10[0], "fold"] + 1) % 3
    write_split(s, tmp_path / "leak.csv")
    with pytest.raises(LeakageError, match="subject:H10"):
        read_split(tmp_path / "leak.csv")
    cnmc.to_csv(tmp_path / "plain.csv", index=False)
    with pytest.raises(DataError, match="plain.csv: a split needs columns path, label, group and side"):
        read_split(tmp_path / "plain.csv")
    with pytest.raises(DataError, match="absent.csv: split file not found"):
        read_split(tmp_path / "absent.csv")


def test_a_class_with_one_group_is_a_clear_error(synthetic2: Path) -> None:
    m = read([synthetic2])
    one = pd.concat([m[m["label"] == "blast"], m[m["label"] == "normal"].head(1)], ignore_index=True)
    with pytest.raises(DataError, match="normal") as e:
        kfold(one, k=3)
    assert "--no-dedupe" not in str(e.value)
    joined = mark_dedupe(m.assign(group=m["label"]), True)  # clusters joined every subject of a class
    with pytest.raises(DataError, match="fewer than 2 groups .*--no-dedupe keeps subjects apart"):
        train_val_test(joined, val=0.15, test=0.15, seed=0)


def test_the_largest_seed_splits_with_a_val_side(aria: pd.DataFrame) -> None:
    """The val side is drawn with seed + 1, which must wrap where numpy's seeds stop."""
    split = train_val_test(aria, seed=2**32 - 1)
    assert set(split["side"]) == {"train", "val", "test"}


def test_a_split_file_follows_a_moved_or_copied_data_set(data, tmp_path):
    """train --split on a moved copy, and evaluate --side on a copy while the original is still there, found
    none of their images: the paths were joined onto the recorded folder without looking at those given."""
    from typer.testing import CliRunner

    from leukoscope.cli.verbs import app

    run = CliRunner().invoke
    orig = tmp_path / "orig"
    shutil.copytree(data / "cnmc_sample", orig)
    assert run(app, ["data", "split", str(orig), "--out", str(tmp_path / "split.csv")]).exit_code == 0
    res = run(app, ["train", str(orig), "--model", "logistic_regression", "--out", str(tmp_path / "r1")])
    assert res.exit_code == 0, res.output
    copy = tmp_path / "copy"
    shutil.copytree(orig, copy)
    res = run(app, ["evaluate", str(tmp_path / "r1" / "bundle"), str(copy), "--side", "test",
                    "--out", str(tmp_path / "e")])
    assert res.exit_code == 0, res.output
    predictions = (tmp_path / "e" / "predictions.csv").read_text()
    assert str(copy) in predictions and str(orig) not in predictions
    moved = tmp_path / "moved"
    orig.rename(moved)
    res = run(app, ["train", str(moved), "--split", str(tmp_path / "split.csv"), "--model",
                    "logistic_regression", "--out", str(tmp_path / "r2")])
    assert res.exit_code == 0, res.output
    res = run(app, ["data", "describe", str(data / "pbc"), "--layout", "cnmc"])
    assert res.exit_code != 0 and "not a C-NMC download" in res.output and "Traceback" not in res.output


def test_data_split_says_when_a_hold_out_cannot_be_the_fraction_asked(data, tmp_path):
    from typer.testing import CliRunner

    from leukoscope.cli.verbs import app
    from leukoscope.data.splits import holdout_shares

    out = tmp_path / "s.csv"
    res = CliRunner().invoke(app, ["data", "split", str(data / "pbc"), "--test", "0.4", "--val", "0",
                                   "--no-dedupe", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "--test 0.4 holds out about 50% of the cells" in " ".join(res.output.split())
    sides = pd.read_csv(out)["side"].value_counts(normalize=True)
    assert sides["test"] == pytest.approx(holdout_shares(0, 0.4)["test"], abs=0.01)  # what the note says
    assert holdout_shares(0.15, 0.15) == pytest.approx({"val": 6 / 7 / 6, "test": 1 / 7})
    res = CliRunner().invoke(app, ["data", "split", str(data / "pbc"), "--out", str(out)])
    assert "holds out about" not in res.output  # the defaults come within two points
    res = CliRunner().invoke(app, ["data", "split", str(data / "cnmc_sample"), "--k", "100", "--out",
                                   str(out)])
    folds = pd.read_csv(out)["fold"].nunique()
    assert res.exit_code == 0 and folds < 100, res.output
    assert f"note: --k 100 made {folds} folds" in res.output
    res = CliRunner().invoke(app, ["data", "split", str(data / "cnmc_sample"), "--official", "--k", "3",
                                   "--out", str(out)])
    assert res.exit_code != 0 and "--official uses C-NMC's own folds and test set" in res.output
