"""Hostile but cheap requests against a real ``leukoscope serve`` process: each is refused early
(413, 503) or shrugged off (a dropped upload), costs the server little, and the server goes on."""

from __future__ import annotations

import base64
import io
import json
import select
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from leukoscope.serve.background import Server, serving
from serve_support import network_bundle, sample_images  # noqa: F401 - the fixture is used by name

MAX_BODY = 2 * 2**20
MAX_REQUEST_PIXELS = 20_000_000
BOUNDARY = "leukoscope-test"


@pytest.fixture(scope="module")
def server(network_bundle: Path) -> Iterator[Server]:  # noqa: F811
    # one request at a time and one waiting, so two held uploads fill the line
    with serving(network_bundle, "--max-body", str(MAX_BODY), "--max-request-pixels", str(MAX_REQUEST_PIXELS),
                 "--max-active", "1", "--max-queue", "1", timeout=300) as running:
        yield running


@pytest.fixture(scope="module")
def cell(data: Path) -> bytes:
    return sample_images(data)["png"].read_bytes()


def part_head(name: str = "cell.png") -> bytes:
    return (f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="files"; filename="{name}"\r\n'
            "Content-Type: image/png\r\n\r\n").encode()


def multipart(content: bytes) -> bytes:
    return part_head() + content + f"\r\n--{BOUNDARY}--\r\n".encode()


def connect(server: Server) -> socket.socket:
    return socket.create_connection(("127.0.0.1", int(server.url.rsplit(":", 1)[1])), timeout=30)


