"""Render self-contained HTML reports: Jinja2 templates, figures embedded as data URIs.

Every report (EDA, leaderboard, evaluation, tuning, audit) extends ``base.html`` and goes
through ``write_report``, so they look alike and open offline from a single file.
"""

from __future__ import annotations

import base64
import io
from pathlib import Path
from typing import Any

import numpy as np

from leukoscope.io import write_bytes_atomic, write_text_atomic

_TEMPLATES = Path(__file__).parent / "templates"


def figure_to_data_uri(fig: Any, dpi: int = 110) -> str:
    """A Matplotlib figure as a ``data:image/png;base64,...`` URI (the figure is closed)."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def save_figure(fig: Any, path: Path, dpi: int = 110) -> str:
    """Save a figure as PNG at ``path`` and as SVG beside it (same name, ``.svg``: to scale and edit in a
    paper), atomically; return the PNG as a data URI for embedding."""
    buf = io.StringIO()
    fig.savefig(buf, format="svg", bbox_inches="tight")
    write_text_atomic(Path(path).with_suffix(".svg"), buf.getvalue())
    uri = figure_to_data_uri(fig, dpi)
    write_bytes_atomic(path, base64.b64decode(uri.split(",", 1)[1]))
    return uri


def image_to_data_uri(img: np.ndarray, max_side: int = 160) -> str:
    """An RGB uint8 array as a PNG data URI, downscaled so reports stay small."""
    from PIL import Image

    im = Image.fromarray(img)
    im.thumbnail((max_side, max_side))
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def render(template: str, **context: Any) -> str:
    """Render a template from ``reports/templates`` with autoescaping; every footer names the version."""
    from jinja2 import Environment, FileSystemLoader, select_autoescape

    from leukoscope import __version__

    env = Environment(loader=FileSystemLoader(_TEMPLATES), autoescape=select_autoescape())
    return env.get_template(template).render(**{"version": __version__, **context})


def write_report(path: Path, template: str, **context: Any) -> Path:
    """Render and write an HTML report atomically; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_text_atomic(path, render(template, **context))
