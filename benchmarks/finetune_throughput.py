"""Fine-tuning throughput (training cells/s) of EfficientNet-Lite0 at 128 px, OpenMP threads spinning
(torch's default) against waiting passively (leukoscope's default, see ``leukoscope/__init__.py``).

    python benchmarks/finetune_throughput.py [--rounds 3] [--steps 4] [--img-size 128] [--batch-size 32]

Each round runs one child process per setting, alternating, so both see the same machine load. A child
decodes 160 aria_all cells at the input size, then times ``--steps`` training steps as ``train.fit``
takes them (augment the uint8 batch, normalise to channels-last, forward, backward, AdamW step) after
one warm-up step. ``spinning`` imports torch before leukoscope with ``OMP_WAIT_POLICY`` unset (what every
run did before); ``passive`` imports leukoscope first. Prints one JSON line: cells/s per round and the
ratio of the medians, with the load average.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

SETTINGS = ("spinning", "passive")


def child(setting: str, steps: int, img_size: int, batch_size: int) -> float:
    """Training cells/s of ``steps`` timed steps in this process."""
    if setting == "spinning":
        import torch  # noqa: F401 - loads OpenMP before leukoscope can set its wait policy
    else:
        import leukoscope  # noqa: F401 - sets the wait policy before torch loads
    import numpy as np
    import torch

    from leukoscope.data.readers import read
    from leukoscope.models import preprocess
    from leukoscope.models.backbones import channels_last
    from leukoscope.models.networks import network_class
    from leukoscope.progress import SILENT
    from leukoscope.settings import data_root
    from leukoscope.train import augment
    from leukoscope.train.data import decode

    m = read([data_root() / "aria_all"]).sample(160, random_state=0)
    cls = network_class("efficientnet_lite0")
    pre = preprocess.preprocessing_config(img_size, cls.mean, cls.std, False, False)
    images, _ = decode(list(m["path"]), pre, SILENT)
    y = torch.from_numpy(np.arange(len(images)) % 4)
    torch.manual_seed(0)
    model = channels_last(cls(num_classes=4, pretrained=True)).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    loss_fn = torch.nn.CrossEntropyLoss()
    g, rng = torch.Generator().manual_seed(0), np.random.default_rng(0)

    def step() -> None:
        idx = np.sort(rng.choice(len(images), batch_size, replace=False))
        x = augment.normalize(augment.augment(torch.from_numpy(images[idx]), 1.0, g), pre["mean"], pre["std"])
        loss = loss_fn(model(x), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    step()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    return steps * batch_size / (time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--img-size", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--child", choices=SETTINGS, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print(child(args.child, args.steps, args.img_size, args.batch_size))
        return 0
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    rates: dict[str, list[float]] = {s: [] for s in SETTINGS}
    load = [os.getloadavg()[0]]
    for _ in range(args.rounds):
        for s in SETTINGS:
            out = subprocess.run([sys.executable, __file__, "--child", s, "--steps", str(args.steps),
                                  "--img-size", str(args.img_size), "--batch-size", str(args.batch_size)],
                                 env=env, check=True, capture_output=True, text=True).stdout
            rates[s].append(float(out.strip().splitlines()[-1]))
            load.append(os.getloadavg()[0])
    med = {s: statistics.median(r) for s, r in rates.items()}
    print(json.dumps({"cells_per_s": rates, "median": med, "ratio": med["passive"] / med["spinning"],
                      "load": [min(load), max(load)], "cores": os.cpu_count(), "img_size": args.img_size,
                      "batch_size": args.batch_size, "steps": args.steps}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
