"""The ONNX Runtime runtime of network bundles: ``OnnxBundle`` runs an exported ``model.onnx``
(or ``model.int8.onnx``) instead of PyTorch.

It is what ``load_bundle`` returns for a network bundle with a current export: the same
``preprocess.prepare`` as PyTorch, then one single-threaded ORT session that several threads
run at once, one batch per core (``parallel_batches``). Export records the weights' digest and each
ONNX file's SHA-256 (``bundle.export``), so a stale ``model.onnx``, or one copied in from another
bundle of the same network, is never used: a session opens only from bytes whose SHA-256 was
recorded. An export from before those were recorded is refused (``--runtime auto``: torch runs)
until re-exported.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from leukoscope.batches import chunks, ordered_map
from leukoscope.bundle.base import Bundle, bundle_runtime
from leukoscope.bundle.format import CONFIG, ONNX, ONNX_DIGESTS, ONNX_INT8, SAFETENSORS, one_line, sha256
from leukoscope.data.images import file_digest
from leukoscope.errors import BundleError
from leukoscope.geometry import D4, dihedral
from leukoscope.models.onnx import (
    EMBEDDING,
    INPUT,
    OUTPUT,
    has_vnni,
    optimized_twin,
    ort_session,
    session_batch,
)
from leukoscope.models.preprocess import prepare
from leukoscope.settings import threads

#: ``--runtime auto`` runs int8 only where export saw it make fp32's call on at least this share of at
#: least ``AUTO_INT8_IMAGES`` held-out images (fewer are too few to tell 99 % from 95 %).
AUTO_INT8_AGREEMENT = 0.99
AUTO_INT8_IMAGES = 50


def int8_agrees(info: dict[str, Any]) -> bool:
    """Whether export measured int8 making fp32's call often enough, on enough images, to run it
    unasked (``info``: what ``export_onnx`` records under ``config["onnx"]``)."""
    return info.get("int8_agreement", 0.0) >= AUTO_INT8_AGREEMENT and enough_to_tell(
        info.get("int8_agreement_images", 0))


def enough_to_tell(images: int) -> bool:
    """Whether int8's agreement with fp32 on this many images can count (``AUTO_INT8_IMAGES``)."""
    return images >= AUTO_INT8_IMAGES


def model_files(info: dict[str, Any]) -> list[str]:
    """The model files an export recorded (``info``: ``config["onnx"]``): fp32, then int8 if any."""
    return [info[k] for k in ("fp32", "int8") if isinstance(info.get(k), str)]


def twin_files(info: dict[str, Any]) -> list[str]:
    """Their ``optimized_twin`` files, where the export wrote them (``optimized_for``)."""
    return [optimized_twin(Path(f)).name for f in model_files(info)] if info.get("optimized_for") else []


def recorded_files(info: dict[str, Any]) -> list[str]:
    """Every ONNX file an export wrote (``model_files``, then ``twin_files``): what it records digests of."""
    return [*model_files(info), *twin_files(info)]


#: Why an ONNX file of an export from before their SHA-256 was recorded does not run.
UNRECORDED = "no SHA-256 of it in config.json (exported before leukoscope recorded them): cannot be checked"


def reexport(path: Path, file: str) -> str:
    """The command that writes ``file`` of the bundle at ``path`` again."""
    return f"`leukoscope export {path} --onnx{' --int8' if file.startswith('model.int8') else ''}`"


def digest_problem(info: dict[str, Any], name: str, data: bytes) -> str:
    """Why ``data``, the bytes of ONNX file ``name``, is not what export wrote ('' when it is)."""
    want = info.get(ONNX_DIGESTS, {}).get(name)
    if want is None:
        return UNRECORDED
    if sha256(data) != want:
        return "not the file export wrote (its SHA-256 differs from config.json's: copied from elsewhere?)"
    return ""


def digest_check(path: Path, info: dict[str, Any]) -> Callable[[Path, bytes], None]:
    """``ort_session``'s ``check``: a ``BundleError`` naming a file of the bundle at ``path`` whose bytes
    are not what export recorded (``info``: ``config["onnx"]``)."""
    def check(file: Path, data: bytes) -> None:
        if why := digest_problem(info, file.name, data):
            raise BundleError(f"{file}: {why}; re-export: {reexport(path, file.name)}")
    return check


