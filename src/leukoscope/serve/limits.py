"""Limits of the web server, importable without FastAPI (the CLI reads its defaults here)."""

from __future__ import annotations

from dataclasses import dataclass

from leukoscope.errors import ConfigError

#: Host headers a server bound to loopback answers; anything else is a DNS-rebinding attempt.
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1", "[::1]")


@dataclass(frozen=True)
class ServeSettings:
    """Upload limits (defaults fit single-cell crops, a few hundred pixels and tens of kB, with room),
    how many requests run and wait at once, the Host headers answered (``("*",)``: any) and the
    runtime network bundles are loaded with.

    Together they bound memory: at most ``max_active`` requests each hold a body of ``max_body``
    bytes and ``3 * max_request_pixels`` bytes of decoded images (about 0.3 GB with the defaults,
    on top of the model); waiting requests hold only their connection.
    """

    #: files of one request: /api/patient takes one patient's cells at once (DeepAPL's hold up to ~40)
    max_files: int = 64
    max_bytes: int = 10 * 2**20
    max_pixels: int = 16_000_000
    #: bytes of one request body, counted as they arrive
    max_body: int = 64 * 2**20
    #: decoded pixels of one request, summed from the image headers before anything is decoded
    max_request_pixels: int = 32_000_000
    #: requests classified at once; ``max_queue`` more wait, and the rest get 503 with Retry-After
    max_active: int = 2
    max_queue: int = 16
    #: seconds a request body may go without a byte: a client that stops sending mid-upload gets 408
    #: and gives its place back (without it, ``max_active`` idle sockets would stall every call)
    body_timeout: float = 30.0
    allowed_hosts: tuple[str, ...] = ("*",)
    #: network bundles: torch, onnx, onnx-int8, or auto (ONNX when a current export is in the bundle)
    runtime: str = "auto"

    def __post_init__(self) -> None:
        least = {**dict.fromkeys(self.limits(), 1), "max_active": 1, "max_queue": 0}
        for name, low in least.items():
            value = getattr(self, name)
            if value < low:
                raise ConfigError(f"--{name.replace('_', '-')} must be at least {low} (got {value})")
        if not self.body_timeout > 0:
            raise ConfigError(f"--body-timeout must be more than 0 seconds (got {self.body_timeout})")

    def limits(self) -> dict[str, int]:
        """What one request may send: the page batches by these, and the model card shows them."""
        return {"max_files": self.max_files, "max_bytes": self.max_bytes, "max_pixels": self.max_pixels,
                "max_body": self.max_body, "max_request_pixels": self.max_request_pixels}
