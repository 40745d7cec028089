"""The extraction engine: images -> frozen backbone -> pooled vectors -> HDF5 store, incrementally.

Decoding and resizing run in DataLoader worker processes so they overlap the forward pass; the
model sees uint8 batches and normalises them itself (see network.FeatureExtractor).
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .backbones import DEFAULT_BACKBONE, POOLING, get_backbone, weights_kind
from .errors import CnnfeatError, DataError
from .images import UnreadableImage, discover, file_identity, load_image
from .store import (FORMAT_VERSION, PartialLog, exclusive, fingerprint, library_versions, read_rows, read_skipped,
                    store_matches, write_store)

MISSING_FILE = (-1, -1)  # identity of a listed file that does not exist


@dataclass
class ExtractResult:
    store: Path
    total: int  # images in the dataset
    extracted: int  # run through the model in this run
    reused: int  # taken from the store or from an interrupted run's partial file
    dropped: int  # rows of the old store whose files are gone
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    seconds: float = 0.0
    model_loaded: bool = False
    notes: list[str] = field(default_factory=list)

    @property
    def images_per_second(self) -> float:
        return self.extracted / self.seconds if self.seconds else 0.0


def resolve_device(device: str) -> str:
    import torch
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise CnnfeatError(f"--device {device}: CUDA is not available on this machine (use cpu or auto)")
    return device


def default_batch_size(device: str) -> int:
    # On 2 CPU cores small batches are faster (they stay in cache); GPUs want large ones.
    return 128 if device.startswith("cuda") else 16


def default_workers() -> int:
    return min(8, max(1, (os.cpu_count() or 2) - 1))


def store_path_for(out: Path, dataset: str, backbone: str, weights: str | None, weights_id: str) -> Path:
    tag = {"random": "-random"}.get(weights, "")
    if weights_id.startswith("file:"):
        tag = f"-ft{weights_id[5:13]}"
    return Path(out) / "features" / f"{dataset}-{backbone}{tag}.h5"


class ImageDataset:
    """Index -> (index, uint8 CHW tensor or None, reason). Never raises for a bad image."""

    def __init__(self, root: Path, paths: list[str], transform):
        self.root, self.paths, self.transform = root, paths, transform

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        try:
            return i, self.transform(load_image(self.root / self.paths[i])), ""
        except UnreadableImage as error:
            return i, None, str(error)
        except Exception as error:  # one odd image must not stop a run over thousands
            return i, None, f"could not decode ({type(error).__name__}: {error})"


def _collate(items):
    import torch
    good = [(i, t) for i, t, _ in items if t is not None]
    images = torch.stack([t for _, t in good]) if good else None
    return [i for i, _ in good], images, [(i, r) for i, t, r in items if t is None]


def extract(data: str | os.PathLike = "data", backbone: str = DEFAULT_BACKBONE, weights: str | None = None,
            out: str | os.PathLike = "artifacts", device: str = "auto", batch_size: int | None = None,
            workers: int | None = None, strict: bool = False, progress: bool = True) -> ExtractResult:
    """Bring the feature store of `data` under `out` up to date and return what was done."""
    started = time.perf_counter()
    images = discover(data)
    record = get_backbone(backbone)
    config, fp = feature_config(record, weights)
    store = store_path_for(Path(out), images.name, record.name, weights, config["weights"])
    store.parent.mkdir(parents=True, exist_ok=True)

    with exclusive(store):
        identities = [_identity(images.root / p) for p in images.paths]
        result = ExtractResult(store=store, total=len(images), extracted=0, reused=0, dropped=0)
        if store.exists() and store_matches(store, fp, images, identities):
            result.reused = len(images)
            result.skipped = read_skipped(store)
            result.seconds = time.perf_counter() - started
            _check_strict(result, strict)
            return result
        known = {}
        old_rows = read_rows(store, fp) if store.exists() else None
        if store.exists() and old_rows is None:
            result.notes.append(f"{store.name} was made with other settings or is unfinished; rebuilding it")
        if old_rows is not None:
            known.update(old_rows.by_path())
        partial = PartialLog(store.with_name(store.name + ".partial"), fp, record.feature_dim)
        resumed = partial.read()
        if resumed is not None and resumed.paths:
            known.update(resumed.by_path())
            result.notes.append(f"resuming: {len(resumed.paths)} images from an interrupted run")

        current = set(images.paths)
        result.dropped = sum(1 for p in (old_rows.paths if old_rows else []) if p not in current)
        todo = [i for i, p in enumerate(images.paths) if p not in known or known[p][0] != identities[i]]
        result.reused = len(images) - len(todo)
        if todo:
            result.model_loaded = True
            try:
                _run_model(record, weights, images, identities, todo, partial, known, device, batch_size,
                           workers, progress)
            except KeyboardInterrupt:
                raise CnnfeatError(f"interrupted; the images done so far are kept in {partial.path.name}: "
                                   f"run the same command again to resume") from None
            finally:
                partial.close()
            result.extracted = len(todo)
        attrs = {
            "format_version": FORMAT_VERSION, "fingerprint": fp, "config": json.dumps(config, sort_keys=True),
            "versions": json.dumps(library_versions(), sort_keys=True),
            "class_names": json.dumps(images.class_names), "data_root": str(images.root),
            "dataset": images.name, "layout": images.layout, "weights_source": _weights_source(weights),
            "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        write_store(store, images, identities, known, record.feature_dim, attrs)
        partial.remove()
    result.skipped = _skipped(images, known)
    result.seconds = time.perf_counter() - started
    _check_strict(result, strict)
    return result


def feature_config(record, weights: str | None) -> tuple[dict, str]:
    """What the vectors of `record` with `weights` depend on, as stored in the feature file, and its fingerprint."""
    config = {"backbone": record.name, "weights": record.weights_id(weights),
              "preprocessing": json.loads(json.dumps(record.preprocessing().as_dict())),
              "pooling": POOLING, "feature_dim": record.feature_dim, "format_version": FORMAT_VERSION}
    return config, fingerprint(config)


def _weights_source(weights: str | None) -> str:
    """What rebuilds the backbone later (a saved model predicting from images): a checkpoint's absolute path."""
    return str(Path(weights).resolve()) if weights_kind(weights) == "file" else (weights or "")


