"""`serve`: a saved or exported model over HTTP (FastAPI + uvicorn).

POST /predict takes multipart field `images` (one or more files) and answers one JSON entry per
image. Images of requests that arrive together are run as one batch: a request waits at most
`max_wait_ms` for others, up to `max_batch` images. One model loop runs the batches, supervised:
a batch that raises answers 500 to its own requests only, a loop that crashes starts again, and
GET /health fails (503) once it has given up. A request whose client hangs up is dropped from its
batch.

What the server holds is bounded:
- a body over `max_request_mb` is refused (413) from its Content-Length, or as soon as a streamed
  body passes the limit, before it is read whole;
- at most `max_queue` /predict requests are in the server at once (reading, decoding, waiting for
  or in the model); one more is answered 503 with Retry-After before its body is read;
- at most `decode_threads` uploads are read into memory and decoded at once, and one that would
  decode to more than `max_pixels` is refused from its header (a JPEG far larger than the crop is
  decoded at a reduced scale first: featurize.decode_pil).
A decode (through PIL) costs ~8 bytes a pixel (JPEG, PNG, WebP: PIL's 4-byte RGB and its upright
copy) to ~17 (TIFF, BMP; a 16-bit image counts twice), so decoding adds at most about
decode_threads x max_pixels x 17 bytes, whatever the concurrency: 2 x 40 MP x 17 = 1.4 GB with the
defaults, +1.38 GB measured for 32 concurrent 40 MP TIFFs (`python benchmarks/serve_load.py
--memory`, which tabulates every worst case). The requests admitted add their bodies and crops
(max_queue x max_request_mb at the very worst).

The pieces: serving.settings (what serve is told), serving.predictors (what runs the model),
serving.batcher (the supervised model loop), serving.limits (the admission and body-size
middlewares), serving.routes (the endpoints). This module wires them (`create_app`), takes the
port (`listen`) and runs the server (`serve`).
"""

import asyncio
import errno
import socket
from contextlib import asynccontextmanager

from common.errors import CnnfeatError

from .batcher import Batcher
from .limits import Admission, BodyLimit
from .settings import ServeSettings


def create_app(predictor, settings: ServeSettings | None = None, batcher: Batcher | None = None):
    """The ASGI app: FastAPI's endpoints (serving.routes) behind the admission and body-size limits.
    `batcher`: the model loop to run predictions in (default: a new one of `predictor.predict`)."""
    from fastapi import FastAPI

    from . import routes

    settings = settings or ServeSettings()
    docs = settings.docs  # off by default: Swagger's pages load their scripts from a CDN
    app = FastAPI(
        title="cnnfeat",
        lifespan=_lifespan,
        docs_url="/docs" if docs else None,
        redoc_url="/redoc" if docs else None,
        openapi_url="/openapi.json" if docs else None,
    )
    app.add_api_route("/health", routes.health, methods=["GET"])
    app.add_api_route("/model", routes.model, methods=["GET"])
    app.add_api_route("/predict", routes.predict, methods=["POST"])
    served = routes.Served(
        predictor, settings, batcher or Batcher(predictor.predict, settings), asyncio.Semaphore(settings.decode_threads)
    )
    app.state.served = served
    served.admission = Admission(BodyLimit(app, settings), settings)
    return served.admission


@asynccontextmanager
async def _lifespan(app):
    """The model loop runs while the server does."""
    batcher = app.state.served.batcher
    batcher.start()
    yield
    batcher.stop()


def listen(host: str, port: int) -> socket.socket:
    """A socket bound to host:port and listening, or a CnnfeatError saying why not: checked before
    the model loads and before anything is printed, so a port in use is one clear error."""
    try:
        family, _, _, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    except socket.gaierror as error:
        raise CnnfeatError(f"--host {host}: not an address to listen on ({error.strerror})") from None
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn: a port in TIME_WAIT is free
    try:
        sock.bind(address)
        sock.listen(2048)  # reserved from here on: clients that come while the model loads wait
    except OSError as error:
        sock.close()
        why = {
            errno.EADDRINUSE: "the address is already in use (another server?): stop it, or choose another "
            "--port (0: any free one)",
            errno.EACCES: "permission denied (ports below 1024 need privileges)",
            errno.EADDRNOTAVAIL: "not an address of this machine",
        }.get(error.errno, error.strerror)
        raise CnnfeatError(f"cannot listen on {host}:{port}: {why}") from None
    return sock


def serve(
    model_path,
    host: str = "127.0.0.1",
    port: int = 8000,
    settings: ServeSettings | None = None,
    device: str = "auto",
    log=print,
):
    """Take the port, load the model (errors surface here, before the server starts), then serve
    until stopped."""
    from importlib.util import find_spec

    settings = settings or ServeSettings()
    # python-multipart's module is python_multipart since 0.0.13, multipart before
    multipart = find_spec("python_multipart") or find_spec("multipart")
    if not (find_spec("fastapi") and find_spec("uvicorn") and multipart):
        raise CnnfeatError("serve needs FastAPI and uvicorn: pip install -e '.[serve]'")
    import uvicorn

    from .predictors import load_predictor

    with listen(host, port) as sock:
        predictor = load_predictor(model_path, device)
        app = create_app(predictor, settings)
        where = f"[{host}]" if ":" in host else host
        log(
            f"serving {model_path} ({len(predictor.classes)} classes, {predictor.info['engine']}) on "
            f"http://{where}:{sock.getsockname()[1]}  (POST /predict, GET /health, GET /model"
            f"{', GET /docs' if settings.docs else ''}; Ctrl-C stops)"
        )
        uvicorn.Server(uvicorn.Config(app, log_level="warning")).run(sockets=[sock])
