"""``leukoscope serve BUNDLE``: the web page and JSON API for one model."""

from __future__ import annotations

import ipaddress
import socket
from typing import Annotated

import typer

from leukoscope.cli.app import app, console, err_console
from leukoscope.cli.options import BundleArg, RuntimeOpt
from leukoscope.errors import ConfigError
from leukoscope.serve.limits import LOOPBACK_HOSTS, ServeSettings

_D = ServeSettings()
#: The help panel of the request limits.
LIMITS = "Limits"


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def _check_port_free(host: str, port: int) -> None:
    """Fail with one line naming the option, instead of uvicorn's log and exit, if the port is taken."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as e:
            raise ConfigError(f"--host {host} --port {port}: cannot listen there ({e.strerror})") from None


@app.command("serve")
def serve_cmd(
    bundle: BundleArg,
    host: Annotated[str, typer.Option(help="Address to bind; the default serves this machine only.")]
    = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port, 1 to 65535.")] = 8000,
    max_files: Annotated[int, typer.Option("--max-files", help="Most files per request.",
                                           rich_help_panel=LIMITS)] = _D.max_files,
    max_bytes: Annotated[int, typer.Option("--max-bytes", help="Largest file accepted, in bytes.",
                                           rich_help_panel=LIMITS)] = _D.max_bytes,
    max_pixels: Annotated[int, typer.Option("--max-pixels", help="Largest image accepted, in pixels "
                                            "(decompression-bomb guard).", rich_help_panel=LIMITS)
                          ] = _D.max_pixels,
    max_body: Annotated[int, typer.Option("--max-body", help="Largest request body, in bytes; counted "
                                          "as it arrives, and the rest is never read.",
                                          rich_help_panel=LIMITS)] = _D.max_body,
    max_request_pixels: Annotated[int, typer.Option(
        "--max-request-pixels", help="Most pixels of all images in one request together, read from "
        "their headers before any is decoded.", rich_help_panel=LIMITS)] = _D.max_request_pixels,
    max_active: Annotated[int, typer.Option("--max-active", help="Predict requests handled at once.",
                                            rich_help_panel=LIMITS)] = _D.max_active,
    max_queue: Annotated[int, typer.Option("--max-queue", help="Predict requests that may wait for a "
                                           "place; any more get 503 with Retry-After.",
                                           rich_help_panel=LIMITS)] = _D.max_queue,
    body_timeout: Annotated[float, typer.Option("--body-timeout", help="Seconds a request body may go "
                                                "without a byte before the request gets 408 and its place "
                                                "is freed.", rich_help_panel=LIMITS)] = _D.body_timeout,
    runtime: RuntimeOpt = _D.runtime,
    threads: Annotated[int, typer.Option(help="PyTorch threads per model call (0: one per core). One "
                                         "leaves the other cores to decoding and HTTP, and avoids "
                                         "thread oversubscription on a busy machine.")] = 1,
) -> None:
    """Serve a page to drop cell images on and see each call, its probabilities and heat map."""
    import uvicorn

    from leukoscope.serve.app import create_app

    # Bound to loopback, only loopback Host headers are answered: a web page cannot reach the API by
    # DNS rebinding. Bound to a network address, any Host is, since the machine's names are unknown.
    hosts = LOOPBACK_HOSTS if _loopback(host) else ("*",)
    settings = ServeSettings(max_files=max_files, max_bytes=max_bytes, max_pixels=max_pixels,
                             max_body=max_body, max_request_pixels=max_request_pixels,
                             max_active=max_active, max_queue=max_queue, body_timeout=body_timeout,
                             allowed_hosts=hosts, runtime=runtime)
    if not 1 <= port <= 65535:
        raise ConfigError(f"--port must be 1 to 65535 (got {port})")
    if threads < 0:
        raise ConfigError(f"--threads must be 0 (one per core) or more, got {threads}")
    web = create_app(bundle, settings)
    _check_port_free(host, port)
    if threads:  # process-wide, so only once nothing can fail before serving
        import torch

        torch.set_num_threads(threads)
    if not _loopback(host):
        err_console.print(f"[yellow]warning:[/] listening on {host}: other machines can reach this "
                          "server; it has no login. Use the default 127.0.0.1 unless you mean it.")
    shown = f"[{host}]" if ":" in host else host
    console.print(f"leukoscope: serving [bold]{web.state.model.name}[/] from {bundle} "
                  f"({type(web.state.model.bundle).__name__})\n"
                  f"  page  http://{shown}:{port}/\n  API   http://{shown}:{port}/docs "
                  "(Swagger UI needs internet; /openapi.json always works)\n  Ctrl-C to stop")
    uvicorn.run(web, host=host, port=port, log_level="warning", access_log=False)
