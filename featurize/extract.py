"""The extraction engine: bring a dataset's feature store up to date, incrementally.

One run: discover the images and the settings their vectors depend on (a FeatureSpec, which names
the store); then, holding the store's lock, reuse the rows the old store holds, resume the rows an
interrupted run left in the journal, run the rest through the backbone (in this process,
featurize.batches, or on a Ray cluster, featurize.distributed) into the journal, and write the
store whole.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from contextlib import closing, contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from common.errors import CnnfeatError, DataError, OutputError
from common.files import ensure_writable, sweep_stale_tmp
from common.locks import exclusive
from common.names import printable

from .backbones import DEFAULT_BACKBONE, Recipe, get_backbone
from .batches import WorkerFailed, iter_vectors
from .devices import run_device
from .discovery import ImageList, discover, image_identities
from .distributed import connect_ray, iter_vectors_ray
from .engines import (
    Engine,
    ExportFailed,
    backbone_graph,
    compute_precision,
    graph_cache_dir,
    load_embedder,
    resolve_engine,
)
from .fingerprints import FeatureSpec
from .integrity import DamagedStore, damage_mark
from .journal import Journal
from .placement import IN_STORE, SKIPPED, Placement
from .store import Storage, VectorReader, place_store_rows, read_skipped, store_damage, store_matches, write_store

NO_ROWS = np.zeros(0, np.int64)


@dataclass
class ExtractResult:
    store: Path
    total: int  # images in the dataset
    extracted: int  # run through the model in this run
    reused: int  # taken from the store or from an interrupted run's partial file
    dropped: int  # rows of the old store whose files are gone
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    unreadable_now: int = 0  # of `extracted`, the images that could not be decoded
    seconds: float = 0.0
    model_loaded: bool = False
    rewritten: bool = False  # the store was written anew (else it was up to date as it was)
    notes: list[str] = field(default_factory=list)

    @property
    def vectors_made(self) -> int:
        """New vectors this run (`extracted` less the images it found unreadable)."""
        return self.extracted - self.unreadable_now

    @property
    def vectors_reused(self) -> int:
        """Vectors taken over (`reused` less the images an earlier run found unreadable)."""
        return self.reused - (len(self.skipped) - self.unreadable_now)

    @property
    def images_per_second(self) -> float:
        return self.extracted / self.seconds if self.seconds else 0.0


@dataclass(frozen=True)
class RunOptions:
    """How a run goes (not what it computes): these never change a vector."""

    device: str = "cpu"  # resolved: cpu, cuda, cuda:N
    engine: Engine = "torch"  # resolved
    ray: str | None = None  # None: this process; "local" or a cluster address: a Ray cluster
    batch_size: int | None = None
    workers: int | None = None
    progress: bool = True
    storage: Storage = Storage()  # its dtype does change the stored numbers: it is in the fingerprint
    recipe: Recipe = Recipe()  # it changes every vector, so it too is in the fingerprint
    strict: bool = False  # an unreadable image fails the run (after the store is written)
    trust_pickle: bool = False  # a --weights file may hold pickled objects (loading them runs its code)
    verify: bool = False  # check every stored vector against its checksum
    name: str | None = None  # the dataset's readable name (None: its folder's); names the file, not its vectors
    storage_options: tuple = ()  # (key, value) pairs for an object store's client (never written down)


# Over a screen only in its keyword list and its docstring: the library's front door, whose keywords
# are the options of `cnnfeat extract`; the work is _extract's.
def extract(
    data: str | os.PathLike = "data",
    backbone: str = DEFAULT_BACKBONE,
    weights: str | None = None,
    out: str | os.PathLike = "artifacts",
    device: str = "auto",
    batch_size: int | None = None,
    workers: int | None = None,
    strict: bool = False,
    progress: bool = True,
    trust_pickle: bool = False,
    engine: str = "auto",
    ray: str | None = None,
    storage: Storage = Storage(),
    recipe: Recipe = Recipe(),
    verify: bool = False,
    name: str | None = None,
    storage_options: tuple = (),
) -> ExtractResult:
    """Bring the feature store of `data` under `out` up to date and return what was done.

    `engine`: auto (onnxruntime on the CPU, torch on CUDA), torch or onnxruntime. A backbone that
    does not export to ONNX is run by torch, and the result's notes say so. `ray`: "local" or a
    cluster's address runs the backbone on a Ray cluster (featurize.distributed); this process
    still writes the store. `storage`: the vectors' dtype and compression on disk. `recipe`: which
    stages, pooling, input size and views make each vector (backbones.Recipe; its own file and fingerprint).
    `verify`: check every stored vector against its checksum (also done when a reader has left the
    store's damage mark) and extract the images of damaged ones again. `name`: the readable part of
    the dataset's name (and of the file's) instead of the folder's; the same name finds the same file.
    `data` may be a URL of an object store, WebDataset shards or a manifest (featurize.discovery);
    `storage_options`: (key, value) pairs for the store's client (featurize.remote)."""
    device = run_device(device, ray)
    options = RunOptions(
        device=device,
        engine=resolve_engine(engine, device),
        ray=ray,
        batch_size=batch_size,
        workers=workers,
        progress=progress,
        storage=storage.check(),
        recipe=recipe,
        strict=strict,
        trust_pickle=trust_pickle,
        verify=verify,
        name=name,
        storage_options=tuple(storage_options),
    )
    try:
        return _extract(data, backbone, weights, Path(out), options)
    except ExportFailed as error:
        result = _extract(data, backbone, weights, Path(out), replace(options, engine="torch"))
        result.notes.insert(0, f"{backbone} does not export to ONNX ({error}); extracted with torch instead")
        return result


