"""The endpoints of `serve`: GET /health, GET /model and POST /predict. Each finds what it shares
with the others in the app's state (`Served`); serving.app wires them to their paths."""

import asyncio
from dataclasses import asdict, dataclass

import numpy as np
from fastapi import Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from featurize import UnreadableImage

from .batcher import Batcher, ModelLoopDown
from .limits import Admission, BodyTooLarge
from .settings import ServeSettings

FIELD = "images"


@dataclass
class Served:
    """What the endpoints share: the model, the settings, the model loop, the decode slots, and the
    admission middleware (its count of requests in progress)."""

    predictor: object  # serving.predictors.Predictor
    settings: ServeSettings
    batcher: Batcher
    decode_slots: asyncio.Semaphore  # uploads read and decoded at once
    admission: Admission | None = None


def served(request: Request) -> Served:
    return request.app.state.served


def error(status: int, message: str, close: bool = False) -> JSONResponse:
    """{"error": message}; `close`: the client may still be sending a body we will not read, so the
    connection ends."""
    return JSONResponse({"error": message}, status_code=status, headers={"connection": "close"} if close else None)


async def health(request: Request):
    state = served(request)
    batcher, alive = state.batcher, state.batcher.alive
    body = {
        "status": "ok" if alive else "down",
        "model_loop": "running" if alive else "stopped",
        "batches": batcher.batches,
        "images": batcher.images,
        "failed_batches": batcher.failed_batches,
        "restarts": batcher.restarts,
        "in_progress": state.admission.active if state.admission else 0,
    }
    if not alive:
        body["error"] = batcher.stopped or "the model loop is not running"
    return JSONResponse(body, status_code=200 if alive else 503)


async def model(request: Request):
    state = served(request)
    return {**state.predictor.info, "serving": asdict(state.settings)}


async def predict(request: Request):
    """One JSON entry per uploaded image, in order: its class and probabilities, or why it could not
    be used. 422 when no image could be; 4xx for a request that is not one of images."""
    state = served(request)
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        return error(415, f"send the images as multipart/form-data, field '{FIELD}'")
    uploads = await _uploads(request, state.settings)
    if isinstance(uploads, JSONResponse):
        return uploads
    crops = [await _prepare(state, upload) for upload in uploads]
    good = [crop for crop in crops if not isinstance(crop, str)]
    probabilities = await _probabilities(state, good, request) if good else iter(())
    if isinstance(probabilities, JSONResponse):
        return probabilities
    return _predictions(uploads, crops, probabilities, state.predictor.classes)


def _predictions(uploads, crops: list, probabilities, classes) -> JSONResponse:
    """The answer: an entry per upload, in order (its probabilities, or why it could not be used);
    422 when no upload could be used."""
    names = [getattr(upload, "filename", None) for upload in uploads]
    results = [
        _entry(name, crop if isinstance(crop, str) else next(probabilities), classes)
        for name, crop in zip(names, crops)
    ]
    usable = not all(isinstance(crop, str) for crop in crops)
    return JSONResponse({"predictions": results}, status_code=200 if usable else 422)


async def _uploads(request: Request, settings: ServeSettings):
    """The request's uploads in field FIELD, or the error response saying why there are none."""
    try:
        form = await request.form(max_files=settings.max_images, max_fields=settings.max_images)
    except BodyTooLarge:
        return error(413, f"request larger than {settings.max_request_mb:g} MB", close=True)
    except Exception as failure:  # noqa: BLE001  (a malformed multipart body, or too many parts)
        return error(400, f"could not read the multipart body: {getattr(failure, 'detail', failure)}")
    uploads = form.getlist(FIELD)
    if not uploads:
        return error(
            400,
            f"no field '{FIELD}' (got: {', '.join(sorted(set(form.keys()))) or 'none'}); "
            f"send one or more files as multipart field '{FIELD}'",
        )
    return uploads


async def _prepare(state: Served, upload):
    """The crop of one upload, or why it cannot be used (a str). Its bytes are read only once a
    decode slot is free: a request waiting for one holds no pixels and no copy of its file."""
    if not hasattr(upload, "read"):
        return f"not a file: send images as files in field '{FIELD}'"
    async with state.decode_slots:
        return await run_in_threadpool(_decode, state.predictor, await upload.read(), state.settings.max_pixels)


def _decode(predictor, data: bytes, max_pixels: int):
    try:
        return predictor.prepare(data, max_pixels)
    except UnreadableImage as reason:
        return str(reason)


async def _probabilities(state: Served, crops: list, request: Request):
    """An iterator over the crops' probabilities from the model loop, or the error response: 503 when
    the loop is down, 500 when the model failed on their batch, 499 when the client left."""
    try:
        future = state.batcher.submit(crops)
        if not await _answered(future, request.receive):
            return error(499, "the client closed the connection")  # nobody reads this
        return iter(future.result())
    except ModelLoopDown as down:
        return error(503, str(down))
    except Exception as failure:  # noqa: BLE001  (the model failed on this batch: a 500 for it)
        return error(500, f"the model failed on this batch ({type(failure).__name__}: {failure})")


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


def _entry(name, outcome, classes) -> dict:
    if isinstance(outcome, str):
        return {"filename": name, "error": outcome}
    best = int(np.argmax(outcome))
    return {
        "filename": name,
        "class": classes[best],
        "probability": float(outcome[best]),
        "probabilities": {c: float(p) for c, p in zip(classes, outcome)},
    }
