"""The full-scale C-NMC rehearsal (benchmarks/cnmc_rehearsal.py) on a slice of the real index: real names,
folds and byte sizes, distinct synthetic pixels, the planted exact duplicates found by the audit; and the
OpenMP wait policy that makes fine-tuning on a busy machine 5x faster."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from cnmc_rehearsal import build, duplicate_groups, planted_found, read_tsv  # noqa: E402
from leukoscope.audit import audit, write_audit  # noqa: E402
from leukoscope.data.readers import read  # noqa: E402


def _slice(data: Path, tmp: Path) -> tuple[Path, Path]:
    """An index of two duplicate pairs (one fold_0/fold_2, one inside the final test), a few cells of
    each fold and class, the two preliminary-test files whose real names are known, and its labels CSV."""
    rows = read_tsv(data / "cnmc_index.tsv")
    dup_lines = (data / "cnmc_exact_duplicates.tsv").read_text().splitlines()
    pairs = [dup_lines[0], next(x for x in dup_lines if "testing_data" in x),
             next(x for x in dup_lines if "fold_0/all" in x)]
    wanted = {p.strip() for line in pairs[1:] for p in line.split("\t")[1].split("|")}
    picked = [r for r in rows if r["path"] in wanted]
    for part in ("fold_0/all", "fold_1/hem", "fold_2/hem"):
        picked += [r for r in rows if f"/{part}/" in r["path"] and r["path"] not in wanted][:3]
    known = ("prelim_phase_data/1002.bmp", "prelim_phase_data/1005.bmp", "_labels.csv")
    picked += [r for r in rows if r["path"].endswith(known)]
    index, dups = tmp / "index.tsv", tmp / "dups.tsv"
    lines = [f"{r['path']}\t{r['sha256']}\t{r['size']}\n" for r in picked]
    index.write_text("path\tsha256\tsize\n" + "".join(lines))
    dups.write_text("\n".join(pairs) + "\n")
    return index, dups


def test_rehearsal_layout_is_the_download_and_audit_finds_every_planted_duplicate(data: Path, tmp_path: Path
                                                                                  ) -> None:
    index, dups = _slice(data, tmp_path)
    root = tmp_path / "data"
    info = build(root, index, dups, workers=1)
    assert info["size_mismatches"] == 0 and info["planted_copies"] == 2
    files = {r["path"]: r for r in read_tsv(index) if not r["path"].endswith(".csv")}
    digests = {p: hashlib.sha256((root / p).read_bytes()).hexdigest() for p in files}
    groups = duplicate_groups(dups)
    for g in groups:  # planted: byte-identical
        assert len({digests[p] for p in g}) == 1
    assert len(set(digests.values())) == len(files) - len(groups)  # every other file distinct

    m = read([root])  # the C-NMC reader takes it as the download: folds, labels CSV, unlabelled final test
    assert m["synthetic"].all()
    assert set(m["source_split"]) == {"train", "val", "unlabelled"}
    val = m[m["source_split"] == "val"].set_index("original_name")
    assert val.loc["UID_H49_5_2_hem.bmp", "label"] == "hem"
    assert val.loc["UID_57_6_4_all.bmp", "label"] == "all"

    result = audit(m, n_jobs=1)
    json_path, _ = write_audit(result, tmp_path / "audit")
    found = planted_found(json_path, groups, root)
    assert found["found"] == found["planted_groups"] == 2
    assert found["unplanted_exact_pairs"] == 0


def test_openmp_threads_wait_passively_unless_the_user_says_otherwise() -> None:
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    code = "import leukoscope, os; print(os.environ.get('OMP_WAIT_POLICY'))"
    run = lambda e: subprocess.run([sys.executable, "-c", code], env=e, capture_output=True, text=True,  # noqa: E731
                                   check=True).stdout.strip()
    assert run(env) == "PASSIVE"
    assert run({**env, "OMP_WAIT_POLICY": "ACTIVE"}) == "ACTIVE"
