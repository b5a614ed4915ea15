"""Rehearse the full C-NMC 2019 download at real scale: layout, describe, audit, train, evaluate.

    python benchmarks/cnmc_rehearsal.py --out DIR [--epochs N] [--img-size 128] [--steps build,describe,...]

Builds ``DIR/data/C-NMC_Leukemia`` from ``cnmc_index.tsv`` (every one of its 15,115 files under its real
name, in its real fold; see ``$LEUKOSCOPE_DATA/README.md``), then runs the README's commands on it, each
as a child process measured by ``benchmarks/measure.py`` (wall time, peak resident memory):
``leukoscope data describe``, ``leukoscope data audit``, ``leukoscope train --split-protocol official``
(EfficientNet-Lite0, ``--no-dedupe``: see below) and ``leukoscope evaluate --side test``. Writes
``DIR/results.json`` and ``DIR/results.md``.

The pixels are synthetic cells (``leukoscope.data.synthetic``), one per file from a seed of its path,
drawn at a third of the side and upscaled (5x cheaper), written as BMPs of the real byte sizes
(450x450 training and preliminary test, 600x600 final test), so every
file is distinct; the 106 groups of ``cnmc_exact_duplicates.tsv`` are planted as byte-identical copies,
and the audit must find every one as an exact pair. Real cells were not used: the few public ones here
(~80), cycled over 15,115 names, would make each file a near duplicate of ~190 others. Nothing here
says anything about accuracy on real C-NMC cells; ``DIR/data/SYNTHETIC.txt`` marks the folder.
Distinct as files, the synthetic cells still look alike to the audit's near-duplicate search (it
clusters ~98 % of them), so ``train`` runs with ``--no-dedupe``: merging subjects over those
clusters would leave one group per class; the audit step measures that search at full scale.

The preliminary test labels CSV of the download is not public here (only its hash): its 1,867 rows are
invented, 28 subjects that no training fold holds (18 ALL, 10 normal; ``1002.bmp`` and ``1005.bmp`` keep
their real names, ``UID_H49_5_2_hem.bmp`` and ``UID_57_6_4_all.bmp``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import struct
import subprocess
import sys
import time
import zlib
from collections import defaultdict
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
STEPS = ("build", "describe", "audit", "train", "evaluate")
LABELS_CSV = "C-NMC_Leukemia/validation_data/C-NMC_test_prelim_phase_data_labels.csv"
KNOWN_PRELIM = {"1002.bmp": "UID_H49_5_2_hem.bmp", "1005.bmp": "UID_57_6_4_all.bmp"}
DEFAULT_EPOCHS = 6  # efficientnet_lite0's train_defaults
PRELIM_SUBJECTS = (18, 10)  # ALL, normal (invented split of the real 28)
#: file size -> (side, info-header size): the prelim-test BMPs carry a 124-byte BITMAPV5HEADER
BMP_SIZES = {608_454: (450, 40), 608_538: (450, 124), 1_080_054: (600, 40)}


def read_tsv(path: Path) -> list[dict[str, str]]:
    lines = path.read_text().splitlines()
    head = lines[0].split("\t")
    return [dict(zip(head, line.split("\t"), strict=True)) for line in lines[1:] if line]


def duplicate_groups(path: Path) -> list[list[str]]:
    return [[p.strip() for p in r["paths"].split("|")] for r in read_tsv(path)]


def _subject(name: str) -> str:
    return name.split("_")[1].upper()


def prelim_labels(names: list[str], train_subjects: set[str], seed: int = 0) -> list[tuple[str, str, int]]:
    """(Patient_ID, new_names, labels) rows for the numbered preliminary test files: invented
    subjects disjoint from training (the two known files keep their real names)."""
    n_all, n_hem = PRELIM_SUBJECTS
    ids = ["57"] + [str(i) for i in range(80, 200) if str(i) not in train_subjects][:n_all - 1]
    ids += ["H49"] + [f"H{i}" for i in range(60, 200) if f"H{i}" not in train_subjects][:n_hem - 1]
    rng = np.random.default_rng(seed)
    counters: dict[str, int] = defaultdict(int)
    rows = []
    for name in names:
        if name in KNOWN_PRELIM:
            pid = KNOWN_PRELIM[name]
        else:
            s = ids[int(rng.integers(len(ids)))]
            counters[s] += 1
            cls = "hem" if s.startswith("H") else "all"
            pid = f"UID_{s}_{100 + counters[s]}_1_{cls}.bmp"  # image numbers above the known ones
        rows.append((pid, name, 0 if pid.endswith("_hem.bmp") else 1))
    return rows


def bmp(rgb: np.ndarray, info: int) -> bytes:
    """An uncompressed 24-bit BMP with a 40-byte (BITMAPINFOHEADER) or 124-byte (BITMAPV5HEADER, sRGB)
    info header, byte for byte the sizes of the download's files."""
    h, w, _ = rgb.shape
    stride = (w * 3 + 3) // 4 * 4
    rows = np.zeros((h, stride), np.uint8)
    rows[:, :w * 3] = rgb[::-1, :, ::-1].reshape(h, w * 3)  # bottom-up, BGR
    head = struct.pack("<IiiHHIIiiII", info, w, h, 1, 24, 0, rows.size, 2835, 2835, 0, 0)
    if info == 124:  # masks unused (BI_RGB), colour space sRGB, intent LCS_GM_IMAGES
        head += struct.pack("<4I", 0, 0, 0, 0) + b"BGRs" + bytes(48) + struct.pack("<4I", 4, 0, 0, 0)
    off = 14 + len(head)
    return b"BM" + struct.pack("<IHHI", off + rows.size, 0, 0, off) + head + rows.tobytes()


