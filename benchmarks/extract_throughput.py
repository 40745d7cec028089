"""Extraction throughput, measured in one run on the same images:

  (a) the usual tutorial loop: torchvision ImageFolder + PIL transforms + DataLoader(batch_size=32)
      + the eager fp32 model (NCHW, torch.no_grad), with the tutorial's num_workers=4 and with the
      DataLoader default num_workers=0; the faster of the two is the baseline;
  (b) the forward pass alone, as `extract` runs it, on uint8 batches already in memory (the ceiling),
      with each engine (torch eager channels_last; onnxruntime on the exported graph);
  (c) the steady state: decoding overlapped with the forward pass (featurize.iter_vectors, the model
      loaded), with the share of that time the forward pass was running;
  (d) `featurize.extract` end to end into a fresh output folder (discovery, decoding, the model,
      the HDF5 writes; the exported graph already cached);
  (e) the whole `cli.py extract` process (Python start and imports included) into a fresh folder,
      the graph cached, and for onnxruntime also with an empty cache (the export to ONNX included).

Also printed: decoding and cropping alone, ms per image in one thread. Prints images/s and the
ratios to the faster tutorial loop and to each engine's ceiling. Usage:
  python benchmarks/extract_throughput.py [--backbone efficientnet_lite0] [--data ../shared/datasets/hymenoptera]
      [--weights random] [--device auto] [--rounds 2] [--repeat 1]
--choices: only (c), under each setting of onnxruntime's threads, their spinning and the decoding
threads (the evidence for the defaults). Each figure is the best of --rounds rounds. --repeat N
measures on N copies of the data (symbolic links to the same files), so fixed start-up costs weigh
as they would on a larger dataset.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import ConcatDataset, DataLoader
from torchvision import datasets
from torchvision import transforms as T

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from featurize import FeatureSpec, discover, extract, get_backbone, iter_vectors  # noqa: E402
from featurize.devices import default_batch_size, default_workers, resolve_device  # noqa: E402
from featurize.engines import ENGINES, compute_precision, graph_cache_dir, load_embedder, resolve_engine  # noqa: E402

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "hymenoptera"


def tutorial_loop(record, weights, data: Path, device: str, num_workers: int) -> float:
    prep = record.preprocessing()
    transform = T.Compose(
        [
            T.Resize(prep.resize_size, interpolation=T.InterpolationMode(prep.interpolation)),
            T.CenterCrop(prep.crop_size),
            T.ToTensor(),
            T.Normalize(prep.mean, prep.std),
        ]
    )
    folders = [p for p in sorted(data.iterdir()) if p.is_dir()]
    split_folders = [p for p in folders if p.name in ("train", "val", "test")]
    dataset = (
        ConcatDataset([datasets.ImageFolder(p, transform) for p in split_folders])
        if split_folders
        else datasets.ImageFolder(data, transform)
    )
    start = time.perf_counter()
    trunk = record.load(weights).trunk.to(device)  # eager fp32, NCHW
    loader = DataLoader(dataset, batch_size=32, num_workers=num_workers)
    count = 0
    with torch.no_grad():
        for images, _ in loader:
            trunk(images.to(device)).cpu()
            count += len(images)
    return count / (time.perf_counter() - start)


def loaded(record, weights, device: str, engine: str):
    """The embedder extract loads (its graph cached under extract's key)."""
    spec = FeatureSpec(record, weights, compute_precision(device, engine), engine)
    return load_embedder(record, weights, device, engine, spec.fingerprint, graph_cache_dir())


def crops_in_memory(record, data: Path) -> tuple[np.ndarray, float]:
    """(every image's uint8 crop, decode+crop milliseconds per image in one thread)."""
    images = discover(data)
    transform = record.preprocessing().transform()
    start = time.perf_counter()
    crops = np.stack([transform.from_file(images.root / p) for p in images.paths])
    return crops, (time.perf_counter() - start) * 1000 / len(crops)


def forward_only(model, crops: np.ndarray, device: str) -> float:
    batch_size = default_batch_size(device)
    model.embed(crops[:batch_size])  # warm-up (the embedder returns numpy: the device is synchronised)
    start = time.perf_counter()
    for i in range(0, len(crops), batch_size):
        model.embed(crops[i : i + batch_size])
    return len(crops) / (time.perf_counter() - start)


class TimedEmbedder:
    """An embedder that adds up the seconds its forward passes take."""

    def __init__(self, model):
        self.model, self.seconds = model, 0.0
        self.engine, self.feature_dim, self.preprocessing = model.engine, model.feature_dim, model.preprocessing

    def embed(self, batch):
        start = time.perf_counter()
        vectors = self.model.embed(batch)
        self.seconds += time.perf_counter() - start
        return vectors


def pipeline(model, data: Path, device: str, workers: int | None = None) -> tuple[float, float]:
    """(images/s of decoding overlapped with the forward pass, the model loaded; the share of that
    time spent in the forward pass: the rest is waiting for decoded batches and handing them over)."""
    images, timed = discover(data), TimedEmbedder(model)
    start = time.perf_counter()
    for _ in iter_vectors(timed, device, images.reader, images.paths, workers=workers):
        pass
    seconds = time.perf_counter() - start
    return len(images.paths) / seconds, timed.seconds / seconds


def end_to_end(record, weights, data: Path, device: str, engine: str) -> float:
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        result = extract(
            data=data, backbone=record.name, weights=weights, out=out, device=device, progress=False, engine=engine
        )
        return result.extracted / (time.perf_counter() - start)


def whole_process(record, weights, data: Path, device: str, engine: str, cache: str | None = None) -> float:
    """cli.py extract into a fresh folder, its graph cache `cache` (None: the one already filled)."""
    cli = Path(__file__).resolve().parents[1] / "cli.py"
    env = {**os.environ, **({"CNNFEAT_CACHE_DIR": cache} if cache else {})}
    with tempfile.TemporaryDirectory() as out:
        command = [sys.executable, str(cli), "extract", "--backbone", record.name, "--data", str(data), "--out", out]
        command += ["--device", device, "--engine", engine, "--quiet"] + (["--weights", weights] if weights else [])
        start = time.perf_counter()
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL, env=env)
        seconds = time.perf_counter() - start
    return len(discover(data)) / seconds


