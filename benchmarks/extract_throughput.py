"""Extraction throughput, measured in one run on the same images:

  (a) the usual tutorial loop: torchvision ImageFolder + PIL transforms + DataLoader(batch_size=32)
      + the eager fp32 model (NCHW, torch.no_grad), with the tutorial's num_workers=4 and with the
      DataLoader default num_workers=0; the faster of the two is the baseline;
  (b) the forward pass alone, as `extract` runs it, on uint8 batches already in memory (the ceiling),
      with each engine (torch eager channels_last; onnxruntime on the exported graph);
  (c) `featurize.extract` end to end into a fresh output folder (discovery, decoding, the model -
      with onnxruntime its export to ONNX included - and the HDF5 writes), with each engine;
  (d) the whole `cli.py extract` process (Python start and imports included) into a fresh folder.

Prints images/s and the ratios to the faster tutorial loop and to each engine's ceiling. Usage:
  python benchmarks/extract_throughput.py [--backbone efficientnet_lite0] [--data ../shared/datasets/hymenoptera]
      [--weights random] [--device auto] [--rounds 2] [--repeat 1]
Each figure is the best of --rounds rounds. --repeat N measures on N copies of the data (symbolic
links to the same files), so fixed start-up costs weigh as they would on a larger dataset.
"""

from __future__ import annotations

import argparse
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
from featurize import (  # noqa: E402
    FeatureSpec,  # noqa: E402
    discover,
    extract,
    get_backbone,
)
from featurize.devices import default_batch_size, resolve_device  # noqa: E402
from featurize.engines import ENGINES, load_embedder, resolve_engine  # noqa: E402

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "hymenoptera"


def tutorial_loop(record, weights, data: Path, device: str, num_workers: int) -> tuple[float, int]:
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
    return count / (time.perf_counter() - start), count


def forward_only(record, weights, data: Path, device: str, engine: str) -> tuple[float, int]:
    images = discover(data)
    transform = record.preprocessing().transform()
    tensors = np.stack([transform.from_file(images.root / p) for p in images.paths])
    model = load_embedder(record, weights, device, engine, FeatureSpec(record, weights).fingerprint)
    batch_size = default_batch_size(device)
    model.embed(tensors[:batch_size])  # warm-up (the embedder returns numpy: the device is synchronised)
    start = time.perf_counter()
    for i in range(0, len(tensors), batch_size):
        model.embed(tensors[i : i + batch_size])
    return len(tensors) / (time.perf_counter() - start), len(tensors)


def end_to_end(record, weights, data: Path, device: str, engine: str) -> tuple[float, int]:
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        result = extract(
            data=data, backbone=record.name, weights=weights, out=out, device=device, progress=False, engine=engine
        )
        return result.extracted / (time.perf_counter() - start), result.extracted


def whole_process(record, weights, data: Path, device: str, engine: str) -> tuple[float, int]:
    cli = Path(__file__).resolve().parents[1] / "cli.py"
    with tempfile.TemporaryDirectory() as out:
        command = [
            sys.executable,
            str(cli),
            "extract",
            "--backbone",
            record.name,
            "--data",
            str(data),
            "--out",
            out,
            "--device",
            device,
            "--engine",
            engine,
            "--quiet",
        ] + (["--weights", weights] if weights else [])
        start = time.perf_counter()
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
        seconds = time.perf_counter() - start
    count = len(discover(data))
    return count / seconds, count


def repeated(data: Path, times: int, into: Path) -> Path:
    """`times` copies of an image folder, as symbolic links, keeping its split/class layout."""
    for image in sorted(p for p in data.rglob("*") if p.is_file()):
        relative = image.relative_to(data)
        for copy in range(times):
            target = into / relative.parent / f"{copy}-{relative.name}"
            target.parent.mkdir(parents=True, exist_ok=True)
            target.symlink_to(image.resolve())
    return into


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="efficientnet_lite0")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--weights", default=None, help="default: pretrained; 'random' for backbones not cached here")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=1)
    args = parser.parse_args()
    if args.repeat > 1:
        copies = tempfile.TemporaryDirectory()
        args.data = repeated(args.data, args.repeat, Path(copies.name))
    device = resolve_device(args.device)
    record = get_backbone(args.backbone)
    print(
        f"backbone {record.name} ({record.weights_id(args.weights)}), device {device}, "
        f"torch threads {torch.get_num_threads()}, data {args.data}"
    )
    engines = [e for e in ENGINES if e == "torch" or resolve_engine("auto", device) == e]
    measures = [
        ("(a) tutorial loop, num_workers=4", lambda: tutorial_loop(record, args.weights, args.data, device, 4)),
        ("(a) tutorial loop, num_workers=0", lambda: tutorial_loop(record, args.weights, args.data, device, 0)),
    ]
    for engine in engines:
        measures += [
            (
                f"(b) forward pass alone, {engine}",
                lambda e=engine: forward_only(record, args.weights, args.data, device, e),
            ),
            (f"(c) extract, {engine}", lambda e=engine: end_to_end(record, args.weights, args.data, device, e)),
            (
                f"(d) cli.py extract process, {engine}",
                lambda e=engine: whole_process(record, args.weights, args.data, device, e),
            ),
        ]
    rows = {}
    for _ in range(args.rounds):
        for name, measure in measures:
            rate, count = measure()
            rows[name] = max(rows.get(name, 0.0), rate)
    a = max(rate for name, rate in rows.items() if name.startswith("(a)"))
    print(f"{'':<40} {'img/s':>8} {'x tutorial':>11} {'x ceiling':>10}   ({count} images)")
    for name, rate in rows.items():
        engine = name.rsplit(", ", 1)[-1]
        ceiling = rows.get(f"(b) forward pass alone, {engine}")
        to_ceiling = f"{rate / ceiling:10.2f}" if ceiling and not name.startswith("(b)") else ""
        print(f"{name:<40} {rate:8.1f} {rate / a:11.2f} {to_ceiling}")


if __name__ == "__main__":
    main()
