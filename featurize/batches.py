"""Images to batches to vectors, in this process: decoding in DataLoader worker processes (so it
overlaps the forward pass), unreadable images set aside with their reason, the batches run
through an embedder of featurize.engines.

The model sees uint8 batches and normalises them itself (see network.FeatureExtractor).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from common.errors import CnnfeatError, error_line

from .decoding import UnreadableImage, load_image
from .devices import default_batch_size, default_workers


class ImageDataset:
    """Index -> (index, uint8 CHW tensor or None, reason). Never raises for a bad image."""

    def __init__(self, root: Path, paths: list[str], transform):
        self.root, self.paths, self.transform = root, paths, transform

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        return (i, *decode_or_reason(self.root / self.paths[i], self.transform))


def decode_or_reason(path: Path, transform):
    """(the transformed uint8 tensor, "") or (None, why the image cannot be used). Never raises."""
    try:
        return transform(load_image(path)), ""
    except UnreadableImage as error:
        return None, str(error)
    except Exception as error:  # one odd image must not stop a run over thousands
        return None, f"could not decode ({type(error).__name__}: {error})"


def split_readable(items) -> tuple[list, list[tuple]]:
    """ImageDataset's (position, tensor or None, reason) items -> ([(position, tensor)] of the
    decoded images, [(position, reason)] of the others)."""
    return [(i, t) for i, t, _ in items if t is not None], [(i, r) for i, t, r in items if t is None]


def collate_readable(items):
    """A DataLoader's collate_fn for ImageDataset: (positions of the decoded images, their tensors
    stacked (None when there are none), [(position, reason)] of the others)."""
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
    root: Path,
    paths: list[str],
    batch_size: int | None = None,
    workers: int | None = None,
    progress: bool = False,
    desc: str = "images",
):
    """Decode `paths` (relative to `root`) in worker processes and run them through `model` (an
    embedder of featurize.engines).

    Yields, batch by batch: (positions of the good images in `paths`, their vectors (k, D) float32,
    [(position, reason)] of the unreadable ones).
    """
    from torch.utils.data import DataLoader
    from tqdm import tqdm

    batch_size = batch_size or default_batch_size(device)
    workers = default_workers() if workers is None else min(workers, len(paths))
    dataset = ImageDataset(Path(root), paths, model.preprocessing.transform())
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        num_workers=workers,
        collate_fn=collate_readable,
        pin_memory=device.startswith("cuda"),
        prefetch_factor=4 if workers else None,
    )
    with tqdm(total=len(paths), unit="img", desc=desc, disable=not progress, smoothing=0.1) as bar:
        for good, batch, bad in checked_batches(loader, workers):
            vectors = np.zeros((0, model.feature_dim), np.float32)
            if batch is not None:
                vectors = model.embed(batch)
            yield good, vectors, bad
            bar.update(len(good) + len(bad))
