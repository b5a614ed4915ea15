"""``--adapt``: a model adapted to a new lab's cells from the cells alone. Classical (feature statistics and
class frequencies) on real PBC -> DeepAPL cells through the CLI; a network's recorded mean logits and the
shift onto them, in torch and ONNX Runtime; the EM estimate on draws whose class frequencies are known; what
cannot be adapted refused in one line."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from leukoscope.bundle import CONFIG, load_bundle
from leukoscope.bundle.base import ADAPT_MIN_CELLS
from leukoscope.bundle.classical import aligned_pipeline
from leukoscope.cli.verbs import app
from leukoscope.data.images import load_rgb
from leukoscope.errors import DataError
from leukoscope.predict.local import partial_path, predict
from leukoscope.probability import em_priors, softmax_t
from leukoscope.progress import Advance, Counting, Silent
from link_support import link_files
from use_support import network_bundle, onnx_bundle  # noqa: F401

runner = CliRunner()
#: DeepAPL folder -> cells: lymphocytes dominate, as in a clinic's blood, against PBC's balanced classes.
NEW_LAB = {"Lymphocyte": 40, "Segmented neutrophils": 20, "Eosinophils": 10, "Monocyte": 10}


class _Killed(Exception):
    """What a test raises to stop a run as a kill would."""


@pytest.fixture(scope="module")
def labs(data: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """(a logistic regression trained on 15 PBC cells of each of four types, DeepAPL cells of the same types
    in another lab's proportions, the folder holding both)."""
    root = tmp_path_factory.mktemp("adapt")
    for kind in ("lymphocyte", "neutrophil", "eosinophil", "monocyte"):
        link_files(sorted((data / "pbc" / kind).glob("*.jpg"))[:15], root / "pbc" / kind)
    deep = sorted((data / "deepapl" / "Data" / "All").glob("*/**/Signed slides/*/*.jpg"))
    for kind, n in NEW_LAB.items():
        link_files([p for p in deep if p.parent.name == kind][:n], root / "deepapl" / kind)
    run = root / "run"
    res = runner.invoke(app, ["train", str(root / "pbc"), "--model", "logistic_regression",
                              "--min-cells", "0", "--out", str(run)])
    assert res.exit_code == 0, res.output
    return run / "bundle", root / "deepapl", root


def _evaluate(bundle: Path, cells: Path, out: Path, *extra: str) -> dict:
    res = runner.invoke(app, ["evaluate", str(bundle), str(cells), "--class-map", "pbc-deepapl",
                              "--out", str(out), *extra])
    assert res.exit_code == 0, res.output
    return {"output": res.output, **json.loads((out / "metrics.json").read_text())}


def _column(csv_file: Path, name: str) -> list[str]:
    with open(csv_file, newline="") as f:
        return [row[name] for row in csv.DictReader(f)]


def test_evaluate_adapts_to_the_new_lab_and_says_so(labs: tuple[Path, Path, Path]) -> None:
    bundle, cells, root = labs
    plain = _evaluate(bundle, cells, root / "plain")
    adapted = _evaluate(bundle, cells, root / "adapted", "--adapt")
    assert plain["adapted"] is None and "adapted to" not in plain["output"]
    a = adapted["adapted"]
    assert a["cells"] == sum(NEW_LAB.values()) == adapted["evaluated"]
    split = load_bundle(bundle).split()
    train = split.loc[split["side"] == "train", "label"].value_counts(normalize=True)
    assert a["training_frequencies"] == pytest.approx({c: train.get(c, 0.0) for c in train.index})
    assert sum(a["estimated_frequencies"].values()) == pytest.approx(1.0)
    # half the new cells are lymphocytes against a quarter in training: the estimate moves that way
    estimated = a["estimated_frequencies"]
    assert estimated["lymphocyte"] > a["training_frequencies"]["lymphocyte"] + 0.03
    assert max(estimated, key=estimated.get) == "lymphocyte"
    assert "warning" not in a and "--adapt:" not in adapted["output"]  # half one type is still a mix
    assert f"adapted to these {a['cells']} cells" in " ".join(adapted["output"].split())
    html = (root / "adapted" / "report.html").read_text()
    assert ("model adapted to these 80 cells, no labels (features standardised with their own statistics; "
            "class frequencies estimated by EM)") in html
    assert "<h2>Adapted to these cells</h2>" in html and "Adapted to these cells" not in (
        root / "plain" / "report.html").read_text()
    # the calls move; the unfamiliarity score reads the features as they are, so it does not
    assert _column(root / "adapted" / "predictions.csv", "unfamiliarity") == _column(
        root / "plain" / "predictions.csv", "unfamiliarity")
    assert adapted["cell"]["confusion_matrix"] != plain["cell"]["confusion_matrix"]


def test_adapted_bundle_standardises_with_the_new_cells_and_leaves_the_original(
    labs: tuple[Path, Path, Path],
) -> None:
    bundle_dir, cells, _ = labs
    bundle = load_bundle(bundle_dir)
    images = [load_rgb(p) for p in sorted(cells.rglob("*.jpg"))]
    before = bundle.pipeline.named_steps["scale"].mean_.copy()
    adapted = bundle.adapted([images[:32], images[32:]])
    X = bundle.features(images)
    impute = bundle.pipeline.named_steps["impute"]
    assert adapted.pipeline.named_steps["scale"].mean_ == pytest.approx(impute.transform(X).mean(axis=0))
    assert np.array_equal(bundle.pipeline.named_steps["scale"].mean_, before)
    assert not bundle.logit_shift.any() and bundle.adaptation is None
    # the shift is temperature x log(estimated / trained) on the aligned pipeline's logits
    est = np.array(list(adapted.adaptation["estimated_frequencies"].values()))
    trained = np.array(list(adapted.adaptation["training_frequencies"].values()))
    assert adapted.logit_shift == pytest.approx(bundle.temperature * np.log(est / trained))
    aligned = aligned_pipeline(bundle.pipeline, X)
    assert adapted.pipeline.named_steps["scale"].scale_ == pytest.approx(aligned.named_steps["scale"].scale_)
    probs = adapted.predict_proba(images)
    base = softmax_t(np.log(np.clip(aligned.predict_proba(X), 1e-7, 1)), bundle.temperature)
    weighted = base * est / trained
    assert probs == pytest.approx(weighted / weighted.sum(1, keepdims=True), abs=1e-6)


def test_em_recovers_known_class_frequencies() -> None:
    """Two Gaussian classes, trained at 50/50; exact posteriors of draws at 80/20 and at 50/50."""
    rng = np.random.default_rng(0)
    for share in (0.8, 0.5, 0.1):
        y = rng.random(4000) < share
        x = rng.normal(np.where(y, 1.0, -1.0), 1.0)
        p1 = 1 / (1 + np.exp(-2 * x))  # posterior of class 1 at equal priors
        q = em_priors(np.column_stack([1 - p1, p1]), np.array([0.5, 0.5]), pseudo=0)
        assert q[1] == pytest.approx(y.mean(), abs=0.03)
        # the training frequencies counted as many cells again: between them and the estimate, and moved
        shrunk = em_priors(np.column_stack([1 - p1, p1]), np.array([0.5, 0.5]), pseudo=1)
        assert min(q[1], 0.5) - 1e-9 <= shrunk[1] <= max(q[1], 0.5) + 1e-9
        assert abs(shrunk[1] - 0.5) >= 0.25 * abs(q[1] - 0.5)
    # a class with no training cells keeps frequency 0
    q = em_priors(np.array([[0.7, 0.3, 0.0], [0.2, 0.8, 0.0]]), np.array([0.5, 0.5, 0.0]))
    assert q[2] == 0 and q.sum() == pytest.approx(1.0)


def test_adapt_refuses_too_few_cells_and_bundles_without_a_reference_in_one_line(
    labs: tuple[Path, Path, Path], network_bundle: Path, data: Path, tmp_path: Path,  # noqa: F811
) -> None:
    bundle, cells, _ = labs
    few = tmp_path / "few"
    link_files(sorted(cells.rglob("*.jpg"))[: ADAPT_MIN_CELLS - 1], few / "Lymphocyte")
    res = runner.invoke(app, ["predict", str(bundle), str(few), "--adapt", "--out", str(tmp_path / "p.csv")])
    assert res.exit_code != 0
    assert f"--adapt needs at least {ADAPT_MIN_CELLS} readable cells of the new lab" in res.output
    assert "Traceback" not in res.output
    # a network bundle written before mean_logits existed
    old = tmp_path / "old"
    shutil.copytree(network_bundle, old)
    config = json.loads((old / CONFIG).read_text())
    del config["mean_logits"]
    (old / CONFIG).write_text(json.dumps(config))
    res = runner.invoke(app, ["evaluate", str(old), str(data / "cnmc_sample"), "--adapt", "--out",
                              str(tmp_path / "net")])
    assert res.exit_code != 0 and "Traceback" not in res.output
    assert f"--adapt: {old} cannot be adapted to a new lab" in " ".join(res.output.split())
    res = runner.invoke(app, ["predict", str(bundle), str(cells), "--adapt", "--engine", "ray",
                              "--out", str(tmp_path / "ray")])
    assert res.exit_code != 0 and "--adapt: not an option of --engine ray" in res.output


def test_network_records_its_training_mean_logits_and_centres_a_new_lab_on_them(
    network_bundle: Path, onnx_bundle: Path, data: Path,  # noqa: F811
) -> None:
    """The mean logits are the training cells' as the bundle scores them; adapted, a new lab's mean logits
    are moved onto them, by the same shift in torch and in ONNX Runtime."""
    bundle = load_bundle(network_bundle, runtime="torch")
    split = bundle.split()
    train = [load_rgb(p) for p in split.loc[split["side"] == "train", "path"]]
    assert bundle.config["mean_logits"] == pytest.approx(bundle.logits(train).mean(axis=0).tolist(), abs=1e-3)
    new_lab = [load_rgb(p) for p in sorted((data / "allidb2").glob("*"))[:60]]  # another lab's cells
    adapted = bundle.adapted([new_lab[:32], new_lab[32:]])
    info = adapted.adaptation
    assert (info["cells"], info["how"]) == (60, "logits centred on the training cells' mean")
    top = bundle.classes[int(np.bincount(bundle.logits(new_lab).argmax(1)).argmax())]
    assert f"look like {top} before adapting" in info["warning"]  # another lab's cells, all called one type
    assert adapted.logits(new_lab).mean(axis=0) == pytest.approx(bundle.config["mean_logits"], abs=1e-4)
    assert adapted.logits(new_lab) - bundle.logits(new_lab) == pytest.approx(
        np.broadcast_to(adapted.logit_shift, (60, len(bundle.classes))), abs=1e-4)
    scores = [b.assess(new_lab)[1] for b in (bundle, adapted)]
    assert scores[0] is not None and np.array_equal(scores[0], scores[1])  # unfamiliarity as before
    onnx = load_bundle(onnx_bundle, runtime="onnx").adapted([new_lab])
    assert onnx.logit_shift == pytest.approx(adapted.logit_shift, abs=1e-3)
    assert onnx.predict_proba(new_lab) == pytest.approx(adapted.predict_proba(new_lab), abs=1e-3)


def test_predict_adapts_as_evaluate_does(labs: tuple[Path, Path, Path], tmp_path: Path) -> None:
    bundle, cells, root = labs
    out = tmp_path / "p.csv"
    res = runner.invoke(app, ["predict", str(bundle), str(cells), "--adapt", "--out", str(out)])
    assert res.exit_code == 0, res.output
    evaluated = root / "adapted" / "predictions.csv"
    if not evaluated.exists():  # run alone: the evaluation is another test's
        _evaluate(bundle, cells, root / "adapted", "--adapt")
    columns = [f"p_{c}" for c in load_bundle(bundle).classes]

    def probabilities(f: Path) -> dict[str, list[float]]:
        rows = zip(*(_column(f, c) for c in columns), strict=True)
        return {p: [float(v) for v in r] for p, r in zip(_column(f, "path"), rows, strict=True)}

    got, want = probabilities(out), probabilities(evaluated)
    assert len(got) == sum(NEW_LAB.values()) and set(got) == set(want)
    assert all(got[p] == pytest.approx(want[p], abs=1e-5) for p in got)  # the same adapted model


def test_adapting_to_cells_of_one_type_warns(labs: tuple[Path, Path, Path], data: Path, tmp_path: Path
                                             ) -> None:
    """A folder of PBC lymphocytes the model never saw: nearly all look like one type before adapting, and
    adapting would push them towards the others, so predict and evaluate say so (and still run)."""
    bundle, _, _ = labs
    one = tmp_path / "cells"  # class folders, so that evaluate knows their label
    link_files(sorted((data / "pbc" / "lymphocyte").glob("*.jpg"))[15:75], one / "lymphocyte")
    res = runner.invoke(app, ["predict", str(bundle), str(one), "--adapt", "--out", str(tmp_path / "p.csv")])
    assert res.exit_code == 0, res.output
    said = " ".join(res.output.split())
    assert "adapted to these 60 cells" in said
    assert "look like lymphocyte before adapting" in said and "without --adapt" in said
    evaluated = _evaluate(bundle, one, tmp_path / "ev", "--adapt")
    assert "look like lymphocyte before adapting" in evaluated["adapted"]["warning"]
    assert evaluated["adapted"]["warning"] in evaluated["warnings"]
    assert "look like lymphocyte" in (tmp_path / "ev" / "report.html").read_text()


def test_resumed_predict_refuses_rows_written_with_the_other_adapt_setting(
    labs: tuple[Path, Path, Path], tmp_path: Path,
) -> None:
    """A run killed without --adapt and rerun with it (or the other way) would mix calls of two models."""
    def kill(done: int, total: int | None) -> None:
        if done >= 16:
            raise _Killed

    class KilledWhilePredicting(Counting):
        """Stops a run once a batch of predictions is written (the adapting pass before it runs whole)."""

        def task(self, description: str, total: int | None = None) -> Advance:
            return (Counting(kill) if description == "predicting" else Silent()).task(description, total)

    bundle_dir, cells, _ = labs
    bundle = load_bundle(bundle_dir)
    for first, then in ((False, True), (True, False)):
        out = tmp_path / f"first-{first}.csv"
        with pytest.raises(_Killed):
            predict(bundle, [cells], out, batch_size=16, adapt=first, progress=KilledWhilePredicting(kill))
        kept = partial_path(out).read_bytes()
        with pytest.raises(DataError, match="--restart") as e:
            predict(bundle, [cells], out, batch_size=16, adapt=then)
        said = f"--adapt {'on' if then else 'off'} (was {'on' if first else 'off'})"
        assert said in str(e.value) and partial_path(out).read_bytes() == kept and not out.exists()
        assert predict(bundle, [cells], out, batch_size=16, adapt=first).resumed > 0  # the same one resumes
