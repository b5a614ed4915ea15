#!/usr/bin/env bash
# The demo: every step is one `leukoscope` command; outputs go to demo_out/.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=demo_out
DATA="${LEUKOSCOPE_DATA:-../shared/data}/aria_all"
mkdir -p "$OUT"
if [ ! -d "$DATA" ]; then
  echo "== $DATA not found: using a SYNTHETIC data set instead"
  DATA="$OUT/synthetic_cells"
  leukoscope data synth "$DATA" --classes 4 --subjects 16 --per-subject 12
fi
echo "== describe $DATA"
leukoscope data describe "$DATA"
echo "== split"
leukoscope data split "$DATA" --out "$OUT/split.csv"
echo "== exploratory data report"
leukoscope eda "$DATA" --out "$OUT/eda"
echo
echo "Outputs:"
echo "  split:      $OUT/split.csv"
echo "  EDA report: $OUT/eda/report.html"
