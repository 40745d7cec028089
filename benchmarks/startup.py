"""What small jobs cost, whole process (Python's start and every import included), as users run them:

  cli.py --help
  extract, first run           hymenoptera (398 images) into a fresh output folder, ONNX export included
  extract, new folder ...      the same into another fresh folder, the exported graph cached
  extract, up to date          the same command again
  extract, 3 images added      3 new photos in the folder (their vectors computed, the store rewritten)
  predict, one image           a saved logreg model of those features, one photo, its graph cached

Each is the best of --rounds runs (the first extract and the added images are set up again each
round). Then the ratio the issue asks about (3 images added / first run) and where `predict`'s time
goes: `python -X importtime`, summed by top-level package (self time, so nothing counts twice).

Usage: python benchmarks/startup.py [--data ../shared/datasets/hymenoptera] [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CLI = [sys.executable, str(REPO / "cli.py")]
DEFAULT_DATA = REPO.parent / "shared" / "datasets" / "hymenoptera"


def timed(args: list[str], env: dict) -> float:
    start = time.perf_counter()
    subprocess.run(CLI + args, check=True, stdout=subprocess.DEVNULL, env=env)
    return time.perf_counter() - start


def linked_copy(data: Path, into: Path) -> Path:
    """`data` as symbolic links (the same files, a folder of its own to add images to)."""
    for image in sorted(p for p in data.rglob("*") if p.is_file()):
        target = into / image.relative_to(data)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.symlink_to(image.resolve())
    return into


def add_three(data: Path) -> list[Path]:
    """Three new files (copies of existing photos under new names) in the first class folder of train."""
    photos = sorted(p for p in data.rglob("*.jpg"))[:3]
    added = [photo.with_name(f"added-{k}-{photo.name}") for k, photo in enumerate(photos)]
    for photo, new in zip(photos, added):
        shutil.copyfile(photo.resolve(), new)
    return added


def one_round(data_source: Path, work: Path, env: dict) -> tuple[dict[str, float], list[str]]:
    """(the times of one round, its `predict` command)."""
    data, out = linked_copy(data_source, work / "data"), work / "out"
    extract = ["extract", "--data", str(data), "--out", str(out), "--quiet"]
    times = {"cli.py --help": timed(["--help"], env)}
    times["extract, first run"] = timed(extract, env)
    fresh = ["extract", "--data", str(data), "--out", str(work / "out2"), "--quiet"]
    times["extract, new folder, graph cached"] = timed(fresh, env)
    times["extract, up to date"] = timed(extract, env)
    added = add_three(data)
    times["extract, 3 images added"] = timed(extract, env)
    subprocess.run(
        CLI + ["fit", "--clf", "logreg", "--out", str(out), "--quiet"], check=True, env=env, stdout=subprocess.DEVNULL
    )
    model = next((out / "models").rglob("*.joblib"))
    predict = ["predict", "--model", str(model), "--out", str(work / "p.csv"), "--quiet", str(added[0])]
    timed(predict, env)  # the graph cache filled
    times["predict, one image"] = timed(predict, env)
    return times, predict


def import_costs(args: list[str], env: dict, top: int = 8) -> list[tuple[str, float]]:
    """[(top-level package, seconds of its modules' own import time)], the costliest first."""
    run = subprocess.run(
        [sys.executable, "-X", "importtime", *CLI[1:], *args], env=env, capture_output=True, text=True, check=True
    )
    costs = Counter()
    for line in run.stderr.splitlines():
        if not line.startswith("import time:") or "self [us]" in line:
            continue
        self_us, _, name = (part.strip() for part in line[len("import time:") :].split("|"))
        costs[name.strip().split(".")[0]] += int(self_us) / 1e6
    return costs.most_common(top)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    best: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for round_ in range(args.rounds):  # each with an empty graph cache: its first run exports
            env = {**os.environ, "CNNFEAT_CACHE_DIR": str(Path(tmp) / f"graphs{round_}")}
            times, predict = one_round(args.data, Path(tmp) / f"round{round_}", env)
            for name, seconds in times.items():
                best[name] = min(best.get(name, seconds), seconds)
        costs = import_costs(predict, env)  # the last round's, its graph cached
    print(f"whole process, best of {args.rounds}, data {args.data}")
    for name, seconds in best.items():
        print(f"  {name:<34} {seconds:6.2f} s")
    for baseline in ("extract, first run", "extract, new folder, graph cached"):
        print(f"  3 images added / {baseline[9:]:<32} {best['extract, 3 images added'] / best[baseline]:6.2f}")
    print("predict's imports (self time by top-level package):")
    for package, seconds in costs:
        print(f"  {package:<28} {seconds:6.2f} s")


if __name__ == "__main__":
    main()
