"""The web page and JSON API over one model bundle.

``create_app(bundle_dir, settings)`` returns a FastAPI app with

- ``GET /`` the page (plain HTML/CSS/JS from ``static/``, no CDN, works offline);
- ``POST /api/predict`` multipart, one or many images in the field ``files``;
- ``POST /api/patient`` the same, all the cells of one patient, for a patient bundle's call
  (``serve/patient.py``);
- ``GET /api/model`` the model card as JSON; ``GET /healthz``;
- ``/docs`` and ``/openapi.json`` (FastAPI's Swagger page loads its JS from a CDN, so it only
  renders with internet access; ``/openapi.json`` itself is always served).

Safety is structural rather than a checklist: ``admission.Admission`` caps the body as it
arrives and lets only a few predictions run at once (the rest wait in a short queue, then get
503); the body is parsed in memory (nothing a client sends, name or content, is ever written to
disk), the count of files is capped while parsing, the pixels of all images in a request are
summed from their headers before any is decoded, each file's type is decided by decoding its
content with the project's one safe decoder (accepted formats only, pixel limit against
decompression bombs), and every failure is a 4xx JSON ``{"detail": ...}`` naming the file or the
limit. Decoding runs in the thread pool and the model runs in its own one-slot thread lane, so a
slow request never blocks the event loop or ``/healthz``.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path, PurePosixPath
from typing import Any

import anyio
import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.middleware.trustedhost import TrustedHostMiddleware

from leukoscope import __version__
from leukoscope.batches import ordered_map
from leukoscope.bundle import Bundle, load_bundle
from leukoscope.bundle.format import METRICS
from leukoscope.bundle.patient import PatientBundle
from leukoscope.data.images import FORMATS, decode_rgb, image_size
from leukoscope.data.manifest import IMAGE_LEVEL_WARNING
from leukoscope.data.names import subject_from_name
from leukoscope.errors import BundleError, ImageError, LeukoscopeError
from leukoscope.explain import EXPLAINERS, Explainer, Explanation
from leukoscope.predict import unfamiliar
from leukoscope.reports.html import image_to_data_uri
from leukoscope.serve.admission import Admission, ASGIApp, Message, Receive, Scope, Send
from leukoscope.serve.limits import ServeSettings
from leukoscope.serve.patient import PatientResponse, diagnose_uploads
from leukoscope.settings import threads

log = logging.getLogger("leukoscope.serve")

STATIC = Path(__file__).parent / "static"
FIELD = "files"
INTENDED_USE = ("Research use only. Not a medical device: not for diagnosis or treatment decisions. "
                "Every call must be checked by a qualified person.")
#: The page may only talk to this server; images come back as data: URIs, thumbnails as blob: URLs.
PAGE_CSP = ("default-src 'self'; img-src 'self' data: blob:; style-src 'self'; script-src 'self'; "
            "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'")
_MAX_NAME = 200
#: Grad-CAM of larger images runs on a copy this many pixels on its longest side (cells are smaller).
EXPLAIN_SIDE = 512
TOP_FEATURES = 6


class SecurityHeaders:
    """Plain ASGI, unlike ``@app.middleware("http")``, whose task group would wrap every error the
    app raises (a refused body included) in an ExceptionGroup."""

    HEADERS = ((b"x-content-type-options", b"nosniff"), (b"referrer-policy", b"no-referrer"),
               (b"x-frame-options", b"DENY"))

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                present = {k.lower() for k, _ in headers}
                message["headers"] = headers + [h for h in self.HEADERS if h[0] not in present]
            await send(message)

        await self.app(scope, receive, send_with_headers)


class FeatureContribution(BaseModel):
    feature: str
    value: float
    contribution: float


class FileResult(BaseModel):
    model_config = ConfigDict(validate_assignment=True)

    name: str
    #: from a C-NMC style name (``UID_<subject>_``), as predict's CSV has it; None where the name gives none
    subject: str | None = None
    label: str | None = None
    probabilities: dict[str, float] | None = None
    #: Higher = less like the training data; ``unfamiliar``: above the bundle's threshold, and then
    #: ``label`` is "unfamiliar" (None, None: the bundle has no score).
    unfamiliarity: float | None = None
    unfamiliar: bool | None = None
    threshold: float | None = None
    heatmap: str | None = None
    features: list[FeatureContribution] | None = None
    thumbnail: str | None = None
    error: str | None = None


def explanation_fields(e: Explanation) -> dict[str, Any]:
    """An explanation's fields of a ``FileResult``: the heat map (at most 256 px) or the top features."""
    if e.features is not None:
        top = e.features.head(TOP_FEATURES)
        return {"features": top[["feature", "value", "contribution"]].to_dict("records")}
    return {"heatmap": None if e.overlay is None else image_to_data_uri(e.overlay, max_side=256)}


