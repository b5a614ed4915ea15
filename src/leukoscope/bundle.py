"""The Bundle: one directory format for every trained model, and ``load_bundle``.

Layout of a bundle directory::

    config.json      family, model, classes, preprocessing / features, temperature, protocol
    <weights>        model.safetensors (networks) or pipeline.skops (classical) — never pickle
    metrics.json     validation and test figures (and calibration before / after)
    split.csv        the split the model was trained with
    history.csv      per-epoch training history (networks)
    MODEL_CARD.md    data, protocol, metrics, intended use, library versions
    model.onnx       once exported (``leukoscope export``)

Families register a ``Bundle`` subclass with ``@bundle_family(name)``; the subclass only turns
images into uncalibrated scores (``logits``). Temperature scaling and the probability contract
live here, so evaluate / predict / explain / serve never branch on the family.
"""

from __future__ import annotations

import importlib
import json
import math
import os
import platform
import reprlib
import shutil
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from leukoscope.errors import BundleError

CONFIG = "config.json"
METRICS = "metrics.json"
SPLIT = "split.csv"
HISTORY = "history.csv"
CARD = "MODEL_CARD.md"
ONNX = "model.onnx"
ONNX_INT8 = "model.int8.onnx"

#: family name -> "module:Class"; imported only when a bundle of that family is loaded.
_FAMILY_CLASSES: dict[str, str] = {
    "classical": "leukoscope.models.classical:ClassicalBundle",
    "network": "leukoscope.models.networks:NetworkBundle",
    "patient": "leukoscope.patients.bundle:PatientBundle",
}
#: runtime -> ("module:Class", model file) for network bundles exported with ``leukoscope export``.
_RUNTIMES: dict[str, tuple[str, str]] = {
    "onnx": ("leukoscope.predict.onnx:OnnxBundle", ONNX),
    "onnx-int8": ("leukoscope.predict.onnx:OnnxBundle", ONNX_INT8),
}
RUNTIMES = ("auto", "torch", *_RUNTIMES)
#: Input side in pixels a network bundle (or deep features) may ask for: 1024 px is already 12 MB of
#: float32 per image; 20000 px would be 4.8 GB and get the process killed for memory.
INPUT_SIZES = (16, 1024)
#: Calibration temperatures a bundle may carry (``fit_temperature`` fits within [0.05, 20]): zero
#: gives NaN probabilities, a negative one inverts every call, extreme ones overflow or flatten.
TEMPERATURES = (0.01, 100.0)
_VERSIONED = ("leukoscope", "numpy", "scikit-learn", "torch", "onnxruntime", "xgboost-cpu",
              "lightgbm", "pillow", "scikit-image")


