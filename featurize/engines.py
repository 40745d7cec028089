"""Engines: what runs a backbone's forward pass. One registry, two entries.

- ``torch``: the eager module, channels_last, float16 autocast on CUDA.
- ``onnxruntime``: the same module exported once to ONNX (uint8 images in, pooled vectors out, the
  normalisation inside the graph) and run by onnxruntime on the CPU: about 2-3x torch eager here.

Every engine gives an *embedder*: ``name``, ``feature_dim``, ``preprocessing`` and ``embed(batch)``
(uint8 images (N,3,H,W) -> float32 vectors (N,D)). Extraction, prediction from files and from PIL
images all call ``embed``, so they compute the same numbers for a given engine.
"""

from __future__ import annotations

import hashlib
import io
import os
import warnings
from pathlib import Path
from typing import Literal, get_args

import numpy as np

from common.errors import CnnfeatError, error_line
from common.files import atomic_write
from common.hashing import json_key

from .backbones.recipe import Recipe
from .devices import usable_cores

Engine = Literal["torch", "onnxruntime"]
ENGINES = get_args(Engine)
ONNX_OPSET = 17
INPUT_NAME, OUTPUT_NAME = "images", "features"


class ExportFailed(CnnfeatError):
    """The backbone does not export to ONNX; extraction falls back to torch and says so."""


def onnxruntime_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("onnxruntime") is not None


def resolve_engine(engine: str, device: str) -> str:
    """`auto` = onnxruntime on the CPU (faster there), torch on CUDA."""
    if engine == "auto":
        return "onnxruntime" if not device.startswith("cuda") and onnxruntime_installed() else "torch"
    if engine not in ENGINES:
        raise CnnfeatError(f"--engine {engine}: unknown (choose auto, {', '.join(ENGINES)})")
    if engine == "onnxruntime":
        if device.startswith("cuda"):
            raise CnnfeatError("--engine onnxruntime runs on the CPU here; use --engine torch (or auto) with CUDA")
        if not onnxruntime_installed():
            raise CnnfeatError("--engine onnxruntime: onnxruntime is not installed (pip install onnxruntime)")
    return engine


def compute_precision(device: str, engine: str = "torch") -> str:
    """The precision the backbone runs in: float16 autocast with torch on CUDA, float32 elsewhere.
    It changes the vectors, so it is part of a store's fingerprint."""
    return "float16" if engine == "torch" and device.startswith("cuda") else "float32"


class TorchEmbedder:
    """The eager torch module on `device`."""

    engine = "torch"

    def __init__(self, model, device: str, name: str):
        import torch

        self.model = model.to(device, memory_format=torch.channels_last)
        self.device, self.name = device, name
        self.feature_dim, self.preprocessing, self.views = model.feature_dim, model.preprocessing, model.views

    def embed(self, batch) -> np.ndarray:
        import torch

        device_type = "cuda" if self.device.startswith("cuda") else "cpu"
        half = compute_precision(self.device, self.engine) == "float16"
        batch = torch.as_tensor(batch).to(self.device, non_blocking=True).contiguous(memory_format=torch.channels_last)
        with torch.inference_mode(), torch.autocast(device_type, dtype=torch.float16, enabled=half):
            return self.model(batch).float().cpu().numpy()


class OnnxEmbedder:
    """An onnxruntime session on the CPU, from an exported backbone graph."""

    engine = "onnxruntime"

    def __init__(
        self, graph: bytes, name: str, feature_dim: int, preprocessing, threads: int | None = None, views: int = 1
    ):
        self.session = cpu_session(graph, threads)
        self.name, self.feature_dim, self.preprocessing, self.views = name, feature_dim, preprocessing, views

    def embed(self, batch) -> np.ndarray:
        images = np.ascontiguousarray(np.asarray(batch), dtype=np.uint8)
        return self.session.run([OUTPUT_NAME], {INPUT_NAME: images})[0].astype(np.float32, copy=False)


