"""benchmarks/check_readme.py: a README rendered from results passes; a changed number fails."""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import check_readme  # noqa: E402
from readme import (  # noqa: E402
    END,
    FP32,
    INT8,
    PLAIN,
    START,
    STEADY,
    WHOLE,
    replace_section,
    results_markdown,
    throughput_markdown,
    throughput_ratios,
)
from suite import DATASETS, NETWORKS, ROW_KINDS  # noqa: E402


def _results(folder: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Result CSVs shaped like run_all's, with one row per (data set, row kind)."""
    rows = []
    for i, ds in enumerate(DATASETS):
        for j, kind in enumerate(ROW_KINDS):
            held_out = kind in NETWORKS
            rows.append({"dataset": ds.key, "row": kind, "model": kind if held_out else "svc",
                         "features": "pixels" if held_out else "deep", "protocol": ds.protocol,
                         "evaluation": "held-out test" if held_out else "5-fold CV (mean)",
                         "n": 180 if held_out else None, "accuracy": 0.9 - 0.01 * (i + j),
                         "balanced_accuracy": 0.88, "f1_macro": 0.87, "f1_weighted": 0.9, "roc_auc": 0.97,
                         "train_s": 30.0 + j})
    models = pd.DataFrame(rows)
    throughput = pd.DataFrame({"method": ["leukoscope predict, ONNX fp32"], "measure": ["whole process"],
                               "input_size": [128], "images": [800], "seconds": [4.0],
                               "cells_per_s": [200.0]})
    folder.mkdir(parents=True, exist_ok=True)
    models.to_csv(folder / "models.csv", index=False)
    throughput.to_csv(folder / "throughput.csv", index=False)
    return models, throughput


def _readme(path: Path, models: pd.DataFrame, throughput: pd.DataFrame) -> Path:
    info = {"input_size": 128, "images": 256, "cores": 2}
    section = (results_markdown(models) + "\n\n" + throughput_markdown(throughput, info))
    path.write_text(f"# x\n\n{START}\n{section}\n{END}\n\n## After\n")
    return path


def test_rendered_readme_matches_and_rewrite_keeps_the_rest(tmp_path: Path) -> None:
    models, tp = _results(tmp_path / "results")
    readme = _readme(tmp_path / "README.md", models, tp)
    assert check_readme.check(readme, tmp_path / "results") == []
    rewritten = replace_section(readme.read_text(), "new")
    assert rewritten.startswith("# x\n\n") and rewritten.endswith(f"{END}\n\n## After\n")


@pytest.mark.parametrize(("column", "value", "fails"), [
    ("accuracy", +0.015, False),   # within 0.02
    ("accuracy", +0.05, True),
    ("train_s", 4.0, False),       # times: a factor of 4 is machine or load noise
    ("train_s", 6.0, True),
    ("model", "xgboost", True),    # another winner is a mismatch
])
def test_a_changed_result_is_reported(tmp_path: Path, column: str, value: float | str, fails: bool) -> None:
    models, tp = _results(tmp_path / "results")
    readme = _readme(tmp_path / "README.md", models, tp)
    fresh = models.copy()
    first = fresh.index[0]
    if column == "model":
        fresh.loc[first, column] = value
    elif column == "train_s":
        fresh.loc[first, column] = fresh.loc[first, column] * value
    else:
        fresh.loc[first, column] = fresh.loc[first, column] + value
    fresh.to_csv(tmp_path / "results" / "models.csv", index=False)
    problems = check_readme.check(readme, tmp_path / "results")
    assert bool(problems) is fails, problems
    if fails:
        assert problems[0].startswith("Data set: C-NMC cells / best classical")


@pytest.mark.parametrize(("svc_score", "fails"), [(0.87, False), (0.80, True)])
def test_another_best_classical_passes_only_when_it_ties(tmp_path: Path, svc_score: float,
                                                         fails: bool) -> None:
    """The README names svc; the fresh best is xgboost at 0.88: fine if svc is within 0.02 of it."""
    models, tp = _results(tmp_path / "results")
    readme = _readme(tmp_path / "README.md", models, tp)
    fresh = models.copy()
    fresh.loc[fresh.index[0], "model"] = "xgboost"
    fresh.to_csv(tmp_path / "results" / "models.csv", index=False)
    key = DATASETS[0].key
    pd.DataFrame({"dataset": [key, key], "model": ["xgboost", "svc"], "features": ["deep", "deep"],
                  "status": ["ok", "ok"], "balanced_accuracy_mean": [0.88, svc_score]}
                 ).to_csv(tmp_path / "results" / "leaderboards.csv", index=False)
    problems = check_readme.check(readme, tmp_path / "results")
    assert bool(problems) is fails, problems


def test_missing_results_or_section_fail(tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    readme.write_text("# no results section\n")
    assert "no Results section" in check_readme.check(readme, tmp_path)[0]
    models, tp = _results(tmp_path / "results")
    readme = _readme(readme, models, tp)
    assert check_readme.check(readme, tmp_path / "elsewhere")[0].startswith("no fresh results")
    readme = _readme(readme, models.iloc[1:], tp)  # one row left out of the README
    problems = check_readme.check(readme, tmp_path / "results")
    assert problems == ["Data set: result row C-NMC cells / best classical is missing from the README"]


def test_results_carry_their_intervals_and_the_too_small_flag(tmp_path: Path) -> None:
    models, tp = _results(tmp_path / "results")
    first = models.index[0]
    models["accuracy_lo"], models["accuracy_hi"] = models["accuracy"] - 0.05, models["accuracy"] + 0.04
    models["too_small"] = False
    models.loc[first, "too_small"] = True
    models.to_csv(tmp_path / "results" / "models.csv", index=False)
    models = pd.read_csv(tmp_path / "results" / "models.csv")  # as check_readme reads it back
    table = results_markdown(models)
    row = table.splitlines()[2]
    assert f"{models.loc[first, 'accuracy']:.3f} [{models.loc[first, 'accuracy_lo']:.2f}, " in row
    assert "too small to rank models" in row and "too small" not in table.splitlines()[3]
    readme = _readme(tmp_path / "README.md", models, tp)
    assert check_readme.check(readme, tmp_path / "results") == []
    fresh = models.copy()  # the figure is compared within tolerance, its interval moves with it
    fresh.loc[first, ["accuracy", "accuracy_lo"]] += 0.01
    fresh.to_csv(tmp_path / "results" / "models.csv", index=False)
    assert check_readme.check(readme, tmp_path / "results") == []


def test_crosslab_table_is_checked_figure_by_figure(tmp_path: Path) -> None:
    from readme import crosslab_markdown, crosslab_text

    models, tp = _results(tmp_path / "results")
    rows = [{"key": k, "recipe": name, "family": "classical", "stage": stage, "note": note, "direction": d,
             "in_lab": 0.9 if d.startswith("PBC") else 0.6, "in_lab_eval": "5-fold CV (pooled)", "n_in": 1200,
             "cross_lab": 0.5, "n_cross": 1802 if d.startswith("PBC") else 1200, "wall_s": 9.0, "load": 1.0,
             "cores": 16}
            for k, name, stage, note in (("hc", "handcrafted + LR", "before", "classical default"),
                                         ("hc-grey", "handcrafted + LR, grey-world", "after", None))
            for d in ("DeepAPL -> PBC", "PBC -> DeepAPL")]
    cl = pd.DataFrame(rows)
    table = crosslab_markdown(cl)
    row = "| handcrafted + LR (classical default) | before | 0.900 | 0.500 | 0.600 | 0.500 | 18 | 16 |"
    assert row in table  # results from before intervals were recorded
    cl["cross_lab_lo"], cl["cross_lab_hi"] = 0.45, 0.55
    assert "| 0.900 | 0.500 [0.45, 0.55] | 0.600 | 0.500 [0.45, 0.55] |" in crosslab_markdown(cl)
    assert "DeepAPL 1802 cells, PBC 1200" in crosslab_text(cl)
    readme = _readme(tmp_path / "README.md", models, tp)
    readme.write_text(readme.read_text().replace(END, "\n" + table + "\n" + END))
    cl.to_csv(tmp_path / "results" / "crosslab.csv", index=False)
    assert check_readme.check(readme, tmp_path / "results") == []
    cl.loc[cl["key"] == "hc-grey", "cross_lab"] = 0.6  # a changed cross-lab figure is a mismatch
    cl.to_csv(tmp_path / "results" / "crosslab.csv", index=False)
    assert any("Cross-lab recipe" in p for p in check_readme.check(readme, tmp_path / "results"))


def test_throughput_reads_as_ratios_at_each_size() -> None:
    rows = [(PLAIN, WHOLE, 800, 1.6), (FP32, WHOLE, 800, 1.25), (INT8, WHOLE, 800, 0.92),
            (PLAIN, WHOLE, 8, 0.20), (FP32, WHOLE, 8, 0.27), (INT8, WHOLE, 8, 0.23),
            (FP32, STEADY, 800, 1.0), (INT8, STEADY, 800, 0.7)]
    tp = pd.DataFrame([{"method": m, "measure": k, "input_size": 128, "images": n, "seconds": s,
                        "cells_per_s": n / s} for m, k, n, s in rows])
    assert throughput_ratios(tp) == ["- At 128 px: `leukoscope predict` is 1.28x the plain script's speed on "
                                     "800 cells and +0.07 s on 8; int8 is 1.36x fp32 (steady state 1.43x)."]
    assert throughput_ratios(tp[tp["method"] != INT8]) == []  # a partial run says nothing



def _unfamiliar_doc() -> dict:
    """A benchmarks/unfamiliar.py result shaped like the real one: one pair with a new lab's known types."""
    from unfamiliar import EXPOSURE

    def method(name: str, a: float) -> dict:
        return {"method": name, "auc": a, "auc_lo": a - 0.05, "auc_hi": a + 0.05, "auc_vs_test": 0.9,
                "foreign_flagged": 0.6, "test_flagged": 0.05, "new_lab_known_flagged": 0.3}

    def typed(a: float) -> dict:
        return {"Monocyte": {"n": 90, "auc": a, "auc_lo": a - 0.1, "auc_hi": a + 0.1},
                "Lymphocyte": {"n": 160, "auc": a + 0.2, "auc_lo": a, "auc_hi": a + 0.3}}

    return {"results": [{
        "pair": "pbc-deepapl", "model": "efficientnet_lite0", "familiar_for_auc": "new_lab_known",
        "n": {"foreign": 386, "new_lab_known": 600, "test": 172}, "test_f1_macro": 0.92,
        "bundle_method": "mahalanobis", "seconds": 200.0,
        "methods": [method("msp", 0.45), method("mahalanobis", 0.72), method("knn (k=1)", 0.63),
                    method(EXPOSURE, 0.86)],
        "ceiling": {"auc": 0.9, "auc_lo": 0.86, "auc_hi": 0.93},
        "by_type": {"shipped": typed(0.55), "ceiling": typed(0.7), "exposure": typed(0.65)}}]}


def test_unfamiliar_tables_are_checked_figure_by_figure(tmp_path: Path) -> None:
    from readme import types_markdown, unfamiliar_markdown, unfamiliar_text
    from unfamiliar import EXPOSURE, frames

    methods, types = frames(_unfamiliar_doc())
    assert list(methods["method"]) == ["msp", "mahalanobis", EXPOSURE]  # the README's scores only
    table = unfamiliar_markdown(methods)
    assert "| PBC → DeepAPL blasts | mahalanobis (shipped) | 0.720 [0.67, 0.77] | 60.0% | 30.0% |" in table
    typed = types_markdown(types)
    # shipped, taught other blasts (--outliers), supervised ceiling
    every = "| every known type | 600 | 0.720 [0.67, 0.77] | 0.860 [0.81, 0.91] | 0.900 [0.86, 0.93] |"
    assert every in typed
    assert "| Monocyte | 90 | 0.550 [0.45, 0.65] | 0.650 [0.55, 0.75] | 0.700 [0.60, 0.80] |" in typed
    assert "supervised ceiling" in unfamiliar_text(methods, types)
    models, tp = _results(tmp_path / "results")
    readme = _readme(tmp_path / "README.md", models, tp)
    readme.write_text(readme.read_text().replace(END, f"\n{table}\n\n{typed}\n{END}"))
    methods.to_csv(tmp_path / "results" / "unfamiliar.csv", index=False)
    types.to_csv(tmp_path / "results" / "unfamiliar_types.csv", index=False)
    assert check_readme.check(readme, tmp_path / "results") == []
    methods.loc[methods["method"] == "msp", "auc"] = 0.5  # rows keyed by pair and score: msp's moved
    methods.to_csv(tmp_path / "results" / "unfamiliar.csv", index=False)
    assert [p for p in check_readme.check(readme, tmp_path / "results") if "msp" in p]
    types.loc[types["type"] == "Monocyte", "ceiling_auc"] = 0.8  # a moved ceiling is a mismatch too
    types.to_csv(tmp_path / "results" / "unfamiliar_types.csv", index=False)
    assert [p for p in check_readme.check(readme, tmp_path / "results") if "Monocyte" in p]
