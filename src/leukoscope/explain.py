"""Why the model made its call: Grad-CAM for networks, feature attributions for classical models.

Grad-CAM (Selvaraju et al., ICCV 2017) weights the last convolution's activation maps by the mean
gradient of the predicted class score and keeps the positive part: where the evidence for the call
sits in the cell. It needs the PyTorch module, so an ONNX-backed bundle is reloaded with torch.

Classical pipelines see a feature row, not pixels. Each feature's contribution is occlusion on the
fitted pipeline: the predicted class's probability minus that probability with the feature set to
its training mean (the pipeline's scaler mean). It is model-agnostic (SVM, trees, kNN alike) and
for a linear model on standardised features it is the familiar (x - mean) * coefficient, squashed.
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from leukoscope.bundle import Bundle, load_bundle
from leukoscope.data.images import load_rgb
from leukoscope.errors import BundleError, ImageError
from leukoscope.io import atomic_path, write_csv_atomic

TOP_FEATURES = 15
HEAT_ALPHA = 0.45
INDEX_FILE = "explanations.csv"


def _torch_bundle(bundle: Bundle) -> Any:
    """The bundle itself if it holds a torch module, else the same bundle loaded with torch."""
    if hasattr(bundle, "module"):
        return bundle
    cached = getattr(bundle, "_torch_twin", None)
    if cached is None:
        cached = load_bundle(bundle.path, runtime="torch")
        bundle._torch_twin = cached  # type: ignore[attr-defined]  # web server: reload once
    return cached


def colorize(heat: np.ndarray) -> np.ndarray:
    """A [0, 1] map as uint8 RGB through the 'jet' colormap."""
    from matplotlib import colormaps

    return (colormaps["jet"](heat)[..., :3] * 255).astype(np.uint8)


def overlay(image: np.ndarray, heat: np.ndarray, alpha: float = HEAT_ALPHA) -> np.ndarray:
    """Blend a heat map (same HxW as ``image``) over the image, stronger where the map is hot."""
    a = (alpha * np.clip(heat, 0, 1) ** 0.5)[..., None]
    return np.round(image * (1 - a) + colorize(heat) * a).astype(np.uint8)


def _network_view(image: np.ndarray, config: dict[str, Any]) -> np.ndarray:
    """The image region the network sees (the cell crop when the bundle crops to the cell)."""
    from leukoscope.models.preprocess import crop_to_cell

    prep = config.get("preprocessing", config)
    return crop_to_cell(image) if prep.get("crop_to_cell") else image


def gradcam(bundle: Bundle, image: np.ndarray, target: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Grad-CAM of the predicted class (or ``target``) at the bundle's last conv layer.

    Returns the heat map (HxW float in [0, 1], the image's size) and the overlay (HxWx3 uint8).
    """
    import torch

    from leukoscope.models.preprocess import prepare

    if bundle.family != "network":
        raise BundleError(f"{bundle.path}: Grad-CAM needs a network bundle; use explain() for "
                          f"{bundle.family} bundles")
    net = _torch_bundle(bundle)
    module = net.module
    layer = module.get_submodule(net.last_conv)
    store: dict[str, torch.Tensor] = {}

    def keep(_m: Any, _i: Any, out: torch.Tensor) -> None:
        store["act"] = out
        out.register_hook(lambda g: store.__setitem__("grad", g))

    handle = layer.register_forward_hook(keep)
    try:
        x = torch.from_numpy(prepare([image], net.config))
        with torch.enable_grad():
            logits = module(x.requires_grad_(True))
            cls = int(logits[0].argmax()) if target is None else int(target)
            module.zero_grad(set_to_none=True)
            logits[0, cls].backward()
    finally:
        handle.remove()
    act, grad = store["act"].detach()[0], store["grad"].detach()[0]
    cam = torch.relu((grad.mean(dim=(1, 2))[:, None, None] * act).sum(0)).numpy()
    cam = cam / cam.max() if cam.max() > 0 else cam
    view = _network_view(image, net.config)
    h, w = view.shape[:2]
    heat = _resize_map(cam, h, w)
    return heat, overlay(view, heat)


def _resize_map(cam: np.ndarray, h: int, w: int) -> np.ndarray:
    from PIL import Image

    im = Image.fromarray(cam.astype(np.float32), mode="F").resize((w, h), Image.Resampling.BILINEAR)
    return np.clip(np.asarray(im, np.float64), 0.0, 1.0)


