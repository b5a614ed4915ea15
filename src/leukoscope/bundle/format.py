"""The bundle format: what a bundle directory holds, its version, and reading its config.json.

Layout of a bundle directory::

    config.json      family, model, classes, preprocessing / features, temperature, protocol,
                     format_version; optional operating_point (positive class, threshold), display_names
                     (class -> what a person reads)
    <weights>        model.safetensors (networks) or pipeline.skops (classical) — never pickle
    metrics.json     validation and test figures (and calibration before / after)
    split.csv        the split the model was trained with
    history.csv      per-epoch training history (networks)
    MODEL_CARD.md    data, protocol, metrics, intended use, library versions
    model.onnx       once exported (``leukoscope export``; model.int8.onnx with --int8, model.opt.onnx
                     twins for the exporting machine); config key ``onnx`` records them with the
                     SHA-256 of each (``ONNX_DIGESTS``), checked before a session opens one
    unfamiliar.safetensors
                     the unfamiliarity score's tensors (``models.unfamiliar``; settings under config key
                     ``unfamiliar``). Optional: a bundle without it loads and has no score.

Optional config key ``class_map``: the class map (``train --class-map``) the training labels went through,
its name and content (``data.classmap.ClassMap.to_json``), checked at load as a map file is.

``FORMAT_VERSION`` is written into every new config.json. Version 0 is a bundle from before
versions were recorded (no ``format_version`` key): the same layout, read the same way. A version
this code does not know is refused at load, so an older leukoscope never misreads a newer bundle.

``check_config`` checks the type and range of every key the code reads, so a hand-edited or
tampered config fails at load with one line naming the file and the key.
"""

from __future__ import annotations

import json
import math
import reprlib
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from leukoscope.errors import BundleError, ConfigError
from leukoscope.registry import Registry

CONFIG = "config.json"
METRICS = "metrics.json"
SPLIT = "split.csv"
HISTORY = "history.csv"
CARD = "MODEL_CARD.md"
SAFETENSORS = "model.safetensors"
SKOPS = "pipeline.skops"
ONNX = "model.onnx"
ONNX_INT8 = "model.int8.onnx"
#: Key under config ``onnx``: each ONNX file export wrote -> its SHA-256 (hex). Only model.safetensors'
#: digest was recorded before, so a file copied in from another bundle of the same network ran unnoticed.
ONNX_DIGESTS = "sha256"
#: The unfamiliarity scorer's tensors (``models.unfamiliar``), when config.json has ``unfamiliar``.
UNFAMILIAR = "unfamiliar.safetensors"

#: The version of this layout that new bundles carry as ``format_version``; 0 is a bundle without it.
FORMAT_VERSION = 1

#: Every family: the ``Bundle`` subclass that loads it, declared by module (imported only when a
#: bundle of that family is loaded, so checking a config imports neither torch nor skops). The
#: class registers itself with ``@bundle_family(name)``; a new family is one line here.
FAMILIES: Registry[type] = Registry("bundle family", {"classical": "leukoscope.bundle.classical",
                                                      "network": "leukoscope.bundle.network",
                                                      "patient": "leukoscope.bundle.patient"})
#: Runtimes of a network bundle exported with ``leukoscope export``, and the model file each runs:
#: the class registers itself with ``@bundle_runtime(name)`` (imported only when asked for).
EXPORTS: Registry[type] = Registry("runtime", {"onnx": "leukoscope.bundle.onnx",
                                               "onnx-int8": "leukoscope.bundle.onnx"})
EXPORT_FILES = {"onnx": ONNX, "onnx-int8": ONNX_INT8}
RUNTIMES = ("auto", "torch", *EXPORTS.names())
#: Input side in pixels a network bundle (or deep features) may ask for: 1024 px is already 12 MB of
#: float32 per image; 20000 px would be 4.8 GB and get the process killed for memory.
INPUT_SIZES = (16, 1024)
#: Calibration temperatures a bundle may carry (``fit_temperature`` fits within [0.05, 20]): zero
#: gives NaN probabilities, a negative one inverts every call, extreme ones overflow or flatten.
TEMPERATURES = (0.01, 100.0)

_short = reprlib.Repr()
_short.maxstring, _short.maxother, _short.maxlist = 40, 40, 6

