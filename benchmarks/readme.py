"""The README's Results section, rendered from the results frames: the tables (which
check_readme.py compares cell by cell), the text around them, and the markers it sits between."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from machine import hardware
from suite import CV, DATASETS, FEATURES, METRIC_KEYS, ROW_KINDS

#: benchmarks/crosslab.py's network settings (imported there from here: the README text cannot drift).
DEEP_SIZE = 128

README = Path(__file__).resolve().parents[1] / "README.md"
START, END = "<!-- results:start -->", "<!-- results:end -->"


def fmt(v: Any, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and pd.isna(v)):
        return "—"
    return f"{v:.{digits}f}" if isinstance(v, float) else str(v)


def fmt_time(v: Any) -> str:
    if v is None or pd.isna(v):
        return "—"
    return f"{v:.2f}" if v < 10 else f"{v:.0f}"


TITLES = {ds.key: ds.title for ds in DATASETS}
RESULT_HEADER = ["Data set", "Row", "Model", "Features", "Evaluation", "Accuracy", "Balanced acc.",
                 "F1 macro", "F1 weighted", "ROC AUC", "Train s"]


def with_interval(r: pd.Series, key: str) -> str:
    """A figure and, where the results carry one, its 95% interval: ``0.983 [0.95, 0.99]``."""
    lo, hi = r.get(f"{key}_lo"), r.get(f"{key}_hi")
    return fmt(r[key]) + ("" if lo is None or pd.isna(lo) else f" [{lo:.2f}, {hi:.2f}]")


#: Appended to the Evaluation cell of a row whose test side cannot rank models (evaluate.intervals).
TOO_SMALL = ", too small to rank models"


def results_markdown(models: pd.DataFrame) -> str:
    lines = ["| " + " | ".join(RESULT_HEADER) + " |", "|" + "---|" * 5 + "---:|" * 6]
    for _, r in models.iterrows():
        small = r.get("too_small")
        cells = [TITLES[r["dataset"]], ROW_KINDS[r["row"]], fmt(r["model"]), fmt(r["features"]),
                 fmt(r["evaluation"]) + (f", n = {int(r['n'])}" if pd.notna(r["n"]) else "")
                 + (TOO_SMALL if isinstance(small, bool | np.bool_) and small else ""),
                 *(with_interval(r, k) for k in METRIC_KEYS), fmt_time(r["train_s"])]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


LIMIT = "FLOP-bound limit (measured matmul rate / model FLOPs)"
#: Row names of benchmarks/throughput.py's methods and measures.
PLAIN = "plain script, ONNX fp32 (what a user would write)"
FP32, INT8 = "leukoscope predict, ONNX fp32", "leukoscope predict, ONNX int8"
WHOLE, STEADY = "whole process", "steady state"
THROUGHPUT_HEADER = ["Method", "Measured", "Input px", "Cells", "Seconds", "Cells/s"]


def throughput_frame(result: dict[str, Any]) -> pd.DataFrame:
    """The rows of benchmarks/throughput.py's JSON, with the FLOP-bound limit per input size."""
    rows = [{k: r[k] for k in ("method", "measure", "input_size", "images", "seconds", "cells_per_s")}
            for r in result["rows"]]
    rows += [{"method": LIMIT, "measure": "bound", "input_size": int(size), "images": None, "seconds": None,
              "cells_per_s": v} for size, v in result["flop_bound_cells_per_second"].items()]
    return pd.DataFrame(rows)


