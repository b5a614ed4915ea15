"""Check the README's Results tables against fresh benchmark results; exit 1 on any mismatch.

    python benchmarks/check_readme.py [--readme README.md] [--results benchmarks/results]

The expected tables are rendered from the results CSVs (models.csv, throughput.csv) by the same
code that writes the README (benchmarks/readme.py), then both are parsed cell by cell: text
must match exactly (except a "best classical" model that ties the fresh best within the metric
tolerance); metrics may differ by 0.02, or by one test image's worth (1/n) on small test
sides; times and rates by a factor of 5 (they depend on the machine and its load).
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable
from pathlib import Path

import pandas as pd

from readme import (
    END,
    README,
    START,
    crosslab_markdown,
    patients_markdown,
    results_markdown,
    throughput_markdown,
    types_markdown,
    unfamiliar_markdown,
)
from suite import DATASETS, ROW_KINDS

METRIC_TOL = 0.02
TIME_FACTOR = 5.0
TIME_COLUMNS = {"Train s", "Cells/s", "Seconds", "Wall s"}
#: Tables whose rows are keyed by their first two cells (the rest: by the first).
TWO_KEYS = {"Data set", "Trained on → shown"}
#: Optional tables: (results CSV, the renderer of the README table it gives).
OPTIONAL = (("patients.csv", patients_markdown), ("crosslab.csv", crosslab_markdown),
            ("unfamiliar.csv", unfamiliar_markdown), ("unfamiliar_types.csv", types_markdown))


def tables(markdown: str) -> dict[str, list[list[str]]]:
    """Markdown tables by their first header cell: rows of cells (header row first, rule dropped)."""
    found: dict[str, list[list[str]]] = {}
    block: list[list[str]] = []
    for line in [*markdown.splitlines(), ""]:
        if line.startswith("|"):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if not all(re.fullmatch(r":?-+:?", c) for c in cells):
                block.append(cells)
        elif block:
            found[block[0][0]] = block
            block = []
    return found


def _number(text: str) -> float | None:
    """The figure of a cell (its 95% interval ``[lo, hi]``, if any, moves with it and is not compared)."""
    try:
        return float(re.sub(r"\s*\[[^\]]*\]$", "", text))
    except ValueError:
        return None


def _n(row: dict[str, str]) -> int | None:
    m = re.search(r"n = (\d+)", row.get("Evaluation", ""))
    return int(m.group(1)) if m else None


Tie = Callable[[tuple[str, ...], dict[str, str]], bool]


def near_tie(leaderboards: pd.DataFrame) -> Tie:
    """Whether a README "best classical" row names a model that ties the fresh best: its fresh mean
    balanced accuracy with the same features is within the metric tolerance of the best's. Models
    that close swap places between runs (threaded floating-point sums), which is not a regression."""
    keys = {ds.title: ds.key for ds in DATASETS}
    ok = leaderboards[leaderboards["status"] == "ok"] if len(leaderboards) else leaderboards

    def tie(key: tuple[str, ...], row: dict[str, str]) -> bool:
        if len(ok) == 0 or key[1] != ROW_KINDS["best-classical"] or key[0] not in keys:
            return False
        part = ok[ok["dataset"] == keys[key[0]]]
        named = part[(part["model"] == row.get("Model")) & (part["features"] == row.get("Features"))]
        return bool(len(named)) and (part["balanced_accuracy_mean"].max()
                                     - named["balanced_accuracy_mean"].max()) <= METRIC_TOL

    return tie


def compare(name: str, got: list[list[str]], want: list[list[str]], tie: Tie | None = None) -> list[str]:
    """Mismatches between a README table and the table rendered from fresh results."""
    if got[0] != want[0]:
        return [f"{name}: columns {got[0]} != {want[0]}"]
    key = 2 if name in TWO_KEYS else 1
    have = {tuple(r[:key]): dict(zip(got[0], r, strict=False)) for r in got[1:]}
    fresh = {tuple(r[:key]): dict(zip(want[0], r, strict=False)) for r in want[1:]}
    problems = [f"{name}: README row {' / '.join(k)} is not in the results" for k in have if k not in fresh]
    problems += [f"{name}: result row {' / '.join(k)} is missing from the README"
                 for k in fresh if k not in have]
    for k in have.keys() & fresh.keys():
        a, b = have[k], fresh[k]
        n = _n(b)
        tol = max(METRIC_TOL, 1 / n + 1e-9) if n else METRIC_TOL
        for col in want[0][key:]:
            where = f"{name}: {' / '.join(k)}, {col}: README {a.get(col)!r}, fresh {b.get(col)!r}"
            if col == "Evaluation":  # text plus the test-side size
                if _n(a) != n or re.sub(r", n = \d+", "", a[col]) != re.sub(r", n = \d+", "", b[col]):
                    problems.append(where)
                continue
            x, y = _number(a.get(col, "")), _number(b.get(col, ""))
            if x is None or y is None:
                if a.get(col) != b.get(col) and not (col in ("Model", "Features") and tie and tie(k, a)):
                    problems.append(where)
            elif col in TIME_COLUMNS:
                if max(x, y) > TIME_FACTOR * max(min(x, y), 1e-9) and abs(x - y) > 10:
                    problems.append(where + f" (beyond x{TIME_FACTOR:g})")
            elif abs(x - y) > tol:
                problems.append(where + f" (beyond +-{tol:.3f})")
    return problems


def check(readme: Path, results: Path) -> list[str]:
    """Every mismatch between the README Results section and the results CSVs in ``results``."""
    text = readme.read_text()
    if START not in text or END not in text:
        return [f"{readme}: no Results section ({START} ... {END})"]
    section = text.split(START, 1)[1].split(END, 1)[0]
    files = {f: results / f for f in ("models.csv", "throughput.csv")}
    missing = [str(p) for p in files.values() if not p.exists()]
    if missing:
        return [f"no fresh results: {', '.join(missing)} (run benchmarks/run_all.py)"]
    models = pd.read_csv(files["models.csv"])
    throughput = pd.read_csv(files["throughput.csv"])
    info = {"input_size": "?", "images": "?", "cores": "?"}
    expected = tables(results_markdown(models) + "\n\n" + throughput_markdown(throughput, info))
    for name, render in OPTIONAL:
        if (results / name).exists() and (results / name).stat().st_size > 1:
            expected |= tables(render(pd.read_csv(results / name)))
    got = tables(section)
    lb = results / "leaderboards.csv"
    tie = near_tie(pd.read_csv(lb)) if lb.exists() else None
    problems = []
    for name, want in expected.items():
        if name not in got:
            problems.append(f"README has no table starting with {name!r}")
        else:
            problems += compare(name, got[name], want, tie)
    return problems


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--readme", type=Path, default=README)
    ap.add_argument("--results", type=Path, default=Path(__file__).resolve().parent / "results")
    args = ap.parse_args()
    problems = check(args.readme, args.results)
    for p in problems:
        print(p, file=sys.stderr)
    print("README Results match the fresh results" if not problems else f"{len(problems)} mismatch(es)")
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
