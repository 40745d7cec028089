"""Load on `cnnfeat serve`, measured on loopback: throughput, or (--memory) peak memory.

Makes a model (lite0 features of the data, a logistic regression on its train rows), then:

Default: starts `cli.py serve` twice, with its default batching (--max-batch 16 --max-wait-ms 2)
and with every request run alone (--max-batch 1 --max-wait-ms 0). Each gets, per level of 1, 8
and 32 concurrent clients, a bounded number of requests (one val image each, after a warm-up), and
the table shows requests/s and p50/p99 latency, then the batched/unbatched throughput ratio at 32
clients. The clients run on the same machine as the server (2 cores here): both modes pay that
equally.

--memory: for each worst case, starts a fresh `cli.py serve` (default limits) and sends it 32
concurrent uploads of one image each; the table shows the server's RSS after a warm-up (idle), its
peak (VmHWM in /proc/<pid>/status) and what it keeps after the burst. The cases: a 9400x9400 PNG
(88 MP: under Pillow's own limit, over --max-pixels), images just under --max-pixels in the
cheapest (PNG) and the costliest (TIFF through PIL, 16-bit PNG) decode paths, and an 80 MP JPEG
(decoded at 1/8 scale); then the 40 MP PNG and TIFF again with --decode-threads 8, to show what the
growth follows: the decodes allowed at once, not the requests. Measured here (2 cores, lite0):

    python benchmarks/serve_load.py --memory

    serve options      case                                    answers    idle   peak  peak-idle  after
    (defaults)         PNG 9400x9400 (88 MP, over the limit)   32 x 422    979    997        +18    997
    (defaults)         PNG 6320x6320 (39.9 MP)                 32 x 200    980   1242       +262   1014
    (defaults)         TIFF 6320x6320 (39.9 MP, via PIL)       32 x 200    984   2362      +1378   1893
    (defaults)         16-bit PNG 4470x4470 (20 MP, counts 40) 32 x 200    980   2148      +1169   1134
    (defaults)         JPEG 10000x8000 (80 MP, 1/8 scale)      32 x 200    980   1078        +98   1078
    --decode-threads 8 PNG 6320x6320 (39.9 MP)                 32 x 200    984   1976       +993   1109
    --decode-threads 8 TIFF 6320x6320 (39.9 MP, via PIL)       32 x 200    998   5448      +4450   4423

With the defaults (--max-pixels 40 MP, --decode-threads 2, --max-queue 32) the server's peak stayed
within idle + 1.4 GB (about 2 x 40 MP x 17 bytes: a TIFF decoded through PIL); before these limits,
16 concurrent 9400x9400 PNGs took it from 2.7 to 5.75 GB. After a burst the allocator keeps part
of what it used (the `after` column); a second burst reuses it rather than adding to it.

Usage: python benchmarks/serve_load.py [--data ../shared/datasets/hymenoptera] [--requests 160] [--memory]
"""

from __future__ import annotations

import argparse
import asyncio
import io
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import httpx
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # the packages, and tests/ for its server helpers
from featurize import extract, load_features
from tests.serving.test_serve import running_server, server_process

LEVELS = (1, 8, 32)
MODES = {
    "batched": ["--max-batch", "16", "--max-wait-ms", "2"],
    "unbatched": ["--max-batch", "1", "--max-wait-ms", "0"],
}
UPLOADS = 32  # concurrent worst-case uploads per memory case


def make_model(data: Path, out: Path) -> tuple[Path, list[Path]]:
    from classifiers import FeatureClassifier, save_model
    from classifiers.heads import HEADS

    features = load_features(extract(data=data, out=out, progress=False).store)
    train = features.splits == "train"
    model = FeatureClassifier(
        HEADS["logreg"].build(0),
        class_names=features.class_names,
        feature_config=features.config,
        feature_fingerprint=features.fingerprint,
    )
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


