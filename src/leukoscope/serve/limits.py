"""Limits of the web server, importable without FastAPI (the CLI reads its defaults here)."""

from __future__ import annotations

from dataclasses import dataclass

from leukoscope.errors import ConfigError

_MULTIPART_OVERHEAD = 4096  # per-part headers and boundary, generous
#: Host headers a server bound to loopback answers; anything else is a DNS-rebinding attempt.
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1", "[::1]")


@dataclass(frozen=True)
class ServeSettings:
    """Upload limits (defaults fit single-cell crops, a few hundred pixels and tens of kB, with room),
    the Host headers answered (``("*",)``: any) and the runtime network bundles are loaded with."""

    max_files: int = 32
    max_bytes: int = 10 * 2**20
    max_pixels: int = 16_000_000
    allowed_hosts: tuple[str, ...] = ("*",)
    #: network bundles: torch, onnx, onnx-int8, or auto (ONNX when a current export is in the bundle)
    runtime: str = "auto"

    def __post_init__(self) -> None:
        for name, value in self.limits().items():
            if value < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be at least 1 (got {value})")

    def limits(self) -> dict[str, int]:
        return {"max_files": self.max_files, "max_bytes": self.max_bytes, "max_pixels": self.max_pixels}

    @property
    def max_body(self) -> int:
        """Largest request body accepted: every file at its limit plus multipart framing."""
        return self.max_files * (self.max_bytes + _MULTIPART_OVERHEAD) + 65536
