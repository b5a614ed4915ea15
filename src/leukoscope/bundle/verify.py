"""``verify``: is this folder a bundle leukoscope can use, and does it behave? (in the spirit of
MONAI's bundle checks).

Each check gives one ``Finding``; the first that leaves nothing to check further ends the list
(no config, no families to load). The checks: config.json is JSON, its ``format_version`` is one
this code reads, the config is valid, every file it declares is there, metrics.json is readable,
every ONNX file export wrote has the SHA-256 it recorded and each model file (not its machine's
twin) opens itself in ONNX Runtime (what another machine reads), the weights of every runtime its
family loads (a network's exports too) load and fit the config (the same checks as ``load_bundle``,
so what predict will use), and a smoke prediction on synthetic cells gives one row per image that
sums to 1.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from leukoscope.bundle.base import family_class, load_bundle, read_split_csv
from leukoscope.bundle.format import (
    CARD,
    CONFIG,
    EXPORT_FILES,
    METRICS,
    SPLIT,
    check_config,
    format_version,
    one_line,
    raw_config,
    read_metrics,
)
from leukoscope.bundle.onnx import (
    check_session,
    digest_check,
    digest_problem,
    model_files,
    recorded_files,
    reexport,
    twin_files,
)
from leukoscope.errors import LeukoscopeError

#: Synthetic cells of the smoke prediction: how many, and their side in pixels.
SMOKE_IMAGES, SMOKE_SIZE = 2, 64


@dataclass(frozen=True)
class Finding:
    """One check of ``verify``: its name, whether it passed, and what it found."""

    check: str
    ok: bool
    detail: str


def declared_files(config: dict[str, Any]) -> list[str]:
    """The files a valid ``config`` says its bundle holds: config, metrics, card, the family's
    weights and the ONNX exports recorded under ``onnx``."""
    onnx = config.get("onnx", {})
    return [CONFIG, METRICS, CARD, *family_class(config["family"]).weight_files, *recorded_files(onnx)]


def runtimes(config: dict[str, Any]) -> list[str]:
    """The ``load_bundle`` runtimes a valid ``config`` declares: its family's own, then a network's exports
    (another family's model.onnx, such as a patient bundle's embedding network, is for other tools:
    ``onnx_file`` checks it, but no runtime loads it)."""
    if config["family"] != "network":
        return ["torch"]
    by_file = {f: r for r, f in EXPORT_FILES.items()}
    exports = [by_file.get(f, "") for f in declared_files(config)]
    return ["torch", *[r for r in exports if r]]


def onnx_file(path: Path, config: dict[str, Any], name: str) -> str:
    """What is wrong with the bundle's ONNX file ``name`` ('' when nothing): its SHA-256 must be the one
    export recorded and, for a model file, ONNX Runtime must open the file itself (the optimised twin
    ``load_bundle`` may open instead is only this machine's) with a network's inputs and outputs
    fitting the config."""
    info, file = config.get("onnx", {}), path / name
    try:
        if name not in model_files(info):  # a twin: another machine need not open it
            why = digest_problem(info, name, file.read_bytes())
            return f"{file}: {why}; re-export: {reexport(path, name)}" if why else ""
        from leukoscope.models.onnx import ort_session

        session = ort_session(file, check=digest_check(path, info))
        if config["family"] == "network":
            check_session(session, file, config)
    except LeukoscopeError as e:
        return str(e)
    except Exception as e:  # noqa: BLE001 - OSError, or ORT's own types for a corrupt file
        return f"{file}: cannot load ({one_line(e)})"
    return ""


def _smoke(bundle: Any) -> str:
    """Predict synthetic cells; what was wrong with the probabilities or the unfamiliarity score, or ''
    when nothing was."""
    from leukoscope.data.synthetic import synthetic_cell

    rng = np.random.default_rng(0)
    images = [synthetic_cell(i % 2, SMOKE_SIZE, rng) for i in range(SMOKE_IMAGES)]
    with np.errstate(all="ignore"):  # overflowing scores are reported below, not warned about
        probs, scores = bundle.assess(images)  # the unfamiliarity score too: predict computes both
    p = np.asarray(probs)
    if p.shape != (SMOKE_IMAGES, len(bundle.classes)):
        return f"probabilities of shape {p.shape}, expected {(SMOKE_IMAGES, len(bundle.classes))}"
    if not np.isfinite(p).all() or (p < 0).any() or not np.allclose(p.sum(axis=1), 1.0, atol=1e-6):
        return f"rows that are not probabilities summing to 1: {np.round(p, 4).tolist()}"
    if scores is not None and np.shape(scores) != (SMOKE_IMAGES,):
        return f"unfamiliarity scores of shape {np.shape(scores)}, expected {(SMOKE_IMAGES,)}"
    return ""


def verify(path: Path | str) -> list[Finding]:
    """Check the bundle at ``path``; one ``Finding`` per check (see the module docstring)."""
    path = Path(path)
    findings: list[Finding] = []

    def add(check: str, ok: bool, detail: str) -> bool:
        findings.append(Finding(check, ok, detail))
        return ok

    cfg = path / CONFIG
    try:
        raw = raw_config(path)
    except LeukoscopeError as e:
        add(CONFIG, False, str(e))
        return findings
    add(CONFIG, True, "readable JSON")
    if isinstance(raw, dict):
        try:
            v = format_version(raw, cfg)
        except LeukoscopeError as e:
            add("format_version", False, str(e))
            return findings
        add("format_version", True, str(v) if v else "0 (from before versions were recorded; same layout)")
    try:
        config = check_config(raw, cfg)
    except LeukoscopeError as e:
        add("config", False, str(e))
        return findings
    add("config", True, f"{config['family']} bundle, classes {', '.join(config['classes'])}")
    missing = [f for f in declared_files(config) if not (path / f).is_file()]
    if not add("files", not missing, f"missing: {', '.join(missing)}" if missing
               else ", ".join(declared_files(config))):
        return findings
    try:
        read_metrics(path)
        add(METRICS, True, "readable JSON")
    except LeukoscopeError as e:
        add(METRICS, False, str(e))
    if (path / SPLIT).is_file():  # what --side, export --int8 and --adapt read (a bundle may have none)
        try:
            sides = read_split_csv(path / SPLIT)
            add(SPLIT, True, f"{len(sides)} images with path and label")
        except LeukoscopeError as e:
            add(SPLIT, False, str(e))
    info = config.get("onnx", {})
    opens = "opens and fits the config" if config["family"] == "network" else "opens in ONNX Runtime"
    for name in recorded_files(info):
        wrong = onnx_file(path, config, name)
        add(name, not wrong, wrong or ("SHA-256 as exported" if name in twin_files(info)
                                       else f"SHA-256 as exported; {opens}"))
    for runtime in runtimes(config):
        name = "" if runtime == "torch" and config["family"] != "network" else f" ({runtime})"
        try:
            bundle = load_bundle(path, runtime=runtime)
        except LeukoscopeError as e:
            add(f"weights{name}", False, str(e))
            continue
        add(f"weights{name}", True, "load and fit the config")
        try:
            wrong = _smoke(bundle)
        except Exception as e:  # noqa: BLE001 - whatever breaks a prediction is the finding
            wrong = one_line(e)
        add(f"predict{name}", not wrong, wrong or f"{SMOKE_IMAGES} synthetic cells, rows sum to 1")
    return findings
