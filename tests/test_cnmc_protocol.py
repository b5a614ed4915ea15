"""The README's official C-NMC protocol commands, run end to end on the real C-NMC sample.

``cnmc_sample`` is a tiny copy of the download's layout (training_data/fold_*/{all,hem} and the
labelled preliminary test set in validation_data/), so the commands a user runs on the full
download run here unchanged: only the data path, the run folder and tiny training settings differ.
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pandas as pd
from typer.testing import CliRunner

from leukoscope.cli.verbs import app

README = Path(__file__).resolve().parents[1] / "README.md"
SECTION = "## Using your own C-NMC download"
TINY = ["--model", "leukonet", "--epochs", "1", "--img-size", "32", "--batch-size", "8"]


def readme_commands() -> dict[str, list[str]]:
    """``leukoscope train`` / ``evaluate`` lines of the README's C-NMC section, as argument lists."""
    text = README.read_text()
    assert SECTION in text, f"README has no {SECTION!r} section"
    section = text.split(SECTION, 1)[1].split("\n## ", 1)[0]
    found: dict[str, list[str]] = {}
    for line in section.splitlines():
        words = shlex.split(line, comments=True)
        if words[:1] == ["leukoscope"] and words[1] in ("train", "evaluate"):
            found.setdefault(words[1], words[1:])
    assert set(found) == {"train", "evaluate"}, f"README C-NMC section lacks train/evaluate: {found}"
    return found


def localise(words: list[str], data: Path, tmp: Path) -> list[str]:
    """The README's download folder -> the sample; its runs/ folder -> a temporary one."""
    out = []
    for w in words:
        if w.rstrip("/") == "C-NMC_Leukemia":
            w = str(data / "cnmc_sample" / "C-NMC_Leukemia")
        elif w.startswith("runs/"):
            w = str(tmp / w)
        out.append(w)
    return out


def test_official_cnmc_protocol_from_readme(data: Path, tmp_path: Path) -> None:
    cmds = readme_commands()
    train = localise(cmds["train"], data, tmp_path)
    assert "--split-protocol" in train and train[train.index("--split-protocol") + 1] == "official"
    runner = CliRunner()
    res = runner.invoke(app, [*train, *TINY])  # later options win: tiny settings for the test
    assert res.exit_code == 0, res.output
    run = Path(train[train.index("--out") + 1])

    split = pd.read_csv(run / "bundle" / "split.csv")
    test_side = split[split["side"] == "test"]
    assert sorted(test_side["subject"]) == ["57", "H49"]
    assert (test_side["source_split"] == "val").all()  # the labelled preliminary test set
    fit_side = split[split["side"] != "test"]
    assert (fit_side["source_split"] == "train").all() and len(fit_side) == 52
    by_side = fit_side.groupby("side")["subject"].apply(set)
    assert by_side["train"].isdisjoint(by_side["val"]), "validation inside the folds is subject-disjoint"
    assert json.loads((run / "metrics.json").read_text())["protocol"] == "official C-NMC split"

    evaluate = localise(cmds["evaluate"], data, tmp_path)
    res = runner.invoke(app, evaluate)
    assert res.exit_code == 0, res.output
    metrics = json.loads((Path(evaluate[evaluate.index("--out") + 1]) / "metrics.json").read_text())
    assert metrics["evaluated"] == 2 and metrics["trained_with"] == "official C-NMC split"
    # no evaluated cell was seen in training or validation; the sample's test side is only too small to rank
    assert metrics["warnings"] == ([metrics["too_small"]] if metrics["too_small"] else [])
    assert 0.0 <= metrics["cell"]["f1_weighted"] <= 1.0
    assert 0.0 <= metrics["subject"]["f1_weighted"] <= 1.0
    rows = {r["subject"]: r for r in metrics["subjects"]}
    assert set(rows) == {"57", "H49"}
    assert rows["57"]["label"] == "all" and rows["H49"]["label"] == "hem"
    assert all(r["cells"] == 1 for r in rows.values())
