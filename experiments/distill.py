"""`finetune --teacher M.joblib`: knowledge distillation (Hinton et al., 2015) into the fine-tuned network.

The student's loss is (1 - alpha) x the label loss + alpha x T^2 x KL(teacher_T || student_T), where
x_T is a distribution softened at temperature T. The teacher is any saved model - a head, an
ensemble, a fused-backbone model - so it gives probabilities, not logits: softening p at T is
p^(1/T), renormalised (the same as softmax(z / T) when p = softmax(z)). Its probabilities are
computed once per training image (the plain centre crop, not each augmented view) and cached
beside the fine-tune's outputs, keyed by the teacher file's sha256 and the images' identities.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from classifiers import check_record, load_model, model_record
from common.errors import CnnfeatError
from common.files import atomic_write
from common.hashing import file_sha256
from featurize import image_identities


@dataclass(frozen=True)
class Distillation:
    teacher: str  # a saved model (.joblib)
    temperature: float = 4.0
    alpha: float = 0.5  # the teacher's share of the loss; the labels get 1 - alpha

    def check(self) -> Distillation:
        """Refuse a missing teacher, one whose saved record does not vouch for it, or settings out of range."""
        if not Path(self.teacher).is_file():
            raise CnnfeatError(f"--teacher {self.teacher}: no such file")
        check_record(Path(self.teacher), "--teacher")
        if self.temperature <= 0 or not 0 <= self.alpha <= 1:
            raise CnnfeatError(
                f"--temperature must be > 0 and --alpha within [0, 1] (got {self.temperature}, {self.alpha})"
            )
        return self

    def describe(self) -> dict:
        """For the student's record: the settings, and the teacher's own held-out accuracy."""
        heldout = model_record(self.teacher).get("heldout") or {}
        return {
            **asdict(self),
            "teacher": str(Path(self.teacher).resolve()),
            "teacher_heldout_accuracy": heldout.get("accuracy"),
        }

    def loss(self, logits, labels, targets, label_loss):
        """The student's loss on a batch: `targets` are the teacher's probabilities (batch x classes)."""
        import torch.nn.functional as F

        softened = (targets.clamp_min(1e-8).log() / self.temperature).log_softmax(dim=1)
        student = (logits.float() / self.temperature).log_softmax(dim=1)
        matched = F.kl_div(student, softened, log_target=True, reduction="batchmean") * self.temperature**2
        return (1 - self.alpha) * label_loss(logits, labels) + self.alpha * matched


def teacher_probabilities(
    distill: Distillation, images, rows: list[int], folder: Path, device: str, log=print
) -> np.ndarray:
    """The teacher's probabilities (len(rows) x classes, in images.class_names order) for the images
    `rows`, from the cache in `folder` when the teacher file and the images are unchanged."""
    paths = [images.paths[i] for i in rows]
    key = {
        "teacher_sha256": file_sha256(distill.teacher),
        "paths": paths,
        "identities": image_identities(images)[rows].tolist(),
    }
    cache = folder / f"teacher-{key['teacher_sha256'][:12]}.npz"
    if cache.is_file():
        stored = np.load(cache, allow_pickle=False)
        if json.loads(str(stored["key"])) == key:
            log(f"teacher probabilities: from {cache.name}")
            return stored["probabilities"]
    teacher = load_model(distill.teacher, option="--teacher")
    missing = sorted(set(map(str, teacher.classes_)) - set(images.class_names))
    if missing:
        raise CnnfeatError(
            f"--teacher {distill.teacher}: it predicts classes this data does not have ({', '.join(missing)})"
        )
    log(f"teacher probabilities: {len(paths)} training images through {distill.teacher} (once; cached)")
    vectors, failures = teacher.embed_images(paths, device, reader=images.reader)
    readable = np.setdiff1d(np.arange(len(paths)), [position for position, _ in failures])
    probabilities = np.zeros((len(paths), len(images.class_names)), np.float32)
    columns = [images.class_names.index(str(c)) for c in teacher.classes_]
    probabilities[np.ix_(readable, columns)] = teacher.predict_proba(vectors)
    for position, _ in failures:  # never trained on (the loader skips unreadable images); kept well-formed
        probabilities[position, images.labels[rows[position]]] = 1.0
    folder.mkdir(parents=True, exist_ok=True)
    with atomic_write(cache) as tmp, open(tmp, "wb") as handle:
        np.savez(handle, key=json.dumps(key), probabilities=probabilities)
    return probabilities
