"""The extraction engine: images -> frozen backbone -> pooled vectors -> HDF5 store, incrementally.

Decoding and resizing run in DataLoader worker processes so they overlap the forward pass; the
model sees uint8 batches and normalises them itself (see network.FeatureExtractor).
"""
from __future__ import annotations

import itertools
import json
import os
import signal
import sys
import threading
import time
from contextlib import closing, contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from common.errors import CnnfeatError, DataError, OutputError, error_line
from common.files import ensure_writable, sweep_stale_tmp
from common.locks import exclusive
from common.names import printable

from .backbones import DEFAULT_BACKBONE, POOLING, TTA_MODES, get_backbone, weights_kind
from .engines import ExportFailed, compute_precision, load_embedder, resolve_engine
from .images import UnreadableImage, discover, file_identity, load_image
from .integrity import DamagedStore, damage_mark
from .journal import Journal
from .placement import IN_STORE, Placement
from .store import (
    FORMAT_VERSION,
    Storage,
    VectorReader,
    fingerprint,
    library_versions,
    place_store_rows,
    read_skipped,
    store_damage,
    store_matches,
    write_store,
)

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
    rewritten: bool = False  # the store was written anew (else it was up to date as it was)
    notes: list[str] = field(default_factory=list)

    @property
    def images_per_second(self) -> float:
        return self.extracted / self.seconds if self.seconds else 0.0


def resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if _cuda_available() else "cpu"
    if device.startswith("cuda") and not _cuda_available():
        raise CnnfeatError(f"--device {device}: CUDA is not available on this machine (use cpu or auto)")
    return device


def _cuda_available() -> bool:
    # Linux without NVIDIA's device nodes has no CUDA: answer without importing torch (seconds),
    # so an "up to date" run stays instant.
    if sys.platform.startswith("linux") and not os.path.exists("/dev/nvidiactl"):
        return False
    import torch
    return torch.cuda.is_available()


def default_batch_size(device: str) -> int:
    # On 2 CPU cores small batches are faster (they stay in cache); GPUs want large ones.
    return 128 if device.startswith("cuda") else 16


def default_workers() -> int:
    return min(8, max(1, (os.cpu_count() or 2) - 1))


def store_path_for(out: Path, dataset: str, backbone: str, weights: str | None, weights_id: str,
                   storage_dtype: str = "float32", tta: str = "none") -> Path:
    tag = {"random": "-random"}.get(weights, "")
    if weights_id.startswith("file:"):
        tag = f"-ft{weights_id[5:13]}"
    if tta != "none":  # its own file, beside the plain one
        tag += f"-{tta}"
    if storage_dtype != "float32":  # its own file, beside the float32 one
        tag += f"-{storage_dtype}"
    return Path(out) / "features" / f"{dataset}-{backbone}{tag}.h5"


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


def _collate(items):
    # default_collate stacks straight into shared memory in a worker, so a worker that cannot get
    # any (a small /dev/shm, a file-size limit) fails here, where the DataLoader reports it, and not
    # later in its queue's feeder thread, where the batch is lost and the run waits for it forever.
    from torch.utils.data import default_collate
    good = [(i, t) for i, t, _ in items if t is not None]
    images = default_collate([t for _, t in good]) if good else None
    return [i for i, _ in good], images, [(i, r) for i, t, r in items if t is None]


class WorkerFailed(CnnfeatError):
    """A decoding worker died or could not hand over a batch."""


@dataclass(frozen=True)
class RunOptions:
    """How a run goes (not what it computes): these never change a vector."""

    device: str = "cpu"  # resolved: cpu, cuda, cuda:N
    engine: str = "torch"  # resolved: torch, onnxruntime
    ray: str | None = None  # None: this process; "local" or a cluster address: a Ray cluster
    batch_size: int | None = None
    workers: int | None = None
    progress: bool = True
    storage: Storage = Storage()  # its dtype does change the stored numbers: it is in the fingerprint
    tta: str = "none"  # TTA_MODES: "flip" changes every vector, so it too is in the fingerprint


