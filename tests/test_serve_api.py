"""The HTTP API over a real (tiny, freshly trained) network bundle: every endpoint, every bad upload."""

from __future__ import annotations

import asyncio
import base64
import io
import tempfile
import threading
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from imagefiles import png_bytes
from leukoscope.bundle import load_bundle
from leukoscope.cli.verbs import app as cli
from leukoscope.data.images import load_rgb
from leukoscope.serve.app import create_app
from leukoscope.serve.limits import LOOPBACK_HOSTS, ServeSettings
from serve_support import network_bundle, sample_images  # noqa: F401 - the fixture is used by name

pytestmark = pytest.mark.filterwarnings("ignore:Using `httpx` with `starlette.testclient`")

LIMITS = ServeSettings(max_files=4, max_bytes=3 * 2**20, max_pixels=4_000_000, max_body=8 * 2**20,
                       max_request_pixels=6_000_000)


@pytest.fixture(scope="module")
def client(network_bundle: Path) -> Any:  # noqa: F811
    from fastapi.testclient import TestClient

    with TestClient(create_app(network_bundle, LIMITS)) as c:
        yield c


@pytest.fixture(scope="module")
def images(data: Path) -> dict[str, Path]:
    return sample_images(data)


def upload(*parts: tuple[str, bytes], field: str = "files", ctype: str = "image/png") -> dict[str, Any]:
    return {"files": [(field, (name, content, ctype)) for name, content in parts]}


def assert_serves_next(client: Any, images: dict[str, Path]) -> None:
    """After any error the very next good request is answered normally."""
    r = client.post("/api/predict?explain=false", **upload(("next.png", images["png"].read_bytes())))
    assert r.status_code == 200, r.text
    assert r.json()["results"][0]["label"] in [*r.json()["classes"], "unfamiliar"]


def test_healthz(client: Any, network_bundle: Path) -> None:  # noqa: F811
    r = client.get("/healthz")
    assert r.status_code == 200
    body = r.json()
    assert body["status"] == "ok"
    assert body["classes"] == len(load_bundle(network_bundle).classes)
    for path in ("/", "/healthz", "/api/model"):  # monitors that ask with HEAD
        assert client.head(path).status_code == 200, path


def test_media_types_are_case_insensitive(client: Any, images: dict[str, Path]) -> None:
    boundary = "leukoscope-case"
    body = (f'--{boundary}\r\nContent-Disposition: form-data; name="files"; filename="c.png"\r\n'
            "Content-Type: image/png\r\n\r\n").encode() + images["png"].read_bytes() + \
        f"\r\n--{boundary}--\r\n".encode()
    r = client.post("/api/predict?explain=false", content=body,
                    headers={"content-type": f"MULTIPART/FORM-DATA; boundary={boundary}"})
    assert r.status_code == 200, r.text
    assert r.json()["results"][0]["error"] is None


def test_model_card_describes_bundle(client: Any, network_bundle: Path) -> None:  # noqa: F811
    card = client.get("/api/model").json()
    bundle = load_bundle(network_bundle)
    assert card["classes"] == bundle.classes == ["all", "hem"]
    assert card["family"] == "network" and card["explanation"] == "Grad-CAM heat map"
    assert card["protocol"] == bundle.config["protocol"]
    assert card["metrics"] == bundle.metrics() and card["metrics_error"] is None
    assert bundle.unfamiliar is not None and card["unfamiliar"] == bundle.unfamiliar.config()
    score = card["unfamiliar"]
    assert (score["method"], score["target_false_flag_rate"]) == ("mahalanobis", 0.05)
    split = bundle.split()
    assert split is not None
    assert sum(p["images"] for p in card["split"].values()) == len(split)
    assert set(card["split"]) == set(split["side"])
    assert "Research use only" in card["intended_use"]
    assert card["limits"] == {"max_files": 4, "max_bytes": 3 * 2**20, "max_pixels": 4_000_000,
                              "max_body": 8 * 2**20, "max_request_pixels": 6_000_000}