def throughput_markdown(tp: pd.DataFrame, info: dict[str, Any]) -> str:
    if tp.empty:
        return "Throughput: not measured yet (step `throughput`)."
    head = (f"EfficientNet-Lite0 bundle of aria_all, trained at {info.get('trained_size', '?')} px (rows at "
            "other sizes run a copy set to that size), aria_all JPEG cells end to end from disk (decode, "
            f"resize, model, CSV), {info['cores']} cores, each method's best of {info.get('repeat', 1)} "
            "interleaved rounds; `benchmarks/throughput.py`. **Whole process**: a fresh `python` per run, "
            "start-up included, as a user runs it; the plain script is `benchmarks/plain_script.py`, the "
            "20 lines a user would write (PIL, numpy, ONNX Runtime with 2 threads in batches of 32). "
            "**Steady state**: in one process after a warm-up.")
    loads = info.get("load_average_1min")
    if isinstance(loads, list) and loads:
        head += (f" The machine was shared: 1-minute load average {', '.join(map(str, loads))} at the start "
                 "of the rounds.")
    lines = [head, "", "| " + " | ".join(THROUGHPUT_HEADER) + " |", "|---|---|" + "---:|" * 4]
    for _, r in tp.iterrows():
        cells = [r["method"], r["measure"], str(int(r["input_size"])),
                 "—" if pd.isna(r["images"]) else str(int(r["images"])), fmt_time(r["seconds"]),
                 f"{r['cells_per_s']:.1f}"]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", *throughput_ratios(tp)]
    fid = info.get("int8_vs_fp32")
    if fid:
        lines += ["", f"int8 against fp32 at {fid['input_size']} px on {fid['images']} cells: the same label "
                  f"on {fid['agreement']:.1%}; accuracy fp32 {fid['accuracy_fp32']:.3f}, "
                  f"int8 {fid['accuracy_int8']:.3f}."]
    return "\n".join(lines)


def throughput_ratios(tp: pd.DataFrame) -> list[str]:
    """What the rows say, per input size: how many times faster predict is than the plain script, and
    int8 than fp32 (whole process on the most cells, and steady state), and predict's start-up cost
    over the script's (whole process on the fewest cells)."""
    lines = []
    for size, rows in tp[tp["measure"] != "bound"].groupby("input_size"):
        secs = {(r["method"], r["measure"], r["images"]): r["seconds"] for _, r in rows.iterrows()}
        many, few = rows["images"].max(), rows["images"].min()
        needed = [(m, WHOLE, n) for m in (PLAIN, FP32, INT8) for n in (many, few)] + \
            [(m, STEADY, many) for m in (FP32, INT8)]
        if any(k not in secs for k in needed):  # a partial run: no ratios for this size
            continue
        faster = secs[PLAIN, WHOLE, many] / secs[FP32, WHOLE, many]
        start_up = secs[FP32, WHOLE, few] - secs[PLAIN, WHOLE, few]
        int8 = secs[FP32, WHOLE, many] / secs[INT8, WHOLE, many]
        int8_steady = secs[FP32, STEADY, many] / secs[INT8, STEADY, many]
        lines.append(f"- At {int(size)} px: `leukoscope predict` is {faster:.2f}x the plain script's speed "
                     f"on {int(many)} cells and {start_up:+.2f} s on {int(few)}; int8 is {int8:.2f}x fp32 "
                     f"(steady state {int8_steady:.2f}x).")
    return lines


def throughput_table(result: dict[str, Any]) -> str:
    """The README's Throughput subsection for one benchmarks/throughput.py result."""
    return throughput_markdown(throughput_frame(result), result)


def update_throughput(result: dict[str, Any], readme: Path = README) -> None:
    """Rewrite only the Throughput subsection of the README's Results from ``result`` (the other
    subsections come from ``make benchmark``'s full run)."""
    text = readme.read_text()
    start = text.index("### Throughput\n") + len("### Throughput\n")
    end = text.index("\n### ", start)
    readme.write_text(text[:start] + "\n" + throughput_table(result) + "\n" + text[end:])


PATIENT_HEADER = ["Patient method", "Protocol", "Patients", "ROC AUC", "AUC sd", "CI low", "CI high",
                  "Sensitivity", "Specificity", "Balanced acc.", "Cell AUC", "Wall s"]
PATIENT_METRICS = ("roc_auc", "roc_auc_std", "ci_low", "ci_high", "sensitivity", "specificity",
                   "balanced_accuracy", "cell_roc_auc")


