"""The Bundle: one directory format for every trained model, and ``load_bundle``.

This package owns the format: ``format`` (file names, ``FORMAT_VERSION``, reading and checking
config.json), ``writing`` (a bundle written in one rename), ``card`` (the model card), ``base``
(the ``Bundle`` interface, the family registry, ``load_bundle``), the families ``classical`` and
``network``, the ONNX Runtime runtime ``onnx`` and its ``export``, and ``verify``. The names most
callers need are re-exported here; the families and runtimes are imported only when a bundle of
theirs is loaded (torch, skops and onnxruntime stay out of ``import leukoscope.bundle``).
"""

from leukoscope.bundle.base import Bundle, ImageLike, bundle_family, bundle_runtime, family_class, load_bundle
from leukoscope.bundle.card import model_card
from leukoscope.bundle.format import (
    CARD,
    CONFIG,
    EXPORTS,
    FAMILIES,
    FORMAT_VERSION,
    HISTORY,
    INPUT_SIZES,
    METRICS,
    ONNX,
    ONNX_INT8,
    RUNTIMES,
    SAFETENSORS,
    SKOPS,
    SPLIT,
    TEMPERATURES,
    check_config,
    one_line,
    read_config,
)
from leukoscope.bundle.verify import Finding, verify
from leukoscope.bundle.writing import (
    finish_bundle,
    honour_umask,
    library_versions,
    write_json,
    writing_bundle,
)

__all__ = [
    "CARD", "CONFIG", "EXPORTS", "FAMILIES", "FORMAT_VERSION", "HISTORY", "INPUT_SIZES", "METRICS", "ONNX",
    "ONNX_INT8", "RUNTIMES", "SAFETENSORS", "SKOPS", "SPLIT", "TEMPERATURES", "Bundle", "Finding",
    "ImageLike", "bundle_family", "bundle_runtime", "check_config", "family_class", "finish_bundle",
    "honour_umask", "library_versions", "load_bundle", "model_card", "one_line", "read_config", "verify",
    "write_json", "writing_bundle",
]
