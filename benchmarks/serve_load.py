"""Load on `cnnfeat serve`, batched vs unbatched, measured in one run on loopback.

Makes a model (lite0 features of the data, a logistic regression on its train rows), then starts
`cli.py serve` twice: with its default batching (--max-batch 16 --max-wait-ms 2) and with every
request run alone (--max-batch 1 --max-wait-ms 0). Each gets, per level of 1, 8 and 32 concurrent
clients, a bounded number of requests (one val image each, after a warm-up), and the table shows
requests/s and p50/p99 latency, then the batched/unbatched throughput ratio at 32 clients.
The clients run on the same machine as the server (2 cores here): both modes pay that equally.

Usage: python benchmarks/serve_load.py [--data ../shared/datasets/hymenoptera] [--requests 96]
"""
from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from featurize import extract, load_features  # noqa: E402
from tests.serving.test_serve import running_server  # noqa: E402  (start on a free port, always stopped)

LEVELS = (1, 8, 32)
MODES = {"batched": ["--max-batch", "16", "--max-wait-ms", "2"], "unbatched": ["--max-batch", "1", "--max-wait-ms", "0"]}


def make_model(data: Path, out: Path) -> tuple[Path, list[Path]]:
    from classifiers import FeatureClassifier, save_model
    from classifiers.heads import HEADS

    features = load_features(extract(data=data, out=out, progress=False).store)
    train = features.splits == "train"
    model = FeatureClassifier(HEADS["logreg"].build(0), class_names=features.class_names,
                              feature_config=features.config, feature_fingerprint=features.fingerprint)
    model.fit(features.X[train], features.y[train])
    path, _ = save_model(model, out / "model.joblib", {"head": "logreg"})
    return path, [Path(features.data_root) / p for p in features.paths[~train]]


async def load(url: str, images: list[bytes], clients: int, requests: int) -> tuple[float, list[float]]:
    """`requests` POSTs of one image each from `clients` concurrent clients: (seconds, latencies)."""
    latencies, next_index = [], iter(range(requests))

    async def client(session):
        for i in next_index:
            start = time.perf_counter()
            answer = await session.post(f"{url}/predict", files=[("images", ("x.jpg", images[i % len(images)]))])
            answer.raise_for_status()
            latencies.append(time.perf_counter() - start)

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(timeout=120, limits=limits) as session:
        start = time.perf_counter()
        await asyncio.gather(*(client(session) for _ in range(clients)))
        return time.perf_counter() - start, latencies


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "datasets" / "hymenoptera")
    parser.add_argument("--requests", type=int, default=160, help="requests per level (bounded)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as out:
        model, paths = make_model(args.data, Path(out))
        images = [p.read_bytes() for p in paths]
        rates = {}
        print(f"{'mode':<10} {'clients':>7} {'req/s':>7} {'p50 ms':>8} {'p99 ms':>8}   ({args.requests} requests "
              f"of one image per level)")
        for mode, options in MODES.items():
            with running_server(model, *options) as url:
                asyncio.run(load(url, images, 4, 16))  # warm-up
                for clients in LEVELS:
                    seconds, latencies = asyncio.run(load(url, images, clients, args.requests))
                    rates[mode, clients] = args.requests / seconds
                    p50, p99 = np.percentile(latencies, [50, 99]) * 1000
                    print(f"{mode:<10} {clients:>7} {rates[mode, clients]:7.1f} {p50:8.1f} {p99:8.1f}", flush=True)
        top = LEVELS[-1]
        print(f"batched / unbatched throughput at {top} clients: {rates['batched', top] / rates['unbatched', top]:.2f}x")


if __name__ == "__main__":
    main()