def extract(data: str | os.PathLike = "data", backbone: str = DEFAULT_BACKBONE, weights: str | None = None,
            out: str | os.PathLike = "artifacts", device: str = "auto", batch_size: int | None = None,
            workers: int | None = None, strict: bool = False, progress: bool = True,
            trust_pickle: bool = False, engine: str = "auto", ray: str | None = None,
            storage: Storage = Storage(), tta: str = "none", verify: bool = False) -> ExtractResult:
    """Bring the feature store of `data` under `out` up to date and return what was done.

    `engine`: auto (onnxruntime on the CPU, torch on CUDA), torch or onnxruntime. A backbone that
    does not export to ONNX is run by torch, and the result's notes say so. `ray`: "local" or a
    cluster's address runs the backbone on a Ray cluster (featurize.distributed); this process
    still writes the store. `storage`: the vectors' dtype and compression on disk. `tta`: "flip"
    stores the mean of each image's vector and its mirror image's (its own file and fingerprint).
    `verify`: check every stored vector against its checksum (also done when a reader has left the
    store's damage mark) and extract the images of damaged ones again."""
    device = resolve_device(device) if not ray else ("cpu" if device == "auto" else device)
    if tta not in TTA_MODES:
        raise CnnfeatError(f"--tta {tta!r}; valid: {', '.join(TTA_MODES)}")
    options = RunOptions(device, resolve_engine(engine, device), ray, batch_size, workers, progress, storage.check(),
                         tta)
    try:
        return _extract(data, backbone, weights, Path(out), options, strict, trust_pickle, verify)
    except ExportFailed as error:
        result = _extract(data, backbone, weights, Path(out), replace(options, engine="torch"), strict, trust_pickle,
                          verify)
        result.notes.insert(0, f"{backbone} does not export to ONNX ({error}); extracted with torch instead")
        return result


def _extract(data, backbone, weights, out: Path, options: RunOptions, strict: bool, trust_pickle: bool,
             verify: bool):
    started = time.perf_counter()
    images = discover(data)
    record = get_backbone(backbone)
    config, fp = feature_config(record, weights, compute_precision(options.device, options.engine), options.engine,
                                options.storage.dtype, options.tta)
    store = store_path_for(out, images.name, record.name, weights, config["weights"], options.storage.dtype,
                           options.tta)
    ensure_writable(store.parent)
    run = Run(images, record, weights, config, fp, store, out, options, trust_pickle)
    with exclusive(store), _sigterm_as_interrupt():
        sweep_stale_tmp(store)
        result = ExtractResult(store=store, total=len(images), extracted=0, reused=0, dropped=0)
        try:
            _update(run, result, verify or damage_mark(store).exists())
        except DamagedStore as error:  # found while copying the old rows: check them all, extract those again
            result.notes.append(f"{store.name}: damaged vectors found while copying it (from row {error.rows[0]}); "
                                f"checking every row")
            _update(run, result, verify=True, again=True)
        damage_mark(store).unlink(missing_ok=True)
    result.reused = result.total - result.extracted
    result.seconds = time.perf_counter() - started
    _check_strict(result, strict)
    return result


@dataclass(frozen=True)
class Run:
    """What one extraction brings up to date, and how."""

    images: object  # featurize.images.ImageList
    record: object  # the backbone
    weights: str | None
    config: dict
    fp: str
    store: Path
    out: Path
    options: RunOptions
    trust_pickle: bool

    @property
    def journal_path(self) -> Path:
        return self.store.with_name(self.store.name + ".partial")