#: Keys a bundle may carry for information (model card, serve page): only their JSON type is checked.
_INFO_TYPES: dict[str, type] = {"model": str, "protocol": str, "data": str, "created": str, "tta": bool,
                                "versions": dict, "params": dict, "training": dict, "train": dict,
                                "model_params": dict, "onnx": dict}
#: Largest |mean| and std, and the inverse of the smallest std, of a network's input normalisation.
NORMALISE_BOUND = 1000.0
#: Stain-normalisation parameters by method (``models.stain.fit`` writes them): key -> array shape.
_STAIN_PARAMS: dict[str, dict[str, tuple[int, ...]]] = {
    "none": {}, "reinhard": {"mean": (3,), "std": (3,)}, "macenko": {"HERef": (3, 2), "maxCRef": (2,)},
    "greyworld": {"background": (3,)}}

Need = Callable[[bool, str, str, Any], None]


def raw_config(path: Path) -> Any:
    """The JSON in a bundle's config.json, not yet checked; a clear error if the folder is not a bundle."""
    path = Path(path)
    cfg = path / CONFIG
    if not cfg.is_file():
        raise BundleError(f"{path}: not a model bundle (no {CONFIG})")
    try:
        config = json.loads(cfg.read_text())
    except (UnicodeDecodeError, RecursionError, ValueError) as e:  # JSONDecodeError; nesting; huge ints
        raise BundleError(f"{cfg}: invalid JSON ({e})") from None
    if isinstance(config, dict) and not {"family", "classes"} <= set(config) \
            and (path / "bundle" / CONFIG).is_file():  # a training run folder holds its bundle
        raise BundleError(f"{path}: a training run folder, not a bundle; use {path / 'bundle'}")
    return config


def read_metrics(path: Path) -> dict[str, Any]:
    """The bundle's metrics.json ({} where there is none); a ``BundleError`` naming it when unreadable."""
    p = Path(path) / METRICS
    if not p.exists():
        return {}
    try:
        metrics = json.loads(p.read_text())
    except (UnicodeDecodeError, RecursionError, ValueError) as e:  # JSONDecodeError; nesting; huge ints
        raise BundleError(f"{p}: invalid JSON ({e})") from None
    except OSError as e:
        raise BundleError(f"{p}: cannot read ({e.strerror or e})") from None
    if not isinstance(metrics, dict):
        raise BundleError(f"{p}: must be a JSON object, got {type(metrics).__name__}")
    return metrics


def read_config(path: Path) -> dict[str, Any]:
    """The bundle's config.json, checked by ``check_config``; a clear error if the folder is not a bundle."""
    return check_config(raw_config(path), Path(path) / CONFIG)


def format_version(config: dict[str, Any], cfg: Path) -> int:
    """The config's ``format_version`` (0 when absent); a ``BundleError`` for one this code does not know."""
    v = config.get("format_version", 0)
    if not (isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= FORMAT_VERSION):
        raise BundleError(f"{cfg}: format_version must be an integer in 0..{FORMAT_VERSION} (a newer "
                          f"leukoscope may have written this bundle), got {_short.repr(v)}")
    return v


def _number(v: Any) -> bool:
    """A finite JSON number (an integer too large for a float, which ``math.isfinite`` raises on, is not)."""
    if not isinstance(v, int | float) or isinstance(v, bool):
        return False
    try:
        return math.isfinite(v)
    except OverflowError:
        return False


def _numbers(v: Any, shape: tuple[int, ...]) -> bool:
    """``v`` is a JSON array of finite numbers of this shape (``()``: one number)."""
    if not shape:
        return _number(v)
    return isinstance(v, list) and len(v) == shape[0] and all(_numbers(x, shape[1:]) for x in v)