def first_ever(record, weights, data: Path, device: str, engine: str) -> float:
    with tempfile.TemporaryDirectory() as cache:
        return whole_process(record, weights, data, device, engine, cache)


def repeated(data: Path, times: int, into: Path) -> Path:
    """`times` copies of an image folder, as symbolic links, keeping its split/class layout."""
    for image in sorted(p for p in data.rglob("*") if p.is_file()):
        relative = image.relative_to(data)
        for copy in range(times):
            target = into / relative.parent / f"{copy}-{relative.name}"
            target.parent.mkdir(parents=True, exist_ok=True)
            target.symlink_to(image.resolve())
    return into


def session_choices(record, weights, data: Path) -> None:
    """(c) for onnxruntime under each choice of its threads, its idle threads' spinning, and the
    decoding threads: the evidence for the defaults (every core each, no spinning)."""
    from featurize.engines import backbone_graph, cpu_session

    spec = FeatureSpec(record, weights, "float32", "onnxruntime")

    cores = os.cpu_count() or 1
    graph = backbone_graph(record, weights, spec.fingerprint, graph_cache_dir(), False)
    model = loaded(record, weights, "cpu", "onnxruntime")
    print(f"\n(c) decode + forward, onnxruntime, by setting ({cores} cores); images/s, best of 2:")
    print(f"{'onnxruntime threads':>20} {'spinning':>9} {'decoding threads':>17} {'img/s':>7}")
    for threads in sorted({1, cores}):
        for spinning in (True, False):
            model.session = cpu_session(graph, threads, spinning)
            for workers in sorted({1, cores, 2 * cores}):
                rate = max(pipeline(model, data, "cpu", workers)[0] for _ in range(2))
                print(f"{threads:>20} {'on' if spinning else 'off':>9} {workers:>17} {rate:7.1f}")


