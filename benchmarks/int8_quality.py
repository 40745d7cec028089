"""Is int8 honest? Static QDQ quantisation of a backbone, measured against its fp32 graph.

onnxruntime's `quantize_static` (QDQ, per-channel int8 weights, uint8 activations, MinMax
calibration on 64 of the data's own train images) is applied to the backbone as `extract`
exports it, in three variants: everything quantised; the normalisation and first conv kept in
float (the usual suspects); those and the last conv + pooling kept in float. For each: cosine of
the val vectors to fp32 (median, min), forward-pass speed against the fp32 graph in the same run,
and a logistic regression's val accuracy on each set of vectors. `--precision int8` ships only if
the median cosine is >= 0.99 and head accuracy moves by <= 0.5 points.

Usage: python benchmarks/int8_quality.py [--backbone efficientnet_lite0] [--data ../shared/datasets/hymenoptera]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from featurize import discover, get_backbone  # noqa: E402
from featurize.engines import cpu_session, export_backbone  # noqa: E402


def crops(images, record, paths):
    transform = record.preprocessing().transform()
    return np.stack([transform.from_file(images.root / p) for p in paths])


def embed(session, batch, size=16):
    return np.concatenate([session.run(None, {"images": batch[i : i + size]})[0] for i in range(0, len(batch), size)])


def rate(session, batch):
    embed(session, batch[:16])  # warm-up
    start = time.perf_counter()
    embed(session, batch)
    return len(batch) / (time.perf_counter() - start)


def quantise(prepared: Path, out: Path, calibration: np.ndarray, exclude: list[str]) -> Path:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = iter(calibration[i : i + 8] for i in range(0, len(calibration), 8))

        def get_next(self):
            batch = next(self.batches, None)
            return None if batch is None else {"images": batch}

    quantize_static(
        str(prepared),
        str(out),
        Reader(),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        nodes_to_exclude=exclude,
    )
    return out


def main():
    from onnxruntime.quantization.shape_inference import quant_pre_process

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="efficientnet_lite0")
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "datasets" / "hymenoptera")
    args = parser.parse_args()
    record, images = get_backbone(args.backbone), discover(args.data)
    splits = np.asarray([p.split("/", 1)[0] for p in images.paths])
    labels = np.asarray(images.labels)
    train = [p for p, s in zip(images.paths, splits) if s == "train"]
    val = [p for p, s in zip(images.paths, splits) if s == "val"]
    train_crops, val_crops = crops(images, record, train), crops(images, record, val)
    calibration = train_crops[np.random.default_rng(0).choice(len(train), 64, replace=False)]
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        (folder / "fp32.onnx").write_bytes(export_backbone(record.load(None)))
        quant_pre_process(str(folder / "fp32.onnx"), str(folder / "prepared.onnx"), skip_symbolic_shape=True)
        nodes = [n.name for n in onnx.load(folder / "prepared.onnx").graph.node]
        first_conv = next(n.name for n in onnx.load(folder / "prepared.onnx").graph.node if n.op_type == "Conv")
        head = nodes[: nodes.index(first_conv) + 1]
        variants = {
            "fp32 (reference)": None,
            "int8, all": [],
            "int8, float normalisation + first conv": head,
            "int8, float first and last layers": head + nodes[-3:],
        }
        fp32 = cpu_session(folder / "fp32.onnx")
        reference, fp32_rate = embed(fp32, val_crops), rate(fp32, val_crops)
        print(f"{args.backbone}, {len(train)} train / {len(val)} val images, calibration on 64 train images")
        print(f"{'variant':<42} {'cos median':>10} {'cos min':>8} {'speed':>6} {'logreg val':>10}")
        for name, exclude in variants.items():
            path = (
                folder / "fp32.onnx"
                if exclude is None
                else quantise(folder / "prepared.onnx", folder / "int8.onnx", calibration, exclude)
            )
            session = cpu_session(path)
            vectors = embed(session, val_crops)
            cosine = (vectors * reference).sum(1) / np.linalg.norm(vectors, axis=1) / np.linalg.norm(reference, axis=1)
            head_model = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=5000))
            head_model.fit(embed(session, train_crops), labels[splits == "train"])
            accuracy = head_model.score(vectors, labels[splits == "val"])
            speed = (fp32_rate if exclude is None else rate(session, val_crops)) / fp32_rate
            print(
                f"{name:<42} {np.median(cosine):10.4f} {cosine.min():8.4f} {speed:5.2f}x {accuracy:10.4f}", flush=True
            )


if __name__ == "__main__":
    main()