def patients_markdown(patients: pd.DataFrame) -> str:
    """The patient-level table (benchmarks/patients.py): one row per method, best ROC AUC first."""
    lines = ["| " + " | ".join(PATIENT_HEADER) + " |", "|---|---|---|" + "---:|" * (len(PATIENT_HEADER) - 3)]
    for _, r in patients.sort_values("roc_auc", ascending=False).iterrows():
        name = r["method"] + (" (baseline)" if r["baseline"] else " (default)" if r["default"] else "")
        cells = [name, r["protocol"], r["patients"], *(fmt(r[k]) for k in PATIENT_METRICS),
                 fmt_time(r["wall_s"])]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def patients_text(patients: pd.DataFrame) -> str:
    if patients.empty:
        return "Patient-level diagnosis: not measured yet (step `patients`)."
    return ("DeepAPL discovery cohort (82 patients: 60 AML, 22 APL), one call per **patient** from all of "
            "their cells (signed and unsigned, byte copies once), frozen EfficientNet-Lite0 embeddings; "
            "`benchmarks/patients.py`. Patient ROC AUC: mean and sd over the repeats, 95% interval by "
            "bootstrap over patients; sensitivity / specificity of APL at the threshold fixed on the "
            "training folds; cell AUC: every cell scored alone, inheriting its patient's label; Wall s: the "
            "method's whole nested CV. `leukoscope train COHORT --target diagnosis` trains the default; "
            "`--model` picks another.\n\n" + patients_markdown(patients))


CROSSLAB_HEADER = ["Cross-lab recipe", "Stage", "PBC in-lab", "PBC → DeepAPL", "DeepAPL in-lab",
                   "DeepAPL → PBC", "Wall s", "Cores"]
#: (direction, figure) of each column: in-lab on the source's own held-out cells, cross-lab on the other lab.
CROSSLAB_CELLS = (("PBC -> DeepAPL", "in_lab"), ("PBC -> DeepAPL", "cross_lab"),
                  ("DeepAPL -> PBC", "in_lab"), ("DeepAPL -> PBC", "cross_lab"))


def crosslab_markdown(cl: pd.DataFrame) -> str:
    """Macro-F1 of each recipe in its own lab and in the other, both ways (benchmarks/crosslab.py), one row
    per recipe in the script's order."""
    lines = ["| " + " | ".join(CROSSLAB_HEADER) + " |", "|---|---|" + "---:|" * (len(CROSSLAB_HEADER) - 2)]
    for _, part in cl.groupby("key", sort=False):
        by = part.set_index("direction")
        first = part.iloc[0]
        note = first["note"] if isinstance(first["note"], str) and first["note"] else ""
        figures = [with_interval(by.loc[d], col) if d in by.index else "—" for d, col in CROSSLAB_CELLS]
        cells = [first["recipe"] + (f" ({note})" if note else ""), first["stage"], *figures,
                 fmt_time(part["wall_s"].sum()), fmt(int(first["cores"]))]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def crosslab_text(cl: pd.DataFrame) -> str:
    if cl.empty:
        return "Cross-lab: not measured yet (`benchmarks/crosslab.py`)."
    n = {d: int(cl.loc[cl["direction"] == d, "n_cross"].iloc[0]) for d in set(cl["direction"])}
    pairs = sorted(set(zip(cl["family"], cl["in_lab_eval"], strict=True)))
    evals = "; ".join(f"{fam}: {ev}" for fam, ev in pairs)
    cores = " and ".join(f"{c} cores" for c in sorted({int(c) for c in cl["cores"].dropna()}))
    from leukoscope.train import TrainConfig  # the network's defaults, so the text follows them

    deep = TrainConfig.build(model="efficientnet_lite0").resolved()
    return ("PBC (Barcelona) and DeepAPL (Johns Hopkins), both CellaVision, in PBC's eight types through the "
            "shipped class map (`--class-map pbc-deepapl`; DeepAPL's blasts, smudge cells, plasma cells, "
            "prolymphocytes and promonocytes left out). Macro-F1 with its 95 % interval (bootstrap over "
            "DeepAPL's patients, over PBC's cells); **in-lab**: the training lab's own "
            f"held-out cells ({evals}; PBC image-level, DeepAPL grouped by patient); **cross-lab**: the "
            f"model fitted on the whole training lab, scored on every mapped cell of the other (DeepAPL "
            f"{n.get('PBC -> DeepAPL', '?')} cells, PBC {n.get('DeepAPL -> PBC', '?')}). Networks at "
            f"{DEEP_SIZE} px with the default schedule ({deep.epochs} epochs, stretched to at least "
            f"{deep.min_steps} optimiser steps) unless the recipe says otherwise; stain normalisation "
            "fitted on the training lab's cells; *adapted to the new lab*: the model adapted to the other "
            "lab's cells from those cells alone, no labels (`evaluate --adapt`; classical: their feature "
            "statistics and class frequencies, networks: their mean logits); "
            "`before`: a default recipe, `after`: a robustness candidate; Wall s: both directions, on a "
            f"machine of that many cores ({cores}); `benchmarks/crosslab.py`. {crosslab_scale(cl)}\n\n"
            + crosslab_markdown(cl))


