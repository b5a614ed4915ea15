"""``leukoscope export``: add ONNX models to a network bundle."""

from __future__ import annotations

import math
from typing import Annotated

import typer

from leukoscope.cli.app import app, say
from leukoscope.cli.options import BundleArg
from leukoscope.errors import ConfigError


@app.command("export")
def export_cmd(
    bundle: BundleArg,
    onnx: Annotated[bool, typer.Option("--onnx", help="Write model.onnx (fp32, dynamic batch).")] = False,
    int8: Annotated[bool, typer.Option("--int8", help="Also model.int8.onnx: static QDQ quantisation "
                                       "calibrated on the bundle's train/val images.")] = False,
    calibration: Annotated[list[str] | None, typer.Option(
        "--calibration", help="Images for int8 calibration (repeatable: files, folders, globs).",
        show_default="the bundle's train/val images")] = None,
) -> None:
    """Export a network bundle to ONNX; predict, evaluate and serve then use ONNX Runtime."""
    from leukoscope.bundle.export import export_onnx
    from leukoscope.predict.local import iter_inputs

    if not onnx:
        raise ConfigError("choose a format: --onnx")
    if calibration and not int8:
        raise ConfigError("--calibration: the images int8 is calibrated on; give --int8 too")
    from leukoscope.bundle import read_config

    if read_config(bundle)["family"] == "patient":
        from leukoscope.cli.patients import export_patients_cmd

        return export_patients_cmd(bundle, int8)
    images = [str(p) for p in iter_inputs(calibration)] if calibration is not None else None
    info = export_onnx(bundle, int8=int8, calibration=images)
    from leukoscope.bundle.onnx import OnnxBundle, model_files, twin_files

    say(f"wrote {', '.join(model_files(info))} in {bundle}")
    if twins := twin_files(info):
        say(f"and {', '.join(twins)}: optimised for this machine, where sessions open from them")
    if "int8" in info:
        auto = "int8" if OnnxBundle.auto_runtime(bundle, read_config(bundle)) == "onnx-int8" else "fp32"
        n = info["int8_agreement_images"]
        # counts, and a share rounded down: 98.95 % shown as 99.0 % would contradict a 99 % bar it missed
        checked = (f"int8 makes fp32's call on {round(info['int8_agreement'] * n)} of {n} "
                   f"({math.floor(info['int8_agreement'] * 1000) / 10:.1f} %) train/val cells not used to "
                   "calibrate it, "
                   f"{info['int8_speedup']:.2f}x as fast here"
                   if n else
                   "int8 not compared with fp32: no train/val cell was left beside the calibration images")
        say(f"{checked}; --runtime auto runs {auto}")