def cpu_session(graph: bytes | str | os.PathLike, threads: int | None = None, spinning: bool = False):
    """An onnxruntime CPU session; `threads` default: every core (decoding threads use them too, while
    the session sleeps between batches)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or usable_cores()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # Idle threads sleep rather than spin (`spinning` False): the cores go to the decoding threads
    # between batches (benchmarks/extract_throughput.py --choices).
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    source = str(graph) if isinstance(graph, (str, os.PathLike)) else graph
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


def export_backbone(model) -> bytes:
    """The feature extractor (uint8 (N,3,H,W) -> (N,D), normalisation included) as ONNX bytes."""
    import torch

    crop = model.preprocessing.crop_size
    example = torch.zeros((1, 3, crop, crop), dtype=torch.uint8)
    buffer = io.BytesIO()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and tracer notes
            torch.onnx.export(
                model.cpu().eval(),
                (example,),
                buffer,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                opset_version=ONNX_OPSET,
                dynamo=False,
                dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
            )
    except Exception as error:  # the exporter raises many kinds for an unsupported layer
        raise ExportFailed(f"{type(error).__name__}: {error_line(error)}") from None
    return buffer.getvalue()


def backbone_graph(
    record, weights, fingerprint: str, cache_dir: Path | None, trust_pickle: bool, recipe: Recipe = Recipe()
) -> bytes:
    """The exported graph of `record` with `weights`, as bytes: read from
    `cache_dir/<backbone>-<fingerprint>-<exporter>.onnx` when it is there whole, else exported (and
    written there, atomically, when a cache dir is given: a damaged file is replaced). "Whole" = the
    sha256 written beside it after it: cheaper than onnx's checker, whose import alone took 0.4-0.8 s
    of a one-image `predict`. <exporter> keys what made the graph besides the features' settings
    (exporter_key), so an upgrade never reads a graph an older version exported."""
    name = f"{record.name}-{fingerprint}-{exporter_key()}.onnx"
    path = Path(cache_dir) / name if cache_dir is not None else None
    if path is not None and path.is_file():
        graph = path.read_bytes()
        if _whole(graph, _checksum_path(path)):
            return graph
    graph = export_backbone(record.load(weights, trust_pickle, recipe))
    if path is not None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with atomic_write(path) as tmp:
                tmp.write_bytes(graph)
            with atomic_write(_checksum_path(path)) as tmp:
                tmp.write_text(hashlib.sha256(graph).hexdigest())
        except OSError:  # a cache that cannot be written (a read-only home, a full disk) is only slower
            pass
    return graph


def exporter_key() -> str:
    """8 hex digits naming the code that exports a graph: the opset, torch's and cnnfeat's versions
    (read from the installed packages' metadata: torch is not imported)."""
    from importlib.metadata import PackageNotFoundError, version

    def installed(package: str) -> str:
        try:
            return version(package)
        except PackageNotFoundError:
            return "?"

    return json_key({"opset": ONNX_OPSET, "torch": installed("torch"), "cnnfeat": installed("cnnfeat")}, 8)


def _checksum_path(graph_path: Path) -> Path:
    return graph_path.with_name(graph_path.name + ".sha256")


def graph_cache_dir() -> Path:
    """Where a saved model keeps its backbone's exported graph between runs: $CNNFEAT_CACHE_DIR, else
    $XDG_CACHE_HOME/cnnfeat/onnx (~/.cache/cnnfeat/onnx). Exporting lite0 on every run made `predict`
    of one image 8.8 s here; read from the cache, 7.2-7.4 s (most of the rest is importing torch)."""
    import os

    if os.environ.get("CNNFEAT_CACHE_DIR"):
        return Path(os.environ["CNNFEAT_CACHE_DIR"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache", "cnnfeat", "onnx")


def _whole(graph: bytes, checksum: Path) -> bool:
    """The graph as it was written (a file cut short, overwritten, or without its checksum is not)."""
    try:
        return checksum.read_text().strip() == hashlib.sha256(graph).hexdigest()
    except (OSError, UnicodeDecodeError):
        return False


def load_embedder(
    record,
    weights,
    device: str,
    engine: str,
    fingerprint: str = "",
    cache_dir: Path | None = None,
    trust_pickle: bool = False,
    recipe: Recipe = Recipe(),
):
    """The backbone's frozen feature extractor on `device`, run by `engine` (already resolved)."""
    if engine == "onnxruntime":
        graph = backbone_graph(record, weights, fingerprint, cache_dir, trust_pickle, recipe)
        try:
            return onnx_embedder(graph, record, recipe)
        except Exception as error:  # onnxruntime's own kinds: a graph it cannot run
            raise ExportFailed(f"onnxruntime cannot load the exported graph ({error})") from None
    return TorchEmbedder(record.load(weights, trust_pickle, recipe), device, record.name)


def onnx_embedder(graph: bytes, record, recipe: Recipe = Recipe(), threads: int | None = None) -> OnnxEmbedder:
    """An OnnxEmbedder of `record`'s graph, exported with `recipe`."""
    dim, preprocessing = recipe.feature_dim(record), recipe.input_preprocessing(record)
    return OnnxEmbedder(graph, record.name, dim, preprocessing, threads, recipe.views)
