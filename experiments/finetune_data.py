"""The images of a fine-tune: which ones it learns from, which slice of train chooses its epoch and
which split scores it, and the loaders that feed them to the network (unreadable images left out
of their batch)."""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from common.errors import CnnfeatError
from featurize import ImageDataset, OnTensors, checked_batches, collate_readable

from .splits import SCORED_SPLITS, holdout_rows

SELECTION_FRACTION = 0.2  # of the training images, held back to choose the epoch


class FinetuneRows(NamedTuple):
    """Image indices (into the discovered ImageList) of each part."""

    train: list[int]  # learnt from
    select: list[int]  # a stratified slice of train that chooses the epoch
    heldout: list[int]  # val (else test, else compare's hold-out): scores the chosen network, as it scores every head
    heldout_name: str  # "val", "test" or "holdout"


class Compute(NamedTuple):
    """Where and in what batches the network runs."""

    device: str
    batch_size: int
    workers: int  # decoding processes; 0: in this one


def finetune_rows(images, data, seed: int, heldout_paths=None) -> FinetuneRows:
    """Split the images: the held-out ones (`heldout_split`), and train less a stratified
    SELECTION_FRACTION slice (a row of each class at least) that chooses the epoch."""
    from sklearn.model_selection import train_test_split

    all_train, heldout, heldout_name = heldout_split(images, data, seed, heldout_paths)
    labels = [images.labels[i] for i in all_train]
    if min(labels.count(label) for label in set(labels)) < 2:
        raise CnnfeatError(
            "finetune needs at least 2 training images per class: some train, and a slice of train chooses the epoch"
        )
    select_size = max(len(set(labels)), math.ceil(SELECTION_FRACTION * len(all_train)))  # a row of each class
    train, select = train_test_split(all_train, test_size=select_size, stratify=labels, random_state=seed)
    return FinetuneRows(sorted(train), sorted(select), heldout, heldout_name)


def heldout_split(images, data, seed: int, heldout_paths=None) -> tuple[list[int], list[int], str]:
    """(training images, held-out images, the held-out split's name): train/ and val/ (else test/);
    without them, the seeded stratified hold-out `compare` draws (experiments.splits.holdout_rows) of
    train/ (or of every image), or exactly `heldout_paths` where compare gives its own."""
    train = _rows_of(images, "train")
    named = next((s for s in SCORED_SPLITS if s in images.splits), None) if train else None
    if named and heldout_paths is None:
        return train, _rows_of(images, named), named
    pool = np.asarray(train or range(len(images.paths)), dtype=np.int64)
    if heldout_paths is not None:
        held = _given_heldout(images, pool, heldout_paths, named, data)
    else:
        paths, labels = [images.paths[i] for i in pool], [images.labels[i] for i in pool]
        held = pool[holdout_rows(paths, labels, seed, str(data))[1]]
    return sorted(set(pool.tolist()) - set(held.tolist())), sorted(held.tolist()), "holdout"


def _rows_of(images, split: str) -> list[int]:
    return [i for i, s in enumerate(images.splits) if s == split]


def _given_heldout(images, pool: np.ndarray, heldout_paths, named: str | None, data) -> np.ndarray:
    """The rows of `pool` that compare holds out (`heldout_paths`); refused where the images changed
    since compare's feature file was extracted (one of them gone, or a split folder added)."""
    wanted = set(heldout_paths)
    held = np.asarray([i for i in pool if images.paths[i] in wanted], dtype=np.int64)
    if named or len(held) < len(wanted):
        raise CnnfeatError(
            f"the images in {data} have changed since extraction ({len(wanted) - len(held)} of compare's "
            f"{len(wanted)} held-out images gone{f', a {named}/ split added' if named else ''}): run "
            "`cnnfeat extract` on it again"
        )
    return held


def train_loader(images, rows: list[int], transform, compute: Compute, generator):
    """Shuffled batches of the images `rows` (augmented by `transform`): featurize's collate_readable
    batches (positions in `rows`, the decoded images stacked or None, [(position, reason)])."""
    from torch.utils.data import DataLoader

    dataset = ImageDataset(images.reader, [images.paths[i] for i in rows], OnTensors(transform))
    return DataLoader(
        dataset,
        batch_size=compute.batch_size,
        shuffle=True,
        generator=generator,
        num_workers=compute.workers,
        collate_fn=collate_readable,
        pin_memory=compute.device.startswith("cuda"),
    )


def predict_rows(network, images, rows: list[int], prep, compute: Compute, tta: bool):
    """(paths, labels, softmax probabilities) of the readable images `rows`, centre-cropped (and
    averaged with the mirrored image's under `tta`)."""
    from scipy.special import softmax

    paths, labels, logits = forward_rows(network, images, rows, prep, compute, mirror=tta)
    if not len(paths):
        return paths, labels, np.zeros((0, 0))
    proba = softmax(logits, axis=-1)
    return paths, labels, proba.mean(1) if tta else proba


def forward_rows(module, images, rows: list[int], prep, compute: Compute, mirror: bool = False):
    """(paths, labels, outputs) of `module` in eval mode on the readable images `rows`, centre-cropped:
    a network's logits, or an extractor's pooled vectors; under `mirror`, (images, 2, outputs):
    each image's and its mirror image's."""
    import torch
    from torch.utils.data import DataLoader

    dataset = ImageDataset(images.reader, [images.paths[i] for i in rows], prep.transform())
    loader = DataLoader(
        dataset, batch_size=compute.batch_size, num_workers=compute.workers, collate_fn=collate_readable
    )
    module.eval()
    positions, outputs = [], []
    cuda = compute.device.startswith("cuda")
    with torch.inference_mode(), torch.autocast("cuda", dtype=torch.float16, enabled=cuda):
        for readable, images_batch, _ in checked_batches(loader, compute.workers):
            if images_batch is None:  # no image of the batch could be read
                continue
            batch = images_batch.to(compute.device).contiguous(memory_format=torch.channels_last)
            output = module(batch).float()
            if mirror:
                output = torch.stack([output, module(torch.flip(batch, dims=[3])).float()], dim=1)
            outputs.append(output.cpu().numpy())
            positions += readable
    return (
        [dataset.paths[i] for i in positions],
        [images.labels[rows[i]] for i in positions],
        np.concatenate(outputs) if outputs else np.zeros((0, 0)),
    )
