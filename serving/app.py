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
  decoded at a reduced scale first: featurize.images.decode_upload).
A decode costs ~3-4 bytes a pixel (JPEG, PNG, WebP) to ~17 (TIFF, BMP: through PIL; a 16-bit image
counts twice), so decoding adds at most about decode_threads x max_pixels x 17 bytes, whatever
the concurrency: 2 x 40 MP x 17 = 1.4 GB with the defaults, +1.38 GB measured for 32 concurrent
40 MP TIFFs (`python benchmarks/serve_load.py --memory`, which tabulates every worst case). The
requests admitted add their bodies and crops (max_queue x max_request_mb at the very worst).
"""

import asyncio
import errno
import json
import socket
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass

import numpy as np

from common.errors import CnnfeatError
from featurize import UnreadableImage

FIELD = "images"
RETRY_AFTER_S = 1  # what a 503 asks a client to wait: a batch on a CPU takes well under a second


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


class BodyTooLarge(Exception):
    pass


class ModelLoopDown(Exception):
    """The model loop has given up: /predict answers 503 and /health fails until a restart."""


class Batcher:
    """Gathers the crops of concurrent requests into batches, run one at a time in a worker thread
    (the model uses every core for one batch; two at once would only compete).

    `supervise` runs the loop. A batch that raises fails its own requests and the loop goes on;
    what escapes a batch all the same (a BaseException from the model, a bug here) fails the batch
    in hand and starts the loop again, RESTARTS times in a row at most (a good batch resets the
    count): the crash after that ends it, and what is still queued is answered 503."""

    RESTARTS = 3

    def __init__(self, predict, settings: ServeSettings):
        self.predict, self.settings = predict, settings
        self.queue: asyncio.Queue = asyncio.Queue()
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="model")
        self.batches = self.images = self.failed_batches = self.restarts = 0
        self.crashes = 0  # in a row: a good batch resets it
        self.stopped: str | None = None  # why the loop gave up
        self.task: asyncio.Task | None = None
        self._in_hand: list = []  # the (crops, future) of the batch being gathered or run

    @property
    def alive(self) -> bool:
        return self.task is not None and not self.task.done()

    def start(self):
        self.task = asyncio.get_running_loop().create_task(self.supervise())

    def stop(self):
        if self.task is not None:
            self.task.cancel()
        self.executor.shutdown(wait=False, cancel_futures=True)

    def submit(self, crops: list[np.ndarray]) -> asyncio.Future:
        """The future of the crops' probabilities. Cancelling it (the client left) drops them from
        their batch, or has their result thrown away if it is already running."""
        if not self.alive:
            raise ModelLoopDown(self.stopped or "the model loop is not running")
        future = asyncio.get_running_loop().create_future()
        self.queue.put_nowait((crops, future))
        return future

    async def supervise(self):
        while True:
            try:
                await self.run()
            except asyncio.CancelledError:
                raise  # the server is stopping
            except BaseException as crash:  # noqa: BLE001  (a crash must not leave requests waiting forever)
                if self._gives_up(crash):
                    return

    def _gives_up(self, crash: BaseException) -> bool:
        reason = f"{type(crash).__name__}: {crash}"
        _fail(self._in_hand, RuntimeError(f"the model loop crashed on this batch ({reason})"))
        self._in_hand, self.crashes = [], self.crashes + 1
        if self.crashes <= self.RESTARTS:
            self.restarts += 1
            return False
        self.stopped = f"the model loop gave up after {self.crashes} crashes in a row (last: {reason})"
        while not self.queue.empty():
            _fail([self.queue.get_nowait()], ModelLoopDown(self.stopped))
        return True

    async def run(self):
        while True:
            self._in_hand = [await self.queue.get()]
            await self._gather(self._in_hand)
            live = [item for item in self._in_hand if not item[1].done()]  # done: cancelled, client gone
            if live:
                await self._run_batch(live)
            self._in_hand = []

    async def _run_batch(self, items):
        """One forward pass; if it raises, its own requests get the error (a 500)."""
        loop = asyncio.get_running_loop()
        try:
            batch = np.stack([crop for crops, _ in items for crop in crops])
            probabilities = await loop.run_in_executor(self.executor, self.predict, batch)
        except Exception as error:  # noqa: BLE001  (whatever the model raises fails this batch alone)
            self.failed_batches += 1
            _fail(items, error)
            return
        self.batches, self.images, self.crashes = self.batches + 1, self.images + len(batch), 0
        offset = 0
        for crops, future in items:
            if not future.done():  # done: its client left while the batch ran
                future.set_result(probabilities[offset:offset + len(crops)])
            offset += len(crops)

    async def _gather(self, items):
        """Add waiting requests to `items` until max_batch images or max_wait_ms have passed."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.max_wait_ms / 1000
        count = len(items[0][0])
        while count < self.settings.max_batch:
            try:
                item = self.queue.get_nowait()  # those already waiting (queued while the model ran)
            except asyncio.QueueEmpty:
                if loop.time() >= deadline:
                    return
                try:
                    item = await asyncio.wait_for(self.queue.get(), deadline - loop.time())
                except asyncio.TimeoutError:  # noqa: UP041  (not TimeoutError before Python 3.11)
                    return
            items.append(item)
            count += len(item[0])


