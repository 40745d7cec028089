"""Extraction on a Ray cluster (`extract --ray local|ADDRESS`, extra `[ray]`).

Ray Data shards the list of images to embed; a pool of actors, each holding the backbone (one per
GPU, or one per CPU slot), decodes and embeds its shards in batches; the rows stream back to the
driver, which alone writes the journal and the HDF5 store - so "up to date", resume after a kill
and the lock behave exactly as in a local run. The actors read the images themselves: from an object
store (each its own client), or from the same paths as the driver (a shared file system on a
multi-machine cluster), as a `--weights` file.
"""

from __future__ import annotations

import numpy as np

from common.errors import CnnfeatError

from .batches import decode_or_reason, stacked_readable
from .devices import default_batch_size

INSTALL = "pip install -e '.[ray]'"


def connect_ray(address: str, device: str):
    """Start a local Ray cluster (`local`) or join the one at `address`; check it has what `device` needs."""
    try:
        import ray
    except ImportError:
        raise CnnfeatError(f"--ray needs Ray: {INSTALL}") from None
    _quiet_ray_logs()
    if not ray.is_initialized():
        if address != "local":
            _check_reachable(address)
        try:
            if address == "local":
                ray.init(include_dashboard=False, log_to_driver=False, configure_logging=False)
            else:
                ray.init(address=address, log_to_driver=False, configure_logging=False)
        except (ConnectionError, RuntimeError, ValueError) as error:
            raise CnnfeatError(
                f"--ray {address}: cannot reach a Ray cluster ({str(error).splitlines()[0]}); start "
                f"one with `ray start --head` on the head node, or use --ray local"
            ) from None
    resources = ray.cluster_resources()
    if device.startswith("cuda") and resources.get("GPU", 0) < 1:
        raise CnnfeatError(f"--device {device}: the Ray cluster has no GPU ({resources.get('CPU', 0):g} CPUs)")
    return ray


class EmbedShard:
    """A Ray Data actor: one backbone, decoding and embedding the batches of paths it is given. On
    CPUs there is one actor per core, each single-threaded: decoding in one overlaps the forward
    pass in another."""

    def __init__(self, backbone: str, weights, device: str, graph: bytes | None, source, trust_pickle: bool, recipe):
        from .backbones import get_backbone
        from .engines import TorchEmbedder, onnx_embedder

        record = get_backbone(backbone)
        if graph is not None:  # the driver's exported graph: every actor computes the driver's numbers
            self.embedder = onnx_embedder(graph, record, recipe, threads=1)
        else:
            self.embedder = TorchEmbedder(record.load(weights, trust_pickle, recipe), device, record.name)
        self.transform = self.embedder.preprocessing.transform()
        self.source = source  # sources.ImageSource: this actor reads the images itself (files or objects)

    def __call__(self, batch: dict) -> dict:
        """{position, path} rows -> {position, vector, reason} rows (a zero vector where the reason says
        why the image was not decoded, "" where it was)."""
        items = [(k, *decode_or_reason(self.source, str(p), self.transform)) for k, p in enumerate(batch["path"])]
        good, crops, _ = stacked_readable(items)
        vectors = np.zeros((len(items), self.embedder.feature_dim), np.float32)
        if good:
            vectors[good] = self.embedder.embed(crops)
        return {"position": batch["position"], "vector": vectors, "reason": np.asarray([r for _, _, r in items])}


def iter_vectors_ray(
    ray, record, weights, graph: bytes | None, options, source, paths: list[str], desc: str = "images"
):
    """As featurize.batches.iter_vectors, on the cluster: yields (positions of the good images in
    `paths`, their vectors, [(position, reason)]), batch by batch as they arrive (in any order).
    `graph`: the exported backbone for the onnxruntime engine (None: torch, built by each actor).
    `options`: featurize.extract.RunOptions."""
    from tqdm import tqdm

    ray.data.DataContext.get_current().enable_progress_bars = False  # ours is the one bar
    _quiet_ray_logs()  # again: ray.data sets up its loggers when first used
    embedded = _embedded(ray, record, weights, graph, options, source, paths)
    with tqdm(total=len(paths), unit="img", desc=desc, disable=not options.progress, smoothing=0.1) as bar:
        try:
            yield from _arriving(embedded, bar)
        except ray.exceptions.RayError as error:  # an actor that could not start or kept failing
            raise _cluster_failed(ray, error, options.ray) from None


def _embedded(ray, record, weights, graph: bytes | None, options, source, paths: list[str]):
    """The Ray dataset of `paths`, sharded into blocks, embedded by a pool of EmbedShard actors."""
    batch_size = options.batch_size or max(1, default_batch_size(options.device) // options.recipe.views)
    actors = default_actors(ray, options.device)
    gpus = 1 if options.device.startswith("cuda") else 0
    items = [{"position": i, "path": p} for i, p in enumerate(paths)]
    dataset = ray.data.from_items(items, override_num_blocks=max(1, min(len(items) // batch_size, 64 * actors)))
    return dataset.map_batches(
        EmbedShard,
        batch_size=batch_size,
        compute=ray.data.ActorPoolStrategy(size=actors),
        num_gpus=gpus,
        num_cpus=0 if gpus else 1,
        fn_constructor_kwargs={
            "backbone": record.name,
            "weights": weights,
            "device": "cuda" if gpus else "cpu",
            "graph": graph,
            "source": source,
            "trust_pickle": options.trust_pickle,
            "recipe": options.recipe,
        },
    )


def _cluster_failed(ray, error: Exception, address: str) -> CnnfeatError:
    """The one line for a cluster whose actors could not start or kept failing (our own local cluster
    is shut down first: its retries, and their log lines, stop now)."""
    lines = str(error).splitlines() or [""]
    cause = next((line.strip() for line in reversed(lines) if "Error: " in line), lines[0])
    if address == "local":
        ray.shutdown()
    return CnnfeatError(
        f"the Ray cluster failed ({type(error).__name__}: {cause}); the images done "
        f"so far are kept: run the same command again to resume"
    )


def _arriving(embedded, bar):
    for batch in embedded.iter_batches(batch_size=None, batch_format="numpy"):
        reasons = batch["reason"]
        good = [int(p) for p, r in zip(batch["position"], reasons) if not r]
        bad = [(int(p), str(r)) for p, r in zip(batch["position"], reasons) if r]
        yield good, batch["vector"][reasons == ""], bad
        bar.update(len(reasons))


def default_actors(ray, device: str) -> int:
    """One actor per GPU, or per CPU slot of the cluster."""
    resources = ray.cluster_resources()
    return max(1, int(resources.get("GPU", 0) if device.startswith("cuda") else resources.get("CPU", 1)))


def _check_reachable(address: str, timeout: float = 5.0) -> None:
    """Ray waits minutes on an address where no cluster answers: try the TCP port first."""
    import socket

    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise CnnfeatError(f"--ray {address}: expected 'local' or HOST:PORT (ray://HOST:PORT for Ray Client)")
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as error:
        raise CnnfeatError(
            f"--ray {address}: no Ray cluster answers there ({error}); start one with "
            f"`ray start --head` on the head node, or use --ray local"
        ) from None


def _quiet_ray_logs():
    """Ray's INFO/ERROR lines on the driver: our progress bar and one error line say what matters."""
    import logging

    for name in ("ray", "ray.data"):
        logging.getLogger(name).setLevel(logging.CRITICAL)