def _draw(job: tuple[str, int, int, int, int]) -> int:
    """Write one synthetic cell BMP (class index, side, info-header size, seed) at ``path``;
    a finished file is kept (the build resumes)."""
    from PIL import Image

    from leukoscope.data.synthetic import synthetic_cell

    path, cls, side, info, seed = job
    p = Path(path)
    if p.exists() and p.stat().st_size in BMP_SIZES:
        return 0
    rng = np.random.default_rng(seed)
    stain = rng.normal(0, 12, 3)
    small = synthetic_cell(cls, side // 3, rng, stain)
    big = np.asarray(Image.fromarray(small).resize((side, side), Image.Resampling.BILINEAR))
    tmp = p.with_suffix(".tmp")
    tmp.write_bytes(bmp(big, info))
    os.replace(tmp, p)
    return 1


def build(data: Path, index: Path, dups: Path, workers: int) -> dict[str, Any]:
    """The full layout under ``data`` (resumable): synthetic pixels, the planted exact duplicates,
    the invented preliminary labels CSV; a summary of what was written."""
    t0 = time.perf_counter()
    rows = read_tsv(index)
    groups = duplicate_groups(dups)
    copies = {p: g[0] for g in groups for p in g[1:]}  # every later member copies the first
    train_subjects = {_subject(Path(r["path"]).name) for r in rows if "/training_data/" in r["path"]}
    jobs, sizes = [], {}
    for r in rows:
        rel, size = r["path"], int(r["size"])
        if rel == LABELS_CSV:
            continue
        if size not in BMP_SIZES:
            raise SystemExit(f"{index}: {rel} has size {size}, not one of the download's BMP sizes")
        name = Path(rel).name
        seed = zlib.crc32(rel.encode())
        cls = (0 if name.endswith("_all.bmp") else 1) if "/training_data/" in rel else seed % 2
        sizes[rel] = size
        if rel not in copies:
            jobs.append((str(data / rel), cls, *BMP_SIZES[size], seed))
    for d in {(data / rel).parent for rel in sizes}:
        d.mkdir(parents=True, exist_ok=True)
    prelim = sorted(Path(r).name for r in sizes if "/C-NMC_test_prelim_phase_data/" in r)
    labels = prelim_labels(prelim, train_subjects)
    # where the real CSV names a prelim file's class, draw it as that class
    cls_of = {new: 1 - lab for _, new, lab in labels}  # label 1 = all = class index 0
    jobs = [(p, cls_of.get(Path(p).name, c) if "prelim" in p else c, *rest) for p, c, *rest in jobs]
    with ProcessPoolExecutor(workers) as pool:
        written = sum(pool.map(_draw, jobs, chunksize=64))
    for dst, src in copies.items():
        shutil.copyfile(data / src, data / dst)
    csv = "Patient_ID,new_names,labels\r\n" + "".join(f"{a},{b},{c}\r\n" for a, b, c in labels)
    (data / LABELS_CSV).write_text(csv, newline="")
    from leukoscope.data.synthetic import SYNTHETIC_MARKER

    (data / SYNTHETIC_MARKER).write_text(
        "A rehearsal of the full C-NMC 2019 layout (benchmarks/cnmc_rehearsal.py): real file names and "
        "folds, synthetic pixels, planted exact duplicates, an invented preliminary-test labels CSV.\n")
    wrong = [r for r, s in sizes.items() if (data / r).stat().st_size != s]
    return {"files": len(sizes) + 1, "images": len(sizes), "drawn": written, "planted_copies": len(copies),
            "groups": len(groups),
            "size_mismatches": len(wrong), "bytes": sum(sizes.values()), "seconds": time.perf_counter() - t0,
            "prelim_subjects": len({_subject(a) for a, _, _ in labels})}


def leukoscope() -> str:
    exe = Path(sys.executable).with_name("leukoscope")
    return str(exe) if exe.exists() else "leukoscope"


def measured(name: str, cmd: list[str], out: Path) -> dict[str, Any]:
    """Run ``cmd`` under ``measure.py`` (its log in ``out/<name>.log``); the measurement."""
    rec = out / f"{name}.json"
    env = {**os.environ, "COLUMNS": "120", "LEUKOSCOPE_CACHE": str(out / "cache")}
    with open(out / f"{name}.log", "w") as log:
        subprocess.call([sys.executable, str(HERE / "measure.py"), str(rec), "--", *cmd],
                        stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
    return json.loads(rec.read_text()) if rec.exists() else {"rc": -1}


def planted_found(audit_json: Path, groups: list[list[str]], data: Path) -> dict[str, Any]:
    """How many planted groups the audit reports as exact pairs (every member in one exact pair set)."""
    from leukoscope.data.paths import resolved_json

    found = resolved_json(json.loads(audit_json.read_text()))  # paths are stored relative to a data root
    exact = {frozenset((str(Path(r["a"]["path"]).resolve()), str(Path(r["b"]["path"]).resolve())))
             for r in found["pairs"] if r["kind"] == "exact"}
    full = [[str((data / p).resolve()) for p in g] for g in groups]
    hit = [g for g in full if all(frozenset((g[0], p)) in exact for p in g[1:])]
    planted = [frozenset(g) for g in full]
    extra = [pair for pair in exact if not any(pair <= g for g in planted)]
    return {"planted_groups": len(groups), "found": len(hit), "exact_pairs": len(exact),
            "unplanted_exact_pairs": len(extra), "summary": found["summary"]}


def train_figures(run: Path) -> dict[str, Any]:
    import pandas as pd

    metrics = json.loads((run / "metrics.json").read_text())
    split = pd.read_csv(run / "bundle" / "split.csv")
    history = pd.read_csv(run / "history.csv")
    n = split["side"].value_counts().to_dict()
    epoch_s = float(history["seconds"].mean())
    return {"sides": n, "epochs_run": int(len(history)), "epoch_s": epoch_s,
            "train_cells_per_s": n.get("train", 0) / epoch_s, "timing": metrics.get("timing"),
            "test": {k: metrics.get("test", {}).get(k) for k in ("accuracy", "f1_weighted")}}


def main(argv: list[str] | None = None) -> int:
    from leukoscope.settings import data_root

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True, help="Folder for the layout, runs and results.")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--img-size", type=int, default=128)
    ap.add_argument("--model", default="efficientnet_lite0")
    ap.add_argument("--steps", default=",".join(STEPS), help=f"Comma-separated subset of {','.join(STEPS)}.")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="Processes drawing cells.")
    args = ap.parse_args(argv)
    src = data_root()
    out = args.out.resolve()
    data = out / "data"
    data.mkdir(parents=True, exist_ok=True)
    steps = args.steps.split(",")
    res_file = out / "results.json"
    results: dict[str, Any] = json.loads(res_file.read_text()) if res_file.exists() else {}
    results["machine"] = {"cores": os.cpu_count(), "load_at_start": os.getloadavg()[0]}
    groups = duplicate_groups(src / "cnmc_exact_duplicates.tsv")
    exe, run = leukoscope(), out / "train"

    def save() -> None:
        res_file.write_text(json.dumps(results, indent=2, default=str) + "\n")
        (out / "results.md").write_text(markdown(results))

    for step in steps:
        print(f"[{time.strftime('%H:%M:%S')}] {step} ...", flush=True)
        if step == "build":
            results["build"] = build(data, src / "cnmc_index.tsv", src / "cnmc_exact_duplicates.tsv",
                                     args.workers)
        elif step == "describe":
            results["describe"] = measured("describe", [exe, "data", "describe", str(data)], out)
        elif step == "audit":
            cmd = [exe, "data", "audit", str(data), "--out", str(out / "audit")]
            results["audit"] = measured("audit", cmd, out)
            if (out / "audit" / "audit.json").exists():
                results["audit"]["planted"] = planted_found(out / "audit" / "audit.json", groups, data)
        elif step == "train":
            # --no-dedupe: the synthetic cells look alike to the near-duplicate search (module docstring)
            cmd = [exe, "train", str(data), "--split-protocol", "official", "--model", args.model,
                   "--img-size", str(args.img_size), "--epochs", str(args.epochs), "--no-dedupe",
                   "--out", str(run)]
            results["train"] = measured("train", cmd, out)
            if (run / "metrics.json").exists():
                results["train"]["figures"] = train_figures(run)
        elif step == "evaluate":
            cmd = [exe, "evaluate", str(run / "bundle"), str(data), "--side", "test",
                   "--out", str(out / "evaluate")]
            results["evaluate"] = measured("evaluate", cmd, out)
        else:
            raise SystemExit(f"--steps: unknown step {step!r} (known: {', '.join(STEPS)})")
        save()
    print(markdown(results))
    ok = all(s in results and results[s].get("rc", 0) == 0 for s in STEPS)
    if ok:  # every step has run and succeeded: what run_all.py takes as done
        (out / "rehearsal.done").write_text("")
    return 0 if ok else 1