def crosslab_scale(cl: pd.DataFrame) -> str:
    """How far the other lab's own labels get on its cells, beside the best score from the first lab."""
    def best(direction: str, col: str) -> pd.Series:
        part = cl[cl["direction"] == direction]
        return part.loc[part[col].idxmax()]

    own, other = best("DeepAPL -> PBC", "in_lab"), best("PBC -> DeepAPL", "cross_lab")
    return ("For scale: fitted on DeepAPL's own cells, the best recipe reaches "
            f"{with_interval(own, 'in_lab')} on DeepAPL ({own['recipe']}, in-lab); fitted on PBC, "
            f"{with_interval(other, 'cross_lab')} ({other['recipe']}). DeepAPL's types are harder to tell "
            "apart in their own lab than PBC's.")


UNFAMILIAR_HEADER = ["Trained on → shown", "Score", "ROC AUC", "Foreign flagged", "Familiar flagged"]
TYPES_HEADER = ["DeepAPL cells against its blasts", "Cells", "Shipped score", "Taught ALL-IDB2's blasts",
                "Supervised ceiling"]


def unfamiliar_markdown(methods: pd.DataFrame) -> str:
    """Per pair (benchmarks/unfamiliar.py) and score: the ROC AUC of foreign against familiar cells and
    the shares of each flagged at the validation threshold."""
    lines = ["| " + " | ".join(UNFAMILIAR_HEADER) + " |", "|---|---|" + "---:|" * 3]
    for _, r in methods.iterrows():
        cells = [r["pair"], r["method"] + (" (shipped)" if r["shipped"] else ""), with_interval(r, "auc"),
                 f"{r['foreign_flagged']:.1%}", f"{r['familiar_flagged']:.1%}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def types_markdown(types: pd.DataFrame) -> str:
    """Per DeepAPL cell type: the blasts' AUC against it, by the shipped score, the score taught other
    blasts (``train --outliers``) and the supervised ceiling."""
    lines = ["| " + " | ".join(TYPES_HEADER) + " |", "|---|" + "---:|" * (len(TYPES_HEADER) - 1)]
    for _, r in types.iterrows():
        other = {name: pd.Series({k: r.get(f"{name}_{k}", np.nan) for k in ("auc", "auc_lo", "auc_hi")})
                 for name in ("exposure", "ceiling")}
        cells = [r["type"], str(int(r["n"])), with_interval(r, "auc"),
                 *(with_interval(other[name], "auc") for name in ("exposure", "ceiling"))]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def unfamiliar_text(methods: pd.DataFrame, types: pd.DataFrame) -> str:
    if methods.empty:
        return "Unfamiliar cells: not measured yet (step `unfamiliar`)."
    f1 = "; ".join(f"{p.split(' → ')[0]} {v:.3f}"
                   for p, v in methods.groupby("pair", sort=False)["test_f1_macro"].first().items())
    text = ("Each model trained with the deep default (`leukoscope train DATA --model efficientnet_lite0`); "
            "every score fitted on the model's training side, in its own embedding, and flagging past the "
            "95th percentile of its validation side. ROC AUC of foreign against familiar cells, 95 % "
            "interval by bootstrap over DeepAPL's patients (over cells elsewhere). **PBC → DeepAPL "
            "blasts**: foreign = DeepAPL's blasts (PBC has none), familiar = DeepAPL's cells of PBC's types, "
            "so both come from the new lab and stain cannot tell them apart; the other pairs: foreign = "
            "every cell of the other set, familiar = the training set's own held-out test cells. Models' "
            f"held-out macro-F1: {f1}. The **exposure** row is the same PBC model trained with "
            "`--outliers ../shared/data/allidb2 --outlier-class all`: its score is also taught ALL-IDB2's "
            "blasts (another lab, lymphoblasts, not DeepAPL's myeloblasts), with ALL-IDB2's normal cells as "
            "familiar cells of their lab; the network is the same, only the score differs. "
            "`benchmarks/unfamiliar.py` (more scores, on handcrafted features too, in its JSON).\n\n"
            + unfamiliar_markdown(methods))
    if types.empty:
        return text
    return (text + "\n\nWhere the blasts are lost: their AUC against each DeepAPL type by the shipped "
            "score, by the score taught ALL-IDB2's blasts (`--outliers`), and by a **supervised ceiling**, a "
            "logistic regression in the same embedding *taught* DeepAPL's blasts (5-fold CV grouped by "
            "patient, C chosen by inner grouped CV). The ceiling is what labels from the new lab would buy; "
            "a score fitted on PBC alone is not expected to reach it. DeepAPL's cells come from AML and APL "
            "patients: their monocytes and promyelocytes include leukaemic "
            "ones.\n\n" + types_markdown(types))


PUBLISHED = """\
### Published figures on these data sets (context only: not reproduced here)

Reported by their authors, under their own protocols; leukoscope has not re-run them.

- C-NMC 2019, final test set (subject-disjoint by construction), weighted F1: Pan et al. 91.04 (winner;
  fine-tuned ResNets + neighbourhood correction), Prellberg & Kramer 88.91 (ResNeXt + SE, 8-rotation
  test-time augmentation), Marzahl et al. 82.84. Data: Gupta A., Gupta R. (2019) ALL Challenge dataset
  of ISBI 2019, The Cancer Imaging Archive, doi:10.7937/tcia.2019.dc64i46r. Our C-NMC rows use 65 cells
  of 31 subjects, not the challenge's test set, so they are not comparable.
- ALL-IDB2: up to 100 % accuracy claimed, always with image-level splits. Data: R. Donida Labati,
  V. Piuri, F. Scotti, IEEE ICIP 2011, doi:10.1109/ICIP.2011.6115881.
- 4-class ALL set: 99.85 % accuracy (DenseNet201 after colour segmentation), image-level split, on all
  3,256 images (we use an evenly spaced 1,200). Data: Aria M. et al. (2021) doi:10.34740/KAGGLE/DSV/2175623;
  Ghaderzadeh M. et al., Int J Intell Syst 37(8):5113-5133, 2022, doi:10.1002/int.22753."""


def splits_text() -> str:
    cnmc = " + ".join(f"`{f}`" for f in DATASETS[0].folders)
    return (f"**Splits.** C-NMC cells ({cnmc}): **subject-grouped** everywhere; the classical "
            f"leaderboard is {CV}-fold CV grouped by subject and the CNN rows pool the out-of-fold "
            f"predictions of subject-grouped {CV}-fold CV (`leukoscope train --cv {CV}`), because a "
            "held-out side of 65 cells would hold about ten. ALL-IDB2 and aria_all have no subject ids: "
            "their splits are **image-level** (cells of one patient may sit on both sides) and may be "
            "optimistic. Classical rows are means over the folds; CNN rows on ALL-IDB2 and aria_all are "
            "scored once on a held-out 15 % test side (`leukoscope evaluate --side test`); so the two "
            "kinds of row are not on the same test cells.")


def times_text(steps: pd.DataFrame) -> str:
    done = steps.dropna(subset=["wall_s"])
    total = done["wall_s"].sum()
    peak = done["peak_rss_mb"].max() if len(done) else float("nan")
    return ("**Train s**: classical = mean fit time per CV fold on cached features; CNN = wall time of "
            "`leukoscope train` (decoding, head warm-up, every epoch, evaluation), per fold for C-NMC. "
            f"Whole benchmark: {total / 60:.0f} min of step wall time over {len(done)} steps, "
            f"largest peak memory of a step {fmt(peak, 0)} MB (per step in `benchmarks/results/summary.md`).")


def readme_section(models: pd.DataFrame, tp: pd.DataFrame, tp_info: dict[str, Any],
                   steps: pd.DataFrame, patients: pd.DataFrame, crosslab: pd.DataFrame | None = None,
                   unfamiliar: tuple[pd.DataFrame, pd.DataFrame] | None = None) -> str:
    loads = steps["load_before"].dropna()
    when = steps["started"].dropna()
    measured = (f"Measured {str(when.max())[:10]} on {hardware()}"
                + (f"; other work shared the machine (1-min load average up to {loads.max():.1f})"
                   if len(loads) and loads.max() > 2.5 else "") + ".")
    missing = models[models["evaluation"] == "not measured yet"]
    note = (f"\n\n**Not measured yet:** {len(missing)} row(s) marked —; rerun `make benchmark`."
            if len(missing) else "")
    return "\n\n".join([
        "## Results",
        "Generated by `make benchmark` (`benchmarks/run_all.py --update-readme`); `make benchmark` on a "
        "clean clone reruns every step and `benchmarks/check_readme.py` fails if a number below differs "
        "from the fresh run (metrics by more than 0.02 or one test image, times by more than 5x). "
        + measured,
        results_markdown(models) + note,
        splits_text(),
        times_text(steps),
        "### Throughput",
        throughput_markdown(tp, tp_info),
        "### Patient-level diagnosis (APL vs AML)",
        patients_text(patients),
        "### Cross-lab: trained in one lab, scored in another",
        crosslab_text(crosslab if crosslab is not None else pd.DataFrame()),
        "### Unfamiliar cells: flagged, not called",
        unfamiliar_text(*(unfamiliar or (pd.DataFrame(), pd.DataFrame()))),
        PUBLISHED,
    ])


def summary_markdown(section: str, steps: pd.DataFrame, lb: pd.DataFrame) -> str:
    lines = ["# leukoscope benchmark summary", "", section, "", "## Steps", "",
             "| Step | Status | Wall s | Peak RSS MB | Started (UTC) | Load before |",
             "|---|---|---:|---:|---|---:|"]
    for _, r in steps.iterrows():
        lines.append(f"| {r['step']} | {r['status']} | {fmt_time(r['wall_s'])} | "
                     f"{fmt(r['peak_rss_mb'], 0)} | {fmt(r['started'])} | {fmt(r['load_before'], 1)} |")
    if len(lb):
        lines += ["", "## Every classical model (balanced accuracy, mean over folds)", ""]
        wide = lb[lb["status"] == "ok"].pivot_table(index=["dataset", "model"], columns="features",
                                                    values="balanced_accuracy_mean").reindex(columns=FEATURES)
        lines += ["| Data set | Model | " + " | ".join(FEATURES) + " |",
                  "|---|---|" + "---:|" * len(FEATURES)]
        lines += [f"| {TITLES[d]} | {m} | " + " | ".join(fmt(v) for v in row) + " |"
                  for (d, m), row in wide.iterrows()]
    return "\n".join(lines) + "\n"


def replace_section(text: str, section: str) -> str:
    if START not in text or END not in text:
        raise SystemExit(f"{README}: markers {START} / {END} not found")
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{START}\n{section}\n{END}{tail}"
