"""What decoding a large JPEG at a reduced size (libjpeg's DCT scaling, featurize.decoding.decode_pil)
costs in vectors and accuracy, and what it saves in time.

For each image folder, every image is decoded and centre-cropped three ways - at full size, and
reduced so both sides stay >= 1x and >= 2x the backbone's resize target (cnnfeat uses 2x:
decoding.DRAFT_MARGIN) - and embedded by efficientnet_lite0 (onnxruntime). Prints, per way: the
decode+crop time per image (one thread), the cosine of each image's vector to its full-size
decode's (mean, 1st percentile, minimum), and the val accuracy of three heads fitted on the train
split (standardised logistic regression C=1, RBF SVM C=1, 5-NN on L2-normalised vectors), with how
many val predictions differ from the full-size decode's.

Folders: ../shared/datasets/hymenoptera as it is (median shorter side 374 pixels: few of its photos
are large enough to be reduced), and the same photos upscaled 4x (bicubic) and saved as JPEG
quality 90 (written under --cache), standing in for camera-sized photos, which this machine has
none of. Usage: python benchmarks/reduced_decoding.py [--cache DIR]   (about 3 minutes on 2 cores)
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from data import HYMENOPTERA  # noqa: E402  (benchmarks/data.py)

from featurize import FeatureSpec, discover, get_backbone, load_embedder  # noqa: E402
from featurize.decoding import DRAFT_MARGIN, decode_pil  # noqa: E402

WAYS = {"full size": None, "reduced, >= 1x": 1, "reduced, >= 2x": 2}  # name -> margin over the resize target


def upscaled(source: Path, into: Path, factor: int = 4) -> Path:
    """`source`'s JPEGs, each `factor` x larger (bicubic), as JPEG quality 90, same layout (made once)."""
    from PIL import Image

    done = into / ".complete"
    if done.exists():
        return into
    for path in sorted(source.rglob("*.jpg")):
        target = into / path.relative_to(source)
        target.parent.mkdir(parents=True, exist_ok=True)
        with Image.open(path) as image:
            image = image.convert("RGB")
            image.resize((image.width * factor, image.height * factor), Image.Resampling.BICUBIC).save(
                target, quality=90
            )
    done.touch()
    return into


def crops(files: list[Path], transform, margin: int | None) -> tuple[np.ndarray, float]:
    """(the uint8 crops, decode+crop milliseconds per image) with the given reduction margin."""
    min_side = None if margin is None else transform.resize_size * margin // DRAFT_MARGIN
    datas = [f.read_bytes() for f in files]
    start = time.perf_counter()
    out = np.stack([transform(decode_pil(data, min_side)) for data in datas])
    return out, (time.perf_counter() - start) * 1000 / len(files)


def head_predictions(vectors: np.ndarray, splits: np.ndarray, labels: np.ndarray) -> dict[str, np.ndarray]:
    from sklearn.linear_model import LogisticRegression
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import Normalizer, StandardScaler
    from sklearn.svm import SVC

    heads = {
        "logreg": make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=3000)),
        "svm": make_pipeline(StandardScaler(), SVC(C=1.0)),
        "knn": make_pipeline(Normalizer(), KNeighborsClassifier(5)),
    }
    train, val = splits == "train", splits == "val"
    return {name: head.fit(vectors[train], labels[train]).predict(vectors[val]) for name, head in heads.items()}


def report(name: str, folder: Path, embedder) -> None:
    images = discover(folder)
    files = [images.root / p for p in images.paths]
    splits, labels = np.asarray(images.splits), np.asarray(images.labels)
    transform = embedder.preprocessing.transform()
    print(f"\n{name}: {len(files)} images, {folder}")
    print(f"{'':16} {'ms/img':>7} {'cos mean':>9} {'cos p1':>8} {'cos min':>8}   val accuracy (predictions changed)")
    reference = None
    for way, margin in WAYS.items():
        batch, ms = crops(files, transform, margin)
        vectors = np.concatenate([embedder.embed(batch[i : i + 32]) for i in range(0, len(batch), 32)])
        predicted = head_predictions(vectors, splits, labels)
        if reference is None:
            reference = (vectors, predicted)
        unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
        base = reference[0] / np.linalg.norm(reference[0], axis=1, keepdims=True)
        cosine = (unit * base).sum(1)
        truth = labels[splits == "val"]
        heads = "  ".join(
            f"{head} {np.mean(p == truth):.3f} ({int(np.sum(p != reference[1][head]))})"
            for head, p in predicted.items()
        )
        print(f"{way:16} {ms:7.2f} {cosine.mean():9.5f} {np.percentile(cosine, 1):8.5f} {cosine.min():8.5f}   {heads}")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cache", type=Path, default=None, help="Keep the upscaled photos here.")
    args = parser.parse_args()
    record = get_backbone("efficientnet_lite0")
    embedder = load_embedder(record, None, "cpu", "onnxruntime", FeatureSpec(record).fingerprint)
    with tempfile.TemporaryDirectory() as tmp:
        cache = args.cache or Path(tmp)
        report("hymenoptera", HYMENOPTERA, embedder)
        report("hymenoptera upscaled 4x", upscaled(HYMENOPTERA, cache / "hymenoptera-x4"), embedder)


if __name__ == "__main__":
    main()
