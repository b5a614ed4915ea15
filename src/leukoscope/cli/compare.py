"""``leukoscope compare``: two bundles on the same cells, paired tests, a table fit for a paper."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from leukoscope.cli.app import app, console, read_data, say
from leukoscope.cli.options import BatchOpt, LayoutOpt, Paths, RuntimeOpt, TtaOpt
from leukoscope.cli.progress import shown

BundleA = Annotated[Path, typer.Argument(help="The first model bundle folder (A, the reference).",
                                         show_default=False)]
BundleB = Annotated[Path, typer.Argument(help="The second model bundle folder (B; differences are B - A).",
                                         show_default=False)]


@app.command("compare")
def compare_cmd(
    bundle_a: BundleA,
    bundle_b: BundleB,
    paths: Paths,
    out: Annotated[Path, typer.Option("--out", help="Folder for comparison.md, comparison.html, "
                                      "comparison.json and comparison.csv.")],
    layout: LayoutOpt = None,
    side: Annotated[str | None, typer.Option(
        "--side", help="Only images on this side (test, val, train) of both bundles' splits.",
        show_default="every image given")] = None,
    draws: Annotated[int, typer.Option("--bootstrap", min=100, help="Paired bootstrap draws (over subjects "
                                       "where known, else cells).")] = 2000,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the bootstrap.")] = 0,
    tta: TtaOpt = False,
    batch_size: BatchOpt = 64,
    runtime: RuntimeOpt = "auto",
) -> None:
    """Score two models on exactly the same cells; McNemar, DeLong and paired bootstrap tests."""
    from leukoscope.bundle import load_bundle, read_config
    from leukoscope.evaluate.compare import HTML_FILE, compare, protocol_text, table_header, table_rows, title

    def loaded(path: Path) -> Any:  # --runtime is how a network runs; a classical model runs as it does
        network = read_config(path).get("family") == "network"
        return load_bundle(path, runtime=runtime if network else "auto")

    a, b = loaded(bundle_a), loaded(bundle_b)
    m = read_data(paths, layout)
    with shown() as bars:
        r = compare(a, b, m, out, side=side, tta=tta, batch_size=batch_size, n_boot=draws, seed=seed,
                    progress=bars)
    table = Table(title=escape(title(r)), caption=escape(protocol_text(r)))
    for i, h in enumerate(table_header(r)):
        table.add_column(escape(h), justify="left" if i in (0, 5) else "right")
    for row in table_rows(r):  # each interval under its figure: the table fits 100 columns
        table.add_row(*(escape(c).replace(" [", "\n[") for c in row))
    console.print(table)
    mc = r["mcnemar"]
    console.print(f"McNemar exact: only A right {mc['a_only']}, only B right {mc['b_only']} "
                  f"(both right {mc['both']}, both wrong {mc['neither']}), p = {mc['p_value']:.4g}")
    if r["delong"] is not None:
        d = r["delong"]
        console.print(f"DeLong: AUC {d['auc_a']:.4f} vs {d['auc_b']:.4f}, B - A {d['difference']:+.4f} "
                      f"(SE {d['se']:.4f}), p = {d['p_value']:.4g}")
    for n in r["notes"]:
        console.print(f"[yellow]note:[/] {escape(n)}")
    if r["skipped"]:
        console.print(f"[yellow]{len(r['skipped'])} unreadable image(s) skipped for both models:[/]")
        for s in r["skipped"]:
            say(f"  {s['path']}: {s['reason']}")
    say(f"wrote {Path(out) / HTML_FILE} and comparison.md, comparison.json, comparison.csv")
