"""Upload limits of the web server, importable without FastAPI (the CLI reads its defaults here)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from leukoscope.errors import ConfigError

_MULTIPART_OVERHEAD = 4096  # per-part headers and boundary, generous


@dataclass(frozen=True)
class ServeSettings:
    """Upload limits. Defaults fit single-cell crops (a few hundred pixels, tens of kB) with room."""

    max_files: int = 32
    max_bytes: int = 10 * 2**20
    max_pixels: int = 16_000_000

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            if value < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be at least 1 (got {value})")

    @property
    def max_body(self) -> int:
        """Largest request body accepted: every file at its limit plus multipart framing."""
        return self.max_files * (self.max_bytes + _MULTIPART_OVERHEAD) + 65536
