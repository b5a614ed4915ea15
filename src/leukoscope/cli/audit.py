"""``leukoscope data audit``: duplicates, label conflicts and leakage across a split's sides."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from leukoscope.cli.app import console, data_app, read_data, say
from leukoscope.cli.options import LayoutOpt, Paths
from leukoscope.cli.progress import shown

#: The library's defaults (``leukoscope.audit``), repeated so ``--help`` stays instant.
THRESHOLD, EMBED_THRESHOLD = 0.85, 0.97


@data_app.command("audit")
def audit_cmd(
    paths: Paths,
    out: Annotated[Path, typer.Option("--out", help="Folder for audit.json and audit.html.")],
    split: Annotated[Path | None, typer.Option("--split", help="A split CSV (side or fold column).",
                                               show_default="the data set's own train / test")] = None,
    layout: LayoutOpt = None,
    threshold: Annotated[float, typer.Option(help="Minimum detail correlation (0-1) of a near "
                                             "duplicate.")] = THRESHOLD,
    embeddings: Annotated[bool, typer.Option("--embeddings", help="Also compare deep embeddings "
                                             "(slower; needs the deep feature kind).")] = False,
    embed_threshold: Annotated[float, typer.Option(help="Minimum embedding cosine.")] = EMBED_THRESHOLD,
    fail_on_leak: Annotated[bool, typer.Option("--fail-on-leak", help="Exit non-zero when a "
                                               "duplicate cluster straddles two sides.")] = False,
) -> None:
    """Exact and near-duplicate cells (flips, rotations, JPEG, crops), label conflicts, leakage."""
    from leukoscope.audit import audit, write_audit
    from leukoscope.data.splits import read_split
    from leukoscope.errors import LeakageError

    m = read_data(paths, layout)
    s = read_split(split, present=m["path"]) if split is not None else None
    with shown() as bars:
        vectors = None
        if embeddings:  # unreadable images are left out here and listed by the audit
            from leukoscope.features import extract

            vectors, _ = extract(m, "deep", progress=bars)
        result = audit(m, s, threshold=threshold, embeddings=vectors, embed_threshold=embed_threshold,
                       progress=bars)
    json_path, html_path = write_audit(result, out)
    info = result.summary()
    table = Table(title=f"audit of {info['images']} images")
    table.add_column("finding")
    table.add_column("count", justify="right")
    for kind, n in info["pairs"].items():
        if kind != "embedding" or embeddings:
            table.add_row(f"{kind} duplicate pairs", str(n))
    table.add_row("duplicate clusters", f"{info['clusters']} ({info['images_in_clusters']} images)")
    table.add_row("clusters with a label conflict", str(info["label_conflicts"]))
    patients = info["patients_with_files_under_two_labels"]
    table.add_row("files filed under two labels of one patient",
                  f"{info['filed_under_two_labels']} ({patients} patients)")
    table.add_row("clusters spanning two groups", str(info["cross_group_clusters"]))
    if info["sides_from"]:
        table.add_row(f"clusters across sides ({info['sides_from']})", str(info["leaking_clusters"]))
        for pair, n in info["side_pairs"].items():
            table.add_row(escape(f"  {pair}"), f"{n['pairs']} pair(s), {n['clusters']} cluster(s)")
    console.print(table)
    for c in result.patient_conflicts():
        console.print(escape(f"label conflict: {c['subject']} {Path(c['paths'][0]).name} filed under "
                             f"{' and '.join(c['labels'])}"), soft_wrap=True)
    for path, reason in result.skipped:
        console.print(f"[yellow]skipped[/] {escape(f'{path}: {reason}')}", soft_wrap=True)
    say(f"wrote {json_path} and {html_path}")
    if fail_on_leak and info["leaking_clusters"]:
        raise LeakageError(f"{info['leaking_clusters']} duplicate cluster(s) straddle the sides of "
                           f"{info['sides_from']}; see {html_path}")