def request_head(length: int | None, path: str = "/api/predict?explain=false") -> bytes:
    size = f"Content-Length: {length}" if length is not None else "Transfer-Encoding: chunked"
    return (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\n{size}\r\n\r\n").encode()


def read_response(s: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """Status, headers and body of one HTTP/1.1 response with a Content-Length."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(65536)
        assert chunk, f"connection closed before a response: {data!r}"
        data += chunk
    head, body = data.split(b"\r\n\r\n", 1)
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
    while len(body) < int(headers["content-length"]):
        chunk = s.recv(65536)
        assert chunk, "connection closed inside the response body"
        body += chunk
    return int(lines[0].split()[1]), headers, body


def server_errors(server: Server) -> list[str]:
    return [line for line in server.output().splitlines()
            if any(w in line for w in ("Traceback", "internal error", "ERROR", "Exception"))]


def assert_still_serves(server: Server, cell: bytes) -> None:
    r = httpx.post(f"{server.url}/api/predict?explain=false", files=[("files", ("c.png", cell, "image/png"))],
                   timeout=60)
    assert r.status_code == 200, r.text
    assert server_errors(server) == []


@pytest.fixture(scope="module")
def flat() -> bytes:
    """A black 4000x4000 PNG: 47 kB to send, 48 MB decoded."""
    out = io.BytesIO()
    Image.fromarray(np.zeros((4000, 4000, 3), np.uint8)).save(out, format="PNG")
    assert len(out.getvalue()) < 50_000
    return out.getvalue()


def test_many_flat_large_pngs_are_refused_from_their_headers(server: Server, flat: bytes,
                                                             cell: bytes) -> None:
    """16 flat 4000x4000 PNGs are 0.75 MB to send and would be 768 MB decoded: 413, nothing decoded."""
    before = server.peak_rss()
    start = time.monotonic()
    r = httpx.post(f"{server.url}/api/predict",
                   files=[("files", (f"flat{i}.png", flat, "image/png")) for i in range(16)], timeout=300)
    elapsed = time.monotonic() - start
    assert r.status_code == 413, r.text[:300]
    assert r.json()["detail"] == ("the images in this request total 256,000,000 pixels, over the limit of "
                                  "20,000,000 per request; send fewer or smaller images")
    assert server.peak_rss() - before < 100 * 2**20  # one decoded image alone is 48 MB
    assert elapsed < 10, f"{elapsed:.1f} s"
    assert_still_serves(server, cell)


def test_largest_image_admitted_is_explained_cheaply(server: Server, flat: bytes, cell: bytes) -> None:
    """Grad-CAM blends at the image's size in float64: 1.7 GB more at 4000x4000, were it not run on
    a 512-pixel copy."""
    before = server.peak_rss()
    r = httpx.post(f"{server.url}/api/predict", files=[("files", ("flat.png", flat, "image/png"))],
                   timeout=300)
    assert r.status_code == 200, r.text[:300]
    res = r.json()["results"][0]
    assert res["error"] is None and res["label"] in ("all", "hem", "unfamiliar")
    heat = Image.open(io.BytesIO(base64.b64decode(res["heatmap"].split(",", 1)[1])))
    assert heat.size == (256, 256)
    assert server.peak_rss() - before < 500 * 2**20
    assert_still_serves(server, cell)


def test_declared_body_over_the_cap_is_refused_before_it_is_sent(server: Server, cell: bytes) -> None:
    with connect(server) as s:
        s.sendall(request_head(300_000_000))  # 300 MB announced, not one byte of it sent
        status, headers, body = read_response(s)
        assert s.recv(1) == b""  # and the server hangs up rather than wait for the body
    assert status == 413
    assert headers["connection"] == "close" and headers["x-content-type-options"] == "nosniff"
    assert json.loads(body) == {"detail": "request body exceeds the limit of 2,097,152 bytes; send fewer "
                                          "or smaller files"}
    assert_still_serves(server, cell)


def test_streamed_body_over_the_cap_is_cut_off_while_it_arrives(server: Server, cell: bytes) -> None:
    """Chunked, with no Content-Length: the server answers once it has read the cap, and closes."""
    piece = b"x" * 2**16
    chunk = f"{len(piece):x}\r\n".encode() + piece + b"\r\n"
    sent = 0
    with connect(server) as s:
        s.sendall(request_head(None) + f"{len(part_head()):x}\r\n".encode() + part_head() + b"\r\n")
        s.setblocking(False)
        while sent < 300 * 2**20:  # what the client would send if nothing stopped it
            readable, writable, _ = select.select([s], [s], [], 30)
            if readable:
                break
            if writable:
                try:
                    sent += s.send(chunk)
                except (BlockingIOError, BrokenPipeError, ConnectionResetError):
                    break
        s.setblocking(True)
        status, headers, body = read_response(s)
    assert status == 413 and headers["connection"] == "close"
    assert json.loads(body)["detail"].startswith("request body exceeds the limit of 2,097,152 bytes")
    # the cap plus what sat in the two sockets' buffers, far short of the 300 MB on offer
    assert MAX_BODY < sent < 32 * 2**20, sent
    assert_still_serves(server, cell)


def test_more_clients_than_places_get_503_with_retry_after(server: Server, cell: bytes) -> None:
    """One runs (its upload held open half-sent), one waits, the third is turned away at once;
    /healthz is not in the line; the two held requests are answered once their bodies arrive."""
    body = multipart(cell)
    held = [connect(server), connect(server)]
    try:
        for s in held:
            s.sendall(request_head(len(body)) + body[: len(body) // 2])
            time.sleep(1.0)  # the server takes it in: the first into the place, the second into the queue
        start = time.monotonic()
        r = httpx.post(f"{server.url}/api/predict", files=[("files", ("c.png", cell, "image/png"))],
                       timeout=60)
        turned_away_s = time.monotonic() - start
        assert r.status_code == 503, r.text
        assert int(r.headers["retry-after"]) >= 1
        assert r.json()["detail"].startswith("server busy: 1 requests running and 1 waiting; retry in")
        assert turned_away_s < 5
        assert httpx.get(f"{server.url}/healthz", timeout=5).status_code == 200
        for s in held:
            s.sendall(body[len(body) // 2:])
        for s in held:
            status, _, answer = read_response(s)
            assert status == 200, answer
            assert json.loads(answer)["results"][0]["error"] is None
    finally:
        for s in held:
            s.close()
    assert_still_serves(server, cell)


def test_dropped_upload_is_one_log_line(server: Server, cell: bytes) -> None:
    lines_before = len(server.output().splitlines())
    with connect(server) as s:
        s.sendall(request_head(1_000_000) + part_head() + b"\0" * 100_000)
        time.sleep(0.5)
    deadline = time.monotonic() + 30
    while len(server.output().splitlines()) == lines_before and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(0.5)  # anything else it would print comes with it
    new = server.output().splitlines()[lines_before:]
    assert len(new) == 1, new
    received = len(part_head()) + 100_000
    assert new[0].startswith("127.0.0.1:") and new[0].endswith(
        f"hung up during POST /api/predict after {received:,} of 1,000,000 bytes of its upload")
    assert_still_serves(server, cell)


def test_stalled_uploads_get_408_and_free_their_places(network_bundle: Path, cell: bytes) -> None:  # noqa: F811
    """Two clients that stop sending mid-upload hold the only place and the queue for ``--body-timeout``
    seconds, not for as long as they keep their sockets open: each gets 408, and a real call then runs."""
    with serving(network_bundle, "--max-active", "1", "--max-queue", "1", "--body-timeout", "2",
                 timeout=300) as running:
        body = multipart(cell)
        held = [connect(running), connect(running)]
        try:
            for s in held:
                s.sendall(request_head(len(body)) + body[: len(body) // 2])
            start = time.monotonic()
            for s in held:
                status, headers, answer = read_response(s)
                assert status == 408 and headers["connection"] == "close"
                assert json.loads(answer)["detail"] == "request body stalled: no bytes for 2 s; send it again"
            assert time.monotonic() - start < 15
        finally:
            for s in held:
                s.close()
        assert_still_serves(running, cell)