def feature_contributions(bundle: Bundle, image: np.ndarray) -> pd.DataFrame:
    """Per feature of a classical bundle: value, training mean, contribution to the predicted class.

    Sorted by absolute contribution; ``contribution`` is p(call) minus p(call) with the feature at
    its training mean, so positive values pushed towards the call.
    """
    pipeline = getattr(bundle, "pipeline", None)
    scale = getattr(pipeline, "named_steps", {}).get("scale")
    if pipeline is None or scale is None or not hasattr(scale, "mean_"):
        raise BundleError(f"{bundle.path}: feature attributions need a classical pipeline with a fitted "
                          "'scale' step")
    from leukoscope.bundle.classical import log_probabilities
    from leukoscope.probability import softmax_t

    def proba(rows: np.ndarray) -> np.ndarray:  # calibrated, as predict reports it
        return softmax_t(log_probabilities(pipeline, rows, len(bundle.classes)), bundle.temperature)

    x = np.asarray(bundle.features([image]), np.float64)[0]  # type: ignore[attr-defined]
    names = bundle.extractor.names()  # type: ignore[attr-defined]
    mean = np.asarray(scale.mean_, np.float64)
    p = proba(x[None, :])[0]
    call = int(p.argmax())
    occluded = np.repeat(x[None, :], len(x), axis=0)
    occluded[np.arange(len(x)), np.arange(len(x))] = mean
    p_occ = proba(occluded)[:, call]
    df = pd.DataFrame({"feature": names, "value": x, "train_mean": mean, "contribution": p[call] - p_occ})
    df.attrs |= {"predicted": bundle.classes[call], "probability": float(p[call])}
    return df.reindex(df["contribution"].abs().sort_values(ascending=False, kind="stable").index
                      ).reset_index(drop=True)


def contributions_figure(df: pd.DataFrame, title: str, top: int = TOP_FEATURES) -> Any:
    """Horizontal bars of the strongest contributions (red: towards the call, blue: against)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    part = df.head(top).iloc[::-1]
    fig, ax = plt.subplots(figsize=(7, 0.32 * len(part) + 1.2))
    ax.barh(part["feature"], part["contribution"],
            color=["#c0392b" if v > 0 else "#2e86c1" for v in part["contribution"]])
    ax.axvline(0, color="k", lw=0.8)
    ax.set_xlabel("change in p(call) vs the feature at its training mean")
    ax.set_title(title, fontsize=10)
    ax.tick_params(axis="y", labelsize=8)
    return fig


def _save_png(img: np.ndarray, path: Path) -> None:
    from PIL import Image

    with atomic_path(path) as tmp:
        Image.fromarray(img).save(tmp, format="PNG")


def _explain_network(bundle: Bundle, image: np.ndarray, stem: Path) -> tuple[Path, str, float]:
    heat, over = gradcam(bundle, image)
    view = _network_view(image, _torch_bundle(bundle).config)
    p = bundle.predict_proba([image])[0]
    panel = np.hstack([view, over])
    if panel.shape[0] < 224:  # small crops: make the PNG legible
        scale = int(np.ceil(224 / panel.shape[0]))
        panel = np.kron(panel, np.ones((scale, scale, 1), np.uint8))
    out = stem.with_name(stem.name + "_gradcam.png")
    _save_png(panel, out)
    return out, bundle.classes[int(p.argmax())], float(p.max())


def _explain_classical(bundle: Bundle, image: np.ndarray, stem: Path) -> tuple[Path, str, float]:
    from leukoscope.reports.html import save_figure

    df = feature_contributions(bundle, image)
    label, prob = df.attrs["predicted"], df.attrs["probability"]
    csv_path = stem.with_name(stem.name + "_features.csv")
    write_csv_atomic(csv_path, df)
    out = stem.with_name(stem.name + "_features.png")
    save_figure(contributions_figure(df, f"{stem.name}: called {label} (p = {prob:.3f})"), out)
    return out, label, prob


_EXPLAINERS: dict[str, Callable[[Bundle, np.ndarray, Path], tuple[Path, str, float]]] = {
    "network": _explain_network,
    "classical": _explain_classical,
}


def explain(bundle: Bundle, paths: Iterable[str | Path], out_dir: Path | str,
            on_skip: Callable[[str, str], None] | None = None) -> list[Path]:
    """Write one explanation PNG per readable image (plus CSVs for classical) and an index CSV.

    Unreadable images are skipped (reported through ``on_skip(path, reason)`` and the index).
    """
    from leukoscope.predict.local import iter_inputs

    explainer = _EXPLAINERS.get(bundle.family)
    if explainer is None:
        raise BundleError(f"{bundle.path}: no explanation for family {bundle.family!r}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written, rows = [], []
    used: set[str] = set()
    for p in iter_inputs(paths):
        stem = _unique_stem(p, used)
        try:
            image = load_rgb(p)
        except ImageError as e:
            reason = str(e).removeprefix(f"{p}: ")
            rows.append({"path": str(p), "explanation": "", "predicted": "", "probability": "",
                         "skipped": reason})
            if on_skip:
                on_skip(str(p), reason)
            continue
        out, label, prob = explainer(bundle, image, out_dir / stem)
        written.append(out)
        rows.append({"path": str(p), "explanation": out.name, "predicted": label,
                     "probability": f"{prob:.6f}", "skipped": ""})
    _write_index(out_dir / INDEX_FILE, rows)
    return written


def _unique_stem(path: Path, used: set[str]) -> str:
    stem, n = path.stem, 1
    while stem in used:
        n += 1
        stem = f"{path.stem}-{n}"
    used.add(stem)
    return stem


def _write_index(path: Path, rows: Sequence[dict[str, str]]) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, ["path", "explanation", "predicted", "probability", "skipped"])
        writer.writeheader()
        writer.writerows(rows)