def _identity(path: Path) -> tuple[int, int]:
    try:
        return file_identity(path)
    except OSError:
        return MISSING_FILE


def _skipped(images, known) -> list[tuple[str, str]]:
    return [(p, known[p][2]) for p in images.paths if known[p][1] is None]


def _check_strict(result: ExtractResult, strict: bool) -> None:
    if strict and result.skipped:
        first = "; ".join(f"{p}: {r}" for p, r in result.skipped[:3])
        raise DataError(f"--strict: {len(result.skipped)} unreadable images ({first}); the readable ones "
                        f"are stored in {result.store}")


def _run_model(record, weights, images, identities, todo, partial, known, device, batch_size, workers, progress):
    device = resolve_device(device)
    model = load_extractor(record, weights, device)
    batches = iter_vectors(model, device, images.root, [images.paths[i] for i in todo], batch_size, workers,
                           progress, desc=f"extract {record.name}")
    for good, vectors, bad in batches:
        rows = [todo[j] for j in good] + [todo[j] for j, _ in bad]
        reasons = [""] * len(good) + [reason for _, reason in bad]
        vectors = np.concatenate([vectors, np.zeros((len(bad), record.feature_dim), np.float32)])
        partial.append([images.paths[i] for i in rows], [identities[i] for i in rows], vectors, reasons)
        for i, vector, reason in zip(rows, vectors, reasons):
            known[images.paths[i]] = (identities[i], None if reason else vector, reason)


def load_extractor(record, weights, device: str):
    """The backbone's frozen feature extractor on `device`, channels_last (faster on CPU and GPU)."""
    import torch
    return record.load(weights).to(device, memory_format=torch.channels_last)


def iter_vectors(model, device: str, root: Path, paths: list[str], batch_size: int | None = None,
                 workers: int | None = None, progress: bool = False, desc: str = "images"):
    """Decode `paths` (relative to `root`) in worker processes and run them through `model`.

    Yields, batch by batch: (positions of the good images in `paths`, their vectors (k, D) float32,
    [(position, reason)] of the unreadable ones).
    """
    import torch
    from torch.utils.data import DataLoader
    from tqdm import tqdm

    batch_size = batch_size or default_batch_size(device)
    workers = default_workers() if workers is None else min(workers, len(paths))
    dataset = ImageDataset(Path(root), paths, model.preprocessing.transform())
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=workers, collate_fn=_collate,
                        pin_memory=device.startswith("cuda"), prefetch_factor=4 if workers else None)
    on_cuda = device.startswith("cuda")
    with tqdm(total=len(paths), unit="img", desc=desc, disable=not progress, smoothing=0.1) as bar, \
            torch.inference_mode(), torch.autocast("cuda", dtype=torch.float16, enabled=on_cuda):
        for good, batch, bad in loader:
            vectors = np.zeros((0, model.feature_dim), np.float32)
            if batch is not None:
                batch = batch.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
                vectors = model(batch).float().cpu().numpy()
            yield good, vectors, bad
            bar.update(len(good) + len(bad))
