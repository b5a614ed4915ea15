"""The audit's files: ``audit.json`` (everything found) and ``audit.html`` (pairs side by side)."""

from __future__ import annotations

from pathlib import Path

from leukoscope.audit.clusters import KINDS, AuditResult
from leukoscope.data.images import load_rgb
from leukoscope.data.paths import stored_json
from leukoscope.errors import ImageError
from leukoscope.io import write_json_atomic


def thumbnails(paths: list[str], max_side: int = 128) -> dict[str, str]:
    """PNG data URIs of the given images for the report (unreadable ones are left out)."""
    from leukoscope.reports.html import image_to_data_uri

    out = {}
    for p in dict.fromkeys(paths):
        try:
            out[p] = image_to_data_uri(load_rgb(p), max_side)
        except ImageError:
            continue
    return out


def write_audit(result: AuditResult, out: Path, max_pairs: int = 300) -> tuple[Path, Path]:
    """Write ``audit.json`` (everything) and ``audit.html`` (pairs side by side) into ``out``."""
    from leukoscope import __version__
    from leukoscope.reports.html import write_report

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    data = result.to_json()
    # paths relative to the data root (data.paths), so the file still serves once the data folder moves
    json_path = write_json_atomic(out / "audit.json", stored_json(data, result.manifest["path"]))
    records = sorted(data["pairs"], key=lambda r: (not r["label_conflict"], not r["cross_side"],
                                                   KINDS.index(r["kind"]), -r["similarity"]))
    shown = records[:max_pairs]
    thumbs = thumbnails([r[k]["path"] for r in shown for k in ("a", "b")])
    html_path = write_report(out / "audit.html", "audit.html", title="Data audit", protocol=None,
                             warning=None, summary=data["summary"], pairs=shown, thumbs=thumbs,
                             hidden=len(records) - len(shown), clusters=data["clusters"],
                             filed_twice=data["filed_under_two_labels"],
                             skipped=data["skipped"], name=lambda p: Path(p).name, version=__version__)
    return json_path, html_path