def _update(run: Run, result: ExtractResult, verify: bool, again: bool = False) -> None:
    """Bring the store up to date: reuse what is there (its vectors checked when `verify`), resume an
    interrupted run's journal (`again`: this run's own, from an attempt that found damage), extract
    the rest, write the store."""
    store, images = run.store, run.images
    storage = run.options.storage.resolved(store)
    identities = image_identities(images)
    damaged = _damaged_rows(store, result) if verify and store.exists() else np.zeros(0, np.int64)
    if not len(damaged) and store.exists() and store_matches(store, run.fp, images, identities, storage):
        result.skipped = read_skipped(store)
        return
    placement = Placement(images.paths)
    dropped = place_store_rows(placement, store, run.fp, str(images.root)) if store.exists() else None
    if store.exists() and dropped is None:
        result.notes.append(f"{store.name} was made with other settings, is unfinished or is damaged; rebuilding it")
    result.dropped = dropped or 0
    if placement.forget(IN_STORE, damaged):
        result.notes.append(f"{len(damaged)} rows of {store.name} failed their checksums: extracting their images again")
    journal = Journal(run.journal_path, run.fp, run.record.feature_dim)
    _resume(journal, placement, result, quiet=again)
    todo = placement.todo(identities)
    if len(todo):
        result.model_loaded = True
        _extract_into(run, journal, placement, identities, todo)
        result.extracted += len(todo)
    reader = VectorReader(run.record.feature_dim, store if dropped is not None else None, journal.path)
    try:
        write_store(store, images, identities, placement, run.record.feature_dim,
                    store_attrs(run.config, run.fp, images, run.weights), reader, storage)
    except OutputError as error:
        raise OutputError(f"{error}{_kept(journal)}") from None
    journal.remove()
    result.rewritten = True
    result.skipped = [(images.paths[i], placement.reasons[i]) for i in placement.skipped().tolist()]


def _damaged_rows(store: Path, result: ExtractResult) -> np.ndarray:
    try:
        return store_damage(store)
    except CnnfeatError:  # unreadable as a store: rebuilt anyway
        return np.zeros(0, np.int64)


def _resume(journal: Journal, placement: Placement, result: ExtractResult, quiet: bool = False) -> None:
    """Place the rows an interrupted run left in the journal (`quiet`: rows of this very run)."""
    resumed, notes = journal.resume()
    if resumed is not None and resumed.paths:
        placement.put_paths(resumed.paths, np.column_stack([resumed.sizes, resumed.mtimes]), resumed.offsets(),
                            resumed.reasons)
        notes.append(f"resuming: {len(resumed.paths)} images from an interrupted run")
    result.notes += [] if quiet else notes


def _extract_into(run: Run, journal: Journal, placement: Placement, identities, todo) -> None:
    """Run the images at `todo` through the backbone into the journal; a kill, a full disk or a
    failed worker ends the run with one line, the images done so far kept for the next run."""
    images = run.images
    try:
        batches = _batches(run.record, run.weights, run.fp, run.out, [images.paths[i] for i in todo.tolist()],
                           images.root, run.options, run.trust_pickle)
        with closing(batches):  # on an error too: the progress bar ends its line before the error's
            _store_batches(batches, images, identities, todo, journal, placement, run.record.feature_dim)
    except KeyboardInterrupt:
        journal.close(quiet=True)
        raise CnnfeatError(f"interrupted{_kept(journal) or '; nothing was extracted yet'}") from None
    except (OutputError, WorkerFailed) as error:
        journal.close(quiet=True)
        raise type(error)(f"{error}{_kept(journal)}") from None
    except BaseException:
        journal.close(quiet=True)
        raise
    journal.close()


def _kept(journal: Journal) -> str:
    """What the error of a stopped run adds: where its finished images are, and how to go on."""
    if not journal.path.exists() or journal.path.stat().st_size == 0:
        return ""
    return f"; the images done so far are kept in {journal.path.name}: run the same command again to resume"