@pytest.mark.parametrize("explain", [True, False])
def test_predict_many_formats_matches_library(client: Any, network_bundle: Path,  # noqa: F811
                                              images: dict[str, Path], explain: bool) -> None:
    paths = list(images.values())
    r = client.post(f"/api/predict?explain={str(explain).lower()}",
                    **upload(*[(p.name, p.read_bytes()) for p in paths], ctype="application/octet-stream"))
    assert r.status_code == 200, r.text
    body = r.json()
    expected = load_bundle(network_bundle).predict_proba([load_rgb(p) for p in paths])
    assert [res["name"] for res in body["results"]] == [p.name for p in paths]
    for res, want in zip(body["results"], expected, strict=True):
        assert res["error"] is None
        got = np.array([res["probabilities"][c] for c in body["classes"]])
        np.testing.assert_allclose(got, want, atol=1e-5)
        # a cell unlike the training data (the bundle's unfamiliarity above its threshold) gets no class
        assert isinstance(res["unfamiliarity"], float) and res["threshold"] is not None
        assert res["unfamiliar"] == (res["unfamiliarity"] > res["threshold"])
        assert res["label"] == ("unfamiliar" if res["unfamiliar"] else body["classes"][int(np.argmax(want))])
        assert res["features"] is None  # network calls are explained by heat maps
        if explain:
            assert res["heatmap"].startswith("data:image/png;base64,")
            overlay = Image.open(io.BytesIO(base64.b64decode(res["heatmap"].split(",", 1)[1])))
            assert overlay.mode == "RGB" and min(overlay.size) >= 32
        else:
            assert res["heatmap"] is None


