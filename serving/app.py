"""`serve`: a saved or exported model over HTTP (FastAPI + uvicorn).

POST /predict takes multipart field `images` (one or more files) and answers one JSON entry per
image. Images of requests that arrive together are run as one batch: a request waits at most
`max_wait_ms` for others, up to `max_batch` images. A body over `max_request_mb` is refused from
its Content-Length (or, when it is streamed, as soon as it passes the limit) before it is read whole.
"""

import asyncio
import json
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass

import numpy as np

from featurize.images import UnreadableImage

FIELD = "images"


@dataclass(frozen=True)
class ServeSettings:
    max_batch: int = 16  # images per forward pass; 1 runs every request alone
    max_wait_ms: float = 2.0  # how long a request waits for others to share its batch
    max_request_mb: float = 20.0
    max_images: int = 64  # files per request

    @property
    def max_request_bytes(self) -> int:
        return int(self.max_request_mb * 2**20)


class BodyTooLarge(Exception):
    pass


class Batcher:
    """Gathers the crops of concurrent requests into batches, run one at a time in a worker thread
    (the model uses every core for one batch; two at once would only compete)."""

    def __init__(self, predict, settings: ServeSettings):
        self.predict, self.settings = predict, settings
        self.queue: asyncio.Queue = asyncio.Queue()
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="model")
        self.batches = self.images = 0

    async def submit(self, crops: list[np.ndarray]) -> np.ndarray:
        future = asyncio.get_running_loop().create_future()
        await self.queue.put((crops, future))
        return await future

    async def run(self):
        loop = asyncio.get_running_loop()
        while True:
            items = [await self.queue.get()]
            await self._gather(items)
            batch = np.stack([crop for crops, _ in items for crop in crops])
            try:
                probabilities = await loop.run_in_executor(self.executor, self.predict, batch)
            except Exception as error:  # the model failed on this batch: its requests get a 500
                for _, future in items:
                    future.set_exception(error)
                continue
            self.batches, self.images = self.batches + 1, self.images + len(batch)
            offset = 0
            for crops, future in items:
                if not future.cancelled():  # the client went away
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
                except asyncio.TimeoutError:
                    return
            items.append(item)
            count += len(item[0])


def create_app(predictor, settings: ServeSettings = ServeSettings()):
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse
    from starlette.concurrency import run_in_threadpool

    batcher = Batcher(predictor.predict, settings)

    @asynccontextmanager
    async def lifespan(app):
        task = asyncio.create_task(batcher.run())
        yield
        task.cancel()
        batcher.executor.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(title="cnnfeat", lifespan=lifespan)

    def error(status: int, message: str, close: bool = False):
        # close: the client may still be sending a body we will not read; end the connection
        return JSONResponse({"error": message}, status_code=status, headers={"connection": "close"} if close else None)

    @app.get("/health")
    async def health():
        return {"status": "ok", "batches": batcher.batches, "images": batcher.images}

    @app.get("/model")
    async def model():
        return {**predictor.info, "serving": asdict(settings)}

    @app.post("/predict")
    async def predict(request: Request):
        if not request.headers.get("content-type", "").startswith("multipart/form-data"):
            return error(415, f"send the images as multipart/form-data, field '{FIELD}'")
        try:
            form = await request.form(max_files=settings.max_images, max_fields=settings.max_images)
        except BodyTooLarge:
            return error(413, f"request larger than {settings.max_request_mb:g} MB", close=True)
        except Exception as failure:  # a malformed multipart body, or too many parts
            return error(400, f"could not read the multipart body: {getattr(failure, 'detail', failure)}")
        uploads = form.getlist(FIELD)
        if not uploads:
            return error(400, f"no field '{FIELD}' (got: {', '.join(sorted(set(form.keys()))) or 'none'}); "
                              f"send one or more files as multipart field '{FIELD}'")
        names, crops = [], []
        for upload in uploads:
            names.append(getattr(upload, "filename", None))
            data = await upload.read() if hasattr(upload, "read") else None
            crops.append(await run_in_threadpool(_prepare, predictor, data))
        good = [crop for crop in crops if not isinstance(crop, str)]
        probabilities = iter(await batcher.submit(good)) if good else iter(())
        results = [_entry(name, crop if isinstance(crop, str) else next(probabilities), predictor.classes)
                   for name, crop in zip(names, crops)]
        return JSONResponse({"predictions": results}, status_code=200 if good else 422)

    return BodyLimit(app, settings)


def _prepare(predictor, data):
    """The crop of one upload, or the reason it cannot be used (a str)."""
    if data is None:
        return f"not a file: send images as files in field '{FIELD}'"
    try:
        return predictor.prepare(data)
    except UnreadableImage as reason:
        return str(reason)


def _entry(name, outcome, classes) -> dict:
    if isinstance(outcome, str):
        return {"filename": name, "error": outcome}
    best = int(np.argmax(outcome))
    return {"filename": name, "class": classes[best], "probability": float(outcome[best]),
            "probabilities": {c: float(p) for c, p in zip(classes, outcome)}}


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


async def _send_json(send, status: int, body: dict):
    payload = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": payload})


def serve(model_path, host: str = "127.0.0.1", port: int = 8000, settings: ServeSettings = ServeSettings(),
          device: str = "auto", log=print):
    """Load the model (errors surface here, before the server starts), then serve until stopped."""
    from featurize.errors import CnnfeatError
    try:
        import fastapi  # noqa: F401
        import multipart  # noqa: F401
        import uvicorn
    except ImportError:
        raise CnnfeatError("serve needs FastAPI and uvicorn: pip install -e '.[serve]'") from None
    from .predictors import load_predictor

    predictor = load_predictor(model_path, device)
    app = create_app(predictor, settings)
    log(f"serving {model_path} ({len(predictor.classes)} classes, {predictor.info['engine']}) on "
        f"http://{host}:{port}  (POST /predict, GET /health, GET /model; Ctrl-C stops)")
    uvicorn.run(app, host=host, port=port, log_level="warning")