class PredictResponse(BaseModel):
    model: str
    classes: list[str]
    results: list[FileResult]


class _InMemoryMultiPart(MultiPartParser):
    # Admission caps the body before it reaches the parser, so file parts never roll over to disk.
    spool_max_size = sys.maxsize


def display_name(filename: str | None, index: int) -> str:
    """A label for the page and CSV only: the base name, shortened; never used as a path."""
    name = PurePosixPath((filename or "").replace("\\", "/")).name
    name = "".join(c for c in name if c.isprintable())[:_MAX_NAME]
    return name or f"file-{index + 1}"


async def read_uploads(request: Request, settings: ServeSettings) -> list[tuple[str, bytes]]:
    """(display name, bytes) of every file in the ``files`` field, read in memory under the limits."""
    if not request.headers.get("content-type", "").lower().startswith("multipart/form-data"):
        raise HTTPException(415, f"send the images as multipart/form-data in the field {FIELD!r}")
    parser = _InMemoryMultiPart(request.headers, request.stream(), max_files=settings.max_files,
                                max_fields=16, max_part_size=4096)
    try:
        form = await parser.parse()
    except MultiPartException as e:
        if "too many files" in e.message.lower():
            raise HTTPException(413, f"too many files: at most {settings.max_files} per request") from None
        raise HTTPException(400, f"malformed multipart body: {e.message}") from None
    try:
        files = [v for k, v in form.multi_items() if k == FIELD and isinstance(v, UploadFile)]
        if not files:
            sent = sorted({k[:40] for k, _ in form.multi_items()})
            got = f" (fields sent: {', '.join(sent[:10])})" if sent else ""
            raise HTTPException(400, f"no file in the form field {FIELD!r}{got}")
        return [(display_name(f.filename, i), _take(f)) for i, f in enumerate(files)]
    finally:
        await form.close()


def _take(upload: UploadFile) -> bytes:
    """The file's bytes, freeing its buffer at once so a request holds its body only once."""
    data = upload.file.read()
    upload.file.close()
    return data


def check_request_pixels(uploads: Sequence[tuple[str, bytes]], settings: ServeSettings) -> None:
    """Refuse (413) a request whose images would decode to more than ``max_request_pixels`` in all.

    Only headers are read: a few bytes of a flat 4000x4000 PNG say it would take 48 MB decoded.
    Files the decoder will refuse anyway (unreadable, too large on their own) do not count.
    """
    total = 0
    for name, data in uploads:
        if len(data) > settings.max_bytes:
            continue
        try:
            w, h = image_size(data, name)
        except ImageError:
            continue
        if w * h <= settings.max_pixels:
            total += w * h
    if total > settings.max_request_pixels:
        raise HTTPException(413, f"the images in this request total {total:,} pixels, over the limit of "
                            f"{settings.max_request_pixels:,} per request; send fewer or smaller images")


