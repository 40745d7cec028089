"""Images to batches to vectors, in this process: decoding in threads (onnxruntime) or DataLoader
worker processes (torch), so it overlaps the forward pass; unreadable images set aside with their
reason; the batches run through an embedder of featurize.engines.

The model sees uint8 batches and normalises them itself (see network.FeatureExtractor).
"""

from __future__ import annotations

from collections import deque
from contextlib import closing

import numpy as np

from common.errors import CnnfeatError, error_line

from .decoding import UnreadableImage, chw_array, decode_pil
from .devices import default_batch_size, default_workers
from .sources import ImageSource, as_source


class ImageDataset:
    """Index -> (index, uint8 crop (3,h,w) or None, reason). Never raises for a bad image. `source`:
    where the bytes are (sources.ImageSource); `transform`: what turns them into the crop (its
    `from_bytes`: preprocessing.ResizeCrop, OnTensors)."""

    def __init__(self, source: ImageSource, paths: list[str], transform):
        self.source, self.paths, self.transform = as_source(source), paths, transform

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        return (i, *decode_or_reason(self.source, self.paths[i], self.transform))


class OnTensors:
    """A torchvision transform of decoded uint8 tensors (3,H,W) (fine-tuning's augmentation), with the
    `from_bytes` an ImageDataset calls: each image decoded at full size, then transformed."""

    def __init__(self, transform):
        self.transform = transform

    def from_bytes(self, data: bytes):
        import torch

        return self.transform(torch.from_numpy(chw_array(decode_pil(data))))


def decode_or_reason(source: ImageSource, path: str, transform):
    """(the uint8 crop of preprocessing.ResizeCrop `transform` of the image at `path` of `source`, "")
    or (None, why the image cannot be used). Never raises."""
    try:
        return transform.from_bytes(source.read(path)), ""
    except UnreadableImage as error:
        return None, str(error)
    except Exception as error:  # one odd image must not stop a run over thousands
        return None, f"could not decode ({type(error).__name__}: {error})"


def split_readable(items) -> tuple[list, list[tuple]]:
    """ImageDataset's (position, crop or None, reason) items -> ([(position, crop)] of the decoded
    images, [(position, reason)] of the others)."""
    return [(i, t) for i, t, _ in items if t is not None], [(i, r) for i, t, r in items if t is None]


def collate_readable(items):
    """A DataLoader's collate_fn for ImageDataset: (positions of the decoded images, their crops
    stacked in one tensor (None when there are none), [(position, reason)] of the others)."""
    # default_collate stacks straight into shared memory in a worker, so a worker that cannot get
    # any (a small /dev/shm, a file-size limit) fails here, where the DataLoader reports it, and not
    # later in its queue's feeder thread, where the batch is lost and the run waits for it forever.
    from torch.utils.data import default_collate

    good, bad = split_readable(items)
    images = default_collate([t for _, t in good]) if good else None
    return [i for i, _ in good], images, bad


class WorkerFailed(CnnfeatError):
    """A decoding worker died or could not hand over a batch."""


def checked_batches(loader, workers: int):
    """The loader's batches; a worker that dies or cannot hand a batch over ends the run in one line."""
    batches = iter(loader)
    while True:
        try:
            batch = next(batches)
        except StopIteration:
            return
        except (RuntimeError, OSError) as error:
            if not workers:
                raise
            raise WorkerFailed(
                f"a decoding worker failed ({error_line(error, last=True)}); run with --workers 0 to decode in this "
                f"process, or give the workers more shared memory (`df -h /dev/shm`; in Docker, "
                f"--shm-size)"
            ) from None
        yield batch


def iter_vectors(
    model,
    device: str,
    source: ImageSource,
    paths: list[str],
    batch_size: int | None = None,
    workers: int | None = None,
    progress: bool = False,
    desc: str = "images",
):
    """Decode `paths` (read from `source`) and run them through `model` (an embedder of
    featurize.engines): in `workers` threads for onnxruntime (no torch imported), in a DataLoader's
    worker processes for torch. `workers` 0: in this thread, one image after the other.

    Yields, batch by batch: (positions of the good images in `paths`, their vectors (k, D) float32,
    [(position, reason)] of the unreadable ones).
    """
    from tqdm import tqdm

    source = as_source(source)
    views = getattr(model, "views", 1)  # --tta: each image is this many in a forward pass
    batch_size = batch_size or max(1, default_batch_size(device) // views)
    workers = default_workers(model.engine, source.remote is not None) if workers is None else min(workers, len(paths))
    transform = model.preprocessing.transform()
    decode = decoded_in_threads if model.engine == "onnxruntime" else decoded_in_processes
    batches = decode(source, paths, transform, batch_size, workers, device)
    bar = tqdm(total=len(paths), unit="img", desc=desc, disable=not progress, smoothing=0.1)
    with bar, closing(batches):  # stopped by an error too: no decoding thread goes on
        for good, batch, bad in batches:
            vectors = np.zeros((0, model.feature_dim), np.float32)
            if batch is not None:
                vectors = model.embed(batch)
            yield good, vectors, bad
            bar.update(len(good) + len(bad))


THREAD_PREFETCH = 4  # batches decoded ahead of the one being embedded


def decoded_in_threads(
    source: ImageSource, paths: list[str], transform, batch_size: int, workers: int, device: str = "cpu"
):
    """(positions, stacked uint8 crops or None, [(position, reason)]) per batch of `paths`, decoded by
    `workers` threads (PIL lets go of the GIL while it decodes and resizes) up to THREAD_PREFETCH
    batches ahead; `workers` 0: each batch decoded when it is asked for."""
    from concurrent.futures import ThreadPoolExecutor

    starts = range(0, len(paths), batch_size)
    if not workers:
        for start in starts:
            yield stacked_readable(
                [
                    (start + k, *decode_or_reason(source, p, transform))
                    for k, p in enumerate(paths[start : start + batch_size])
                ]
            )
        return
    pool = ThreadPoolExecutor(workers, thread_name_prefix="decode")
    try:
        ahead = deque()
        for start in starts:
            chunk = paths[start : start + batch_size]
            ahead.append((start, [pool.submit(decode_or_reason, source, p, transform) for p in chunk]))
            if len(ahead) > THREAD_PREFETCH:
                yield _finished(*ahead.popleft())
        while ahead:
            yield _finished(*ahead.popleft())
    finally:  # stopped early (an error, Ctrl-C): the images not started yet are not decoded
        pool.shutdown(wait=True, cancel_futures=True)


def _finished(start: int, futures) -> tuple:
    return stacked_readable([(start + k, *future.result()) for k, future in enumerate(futures)])


def stacked_readable(items) -> tuple:
    """ImageDataset's items -> (positions of the decoded images, their crops stacked in one array (None
    when there are none), [(position, reason)] of the others): collate_readable without torch."""
    good, bad = split_readable(items)
    return [i for i, _ in good], (np.stack([crop for _, crop in good]) if good else None), bad


def decoded_in_processes(source: ImageSource, paths: list[str], transform, batch_size: int, workers: int, device: str):
    """As decoded_in_threads, from a DataLoader's `workers` worker processes (torch tensors)."""
    from torch.utils.data import DataLoader

    loader = DataLoader(
        ImageDataset(source, paths, transform),
        batch_size=batch_size,
        num_workers=workers,
        collate_fn=collate_readable,
        pin_memory=device.startswith("cuda"),
        prefetch_factor=4 if workers else None,
    )
    return checked_batches(loader, workers)
