"""What `serve` is told: its batching and its limits (the options of `cnnfeat serve`)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ServeSettings:
    max_batch: int = 16  # images per forward pass; 1 runs every request alone
    max_wait_ms: float = 2.0  # how long a request waits for others to share its batch
    max_request_mb: float = 20.0
    max_images: int = 64  # files per request
    # 40 MP: an 8K frame (33 MP) or a 36 MP camera's export still passes, and one decode stays under
    # ~150 MB (PNG) / ~700 MB (TIFF); a JPEG of any size Pillow opens passes, decoded reduced.
    max_pixels: int = 40_000_000
    max_queue: int = 32  # /predict requests in the server at once; one more gets 503 + Retry-After
    decode_threads: int = 2  # uploads decoded at once: with max_pixels, what bounds decoding's memory
    docs: bool = False  # /docs, /redoc and /openapi.json

    @property
    def max_request_bytes(self) -> int:
        return int(self.max_request_mb * 2**20)