def markdown(r: dict[str, Any]) -> str:
    """The results as a table: one row per step (wall s, peak MB, cells/s, load)."""
    images = r.get("build", {}).get("images")
    cells = {"describe": images, "audit": images,
             "evaluate": r.get("train", {}).get("figures", {}).get("sides", {}).get("test")}
    lines = ["| step | rc | wall s | peak MB | cells | cells/s | load |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    if "build" in r:
        b = r["build"]
        lines.append(f"| build | 0 | {b['seconds']:.0f} | - | {b['drawn']} drawn | "
                     f"{b['drawn'] / b['seconds']:.1f} | - |")
    for step in STEPS[1:]:
        s = r.get(step)
        if not s or "wall_s" not in s:
            continue
        n = cells.get(step)
        if step == "train" and "figures" in s:
            n = s["figures"]["sides"].get("train")
            rate = f"{s['figures']['train_cells_per_s']:.1f} (per epoch)"
        else:
            rate = f"{n / s['wall_s']:.1f}" if n else "-"
        lines.append(f"| {step} | {s['rc']} | {s['wall_s']:.0f} | {s['peak_rss_mb']:.0f} | {n or '-'} | "
                     f"{rate} | "
                     f"{s['load_before']:.1f}-{s['load_after']:.1f} |")
    t = r.get("train", {})
    if "figures" in t:  # the other epochs cost what the measured ones did
        f = t["figures"]
        full = t["wall_s"] + (DEFAULT_EPOCHS - f["epochs_run"]) * f["epoch_s"]
        lines.append(f"\ntrain: {f['epochs_run']} epoch(s) of {f['sides'].get('train')} cells, "
                     f"{f['epoch_s']:.0f} s each; the default {DEFAULT_EPOCHS} epochs project to "
                     f"{full / 60:.0f} min at this load.")
    p = r.get("audit", {}).get("planted")
    if p:
        lines.append(f"\nPlanted exact-duplicate groups found by the audit: "
                     f"{p['found']}/{p['planted_groups']} "
                     f"({p['exact_pairs']} exact pairs reported, {p['unplanted_exact_pairs']} not planted).")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