@contextmanager
def _sigterm_as_interrupt():
    """SIGTERM (a job scheduler's stop) ends the run like Ctrl-C: the journal is closed cleanly."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def feature_config(record, weights: str | None, precision: str = "float32", engine: str = "torch",
                   storage_dtype: str = "float32", tta: str = "none") -> tuple[dict, str]:
    """What the vectors of `record` with `weights` depend on, as stored in the feature file, and its fingerprint."""
    config = {"backbone": record.name, "weights": record.weights_id(weights),
              "preprocessing": json.loads(json.dumps(record.preprocessing().as_dict())),
              "pooling": POOLING, "feature_dim": record.feature_dim, "format_version": FORMAT_VERSION,
              "engine": engine, "precision": precision}
    if storage_dtype != "float32":  # absent by default, so stores made before it keep their fingerprint
        config["storage_dtype"] = storage_dtype
    if tta != "none":  # the same: absent unless asked
        config["tta"] = tta
    return config, fingerprint(config)


def store_attrs(config: dict, fp: str, images, weights: str | None) -> dict:
    """The store's attributes: what made its vectors, and which dataset they describe."""
    return {
        "format_version": FORMAT_VERSION, "fingerprint": fp, "config": json.dumps(config, sort_keys=True),
        "versions": json.dumps(library_versions(), sort_keys=True),
        "class_names": json.dumps(images.class_names), "data_root": str(images.root),
        "dataset": images.name, "layout": images.layout, "weights_source": _weights_source(weights),
        "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def _weights_source(weights: str | None) -> str:
    """What rebuilds the backbone later (a saved model predicting from images): a checkpoint's absolute path."""
    return str(Path(weights).resolve()) if weights_kind(weights) == "file" else (weights or "")


def _identity(path: Path) -> tuple[int, int]:
    try:
        return file_identity(path)
    except OSError:
        return MISSING_FILE


def image_identities(images) -> np.ndarray:
    """(N, 2) int64: each image's file identity (size, mtime), one stat per file, no tuple kept per row."""
    pairs = itertools.chain.from_iterable(_identity(images.root / p) for p in images.paths)
    return np.fromiter(pairs, np.int64, count=2 * len(images.paths)).reshape(-1, 2)


def _check_strict(result: ExtractResult, strict: bool) -> None:
    if strict and result.skipped:
        first = "; ".join(f"{printable(p)}: {printable(r)}" for p, r in result.skipped[:3])
        raise DataError(f"--strict: {len(result.skipped)} unreadable images ({first}); the readable ones "
                        f"are stored in {result.store}")


def _batches(record, weights, fp: str, out: Path, paths: list[str], root: Path, options: RunOptions, trust_pickle):
    """The (good positions, vectors, [(position, reason)]) batches of `paths`, from this process or a
    Ray cluster. Loading fails here, before the first batch (an export that fails falls back)."""
    desc = f"extract {record.name}"
    if options.ray:
        from .distributed import connect_ray, iter_vectors_ray
        from .engines import backbone_graph

        ray = connect_ray(options.ray, options.device)
        graph = None
        if options.engine == "onnxruntime":  # exported once here, shipped to every actor
            graph = backbone_graph(record, weights, fp, out / "onnx", trust_pickle, options.tta)
        return iter_vectors_ray(ray, record, weights, graph, options, root, paths, trust_pickle, desc)
    model = load_embedder(record, weights, options.device, options.engine, fp, out / "onnx", trust_pickle, options.tta)
    return iter_vectors(model, options.device, root, paths, options.batch_size, options.workers, options.progress,
                        desc=desc)


def _store_batches(batches, images, identities, todo, journal, placement, dim: int):
    for good, vectors, bad in batches:
        rows = np.asarray([todo[j] for j in good] + [todo[j] for j, _ in bad], np.int64)
        reasons = [""] * len(good) + [reason for _, reason in bad]
        vectors = np.concatenate([vectors, np.zeros((len(bad), dim), np.float32)])
        offsets = journal.append([images.paths[i] for i in rows.tolist()], identities[rows], vectors, reasons)
        placement.put(rows, identities[rows], offsets, reasons)  # the vectors stay in the journal, not in memory


def iter_vectors(model, device: str, root: Path, paths: list[str], batch_size: int | None = None,
                 workers: int | None = None, progress: bool = False, desc: str = "images"):
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
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=workers, collate_fn=_collate,
                        pin_memory=device.startswith("cuda"), prefetch_factor=4 if workers else None)
    with tqdm(total=len(paths), unit="img", desc=desc, disable=not progress, smoothing=0.1) as bar:
        for good, batch, bad in checked_batches(loader, workers):
            vectors = np.zeros((0, model.feature_dim), np.float32)
            if batch is not None:
                vectors = model.embed(batch)
            yield good, vectors, bad
            bar.update(len(good) + len(bad))


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
            raise WorkerFailed(f"a decoding worker failed ({error_line(error, last=True)}); run with --workers 0 to decode in this "
                               f"process, or give the workers more shared memory (`df -h /dev/shm`; in Docker, "
                               f"--shm-size)") from None
        yield batch