@dataclass(frozen=True)
class Run:
    """What one extraction brings up to date, and how."""

    images: ImageList
    spec: FeatureSpec
    store: Path
    out: Path
    options: RunOptions

    @property
    def journal_path(self) -> Path:
        return self.store.with_name(self.store.name + ".partial")

    @property
    def dim(self) -> int:
        return self.spec.feature_dim


def _extract(data, backbone: str, weights: str | None, out: Path, options: RunOptions) -> ExtractResult:
    started = time.perf_counter()
    images = discover(data, options.name, options.storage_options)
    record = get_backbone(backbone)
    options = replace(options, recipe=options.recipe.for_backbone(record))
    spec = FeatureSpec(
        record,
        weights,
        compute_precision(options.device, options.engine),
        options.engine,
        options.storage.dtype,
        options.recipe,
    )
    store = spec.store_path(out, images.name)
    ensure_writable(store.parent)
    run = Run(images, spec, store, out, options)
    with exclusive(store), _sigterm_as_interrupt():
        result = _bring_up_to_date(run)
    result.reused = result.total - result.extracted
    result.notes = images.notes + result.notes
    result.seconds = time.perf_counter() - started
    _check_readable(result, options.strict)
    return result


def _bring_up_to_date(run: Run) -> ExtractResult:
    """Under the store's lock: update it, checking every row when asked, or when a reader (or this
    run, copying the old rows) has found damage."""
    sweep_stale_tmp(run.store)
    result = ExtractResult(store=run.store, total=len(run.images), extracted=0, reused=0, dropped=0)
    try:
        _update(run, result, run.options.verify or damage_mark(run.store).exists())
    except DamagedStore as error:  # found while copying the old rows: check them all, extract those again
        result.notes.append(
            f"{run.store.name}: damaged vectors found while copying it (from row {error.rows[0]}); checking every row"
        )
        _update(run, result, verify=True, again=True)
    damage_mark(run.store).unlink(missing_ok=True)
    return result


def _update(run: Run, result: ExtractResult, verify: bool, again: bool = False) -> None:
    """Bring the store up to date: reuse what is there (its vectors checked when `verify`), resume an
    interrupted run's journal (`again`: this run's own, from an attempt that found damage), extract
    the rest, write the store."""
    storage = run.options.storage.resolved(run.store)
    identities = image_identities(run.images)
    damaged = _damaged_rows(run.store) if verify and run.store.exists() else NO_ROWS
    if (
        not len(damaged)
        and run.store.exists()
        and store_matches(run.store, run.spec.fingerprint, run.images, identities, storage)
    ):
        result.skipped = read_skipped(run.store)
        return
    placement = Placement(run.images.paths)
    reuse_store = _place_old_rows(run, placement, damaged, result)
    journal = Journal(run.journal_path, run.spec.fingerprint, run.dim)
    _resume(journal, placement, result, quiet=again)
    todo = placement.todo(identities)
    if len(todo):
        result.model_loaded = True
        _extract_into(run, journal, placement, identities, todo)
        result.extracted += len(todo)
        result.unreadable_now += int(np.count_nonzero(placement.kind[todo] == SKIPPED))
    _write(run, journal, placement, identities, storage, reuse_store)
    result.rewritten = True
    result.skipped = [(run.images.paths[i], placement.reasons[i]) for i in placement.skipped().tolist()]


def _damaged_rows(store: Path) -> np.ndarray:
    try:
        return store_damage(store)
    except CnnfeatError:  # unreadable as a store: rebuilt anyway
        return NO_ROWS


def _place_old_rows(run: Run, placement: Placement, damaged: np.ndarray, result: ExtractResult) -> bool:
    """Place the old store's rows, but its `damaged` ones; whether the store is of these settings (so
    its vectors are read when the new one is written)."""
    store = run.store
    dropped = place_store_rows(placement, store, run.spec.fingerprint, str(run.images.root)) if store.exists() else None
    if store.exists() and dropped is None:
        result.notes.append(f"{store.name} was made with other settings, is unfinished or is damaged; rebuilding it")
    result.dropped = dropped or 0
    if placement.forget(IN_STORE, damaged):
        result.notes.append(
            f"{len(damaged)} rows of {store.name} failed their checksums: extracting their images again"
        )
    return dropped is not None