def measures(record, weights, data: Path, device: str, engines: list[str]) -> list[tuple[str, object]]:
    """[(row name, a function measuring images/s (or (images/s, forward share)))] in the order run."""
    rows = [
        ("(a) tutorial loop, num_workers=4", lambda: tutorial_loop(record, weights, data, device, 4)),
        ("(a) tutorial loop, num_workers=0", lambda: tutorial_loop(record, weights, data, device, 0)),
    ]
    for engine in engines:
        model = loaded(record, weights, device, engine)
        crops, _ = crops_in_memory(record, data)
        rows += [
            (f"(b) forward pass alone, {engine}", lambda m=model, c=crops: forward_only(m, c, device)),
            (f"(c) decode + forward, {engine}", lambda m=model: pipeline(m, data, device)),
            (f"(d) extract, {engine}", lambda e=engine: end_to_end(record, weights, data, device, e)),
            (f"(e) cli.py extract, {engine}", lambda e=engine: whole_process(record, weights, data, device, e)),
        ]
        if engine == "onnxruntime":
            rows.append(
                (f"(e) first ever (export), {engine}", lambda e=engine: first_ever(record, weights, data, device, e))
            )
    return rows


def print_table(rows: dict[str, tuple[float, float | None]], count: int, decode_ms: float) -> None:
    a = max(rate for name, (rate, _) in rows.items() if name.startswith("(a)"))
    print(f"decode + crop alone: {decode_ms:.2f} ms per image, one thread")
    print(f"{'':<42} {'img/s':>8} {'x tutorial':>11} {'x ceiling':>10}   ({count} images)")
    for name, (rate, busy) in rows.items():
        engine = name.rsplit(", ", 1)[-1]
        ceiling = rows.get(f"(b) forward pass alone, {engine}", (None,))[0]
        to_ceiling = f"{rate / ceiling:10.2f}" if ceiling and not name.startswith("(b)") else " " * 10
        forward = f"   forward pass busy {busy:.0%} of the time" if busy is not None else ""
        print(f"{name:<42} {rate:8.1f} {rate / a:11.2f} {to_ceiling}{forward}")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="efficientnet_lite0")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--weights", default=None, help="default: pretrained; 'random' for backbones not cached here")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--choices", action="store_true", help="Only (c), under each onnxruntime setting.")
    args = parser.parse_args()
    if args.repeat > 1:
        copies = tempfile.TemporaryDirectory()
        args.data = repeated(args.data, args.repeat, Path(copies.name))
    cache = tempfile.TemporaryDirectory()
    os.environ["CNNFEAT_CACHE_DIR"] = cache.name  # this run's own graph cache
    device = resolve_device(args.device)
    record = get_backbone(args.backbone)
    print(
        f"backbone {record.name} ({record.weights_id(args.weights)}), device {device}, "
        f"torch threads {torch.get_num_threads()}, data {args.data}, decoding workers "
        f"{', '.join(f'{e} {default_workers(e)}' for e in ENGINES)}"
    )
    if args.choices:
        return session_choices(record, args.weights, args.data)
    engines = [e for e in ENGINES if e == "torch" or resolve_engine("auto", device) == e]
    rows: dict[str, tuple[float, float | None]] = {}
    for _ in range(args.rounds):
        for name, measure in measures(record, args.weights, args.data, device, engines):
            measured = measure()
            rate, busy = measured if isinstance(measured, tuple) else (measured, None)
            if rate > rows.get(name, (0.0, None))[0]:
                rows[name] = (rate, busy)
    _, decode_ms = crops_in_memory(record, args.data)
    print_table(rows, len(discover(args.data)), decode_ms)


if __name__ == "__main__":
    main()