def throughput(model: Path, images: list[bytes], requests: int):
    rates = {}
    print(
        f"{'mode':<10} {'clients':>7} {'req/s':>7} {'p50 ms':>8} {'p99 ms':>8}   ({requests} requests "
        f"of one image per level)"
    )
    for mode, options in MODES.items():
        with running_server(model, *options) as url:
            asyncio.run(load(url, images, 4, 16))  # warm-up
            for clients in LEVELS:
                seconds, latencies = asyncio.run(load(url, images, clients, requests))
                rates[mode, clients] = requests / seconds
                p50, p99 = np.percentile(latencies, [50, 99]) * 1000
                print(f"{mode:<10} {clients:>7} {rates[mode, clients]:7.1f} {p50:8.1f} {p99:8.1f}", flush=True)
    top = LEVELS[-1]
    print(f"batched / unbatched throughput at {top} clients: {rates['batched', top] / rates['unbatched', top]:.2f}x")


# -- memory ---------------------------------------------------------------------------------------


def worst_cases() -> dict[str, bytes]:
    """name -> file bytes: flat images (tiny files), each as costly to decode as the limits allow."""
    from PIL import Image

    def encoded(image, fmt, **options):
        buffer = io.BytesIO()
        image.save(buffer, fmt, **options)
        return buffer.getvalue()

    side = 6320  # 39.9 MP: just under the default --max-pixels (40 MP)
    return {
        "PNG 9400x9400 (88 MP, over the limit)": encoded(Image.new("RGB", (9400, 9400), (120, 80, 40)), "PNG"),
        f"PNG {side}x{side} (39.9 MP)": encoded(Image.new("RGB", (side, side), (120, 80, 40)), "PNG"),
        f"TIFF {side}x{side} (39.9 MP, via PIL)": encoded(
            Image.new("RGB", (side, side), (120, 80, 40)), "TIFF", compression="tiff_deflate"
        ),
        "16-bit PNG 4470x4470 (20 MP, counts 40)": encoded(Image.new("I;16", (4470, 4470), 3000), "PNG"),
        "JPEG 10000x8000 (80 MP, 1/8 scale)": encoded(Image.new("RGB", (10000, 8000), (120, 80, 40)), "JPEG"),
    }


def _status_mb(pid: int, key: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {key} in /proc/{pid}/status")


async def burst(url: str, name: str, data: bytes, count: int) -> Counter:
    """`count` concurrent POSTs of one upload each; their status codes, counted."""
    limits = httpx.Limits(max_connections=count, max_keepalive_connections=count)
    async with httpx.AsyncClient(timeout=600, limits=limits) as session:
        answers = await asyncio.gather(
            *(session.post(f"{url}/predict", files=[("images", (name, data))]) for _ in range(count))
        )
    return Counter(a.status_code for a in answers)


def memory(model: Path, warm_up: bytes):
    """One fresh server per case (what one burst leaves behind in the allocator would blur the next)."""
    cases = worst_cases()
    runs = [([], name) for name in cases] + [(["--decode-threads", "8"], name) for name in cases if "6320" in name]
    print(
        f"{'serve options':<20} {'case':<40} {'answers':<10} {'idle':>7} {'peak':>7} {'peak-idle':>9} "
        f"{'after':>7}   (RSS in MB; {UPLOADS} concurrent uploads)"
    )
    for options, name in runs:
        with server_process(model, *options) as (url, process):
            asyncio.run(burst(url, "warm.jpg", warm_up, 4))
            idle = _status_mb(process.pid, "VmRSS")
            codes = asyncio.run(burst(url, name.split()[0].lower(), cases[name], UPLOADS))
            peak, after = _status_mb(process.pid, "VmHWM"), _status_mb(process.pid, "VmRSS")
        answers = ", ".join(f"{n} x {code}" for code, n in sorted(codes.items()))
        print(
            f"{' '.join(options) or '(defaults)':<20} {name:<40} {answers:<10} {idle:7.0f} {peak:7.0f} "
            f"{peak - idle:+9.0f} {after:7.0f}",
            flush=True,
        )


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "datasets" / "hymenoptera")
    parser.add_argument("--requests", type=int, default=160, help="requests per level (bounded)")
    parser.add_argument(
        "--memory",
        action="store_true",
        help=f"peak RSS of the server under {UPLOADS} concurrent worst-case uploads, instead",
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as out:
        model, paths = make_model(args.data, Path(out))
        images = [p.read_bytes() for p in paths]
        if args.memory:
            memory(model, images[0])
        else:
            throughput(model, images, args.requests)


if __name__ == "__main__":
    main()