def _fail(items, error: BaseException):
    for _, future in items:
        if not future.done():  # a cancelled future (its client left) takes no exception
            future.set_exception(error)


def create_app(predictor, settings: ServeSettings = ServeSettings()):
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse
    from starlette.concurrency import run_in_threadpool

    batcher = Batcher(predictor.predict, settings)
    decode_slots = asyncio.Semaphore(settings.decode_threads)

    @asynccontextmanager
    async def lifespan(app):
        batcher.start()
        yield
        batcher.stop()

    docs = settings.docs  # off by default: Swagger's pages load their scripts from a CDN
    app = FastAPI(title="cnnfeat", lifespan=lifespan, docs_url="/docs" if docs else None,
                  redoc_url="/redoc" if docs else None, openapi_url="/openapi.json" if docs else None)
    admission = Admission(BodyLimit(app, settings), settings)

    def error(status: int, message: str, close: bool = False):
        # close: the client may still be sending a body we will not read; end the connection
        return JSONResponse({"error": message}, status_code=status, headers={"connection": "close"} if close else None)

    @app.get("/health")
    async def health():
        body = {"status": "ok" if batcher.alive else "down", "model_loop": "running" if batcher.alive else "stopped",
                "batches": batcher.batches, "images": batcher.images, "failed_batches": batcher.failed_batches,
                "restarts": batcher.restarts, "in_progress": admission.active}
        if not batcher.alive:
            body["error"] = batcher.stopped or "the model loop is not running"
        return JSONResponse(body, status_code=200 if batcher.alive else 503)

    @app.get("/model")
    async def model():
        return {**predictor.info, "serving": asdict(settings)}

    async def prepare(upload):
        """The crop of one upload, or why it cannot be used (a str). Its bytes are read only once a
        decode slot is free: a request waiting for one holds no pixels and no copy of its file."""
        if not hasattr(upload, "read"):
            return f"not a file: send images as files in field '{FIELD}'"
        async with decode_slots:
            return await run_in_threadpool(_decode, predictor, await upload.read(), settings.max_pixels)

    @app.post("/predict")
    async def predict(request: Request):
        if not request.headers.get("content-type", "").startswith("multipart/form-data"):
            return error(415, f"send the images as multipart/form-data, field '{FIELD}'")
        try:
            form = await request.form(max_files=settings.max_images, max_fields=settings.max_images)
        except BodyTooLarge:
            return error(413, f"request larger than {settings.max_request_mb:g} MB", close=True)
        except Exception as failure:  # noqa: BLE001  (a malformed multipart body, or too many parts)
            return error(400, f"could not read the multipart body: {getattr(failure, 'detail', failure)}")
        uploads = form.getlist(FIELD)
        if not uploads:
            return error(400, f"no field '{FIELD}' (got: {', '.join(sorted(set(form.keys()))) or 'none'}); "
                              f"send one or more files as multipart field '{FIELD}'")
        names = [getattr(upload, "filename", None) for upload in uploads]
        crops = [await prepare(upload) for upload in uploads]
        good = [crop for crop in crops if not isinstance(crop, str)]
        probabilities = iter(())
        if good:
            try:
                future = batcher.submit(good)
                if not await _answered(future, request.receive):
                    return error(499, "the client closed the connection")  # nobody reads this
                probabilities = iter(future.result())
            except ModelLoopDown as down:
                return error(503, str(down))
            except Exception as failure:  # noqa: BLE001  (the model failed on this batch: a 500 for it)
                return error(500, f"the model failed on this batch ({type(failure).__name__}: {failure})")
        results = [_entry(name, crop if isinstance(crop, str) else next(probabilities), predictor.classes)
                   for name, crop in zip(names, crops)]
        return JSONResponse({"predictions": results}, status_code=200 if good else 422)

    return admission


