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
leukoscope data eda "$DATA" --out "$OUT/eda"
echo "== train a small fine-tuned EfficientNet-Lite0 (a quarter of the images, 96 px, 2 epochs)"
leukoscope train "$DATA" --model efficientnet_lite0 --subset 0.25 --img-size 96 --epochs 2 --out "$OUT/train"
echo "== evaluate on its held-out test side"
leukoscope evaluate "$OUT/train/bundle" "$DATA" --side test --out "$OUT/evaluate"
echo "== export to ONNX, then predict every image (ONNX Runtime) and explain a few"
leukoscope export "$OUT/train/bundle" --onnx
leukoscope predict "$OUT/train/bundle" "$DATA" --out "$OUT/predictions.csv"
mapfile -t SOME < <(find "$DATA" -type f \( -name '*.jpg' -o -name '*.png' \) | sort | head -n 3)
leukoscope explain "$OUT/train/bundle" "${SOME[@]}" --out "$OUT/explain"
echo
echo "Outputs:"
echo "  split:        $OUT/split.csv"
echo "  EDA report:   $OUT/eda/report.html"
echo "  model bundle: $OUT/train/bundle (MODEL_CARD.md, metrics.json, model.onnx)"
echo "  evaluation:   $OUT/evaluate/report.html"
echo "  predictions:  $OUT/predictions.csv"
echo "  Grad-CAM:     $OUT/explain/"
echo "  web page:     leukoscope serve $OUT/train/bundle   (then open http://127.0.0.1:8000/)"
