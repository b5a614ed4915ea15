"""Why the model made its call: Grad-CAM for networks, feature attributions for classical models.

Every explanation is of the call predict and serve make (``Bundle.decide``: the operating point, if the
bundle has one), not of the most probable class.

Grad-CAM (Selvaraju et al., ICCV 2017) weights the last convolution's activation maps by the mean
gradient of the called class score and keeps the positive part: where the evidence for the call
sits in the cell. It needs the PyTorch module, so an ONNX-backed bundle is reloaded with torch.

Classical pipelines see a feature row, not pixels. Each feature's contribution is occlusion on the
fitted pipeline: the called class's probability minus that probability with the feature set to
its training mean (the pipeline's scaler mean). It is model-agnostic (SVM, trees, kNN alike) and
for a linear model on standardised features it is the familiar (x - mean) * coefficient, squashed.
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from leukoscope.bundle import Bundle, load_bundle
from leukoscope.data.images import load_rgb
from leukoscope.errors import BundleError, ImageError
from leukoscope.filenames import NAME_ERRORS
from leukoscope.io import atomic_path, write_csv_atomic
from leukoscope.progress import SILENT, Progress
from leukoscope.registry import Registry

TOP_FEATURES = 15
HEAT_ALPHA = 0.45
INDEX_FILE = "explanations.csv"
INDEX_COLUMNS = ["path", "explanation", "predicted", "explained", "probability", "skipped"]
#: Longest stem (UTF-8 bytes) an output file is named from: with its suffix and ``atomic_path``'s temporary
#: name it stays under the 255 bytes file systems allow.
MAX_STEM_BYTES = 150


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
    """Grad-CAM of the bundle's call (``Bundle.decide``, or ``target``) at the bundle's last conv layer.

    Returns the heat map (HxW float in [0, 1], the image's size) and the overlay (HxWx3 uint8).
    """
    import torch

    from leukoscope.models.preprocess import prepare
    from leukoscope.probability import softmax_t

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
            probs = softmax_t(logits.detach().numpy(), bundle.temperature)
            cls = int(bundle.decide(probs)[0]) if target is None else int(target)
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


def feature_contributions(bundle: Bundle, image: np.ndarray, target: int | None = None) -> pd.DataFrame:
    """Per feature of a classical bundle: value, training mean, contribution to the call (``Bundle.decide``,
    or ``target``).

    Sorted by absolute contribution; ``contribution`` is the calibrated log-odds of the call minus the
    same with the feature at its training mean, so positive values pushed towards the call. Log-odds, not
    probability: a confident call (p = 0.99999) moves little in probability whatever a feature does, and
    every contribution would read 0.
    """
    pipeline = getattr(bundle, "pipeline", None)
    scale = getattr(pipeline, "named_steps", {}).get("scale")
    if pipeline is None or scale is None or not hasattr(scale, "mean_"):
        raise BundleError(f"{bundle.path}: feature attributions need a classical pipeline with a fitted "
                          "'scale' step")
    from leukoscope.bundle.classical import log_probabilities
    from leukoscope.probability import softmax_t

    def logits(rows: np.ndarray) -> np.ndarray:  # calibrated, as predict reports them
        return log_probabilities(pipeline, rows, len(bundle.classes)) / bundle.temperature

    def log_odds(z: np.ndarray, c: int) -> np.ndarray:
        others = np.delete(z, c, axis=1)
        top = others.max(axis=1)
        return z[:, c] - top - np.log(np.exp(others - top[:, None]).sum(axis=1))

    x = np.asarray(bundle.features([image]), np.float64)[0]  # type: ignore[attr-defined]
    names = bundle.extractor.names()  # type: ignore[attr-defined]
    mean = np.asarray(scale.mean_, np.float64)
    z = logits(x[None, :])
    p = softmax_t(z, 1.0)[0]
    call = int(bundle.decide(p[None, :])[0]) if target is None else int(target)
    occluded = np.repeat(x[None, :], len(x), axis=0)
    occluded[np.arange(len(x)), np.arange(len(x))] = mean
    change = log_odds(z, call)[0] - log_odds(logits(occluded), call)
    df = pd.DataFrame({"feature": names, "value": x, "train_mean": mean, "contribution": change})
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
    ax.set_xlabel("change in the log-odds of the call vs the feature at its training mean")
    ax.set_title(title, fontsize=10, parse_math=False)  # a file name may hold $...$
    ax.tick_params(axis="y", labelsize=8)
    return fig


def _save_png(img: np.ndarray, path: Path) -> None:
    from PIL import Image

    with atomic_path(path) as tmp:
        Image.fromarray(img).save(tmp, format="PNG")


@dataclass(frozen=True)
class Explanation:
    """Why one image got its call: a heat map over what the network saw, or the features that drove
    a classical model (``feature_contributions``, strongest first)."""

    view: np.ndarray | None = None
    overlay: np.ndarray | None = None
    features: pd.DataFrame | None = None


#: (bundle, image, index of the class called, largest side worth explaining at) -> the explanation
Explain = Callable[[Bundle, np.ndarray, int, int | None], Explanation]


@dataclass(frozen=True)
class Explainer:
    """How a bundle family's calls are explained, and what the explanation is called (the web
    page's model card says it)."""

    title: str
    explain: Explain


#: Bundle family -> its explainer (``explain`` writes files from it, the web page shows it).
EXPLAINERS: Registry[Explainer] = Registry("explanation")


def explainer(family: str, title: str) -> Callable[[Explain], Explain]:
    """Decorator registering ``fn`` as the explainer of bundle ``family``."""

    def wrap(fn: Explain) -> Explain:
        EXPLAINERS.add(family, Explainer(title, fn), fn.__module__)
        return fn

    return wrap


@explainer("network", "Grad-CAM heat map")
def _heat_map(bundle: Bundle, image: np.ndarray, call: int, max_side: int | None) -> Explanation:
    """Grad-CAM of ``call``; an image larger than ``max_side`` is explained from a smaller copy (Grad-CAM
    blends in float64 at the image's size: 1 GB, 10 s at 4000x4000)."""
    if max_side is not None and max(image.shape[:2]) > max_side:
        from PIL import Image

        small = Image.fromarray(image)
        small.thumbnail((max_side, max_side))
        image = np.asarray(small)
    _, over = gradcam(bundle, image, target=call)
    return Explanation(view=_network_view(image, _torch_bundle(bundle).config), overlay=over)


@explainer("classical", "feature contributions")
def _contributions(bundle: Bundle, image: np.ndarray, call: int, max_side: int | None) -> Explanation:
    """The features that pushed towards (or against) the call; every feature is measured at full size."""
    return Explanation(features=feature_contributions(bundle, image, call))


def _write(e: Explanation, stem: Path, title: str) -> Path:
    """The explanation's PNG (and the contributions as CSV) next to ``stem``."""
    if e.features is not None:
        from leukoscope.reports.html import save_figure

        write_csv_atomic(stem.with_name(stem.name + "_features.csv"), e.features)
        out = stem.with_name(stem.name + "_features.png")
        save_figure(contributions_figure(e.features, title), out)
        return out
    assert e.view is not None and e.overlay is not None
    panel = np.hstack([e.view, e.overlay])
    if panel.shape[0] < 224:  # small crops: make the PNG legible
        scale = int(np.ceil(224 / panel.shape[0]))
        panel = np.kron(panel, np.ones((scale, scale, 1), np.uint8))
    out = stem.with_name(stem.name + "_gradcam.png")
    _save_png(panel, out)
    return out


def explain(bundle: Bundle, paths: Iterable[str | Path], out_dir: Path | str,
            on_skip: Callable[[str, str], None] | None = None, progress: Progress = SILENT) -> list[Path]:
    """Write one explanation PNG per readable image (plus CSVs for classical) and an index CSV.

    The index's ``predicted`` is predict's call (``unfamiliar`` for a flagged cell); ``explained`` is the
    class whose evidence the PNG shows (``Bundle.decide``'s, as the web page), ``probability`` its
    probability. Unreadable images are skipped (reported through ``on_skip(path, reason)`` and the index).
    """
    from leukoscope.predict import unfamiliar
    from leukoscope.predict.local import check_inputs, iter_inputs

    how = EXPLAINERS.get(bundle.family)
    if how is None:
        raise BundleError(f"{bundle.path}: no explanation for family {bundle.family!r}")
    items, _, _ = check_inputs(paths, 1)  # no input, or no image file in it: one line, nothing written
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written, rows = [], []
    used: set[str] = set()
    images = list(iter_inputs(items))
    advance = progress.task("explaining", len(images))
    for p in images:
        stem = _unique_stem(p, used)
        try:
            image = load_rgb(p)
        except ImageError as e:
            reason = str(e).removeprefix(f"{p}: ")
            rows.append({"path": str(p), "explanation": "", "predicted": "", "explained": "",
                         "probability": "", "skipped": reason})
            if on_skip:
                on_skip(str(p), reason)
            advance(1)
            continue
        probs, scores = bundle.assess([image])
        [mark] = unfamiliar.marks(bundle, scores, 1)
        flagged = mark is not None and mark[1]
        call = int(bundle.decide(probs)[0])
        label = unfamiliar.label(bundle.classes, probs[0], flagged, bundle.operating_point)
        explained, prob = bundle.classes[call], float(probs[0, call])
        said = f"{label}, evidence for {explained}" if flagged else f"called {label}"
        out = _write(how.explain(bundle, image, call, None), out_dir / stem,
                     f"{stem}: {said} (p = {prob:.3f})")
        written.append(out)
        rows.append({"path": str(p), "explanation": out.name, "predicted": label, "explained": explained,
                     "probability": f"{prob:.6f}", "skipped": ""})
        advance(1)
    progress.done("explaining")
    _write_index(out_dir / INDEX_FILE, rows)
    return written


def _unique_stem(path: Path, used: set[str]) -> str:
    """A stem no earlier image got, case aside (a case-insensitive file system would overwrite its files)."""
    base = _safe_stem(path)
    stem, n = base, 1
    while stem.casefold() in used:
        n += 1
        stem = f"{base}-{n}"
    used.add(stem.casefold())
    return stem


def _safe_stem(path: Path) -> str:
    """``path``'s stem as valid UTF-8 (undecodable bytes as U+FFFD) of at most ``MAX_STEM_BYTES``: output
    names and figure titles every file system, font and report can hold (the index keeps the real path)."""
    stem = path.stem.encode("utf-8", NAME_ERRORS).decode("utf-8", "replace")
    stem = stem.encode("utf-8")[:MAX_STEM_BYTES].decode("utf-8", "ignore")
    return stem if stem.strip(".") else "image"  # "..png": out / "." would write beside the folder


def _write_index(path: Path, rows: Sequence[dict[str, str]]) -> None:
    """The index; paths keep their undecodable bytes (surrogateescape, as predict's CSV)."""
    with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8", errors=NAME_ERRORS) as f:
        writer = csv.DictWriter(f, INDEX_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)