def _input_size(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and INPUT_SIZES[0] <= v <= INPUT_SIZES[1]


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
    format_version(config, cfg)
    family, classes = config["family"], config["classes"]
    need(isinstance(family, str) and family in FAMILIES, "family",
         f"one of {', '.join(FAMILIES.names())}", family)
    need(isinstance(classes, list) and len(classes) >= 2
         and all(isinstance(c, str) and c.strip() for c in classes) and len(set(classes)) == len(classes),
         "classes", "a list of two or more unique, non-empty names", classes)
    t = config.get("temperature", 1.0)
    need(_number(t) and TEMPERATURES[0] <= t <= TEMPERATURES[1], "temperature",
         f"a number in [{TEMPERATURES[0]}, {TEMPERATURES[1]}]", t)
    for key, kind in _INFO_TYPES.items():
        if key in config:
            need(isinstance(config[key], kind), key, f"a JSON {kind.__name__}", config[key])
    _check_onnx(config.get("onnx", {}), need)
    if "rare_classes" in config:
        _check_rare(config["rare_classes"], need)
    names = config.get("display_names", {})
    need(isinstance(names, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in names.items()),
         "display_names", "an object of class -> display name", names)
    if config.get("operating_point") is not None:
        _check_operating_point(config["operating_point"], classes, need)
    if "unfamiliar" in config:
        _check_unfamiliar(config["unfamiliar"], need)
    if "class_map" in config:
        _check_class_map(config["class_map"], need)
    check = _FAMILY_CHECKS.get(family)
    if check is not None:
        check(config, need)
    return config


def _check_rare(rare: Any, need: Need) -> None:
    """``rare_classes`` (``data.rare.RareReport.to_json``): evaluate merges or drops these classes too."""
    from leukoscope.data.rare import HOW

    need(isinstance(rare, dict), "rare_classes", "a JSON object", rare)
    need(rare.get("done") in (None, *HOW), "rare_classes.done", f"null or one of {', '.join(HOW)}",
         rare.get("done"))
    types = rare.get("types")
    need(isinstance(types, dict) and all(isinstance(n, int) for n in types.values()),
         "rare_classes.types", "an object of class -> cell count", types)
    n = rare.get("min_cells")
    need(isinstance(n, int), "rare_classes.min_cells", "an integer", n)


def _check_operating_point(op: Any, classes: list[str], need: Need) -> None:
    """``operating_point`` (``evaluate.operating.choose``): a positive class of the bundle, a threshold."""
    need(isinstance(op, dict), "operating_point", "a JSON object", op)
    need(op.get("positive") in classes, "operating_point.positive", f"one of {', '.join(classes)}",
         op.get("positive"))
    t = op.get("threshold")
    need(_number(t) and 0 <= t <= 1, "operating_point.threshold", "a number in [0, 1]", t)


def _check_class_map(cmap: Any, need: Need) -> None:
    """``class_map`` (``data.classmap.ClassMap.to_json``): optional; the map the training labels went
    through, checked as a map file is."""
    from leukoscope.data.classmap import from_json

    try:
        from_json(cmap, "class_map")
    except ConfigError as e:
        need(False, "class_map", f"a class map ({e})", cmap)


def _check_unfamiliar(u: Any, need: Need) -> None:
    """``unfamiliar`` (``models.unfamiliar.Scorer.config``): optional; a bundle without it has no score."""
    from leukoscope.models.unfamiliar import EXPOSURE, METHODS

    need(isinstance(u, dict), "unfamiliar", "a JSON object", u)
    need(u.get("method") in METHODS, "unfamiliar.method", f"one of {', '.join(METHODS)}", u.get("method"))
    need(_number(u.get("threshold")), "unfamiliar.threshold", "a finite number", u.get("threshold"))
    k = u.get("k", 1)
    need(isinstance(k, int) and not isinstance(k, bool) and 1 <= k <= 1000, "unfamiliar.k",
         "an integer in 1..1000", k)
    t = u.get("temperature", 1.0)
    need(_number(t) and TEMPERATURES[0] <= t <= TEMPERATURES[1], "unfamiliar.temperature",
         f"a number in [{TEMPERATURES[0]}, {TEMPERATURES[1]}]", t)
    need(isinstance(u.get("standardise", False), bool), "unfamiliar.standardise", "true or false",
         u.get("standardise"))
    rate = u.get("target_false_flag_rate", 0.05)
    need(_number(rate) and 0 < rate < 1, "unfamiliar.target_false_flag_rate", "a number in (0, 1)", rate)
    if u["method"] == "exposure":
        e = u.get("exposure")
        need(isinstance(e, dict) and all(_number(e.get(k)) for k in EXPOSURE) and e["scale"] > 0
             and e["backstop_scale"] > 0, "unfamiliar.exposure",
             f"an object of the finite numbers {', '.join(EXPOSURE)} (scales > 0)", e)


def _check_network(config: dict[str, Any], need: Need) -> None:
    need("model" in config, "model", "the network's name", None)
    if "mean_logits" in config:  # optional: a bundle from before it cannot be adapted (``Bundle.adapted``)
        v, k = config["mean_logits"], len(config["classes"])
        need(_numbers(v, (k,)), "mean_logits",
             f"a list of {k} finite numbers, one per class", v)
    pre: Any = config.get("preprocessing")
    need(isinstance(pre, dict), "preprocessing", "a JSON object", pre)
    _check_preprocessing(pre, need)
    if "input_size" in config:
        need(config["input_size"] == pre["input_size"], "input_size",
             f"preprocessing.input_size ({pre['input_size']})", config["input_size"])
    digest = config.get("onnx", {}).get("weights_digest")
    need(digest is None or isinstance(digest, str), "onnx.weights_digest", "a string", digest)


def _check_classical(config: dict[str, Any], need: Need) -> None:
    features: Any = config.get("features")
    need(isinstance(features, dict) and isinstance(features.get("kind"), str)
         and isinstance(features.get("params", {}), dict),
         "features", 'an object {"kind": name, "params": {...}}', features)
    for key, size in _nested(features.get("params", {}), "features.params"):
        if key.endswith(".input_size"):
            need(_input_size(size), key, f"an integer in {INPUT_SIZES[0]}..{INPUT_SIZES[1]}", size)


#: family -> the checks of its own keys (a family without an entry gets only the common ones).
_FAMILY_CHECKS: dict[str, Callable[[dict[str, Any], Need], None]] = {
    "network": _check_network, "classical": _check_classical}


def _nested(d: dict[str, Any], prefix: str) -> Iterator[tuple[str, Any]]:
    """Dotted key and value of every leaf of nested dicts (feature kinds nest their parts' params)."""
    for k, v in d.items():
        if isinstance(v, dict):
            yield from _nested(v, f"{prefix}.{k}")
        else:
            yield f"{prefix}.{k}", v


def _check_onnx(info: dict[str, Any], need: Need) -> None:
    """What ``export`` records under ``onnx`` and ``--runtime auto`` compares (a string there was a
    TypeError at load)."""
    digests = info.get(ONNX_DIGESTS, {})
    need(isinstance(digests, dict) and all(isinstance(v, str) for v in digests.values()),
         f"onnx.{ONNX_DIGESTS}", "an object of file name -> SHA-256 (hex)", digests)
    share = info.get("int8_agreement", 0.0)
    need(_number(share) and 0 <= share <= 1, "onnx.int8_agreement", "a number in [0, 1]", share)
    images = info.get("int8_agreement_images", 0)
    need(isinstance(images, int) and not isinstance(images, bool) and images >= 0,
         "onnx.int8_agreement_images", "a whole number >= 0", images)


def _check_preprocessing(pre: dict[str, Any], need: Need) -> None:
    size = pre.get("input_size")
    need(_input_size(size), "preprocessing.input_size",
         f"an integer in {INPUT_SIZES[0]}..{INPUT_SIZES[1]}", size)
    # bounded so that (pixel - mean) / std stays a finite number for every pixel in [0, 1]
    mean: Any = pre.get("mean")
    need(_numbers(mean, (3,)) and max(map(abs, mean)) <= NORMALISE_BOUND, "preprocessing.mean",
         f"three numbers in [-{NORMALISE_BOUND:g}, {NORMALISE_BOUND:g}]", mean)
    std: Any = pre.get("std")
    need(_numbers(std, (3,)) and min(std) >= 1 / NORMALISE_BOUND and max(std) <= NORMALISE_BOUND,
         "preprocessing.std", f"three numbers in [{1 / NORMALISE_BOUND:g}, {NORMALISE_BOUND:g}]", std)
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


def sha256(data: bytes) -> str:
    """The hex SHA-256 export records of each ONNX file (``ONNX_DIGESTS``)."""
    import hashlib

    return hashlib.sha256(data).hexdigest()


def onnx_digests(folder: Path, files: Iterable[str]) -> dict[str, str]:
    """File name -> SHA-256 of each of ``files`` in ``folder``: what an export records under
    ``ONNX_DIGESTS`` (every family that exports, so it lives here, below them)."""
    return {f: sha256((Path(folder) / f).read_bytes()) for f in files}