def _resume(journal: Journal, placement: Placement, result: ExtractResult, quiet: bool = False) -> None:
    """Place the rows an interrupted run left in the journal (`quiet`: rows of this very run)."""
    resumed, notes = journal.resume()
    if resumed is not None and resumed.paths:
        placement.put_paths(resumed.paths, resumed.identities(), resumed.locators(), resumed.reasons)
        notes.append(f"resuming: {len(resumed.paths)} images from an interrupted run")
    result.notes += [] if quiet else notes


def _write(
    run: Run, journal: Journal, placement: Placement, identities: np.ndarray, storage: Storage, reuse_store: bool
) -> None:
    """Write the new store from the old one's rows (`reuse_store`) and the journal's; then drop the journal."""
    reader = VectorReader(run.dim, run.store if reuse_store else None, journal.path)
    try:
        write_store(
            run.store, run.images, identities, placement, run.dim, run.spec.store_attrs(run.images), reader, storage
        )
    except OutputError as error:
        raise OutputError(f"{error}{_kept(journal)}") from None
    journal.remove()


def _extract_into(run: Run, journal: Journal, placement: Placement, identities, todo) -> None:
    """Run the images at `todo` through the backbone into the journal; a kill, a full disk or a
    failed worker ends the run with one line, the images done so far kept for the next run."""
    try:
        batches = _vector_batches(run, [run.images.paths[i] for i in todo.tolist()])
        with closing(batches):  # on an error too: the progress bar ends its line before the error's
            append_batches(batches, run.images, identities, todo, journal, placement, run.dim)
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
    hook, threading.excepthook = threading.excepthook, _quiet_hangups(threading.excepthook)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
        threading.excepthook = hook


def _quiet_hangups(hook):
    """`hook`, less the traceback multiprocessing's resource-sharer thread prints when a decoding
    worker it was handing a batch to is stopped with the run (a broken pipe): the run says it was
    interrupted in one line, and that is all there is to say."""

    def quiet(args):
        hung_up = issubclass(args.exc_type, (BrokenPipeError, ConnectionResetError, EOFError))
        if hung_up and "resource_sharer" in "".join(map(str, _frames(args.exc_traceback))):
            return
        hook(args)

    return quiet


def _frames(tb):
    while tb is not None:
        yield tb.tb_frame.f_code.co_filename
        tb = tb.tb_next


def _check_readable(result: ExtractResult, strict: bool) -> None:
    """No image readable, or (`strict`) any unreadable, fails the run (after the store is written:
    the reasons stay recorded, so the next run does not decode them again)."""
    if result.total and len(result.skipped) == result.total:
        first = "; ".join(f"{printable(p)}: {printable(r)}" for p, r in result.skipped[:3])
        raise DataError(f"none of the {result.total} images could be read ({first})")
    if strict and result.skipped:
        first = "; ".join(f"{printable(p)}: {printable(r)}" for p, r in result.skipped[:3])
        raise DataError(
            f"--strict: {len(result.skipped)} unreadable images ({first}); the readable ones "
            f"are stored in {result.store}"
        )


def _vector_batches(run: Run, paths: list[str]):
    """The (good positions, vectors, [(position, reason)]) batches of `paths`, from this process or a
    Ray cluster. Loading fails here, before the first batch (an export that fails falls back)."""
    options, spec = run.options, run.spec
    desc = f"extract {spec.backbone.name}"
    if options.ray:
        ray = connect_ray(options.ray, options.device)
        graph = None
        if options.engine == "onnxruntime":  # exported once here, shipped to every actor
            graph = backbone_graph(
                spec.backbone, spec.weights, spec.fingerprint, graph_cache_dir(), options.trust_pickle, options.recipe
            )
        return iter_vectors_ray(ray, spec.backbone, spec.weights, graph, options, run.images.reader, paths, desc)
    model = load_embedder(
        spec.backbone,
        spec.weights,
        options.device,
        options.engine,
        spec.fingerprint,
        graph_cache_dir(),
        options.trust_pickle,
        options.recipe,
    )
    return iter_vectors(
        model,
        options.device,
        run.images.reader,
        paths,
        options.batch_size,
        options.workers,
        options.progress,
        desc=desc,
    )


def append_batches(
    batches,
    images: ImageList,
    identities: np.ndarray,
    todo: np.ndarray,
    journal: Journal,
    placement: Placement,
    dim: int,
) -> None:
    """Append each batch's rows (`todo`'s positions, as the batch numbers them) to the journal and
    place them there: the vectors stay in the journal, not in memory."""
    for good, vectors, bad in batches:
        rows = np.asarray([todo[j] for j in good] + [todo[j] for j, _ in bad], np.int64)
        reasons = [""] * len(good) + [reason for _, reason in bad]
        vectors = np.concatenate([vectors, np.zeros((len(bad), dim), np.float32)])
        offsets = journal.append([images.paths[i] for i in rows.tolist()], identities[rows], vectors, reasons)
        placement.put(rows, identities[rows], offsets, reasons)