@functools.lru_cache(maxsize=8)
def _digest(path: str, size: int, mtime_ns: int) -> str:
    """``file_digest`` once per version of a file in this process (``load_bundle`` with runtime
    ``auto`` asks whether the export is current, then the load asks again)."""
    return file_digest(path)


@bundle_runtime("onnx")
@bundle_runtime("onnx-int8")
class OnnxBundle(Bundle):
    """A network bundle run by ONNX Runtime (fp32 or int8) instead of PyTorch."""

    weight_files = (SAFETENSORS,)
    parallel_batches = True

    def __init__(self, path: Path, config: dict[str, Any], session: Any, model_file: str):
        super().__init__(path, config)
        self.session = session
        self.model_file = model_file
        self.batch_size = session_batch(int(config["preprocessing"]["input_size"]), model_file == ONNX_INT8)

    @classmethod
    def load(cls, path: Path, config: dict[str, Any], model_file: str = ONNX) -> OnnxBundle:
        path = Path(path)
        onnx_path = path / model_file
        info = config.get("onnx", {})
        # the session opens (its file's SHA-256 checked) while the weights are hashed (is the export
        # current?): both release the GIL
        with ThreadPoolExecutor(1, thread_name_prefix="leukoscope-load") as pool:
            opening = pool.submit(ort_session, onnx_path, info.get("optimized_for"), digest_check(path, info))
            if why := cls.unavailable(path, config, model_file):
                raise BundleError(f"{onnx_path}: {why}; re-export: {reexport(path, model_file)}")
            if model_file == ONNX_INT8 and info.get("int8_vnni") and not has_vnni():
                raise BundleError(f"{onnx_path}: exported on a CPU with VNNI (8-bit weights), which this "
                                  f"CPU lacks: its int16 sums would overflow; re-export here (`leukoscope "
                                  f"export {path} --onnx --int8`) or use --runtime onnx")
            try:
                session = opening.result()
            except BundleError:
                raise
            except Exception as e:  # ORT raises its own types for corrupt or truncated files
                raise BundleError(f"{onnx_path}: cannot load ({one_line(e)})") from None
        check_session(session, onnx_path, config)
        return cls(path, config, session, model_file)

    @staticmethod
    def unavailable(path: Path, config: dict[str, Any], model_file: str = ONNX) -> str:
        """Why ``model_file`` cannot run: not there, no SHA-256 recorded for it, or exported from other
        weights than those now in the bundle (stale); '' when it can (its bytes are checked as it opens)."""
        info = config.get("onnx", {})
        digest, weights = info.get("weights_digest"), Path(path) / SAFETENSORS
        if not (Path(path) / model_file).is_file():
            return "not found"
        if model_file not in info.get(ONNX_DIGESTS, {}):
            return UNRECORDED
        stale = "exported from other weights"
        if digest is None or not weights.is_file():
            return stale
        st = weights.stat()
        return "" if digest == _digest(str(weights), st.st_size, st.st_mtime_ns) else stale

    @classmethod
    def available(cls, path: Path, config: dict[str, Any], model_file: str = ONNX) -> bool:
        """True when ``model_file`` is there, recorded, and exported from the weights now in the bundle."""
        return not cls.unavailable(path, config, model_file)

    @classmethod
    def auto_runtime(cls, path: Path, config: dict[str, Any]) -> str | None:
        """What ``--runtime auto`` runs: ``onnx-int8`` where int8 pays and agrees, else ``onnx`` for a
        current export, else None (PyTorch): also for an export from before ONNX files' SHA-256 were
        recorded, which runs correctly in torch until re-exported. A recorded file whose bytes differ is
        not skipped but refused as it loads: someone replaced it, and should hear so.

        int8 pays on a CPU that multiplies 8-bit numbers with VNNI (Lite0's model time at 128 px: 0.70
        s against fp32's 1.34 s per 800 cells on one AVX512-VNNI core); without it x86 ONNX Runtime
        goes through saturating int16 sums and 7-bit weights, so fp32 stays the choice. It agrees where
        ``export --int8`` measured it (``int8_agreement``, ``AUTO_INT8_*``).
        """
        if not cls.available(path, config):
            return None
        if int8_agrees(config.get("onnx", {})) and has_vnni() and cls.available(path, config, ONNX_INT8):
            return "onnx-int8"
        return "onnx"

    def _run(self, x: np.ndarray, names: Sequence[str] = (OUTPUT,)) -> list[np.ndarray]:
        """The session's ``names`` outputs of one prepared batch, the logits shifted as ``adapted`` set."""
        if not self.config.get("tta", False):
            out = [np.asarray(a) for a in self.session.run(list(names), {INPUT: x})]
        else:  # trained with TTA: logits averaged over the D4 views, as NetworkBundle does in torch
            batch = np.ascontiguousarray(np.concatenate(dihedral(x, (2, 3))))
            out = [np.asarray(a).reshape(len(D4), len(x), -1).mean(axis=0)
                   for a in self.session.run(list(names), {INPUT: batch})]
        return [self.shifted(a) if n == OUTPUT else a for n, a in zip(names, out, strict=True)]

    def _batches(self, images: Sequence[np.ndarray], names: Sequence[str]) -> list[np.ndarray]:
        out = list(ordered_map(lambda batch: self._run(prepare(batch, self.config), names),
                               chunks(images, self.batch_size), threads()))
        if not out:
            return [np.zeros((0, len(self.classes)), np.float32) for _ in names]
        return [np.concatenate(parts) for parts in zip(*out, strict=True)]

    def logits(self, images: Sequence[np.ndarray]) -> np.ndarray:
        return self._batches(images, (OUTPUT,))[0]

    def embed_logits(self, images: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray | None]:
        """Logits and the export's ``embedding`` output (None from an export made before it existed)."""
        if EMBEDDING not in {o.name for o in self.session.get_outputs()}:
            return self.logits(images), None
        logits, emb = self._batches(images, (OUTPUT, EMBEDDING))
        return logits, emb

    def prepare(self, images: Sequence[np.ndarray]) -> np.ndarray:
        return prepare(images, self.config)

    def prepared_embed_logits(self, prepared: np.ndarray, embed: bool = True
                              ) -> tuple[np.ndarray, np.ndarray | None]:
        embedding = embed and EMBEDDING in {o.name for o in self.session.get_outputs()}
        names, size = (OUTPUT, EMBEDDING) if embedding else (OUTPUT,), self.batch_size
        out = [self._run(prepared[i:i + size], names) for i in range(0, len(prepared), size)]
        if not out:
            return np.zeros((0, len(self.classes)), np.float32), None
        parts = [np.concatenate(p) for p in zip(*out, strict=True)]
        return parts[0], parts[1] if len(parts) > 1 else None


def check_session(session: Any, onnx_path: Path, config: dict[str, Any]) -> None:
    """Refuse an ONNX model that does not fit the config: its input is float NCHW at the config's
    ``input_size``, its output one score per class (else a malformed CSV, or a 500 from serve)."""
    inputs = {i.name: i for i in session.get_inputs()}
    outputs = {o.name: o for o in session.get_outputs()}
    if INPUT not in inputs or OUTPUT not in outputs:
        raise BundleError(f"{onnx_path}: expected input {INPUT!r} and output {OUTPUT!r}, found "
                          f"{sorted(inputs)} and {sorted(outputs)}")
    size = config["preprocessing"]["input_size"]
    shape = list(inputs[INPUT].shape)
    if len(shape) != 4 or shape[1] != 3 or any(isinstance(d, int) and d != size for d in shape[2:]):
        raise BundleError(f"{onnx_path}: takes input of shape {shape}, but {CONFIG} says 3 x {size} x {size}")
    out = list(outputs[OUTPUT].shape)
    n_classes = len(config["classes"])
    if len(out) != 2 or out[1] != n_classes:
        raise BundleError(f"{onnx_path}: gives {out[-1] if out else 'no'} scores per image, but {CONFIG} "
                          f"lists {n_classes} classes")