async def _answered(future: asyncio.Future, receive) -> bool:
    """Wait for `future`; if the client hangs up first, cancel it (its batch drops it) and say so."""
    hangup = asyncio.ensure_future(_hangup(receive))
    try:
        await asyncio.wait({future, hangup}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        hangup.cancel()
        if not future.done():  # the client left, or the server is stopping
            future.cancel()
    return not future.cancelled()


async def _hangup(receive):
    """Returns once the client disconnects (the body is read by now: nothing else comes)."""
    while (await receive())["type"] != "http.disconnect":
        pass


def _decode(predictor, data, max_pixels: int):
    try:
        return predictor.prepare(data, max_pixels)
    except UnreadableImage as reason:
        return str(reason)


def _entry(name, outcome, classes) -> dict:
    if isinstance(outcome, str):
        return {"filename": name, "error": outcome}
    best = int(np.argmax(outcome))
    return {"filename": name, "class": classes[best], "probability": float(outcome[best]),
            "probabilities": {c: float(p) for c, p in zip(classes, outcome)}}


class Admission:
    """ASGI middleware: at most `max_queue` /predict requests in the server at once (reading,
    decoding, waiting for or in the model). One more is answered 503 with Retry-After at once,
    before its body is read: a burst costs the server a little CPU, not memory."""

    def __init__(self, app, settings: ServeSettings):
        self.app, self.limit, self.active = app, settings.max_queue, 0

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"] != "/predict":
            return await self.app(scope, receive, send)
        if self.active >= self.limit:
            return await _send_json(send, 503, {"error": f"server busy: {self.limit} requests in progress "
                                                         f"(--max-queue); retry in {RETRY_AFTER_S} s"},
                                    [(b"retry-after", str(RETRY_AFTER_S).encode())])
        self.active += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.active -= 1


class BodyLimit:
    """ASGI middleware: refuse a body over the limit from its Content-Length, before reading it;
    a streamed body raises BodyTooLarge (answered 413 by the endpoint) once it passes the limit."""

    def __init__(self, app, settings: ServeSettings):
        self.app, self.limit, self.settings = app, settings.max_request_bytes, settings

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.limit):
            status = 413 if declared.isdigit() else 400
            message = (f"request larger than {self.settings.max_request_mb:g} MB" if status == 413
                       else "malformed Content-Length")
            return await _send_json(send, status, {"error": message})
        received = 0

        async def limited():
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.limit:
                raise BodyTooLarge
            return message

        await self.app(scope, limited, send)


async def _send_json(send, status: int, body: dict, headers: list = ()):
    payload = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode()),
                            (b"connection", b"close"), *headers]})
    await send({"type": "http.response.body", "body": payload})


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
        why = {errno.EADDRINUSE: "the address is already in use (another server?): stop it, or choose another "
                                 "--port (0: any free one)",
               errno.EACCES: "permission denied (ports below 1024 need privileges)",
               errno.EADDRNOTAVAIL: "not an address of this machine"}.get(error.errno, error.strerror)
        raise CnnfeatError(f"cannot listen on {host}:{port}: {why}") from None
    return sock


def serve(model_path, host: str = "127.0.0.1", port: int = 8000, settings: ServeSettings = ServeSettings(),
          device: str = "auto", log=print):
    """Take the port, load the model (errors surface here, before the server starts), then serve
    until stopped."""
    from importlib.util import find_spec

    # python-multipart's module is python_multipart since 0.0.13, multipart before
    if not (find_spec("fastapi") and find_spec("uvicorn") and (find_spec("python_multipart") or find_spec("multipart"))):
        raise CnnfeatError("serve needs FastAPI and uvicorn: pip install -e '.[serve]'")
    import uvicorn

    from .predictors import load_predictor

    with listen(host, port) as sock:
        predictor = load_predictor(model_path, device)
        app = create_app(predictor, settings)
        where = f"[{host}]" if ":" in host else host
        log(f"serving {model_path} ({len(predictor.classes)} classes, {predictor.info['engine']}) on "
            f"http://{where}:{sock.getsockname()[1]}  (POST /predict, GET /health, GET /model"
            f"{', GET /docs' if settings.docs else ''}; Ctrl-C stops)")
        uvicorn.Server(uvicorn.Config(app, log_level="warning")).run(sockets=[sock])