def decode_upload(name: str, data: bytes, settings: ServeSettings) -> np.ndarray:
    """Decode one upload; its type comes from the content, never the name or the client's header."""
    if len(data) > settings.max_bytes:
        raise LeukoscopeError(f"{name}: {len(data):,} bytes exceeds the limit of {settings.max_bytes:,}")
    return decode_rgb(data, name, max_pixels=settings.max_pixels)


class Model:
    """The bundle, its explainer and the single lane its calls run in (one at a time, off the loop).

    One lane because a model call already uses every core, and Grad-CAM hooks the shared network.
    """

    def __init__(self, bundle: Bundle):
        self.bundle = bundle
        self.name = str(bundle.config.get("model", bundle.family))
        self.explainer: Explainer | None = EXPLAINERS.get(bundle.family)
        self.explanation = self.explainer.title if self.explainer else None
        self._limiter: anyio.CapacityLimiter | None = None

    async def in_lane(self, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(*args)`` in the model's lane: a worker thread, one model call at a time."""
        if self._limiter is None:
            self._limiter = anyio.CapacityLimiter(1)
        return await anyio.to_thread.run_sync(fn, *args, limiter=self._limiter)

    async def run(self, images: Sequence[np.ndarray], explain: bool
                  ) -> tuple[np.ndarray, list[dict[str, Any]]]:
        result: tuple[np.ndarray, list[dict[str, Any]]] = await self.in_lane(self._run, images, explain)
        return result

    def _run(self, images: Sequence[np.ndarray], explain: bool) -> tuple[np.ndarray, list[dict[str, Any]]]:
        probs, scores = self.bundle.assess(images)
        marks = [unfamiliar_fields(self.bundle, u) for u in unfamiliar.marks(self.bundle, scores, len(probs))]
        if not (explain and self.explainer):
            return probs, marks
        how = self.explainer.explain
        return probs, [mark | explanation_fields(how(self.bundle, im, int(c), EXPLAIN_SIDE))  # why the call
                       for im, c, mark in zip(images, self.bundle.decide(probs), marks, strict=True)]


def unfamiliar_fields(bundle: Bundle, mark: tuple[float, bool] | None) -> dict[str, Any]:
    """A result's unfamiliarity, flag and threshold (nothing when the bundle has no score)."""
    if mark is None or bundle.unfamiliar is None:
        return {}
    return {"unfamiliarity": round(mark[0], 6), "unfamiliar": mark[1],
            "threshold": bundle.unfamiliar.threshold}


#: The model card's note when metrics.json cannot be read (why goes to the server's log, not to the page).
METRICS_UNREADABLE = f"{METRICS} could not be read, so no metrics are shown (`leukoscope verify` says why)"


def model_card(model: Model, settings: ServeSettings) -> dict[str, Any]:
    """What the page's model-card panel shows: classes, data and its size, protocol, metrics, use."""
    cfg = model.bundle.config
    protocol = cfg.get("protocol", "unknown")
    warnings = [IMAGE_LEVEL_WARNING] if protocol == "image-level" else []
    try:
        metrics, metrics_error = model.bundle.metrics(), None
    except BundleError as e:  # the rest of the card (and predictions) still stand; the page shows why
        log.warning("%s", e)
        metrics, metrics_error = {}, METRICS_UNREADABLE
        warnings.append(metrics_error)
    card: dict[str, Any] = {
        "model": model.name, "family": model.bundle.family, "classes": model.bundle.classes,
        "display_names": model.bundle.display_names,
        "data": cfg.get("data"), "protocol": protocol,
        "warning": " ".join(w if w.endswith(".") else w + "." for w in warnings) or None,
        "split": _split_sizes(model.bundle), "metrics": metrics, "metrics_error": metrics_error,
        "runtime": type(model.bundle).__name__,
        "input_size": cfg.get("input_size") or cfg.get("preprocessing", {}).get("input_size"),
        "temperature": model.bundle.temperature,
        # the score that calls a cell "unfamiliar": method, threshold, share of familiar cells it flags
        "unfamiliar": None if model.bundle.unfamiliar is None else model.bundle.unfamiliar.config(),
        "created": cfg.get("created"), "versions": cfg.get("versions", {}),
        "explanation": model.explanation,
        "intended_use": INTENDED_USE,
        "limits": settings.limits(),
    }
    return card


def _split_sizes(bundle: Bundle) -> dict[str, dict[str, int]]:
    """Images and groups (subjects, or images where there are none) per side or fold of the split."""
    split = bundle.split()
    if split is None:
        return {}
    by = next((c for c in ("side", "fold") if c in split), None)
    parts = split.groupby(by) if by else [("all", split)]
    return {str(k): {"images": len(p), "groups": int(p["group"].nunique()) if "group" in p else len(p)}
            for k, p in parts}


def _nothing_readable(results: Sequence[BaseModel]) -> JSONResponse:
    """422 naming every file and why it could not be read."""
    detail = "no uploaded file could be read as an image: " + "; ".join(
        str(getattr(r, "error", "")) for r in results)
    return JSONResponse({"detail": detail, "results": [r.model_dump() for r in results]}, status_code=422)


def _validation_message(exc: RequestValidationError) -> str:
    return "; ".join(f"{'.'.join(str(x) for x in e.get('loc', ()))}: {e.get('msg')}" for e in exc.errors())


def _multipart_docs() -> dict[str, Any]:
    """OpenAPI schema for the hand-parsed body, so /docs offers a file picker."""
    schema = {"type": "object", "required": [FIELD], "properties": {
        FIELD: {"type": "array", "items": {"type": "string", "format": "binary"},
                "description": f"one or more cell images ({', '.join(FORMATS)})"}}}
    return {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": schema}}}}


def create_app(bundle_dir: Path | str, settings: ServeSettings | None = None) -> FastAPI:
    """Load the bundle now (a bad bundle fails here, before any port is opened) and build the app."""
    settings = settings or ServeSettings()
    model = Model(load_bundle(bundle_dir, runtime=settings.runtime))
    web = FastAPI(title="leukoscope", version=__version__,
                  description=f"Single-cell image classifier `{model.name}`. {INTENDED_USE}")
    web.state.model = model
    web.state.settings = settings

    web.add_middleware(TrustedHostMiddleware, allowed_hosts=list(settings.allowed_hosts))

    @web.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"detail": _validation_message(exc)}, status_code=422)

    @web.exception_handler(LeukoscopeError)
    async def user_error(request: Request, exc: LeukoscopeError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=400)

    @web.exception_handler(Exception)
    async def server_error(request: Request, exc: Exception) -> JSONResponse:
        log.exception("internal error on %s %s", request.method, request.url.path)
        return JSONResponse({"detail": f"internal error ({type(exc).__name__}); see the server log"},
                            status_code=500)

    @web.api_route("/", include_in_schema=False, methods=["GET", "HEAD"])
    async def index() -> FileResponse:
        return FileResponse(STATIC / "index.html", headers={"Content-Security-Policy": PAGE_CSP,
                                                            "Cache-Control": "no-cache"})

    @web.api_route("/healthz", methods=["GET", "HEAD"])
    async def healthz() -> dict[str, Any]:
        """Liveness: answers even while the model is busy."""
        return {"status": "ok", "model": model.name, "classes": len(model.bundle.classes)}

    @web.api_route("/api/model", methods=["GET", "HEAD"])
    async def api_model() -> dict[str, Any]:
        """The model card: classes, training data and split sizes, protocol, metrics, intended use."""
        return model_card(model, settings)

    @web.post("/api/predict", response_model=PredictResponse, openapi_extra=_multipart_docs(),
              responses={400: {"description": "bad request (message in `detail`)"},
                         413: {"description": "too many files, bytes or pixels in one request"},
                         415: {"description": "not multipart/form-data"},
                         422: {"description": "no uploaded file could be read as an image"},
                         503: {"description": "busy: every place in the queue is taken (see "
                                              "Retry-After)"}})
    async def api_predict(request: Request, explain: bool = True, thumbnail: bool = False) -> Any:
        """Classify every image in the multipart field `files`. Per file: label, probabilities and,
        unless `explain=false`, a Grad-CAM overlay as a PNG data URI (network models) or the features
        that drove the call (classical models); a PNG thumbnail if `thumbnail=true` (for formats
        browsers cannot show, such as TIFF); or an error naming the file."""
        uploads = await read_uploads(request, settings)
        await anyio.to_thread.run_sync(check_request_pixels, uploads, settings)
        results = [FileResult(name=name, subject=subject_from_name(name)) for name, _ in uploads]

        def decoded(upload: tuple[str, bytes]) -> tuple[np.ndarray, str | None] | str:
            """The image and its thumbnail (if asked), or the error naming the file."""
            try:
                img = decode_upload(*upload, settings)
            except LeukoscopeError as e:
                return str(e)
            return img, image_to_data_uri(img, 128) if thumbnail else None

        # every file decoded off the event loop, one per core at once (Pillow releases the GIL)
        outcomes = await anyio.to_thread.run_sync(lambda: list(ordered_map(decoded, uploads, threads())))
        images: list[np.ndarray] = []
        ok: list[FileResult] = []
        for res, got in zip(results, outcomes, strict=True):
            if isinstance(got, str):
                res.error = got
                continue
            images.append(got[0])
            ok.append(res)
            res.thumbnail = got[1]
        if not images:
            return _nothing_readable(results)
        probs, explanations = await model.run(images, explain)
        classes = model.bundle.classes
        op = model.bundle.operating_point
        for res, p, why in zip(ok, probs, explanations, strict=True):
            res.label = unfamiliar.label(classes, p, bool(why.get("unfamiliar")), op)
            res.probabilities = {c: round(float(v), 6) for c, v in zip(classes, p, strict=True)}
            res.unfamiliarity, res.unfamiliar = why.get("unfamiliarity"), why.get("unfamiliar")
            res.threshold = why.get("threshold")
            res.heatmap = why.get("heatmap")
            res.features = why.get("features")
        return PredictResponse(model=model.name, classes=classes, results=results)

    @web.post("/api/patient", response_model=PatientResponse, openapi_extra=_multipart_docs(),
              responses={400: {"description": "the bundle makes no patient calls, or a bad request"},
                         413: {"description": "too many files, bytes or pixels in one request"},
                         422: {"description": "no uploaded file could be read as an image"},
                         503: {"description": "busy (see Retry-After)"}})
    async def api_patient(request: Request, subject: str | None = None, thumbnail: bool = False) -> Any:
        """The call for one patient from all its cells in the multipart field `files` (patient bundles):
        the call and its calibrated probability with a 95% interval, the threshold, cells used and
        skipped, the predicted cell-type composition with exact binomial 95% intervals, a warning when
        too few cells were sent; per cell its type, what it contributed and whether it drove the call."""
        bundle = model.bundle
        if not isinstance(bundle, PatientBundle):
            raise HTTPException(400, f"this server's model ({model.name}, a {bundle.family} bundle) answers "
                                "per cell; use /api/predict (a patient call needs a patient bundle)")
        uploads = await read_uploads(request, settings)
        await anyio.to_thread.run_sync(check_request_pixels, uploads, settings)
        results, answer = await diagnose_uploads(
            bundle, uploads, lambda name, data: decode_upload(name, data, settings), model.in_lane, subject,
            thumbnail)
        if answer is None:
            return _nothing_readable(results)
        return answer

    web.mount("/static", StaticFiles(directory=STATIC), name="static")
    # added last, so outermost: a refused body or a full queue costs no parsing, routing or model
    web.add_middleware(Admission, settings=settings, heavy={"/api/predict", "/api/patient"})
    web.add_middleware(SecurityHeaders)
    return web
