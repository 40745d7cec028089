"""The model loop of `serve`: the crops of concurrent requests gathered into batches, run one at a
time, supervised.

A request waits at most `max_wait_ms` for others to share its batch; a batch closes once it holds
`max_batch` images (a request is never split, so the last one in may carry it past). Requests
queued while the model runs join the next batch. A request whose client hangs up is dropped from
its batch."""

import asyncio
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from .settings import ServeSettings


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
                future.set_result(probabilities[offset : offset + len(crops)])
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
