"""What a user would write instead of ``leukoscope predict``: the benchmark's baseline row.

    python benchmarks/plain_script.py BUNDLE OUT.csv IMAGE...

PIL decode and resize, numpy normalisation, ONNX Runtime (2 threads) in batches of 32, CSV out.
"""

import csv
import json
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
from PIL import Image

bundle, out, paths = Path(sys.argv[1]), sys.argv[2], sys.argv[3:]
config = json.loads((bundle / "config.json").read_text())
pre, classes = config["preprocessing"], config["classes"]
size, mean, std = pre["input_size"], np.array(pre["mean"], np.float32), np.array(pre["std"], np.float32)
opts = ort.SessionOptions()
opts.intra_op_num_threads = 2
session = ort.InferenceSession(str(bundle / "model.onnx"), opts, providers=["CPUExecutionProvider"])
with open(out, "w", newline="") as f:
    writer = csv.writer(f)
    writer.writerow(["path", "label", *classes])
    for i in range(0, len(paths), 32):
        batch = paths[i:i + 32]
        images = [np.asarray(Image.open(p).convert("RGB").resize((size, size), Image.Resampling.BILINEAR))
                  for p in batch]
        x = ((np.stack(images).astype(np.float32) / 255 - mean) / std).transpose(0, 3, 1, 2)
        logits = session.run(None, {session.get_inputs()[0].name: np.ascontiguousarray(x)})[0]
        e = np.exp(logits - logits.max(axis=1, keepdims=True))
        probs = e / e.sum(axis=1, keepdims=True)
        for p, row in zip(batch, probs, strict=True):
            writer.writerow([p, classes[row.argmax()], *(f"{v:.6f}" for v in row)])
