"""What `finetune --teacher` does on hymenoptera: efficientnet_lite0 fine-tuned end to end, the same
epochs and seed, without and with a teacher, and the teacher's own score, all on val.

The teacher: logistic regression on efficientnet_lite2 features (the larger network), searched
by `fit` on the train rows. Its probabilities are computed once per training image.

Usage: python benchmarks/distillation.py [--epochs 5] [--cache DIR]   (about 5 minutes on 2 cores)
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from data import HYMENOPTERA  # noqa: E402  (benchmarks/data.py)

from experiments.distill import Distillation  # noqa: E402
from experiments.finetune import run_finetune  # noqa: E402
from experiments.fit import fit_model  # noqa: E402
from featurize import extract  # noqa: E402


def student(out: Path, epochs: int, distill=None) -> float:
    folder = run_finetune(
        data=HYMENOPTERA, out=out, epochs=epochs, seed=0, progress=False, log=lambda _: None, distill=distill
    )
    return json.loads((folder / "model.json").read_text())["heldout"]["accuracy"]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--cache", type=Path, default=None, help="Keep feature files here.")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        store = extract(data=HYMENOPTERA, backbone="efficientnet_lite2", out=args.cache or work, progress=False).store
        teacher = fit_model(features=store, out=work, clf="logreg", log=lambda _: None)
        alone = student(work / "alone", args.epochs)
        taught = {
            (T, alpha): student(
                work / f"taught-{T}-{alpha}", args.epochs, Distillation(str(teacher.model_path), T, alpha)
            )
            for T, alpha in ((4.0, 0.5), (2.0, 0.9))
        }
    print(f"\n### hymenoptera val accuracy (153 images), lite0 fine-tuned {args.epochs} epochs, seed 0\n")
    print("| model | val acc |\n|---|---|")
    print(f"| teacher: logreg on lite2 features | {teacher.info['heldout']['accuracy']:.3f} |")
    print(f"| student alone (labels only) | {alone:.3f} |")
    for (T, alpha), accuracy in taught.items():
        print(f"| student + teacher (T={T:g}, alpha={alpha:g}) | {accuracy:.3f} ({100 * (accuracy - alone):+.1f}) |")


if __name__ == "__main__":
    main()