def test_type_comes_from_content_and_names_are_never_paths(client: Any, images: dict[str, Path],
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    # A PNG that calls itself a text file under a path-traversal name, bigger than Starlette's 1 MB
    # spool: it is classified, named by its base name only, and never rolled over to a temp file.
    rollovers: list[int] = []
    real_rollover = tempfile.SpooledTemporaryFile.rollover
    monkeypatch.setattr(tempfile.SpooledTemporaryFile, "rollover",
                        lambda self: (rollovers.append(1), real_rollover(self))[1])
    noise = np.random.default_rng(0).integers(0, 256, (700, 700, 3), dtype=np.uint8)
    big = io.BytesIO()
    Image.fromarray(noise).save(big, format="PNG")
    assert big.tell() > 2**20
    r = client.post("/api/predict?explain=false",
                    **upload(("../../etc/cron.d/evil.txt", big.getvalue()), ctype="text/plain"))
    assert r.status_code == 200, r.text
    res = r.json()["results"][0]
    assert res["name"] == "evil.txt" and res["error"] is None
    assert rollovers == []


def test_mixed_good_and_bad_files_answer_per_file(client: Any, images: dict[str, Path]) -> None:
    r = client.post("/api/predict?explain=false",
                    **upload(("good.jpg", images["jpeg"].read_bytes()), ("notes.png", b"not an image")))
    assert r.status_code == 200
    good, bad = r.json()["results"]
    assert good["label"] in ("all", "hem", "unfamiliar") and good["error"] is None
    assert bad["label"] is None and bad["error"] == "notes.png: not a readable image"


def _truncated_jpeg(images: dict[str, Path]) -> bytes:
    data = images["jpeg"].read_bytes()
    return data[: len(data) // 2]


BAD_UPLOADS = {
    "empty file": (lambda im: upload(("empty.png", b"")), 422, "empty.png: empty file"),
    "non-image": (lambda im: upload(("report.png", b"%PDF-1.4 definitely not pixels")), 422,
                  "report.png: not a readable image"),
    "truncated JPEG": (lambda im: upload(("half.jpg", _truncated_jpeg(im)), ctype="image/jpeg"), 422,
                       "half.jpg: cannot decode image"),
    "huge dimensions": (lambda im: upload(("giant.png", png_bytes(None, width=40_000, height=40_000))),
                        422, "giant.png: its header declares more pixels than the limit of 4,000,000"),
    "pixels over the configured limit": (
        lambda im: upload(("wide.png", png_bytes(np.zeros((10, 400_001, 3), np.uint8)))), 422,
        "wide.png: 400001x10 pixels exceeds the limit of 4,000,000"),
    "file over the byte limit": (lambda im: upload(("big.bmp", b"BM" + bytes(3 * 2**20))), 422,
                                 "big.bmp: 3,145,730 bytes exceeds the limit of 3,145,728"),
    "too many files": (lambda im: upload(*[(f"c{i}.png", im["png"].read_bytes()) for i in range(5)]), 413,
                       "too many files: at most 4 per request"),
    "wrong field name": (lambda im: upload(("cell.png", im["png"].read_bytes()), field="image"), 400,
                         "no file in the form field 'files' (fields sent: image)"),
    "not multipart": (lambda im: {"json": {"files": ["cell.png"]}}, 415,
                      "send the images as multipart/form-data in the field 'files'"),
    "multipart without a boundary": (
        lambda im: {"content": b"--x\r\n", "headers": {"content-type": "multipart/form-data"}}, 400,
        "malformed multipart body: Missing boundary"),
    "no files at all": (lambda im: {"data": {"note": "x"}, "files": {"other": ("", b"", "text/plain")}}, 400,
                        "no file in the form field 'files'"),
}


@pytest.mark.parametrize("case", list(BAD_UPLOADS))
def test_bad_upload_is_a_clear_4xx_and_server_keeps_serving(client: Any, images: dict[str, Path],
                                                            case: str) -> None:
    make, status, message = BAD_UPLOADS[case]
    r = client.post("/api/predict", **make(images))
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/json"
    assert message in r.json()["detail"]
    assert_serves_next(client, images)


def test_body_over_the_total_cap_is_refused_before_parsing(client: Any, images: dict[str, Path]) -> None:
    chunk = b"x" * 2**20
    body_size = LIMITS.max_body + 1

    def stream() -> Any:  # no Content-Length: the cap must hold while streaming
        sent = 0
        while sent < body_size:
            piece = chunk[: body_size - sent]
            sent += len(piece)
            yield piece

    r = client.post("/api/predict", content=stream(),
                    headers={"content-type": "multipart/form-data; boundary=xyz"})
    assert r.status_code == 413
    assert "request body exceeds" in r.json()["detail"]
    assert_serves_next(client, images)


def test_eps_is_never_parsed(client: Any, images: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """EPS is decoded by running Ghostscript on the upload: the server must not even parse one."""
    from PIL import EpsImagePlugin

    eps = io.BytesIO()
    Image.open(images["png"]).convert("RGB").save(eps, format="EPS")
    assert eps.getvalue().startswith(b"%!PS-Adobe")
    parsed: list[int] = []
    real_open = EpsImagePlugin.EpsImageFile._open
    monkeypatch.setattr(EpsImagePlugin.EpsImageFile, "_open",
                        lambda self: (parsed.append(1), real_open(self))[1])
    r = client.post("/api/predict", **upload(("cell.eps", eps.getvalue()), ctype="application/postscript"))
    assert r.status_code == 422
    assert r.json()["detail"] == "no uploaded file could be read as an image: cell.eps: not a readable image"
    assert parsed == []
    assert_serves_next(client, images)


def test_bad_query_parameter_is_a_readable_422(client: Any, images: dict[str, Path]) -> None:
    r = client.post("/api/predict?explain=perhaps", **upload(("c.png", images["png"].read_bytes())))
    assert r.status_code == 422
    assert r.json()["detail"].startswith("query.explain:")


def test_page_static_and_docs_are_served_offline(client: Any) -> None:
    page = client.get("/")
    assert page.status_code == 200 and "Drop cell images here" in page.text
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert page.headers["x-content-type-options"] == "nosniff"
    for asset in ("app.js", "app.css"):
        r = client.get(f"/static/{asset}")
        assert r.status_code == 200
        assert "http://" not in r.text and "https://" not in r.text  # nothing from a CDN
    assert "https://" not in page.text and "http://" not in page.text
    spec = client.get("/openapi.json").json()
    body = spec["paths"]["/api/predict"]["post"]["requestBody"]["content"]["multipart/form-data"]
    assert body["schema"]["properties"]["files"]["type"] == "array"
    assert {"/api/model", "/healthz"} <= set(spec["paths"])
    assert client.get("/docs").status_code == 200
    assert client.get("/static/../../../etc/passwd").status_code == 404


def test_loopback_server_refuses_foreign_host_headers(network_bundle: Path) -> None:  # noqa: F811
    """DNS rebinding: a page on evil.example resolving to 127.0.0.1 must not reach the API."""
    from fastapi.testclient import TestClient

    web = create_app(network_bundle, ServeSettings(allowed_hosts=LOOPBACK_HOSTS))
    with TestClient(web, base_url="http://127.0.0.1:8000") as c:
        assert c.get("/api/model").status_code == 200
        assert c.get("/api/model", headers={"host": "localhost:8000"}).status_code == 200
        assert c.get("/api/model", headers={"host": "evil.example:8000"}).status_code == 400


def test_inference_runs_off_the_event_loop(network_bundle: Path, images: dict[str, Path]) -> None:  # noqa: F811
    """While the model is busy (held inside its call, ``assess``), /healthz still answers."""
    web = create_app(network_bundle, LIMITS)
    bundle = web.state.model.bundle
    release, entered = threading.Event(), threading.Event()
    predict = bundle.assess

    def held_predict(batch: Any) -> Any:
        entered.set()
        assert release.wait(timeout=20), "the model call was never released: /healthz was blocked"
        return predict(batch)

    bundle.assess = held_predict

    async def scenario() -> tuple[int, int]:
        transport = httpx.ASGITransport(app=web)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
            slow = asyncio.create_task(c.post("/api/predict?explain=false",
                                              **upload(("c.png", images["png"].read_bytes()))))
            while not entered.is_set():
                await asyncio.sleep(0.01)
            health = await c.get("/healthz")
            release.set()
            return health.status_code, (await slow).status_code

    assert asyncio.run(scenario()) == (200, 200)


def test_cli_serve_errors_are_one_line(tmp_path: Path, network_bundle: Path) -> None:  # noqa: F811
    runner = CliRunner()
    r = runner.invoke(cli, ["serve", str(tmp_path)])
    assert r.exit_code == 1 and "not a model bundle" in r.output
    r = runner.invoke(cli, ["serve", str(network_bundle), "--max-files", "0"])
    assert r.exit_code == 1 and "--max-files must be at least 1" in r.output
    r = runner.invoke(cli, ["serve", str(network_bundle), "--threads", "-1"])
    assert r.exit_code == 1 and "--threads must be 0" in r.output
    for option, value, message in [("--port", "70000", "--port must be 1 to 65535 (got 70000)"),
                                   ("--max-active", "0", "--max-active must be at least 1 (got 0)"),
                                   ("--max-queue", "-1", "--max-queue must be at least 0 (got -1)"),
                                   ("--max-body", "0", "--max-body must be at least 1 (got 0)")]:
        r = runner.invoke(cli, ["serve", str(network_bundle), option, value])
        assert r.exit_code == 1 and r.output.strip() == f"error: {message}", r.output
    r = runner.invoke(cli, ["serve", str(network_bundle), "--runtime", "tensorflow"])
    assert r.exit_code == 1 and "runtime 'tensorflow' is not one of" in r.output
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        r = runner.invoke(cli, ["serve", str(network_bundle), "--port", str(port)])
    assert r.exit_code == 1 and f"--port {port}: cannot listen there" in r.output


@pytest.fixture(scope="module")
def classical_bundle(synthetic2: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real classical bundle: handcrafted features + logistic regression, saved by the leaderboard."""
    from leukoscope.data.readers import read
    from leukoscope.leaderboard import benchmark, save_best

    lb, rows, X = benchmark(read([synthetic2]), k=3, models=["logistic_regression"], jobs=1)
    return save_best(lb, rows, X, tmp_path_factory.mktemp("classical") / "bundle")


def test_classical_bundle_is_served_with_feature_contributions(classical_bundle: Path,
                                                               images: dict[str, Path]) -> None:
    from fastapi.testclient import TestClient

    bundle = load_bundle(classical_bundle)
    with TestClient(create_app(classical_bundle, LIMITS)) as c:
        card = c.get("/api/model").json()
        assert card["family"] == "classical" and card["explanation"] == "feature contributions"
        r = c.post("/api/predict", **upload(("cell.png", images["png"].read_bytes())))
    assert r.status_code == 200, r.text
    res = r.json()["results"][0]
    want = bundle.predict_proba([load_rgb(images["png"])])[0]
    np.testing.assert_allclose([res["probabilities"][k] for k in bundle.classes], want, atol=1e-5)
    assert res["heatmap"] is None
    assert len(res["features"]) == 6
    assert {f["feature"] for f in res["features"]} <= set(bundle.extractor.names())
    assert res["features"][0]["contribution"] != 0


def test_model_card_answers_when_metrics_json_is_unreadable(network_bundle: Path,  # noqa: F811
                                                            tmp_path: Path) -> None:
    """A corrupt metrics.json was a 500 from /api/model, and the page showed no model card; now the card
    answers without metrics and says why, in its warning (the page shows it) and in ``metrics_error``."""
    import shutil

    from fastapi.testclient import TestClient

    from leukoscope.serve.app import METRICS_UNREADABLE

    bundle = Path(shutil.copytree(network_bundle, tmp_path / "bundle"))
    (bundle / "metrics.json").write_text('{"validation": {"accuracy": 0.9')
    with TestClient(create_app(bundle, LIMITS)) as c:
        r = c.get("/api/model")
    assert r.status_code == 200, r.text
    card = r.json()
    assert card["metrics"] == {} and card["metrics_error"] == METRICS_UNREADABLE
    assert METRICS_UNREADABLE in card["warning"] and card["classes"] == ["all", "hem"]