class Bundle(ABC):
    """A trained model on disk. Subclasses implement ``logits``; everything else is shared."""

    def __init__(self, path: Path, config: dict[str, Any]):
        self.path = Path(path)
        self.config = config

    @classmethod
    @abstractmethod
    def load(cls, path: Path, config: dict[str, Any]) -> Bundle:
        """Read the family's weights from ``path``."""

    @abstractmethod
    def logits(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """Uncalibrated scores, one row per HxWx3 uint8 RGB image, one column per class."""

    @property
    def classes(self) -> list[str]:
        return list(self.config["classes"])

    @property
    def family(self) -> str:
        return str(self.config["family"])

    @property
    def temperature(self) -> float:
        return float(self.config.get("temperature", 1.0))

    def predict_proba(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """Calibrated class probabilities (rows sum to 1)."""
        from leukoscope.evaluate.calibration import softmax_t

        if len(images) == 0:
            return np.zeros((0, len(self.classes)))
        return softmax_t(self.logits(images), self.temperature)

    def metrics(self) -> dict[str, Any]:
        p = self.path / METRICS
        return json.loads(p.read_text()) if p.exists() else {}

    def history(self) -> pd.DataFrame | None:
        p = self.path / HISTORY
        return pd.read_csv(p) if p.exists() else None

    def split(self) -> pd.DataFrame | None:
        p = self.path / SPLIT
        return pd.read_csv(p, dtype={"subject": object}) if p.exists() else None


def bundle_family(name: str) -> Callable[[type[Bundle]], type[Bundle]]:
    """Class decorator checking that a family class is the one ``load_bundle`` will import."""

    def wrap(cls: type[Bundle]) -> type[Bundle]:
        target = f"{cls.__module__}:{cls.__qualname__}"
        if _FAMILY_CLASSES.get(name) != target:
            raise ValueError(f"bundle family {name!r} must be declared in _FAMILY_CLASSES")
        return cls

    return wrap


def read_config(path: Path) -> dict[str, Any]:
    """The bundle's config.json, checked by ``check_config``; a clear error if the folder is not a bundle."""
    path = Path(path)
    cfg = path / CONFIG
    if not cfg.is_file():
        raise BundleError(f"{path}: not a model bundle (no {CONFIG})")
    try:
        config = json.loads(cfg.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BundleError(f"{cfg}: invalid JSON ({e})") from None
    if isinstance(config, dict) and not {"family", "classes"} <= set(config) \
            and (path / "bundle" / CONFIG).is_file():  # a training run folder holds its bundle
        raise BundleError(f"{path}: a training run folder, not a bundle; use {path / 'bundle'}")
    return check_config(config, cfg)


_short = reprlib.Repr()
_short.maxstring, _short.maxother, _short.maxlist = 40, 40, 6


def _number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def _numbers(v: Any, shape: tuple[int, ...]) -> bool:
    """``v`` is a JSON array of finite numbers of this shape (``()``: one number)."""
    if not shape:
        return _number(v)
    return isinstance(v, list) and len(v) == shape[0] and all(_numbers(x, shape[1:]) for x in v)


def _input_size(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and INPUT_SIZES[0] <= v <= INPUT_SIZES[1]


#: Keys a bundle may carry for information (model card, serve page): only their JSON type is checked.
_INFO_TYPES: dict[str, type] = {"model": str, "protocol": str, "data": str, "created": str, "tta": bool,
                                "versions": dict, "params": dict, "training": dict, "train": dict,
                                "model_params": dict, "onnx": dict}
#: Stain-normalisation parameters by method (``train.stain.fit`` writes them): key -> array shape.
_STAIN_PARAMS: dict[str, dict[str, tuple[int, ...]]] = {
    "none": {}, "reinhard": {"mean": (3,), "std": (3,)}, "macenko": {"HERef": (3, 2), "maxCRef": (2,)}}


def check_config(config: Any, cfg: Path) -> dict[str, Any]:
    """``config`` if leukoscope can use it, else a ``BundleError`` naming the file ``cfg`` and the key.

    Types and ranges of every key the code reads, so a hand-edited or tampered config fails at load
    with one line instead of giving NaN probabilities, inverted calls or an out-of-memory kill at
    predict time. Keys nothing reads are left alone. Consistency with the weights is checked by
    each family's ``load``.
    """
    def need(ok: bool, key: str, what: str, value: Any) -> None:
        if not ok:
            raise BundleError(f"{cfg}: {key} must be {what}, got {_short.repr(value)}")

    if not isinstance(config, dict):
        raise BundleError(f"{cfg}: must be a JSON object, got {type(config).__name__}")
    for key in ("family", "classes"):
        if key not in config:
            raise BundleError(f"{cfg}: missing key {key!r}")
    family, classes = config["family"], config["classes"]
    need(isinstance(family, str) and family in _FAMILY_CLASSES, "family",
         f"one of {', '.join(_FAMILY_CLASSES)}", family)
    need(isinstance(classes, list) and len(classes) >= 2
         and all(isinstance(c, str) and c.strip() for c in classes) and len(set(classes)) == len(classes),
         "classes", "a list of two or more unique, non-empty names", classes)
    t = config.get("temperature", 1.0)
    need(_number(t) and TEMPERATURES[0] <= t <= TEMPERATURES[1], "temperature",
         f"a number in [{TEMPERATURES[0]}, {TEMPERATURES[1]}]", t)
    for key, kind in _INFO_TYPES.items():
        if key in config:
            need(isinstance(config[key], kind), key, f"a JSON {kind.__name__}", config[key])
    if family == "network":
        need("model" in config, "model", "the network's name", None)
        pre: Any = config.get("preprocessing")
        need(isinstance(pre, dict), "preprocessing", "a JSON object", pre)
        _check_preprocessing(pre, need)
        if "input_size" in config:
            need(config["input_size"] == pre["input_size"], "input_size",
                 f"preprocessing.input_size ({pre['input_size']})", config["input_size"])
        digest = config.get("onnx", {}).get("weights_digest")
        need(digest is None or isinstance(digest, str), "onnx.weights_digest", "a string", digest)
    else:
        features: Any = config.get("features")
        need(isinstance(features, dict) and isinstance(features.get("kind"), str)
             and isinstance(features.get("params", {}), dict),
             "features", 'an object {"kind": name, "params": {...}}', features)
        for key, size in _nested(features.get("params", {}), "features.params"):
            if key.endswith(".input_size"):
                need(_input_size(size), key, f"an integer in {INPUT_SIZES[0]}..{INPUT_SIZES[1]}", size)
    return config


def _nested(d: dict[str, Any], prefix: str) -> Iterator[tuple[str, Any]]:
    """Dotted key and value of every leaf of nested dicts (feature kinds nest their parts' params)."""
    for k, v in d.items():
        if isinstance(v, dict):
            yield from _nested(v, f"{prefix}.{k}")
        else:
            yield f"{prefix}.{k}", v


def _check_preprocessing(pre: dict[str, Any], need: Callable[[bool, str, str, Any], None]) -> None:
    size = pre.get("input_size")
    need(_input_size(size), "preprocessing.input_size",
         f"an integer in {INPUT_SIZES[0]}..{INPUT_SIZES[1]}", size)
    need(_numbers(pre.get("mean"), (3,)), "preprocessing.mean", "three numbers", pre.get("mean"))
    std: Any = pre.get("std")
    need(_numbers(std, (3,)) and min(std) > 0, "preprocessing.std", "three positive numbers", std)
    for key in ("grayscale", "crop_to_cell"):
        need(isinstance(pre.get(key, False), bool), f"preprocessing.{key}", "true or false", pre.get(key))
    stain = pre.get("stain") or {"method": "none"}
    method = stain.get("method", "none") if isinstance(stain, dict) else None
    need(isinstance(method, str) and method in _STAIN_PARAMS, "preprocessing.stain.method",
         f"one of {', '.join(_STAIN_PARAMS)}", method)
    for key, shape in _STAIN_PARAMS[str(method)].items():
        need(_numbers(stain.get(key), shape), f"preprocessing.stain.{key}",
             f"finite numbers of shape {shape}", stain.get(key))


def one_line(e: BaseException) -> str:
    """A library's error message on one line (some span many), for a ``BundleError``."""
    text = " ".join(str(e).split()) or type(e).__name__
    return text if len(text) <= 300 else text[:297] + "..."


def _import(target: str) -> Any:
    module, name = target.split(":")
    return getattr(importlib.import_module(module), name)


def load_bundle(path: Path | str, runtime: str = "auto") -> Bundle:
    """Load any bundle; the family in config.json picks the class.

    ``runtime`` (network bundles): ``torch``; ``onnx`` (model.onnx) or ``onnx-int8``
    (model.int8.onnx) via ONNX Runtime; ``auto``: ``onnx`` when a current export is there, else torch.
    """
    path = Path(path)
    config = read_config(path)
    if runtime not in RUNTIMES:
        raise BundleError(f"runtime {runtime!r} is not one of {', '.join(RUNTIMES)}")
    if runtime == "auto":
        onnx_cls = _import(_RUNTIMES["onnx"][0])
        runtime = "onnx" if config["family"] == "network" and onnx_cls.available(path, config) else "torch"
    if runtime in _RUNTIMES:
        if config["family"] != "network":
            raise BundleError(f"{path}: runtime {runtime!r} is for network bundles; this one is "
                              f"{config['family']}")
        target, model_file = _RUNTIMES[runtime]
        return _import(target).load(path, config, model_file)
    cls: type[Bundle] = _import(_FAMILY_CLASSES[config["family"]])
    return cls.load(path, config)


def library_versions() -> dict[str, str]:
    """Versions of the libraries that shape a model's numbers, for the model card."""
    out = {"python": platform.python_version()}
    for name in _VERSIONED:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


def write_json(path: Path, data: Any) -> None:
    """Write JSON atomically (temp file + rename)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2, default=_json_default) + "\n")
    tmp.replace(path)


def _json_default(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


@contextmanager
def writing_bundle(out: Path) -> Iterator[Path]:
    """Yield a temp folder beside ``out``; on success it replaces ``out`` in one rename.

    A crash mid-write leaves any previous bundle at ``out`` untouched.
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        yield tmp
        honour_umask(tmp)
        if out.exists():
            old = out.with_name(f".{out.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            out.rename(old)
            tmp.rename(out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _umask() -> int:
    """The process umask. It can only be read by setting it: probe with 0o077, so a file another
    thread creates meanwhile gets stricter modes, never looser."""
    mask = os.umask(0o077)
    os.umask(mask)
    return mask


def honour_umask(path: Path) -> None:
    """Give ``path`` and everything under it the modes a plain ``open`` / ``mkdir`` would.

    ``mkdtemp`` makes 0700 folders and safetensors writes 0600 files whatever the umask, which
    left bundles unreadable to the group and to a server running as another user.
    """
    mask = _umask()
    for p in [path, *path.rglob("*")] if path.is_dir() else [path]:
        if not p.is_symlink():
            p.chmod((0o777 if p.is_dir() else 0o666) & ~mask)


def finish_bundle(folder: Path, config: dict[str, Any], metrics: dict[str, Any],
                  split: pd.DataFrame | None = None, history: pd.DataFrame | None = None) -> None:
    """Write the family-independent files: config, metrics, split, history and the model card."""
    config = {**config, "created": datetime.now(UTC).isoformat(timespec="seconds"),
              "versions": library_versions()}
    write_json(folder / CONFIG, config)
    write_json(folder / METRICS, metrics)
    if split is not None:
        split.to_csv(folder / SPLIT, index=False)
    if history is not None:
        history.to_csv(folder / HISTORY, index=False)
    (folder / CARD).write_text(model_card(config, metrics, split))


def _fmt(v: Any) -> str:
    return f"{v:.4f}" if isinstance(v, float) else str(v)


def model_card(config: dict[str, Any], metrics: dict[str, Any],
               split: pd.DataFrame | None) -> str:
    """A MONAI-style model card in Markdown: what, trained on what, how judged, for what use."""
    lines = [f"# Model card: {config.get('model', config['family'])}", ""]
    lines += ["## Intended use",
              "Research on single-cell leukemia images only. **Not a medical device; not for "
              "diagnosis or treatment decisions.**", ""]
    lines += ["## Model", f"- family: {config['family']}", f"- model: {config.get('model', '-')}",
              f"- classes: {', '.join(config['classes'])}",
              f"- calibration temperature: {_fmt(float(config.get('temperature', 1.0)))}"]
    for key in ("input_size", "features", "preprocessing"):
        if key in config:
            lines.append(f"- {key}: {json.dumps(config[key])}")
    lines += ["", "## Data and protocol", f"- data: {config.get('data', '-')}",
              f"- protocol: {config.get('protocol', '-')}"]
    if config.get("protocol") == "image-level":
        lines.append("- warning: no subject ids; cells of one patient may be on both sides, so "
                     "the figures below may be optimistic")
    if split is not None and "side" in split:
        for side, part in split.groupby("side"):
            lines.append(f"- {side}: {len(part)} images, {part['group'].nunique()} groups")
    lines += ["", "## Metrics"]
    for part, figures in metrics.items():
        if isinstance(figures, dict):
            flat = ", ".join(f"{k} {_fmt(v)}" for k, v in figures.items()
                             if isinstance(v, int | float))
            lines.append(f"- {part}: {flat}")
    lines += ["", "## Versions"]
    lines += [f"- {k}: {v}" for k, v in config.get("versions", {}).items()]
    return "\n".join(lines) + "\n"
