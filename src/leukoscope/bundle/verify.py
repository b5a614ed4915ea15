"""``verify``: is this folder a bundle leukoscope can use, and does it behave? (in the spirit of
MONAI's bundle checks).

Each check gives one ``Finding``; the first that leaves nothing to check further ends the list
(no config, no families to load). The checks: config.json is JSON, its ``format_version`` is one
this code reads, the config is valid, every file it declares is there, the weights of every
runtime it declares load and fit the config (the same checks as ``load_bundle``), and a smoke
prediction on synthetic cells gives one row per image that sums to 1.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from leukoscope.bundle.base import family_class, load_bundle
from leukoscope.bundle.format import (
    CARD,
    CONFIG,
    EXPORT_FILES,
    METRICS,
    check_config,
    format_version,
    one_line,
    raw_config,
)
from leukoscope.bundle.onnx import model_files, twin_files
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
    return [CONFIG, METRICS, CARD, *family_class(config["family"]).weight_files, *model_files(onnx),
            *twin_files(onnx)]


def runtimes(config: dict[str, Any]) -> list[str]:
    """The ``load_bundle`` runtimes a valid ``config`` declares: its family's own, then its exports."""
    by_file = {f: r for r, f in EXPORT_FILES.items()}
    exports = [by_file.get(f, "") for f in declared_files(config)]
    return ["torch", *[r for r in exports if r]]


def _smoke(bundle: Any) -> str:
    """Predict synthetic cells; what was wrong with the probabilities, or '' when nothing was."""
    from leukoscope.data.synthetic import synthetic_cell

    rng = np.random.default_rng(0)
    images = [synthetic_cell(i % 2, SMOKE_SIZE, rng) for i in range(SMOKE_IMAGES)]
    with np.errstate(all="ignore"):  # overflowing scores are reported below, not warned about
        p = np.asarray(bundle.predict_proba(images))
    if p.shape != (SMOKE_IMAGES, len(bundle.classes)):
        return f"probabilities of shape {p.shape}, expected {(SMOKE_IMAGES, len(bundle.classes))}"
    if not np.isfinite(p).all() or (p < 0).any() or not np.allclose(p.sum(axis=1), 1.0, atol=1e-6):
        return f"rows that are not probabilities summing to 1: {np.round(p, 4).tolist()}"
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
