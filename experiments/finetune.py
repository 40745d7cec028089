"""`cnnfeat finetune`: the backbone plus a new linear layer, trained end to end on the images.

The classic transfer-learning recipe: random resized crop + flip, all layers or only the last N
blocks unfrozen (frozen layers keep their batch-norm statistics), AdamW with warm-up + cosine,
label smoothing, optional flip test-time augmentation. The best epoch is chosen on a stratified
slice of the training images, never on val: val only scores the chosen network, as it scores every
head in `compare`. It writes OUT/finetune/<dataset>-<backbone>/: checkpoint.pth (what `extract
--weights` takes), model.joblib (+ .json, a saved model like every head's) and heldout.csv (its
val predictions, for `compare`).

The run, in order: the settings (FinetuneSettings), the images (experiments.finetune_data), the
network (`build_network`), the loader, optimiser and schedule (`prepare_training`), the epochs and
the choice among them (`choose_epoch`), and the saved result (`save_result`).
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import NamedTuple

import numpy as np

from classifiers import FeatureClassifier, save_model, warmup_cosine
from common.errors import CnnfeatError
from common.files import atomic_write, ensure_writable
from featurize import (
    DEFAULT_BACKBONE,
    FeatureSpec,
    checked_batches,
    compute_precision,
    default_workers,
    discover,
    get_backbone,
    resolve_device,
    resolve_engine,
)

from .choices import BATCHNORM_MODES, FINETUNE_CROP_SCALE, FINETUNE_EPOCHS, FINETUNE_UNFREEZE, HEAD_INITS
from .distill import Distillation, teacher_probabilities
from .finetune_data import SELECTION_FRACTION, Compute, FinetuneRows, finetune_rows, predict_rows, train_loader
from .finetuned import FINETUNE_ROW, HELDOUT_CSV, write_heldout_csv
from .layout import DEFAULT_OUT, finetune_dir
from .linear_probe import probe_head
from .unfreeze import follow_new_images, keep_batchnorm_statistics, set_trainable, trunk_blocks, unfrozen_count


@dataclass(frozen=True)
class FinetuneSettings:
    """What a fine-tune does (the options of `cnnfeat finetune`); what it reads and where it writes
    are run_finetune's own arguments."""

    backbone: str = DEFAULT_BACKBONE
    weights: str | None = None  # None: the backbone's own pretrained weights; a checkpoint PATH; "random"
    epochs: int = FINETUNE_EPOCHS
    unfreeze: str = FINETUNE_UNFREEZE  # all, none, or last-N-blocks
    crop_scale: float = FINETUNE_CROP_SCALE  # the smallest share of the image a random crop keeps
    flip: bool = True  # train on mirrored images too (not for data whose mirror image means another class)
    head_init: str = HEAD_INITS[0]  # probe: the new layer starts as a logreg on the frozen features; random
    # frozen: every batch-norm layer keeps its statistics; train: unfrozen ones update theirs
    batchnorm: str = BATCHNORM_MODES[0]
    lr: float = 1e-3  # the new linear layer's; the backbone's is lr x backbone_lr_scale
    backbone_lr_scale: float = 0.1
    batch_size: int | None = None  # None: 64 on CUDA, 16 on the CPU
    label_smoothing: float = 0.1
    weight_decay: float = 0.05
    tta: bool = False  # score with the mirrored image's probabilities averaged in
    device: str = "auto"
    workers: int | None = None  # decoding processes; None: featurize's default
    seed: int = 0
    progress: bool = True
    distill: Distillation | None = None  # also learn a saved model's probabilities (experiments.distill)

    def check(self) -> FinetuneSettings:
        """Refuse a setting the run cannot use, in one line, before anything is read."""
        if self.head_init not in HEAD_INITS:
            raise CnnfeatError(f"head_init {self.head_init!r}: use one of {', '.join(HEAD_INITS)}")
        if self.batchnorm not in BATCHNORM_MODES:
            raise CnnfeatError(f"batchnorm {self.batchnorm!r}: use one of {', '.join(BATCHNORM_MODES)}")
        unfrozen_count(self.unfreeze, 0)  # its form
        if not 0 < self.crop_scale <= 1:
            raise CnnfeatError(f"crop_scale {self.crop_scale}: a share of the image, over 0 and at most 1")
        return self

    def compute(self) -> Compute:
        device = resolve_device(self.device)
        return Compute(
            device,
            self.batch_size or (64 if device.startswith("cuda") else 16),
            default_workers() if self.workers is None else self.workers,
        )

    def recorded(self, batch_size: int, best_epoch: int, probe_c: float | None) -> dict:
        """The saved model's best_params: these settings as they ran, the probe's C, the epoch chosen."""
        return {
            "epochs": self.epochs,
            "unfreeze": self.unfreeze,
            "head_init": self.head_init if probe_c is None else f"probe (logreg C={probe_c:g})",
            "batchnorm": self.batchnorm,
            "crop_scale": self.crop_scale,
            "flip": self.flip,
            "lr": self.lr,
            "backbone_lr_scale": self.backbone_lr_scale,
            "label_smoothing": self.label_smoothing,
            "weight_decay": self.weight_decay,
            "tta": self.tta,
            "batch_size": batch_size,
            "seed": self.seed,
            "best_epoch": best_epoch,
            **({"distillation": self.distill.describe()} if self.distill is not None else {}),
        }


class Network(NamedTuple):
    module: object  # nn.Sequential: the backbone's extractor, dropout, the new linear layer
    trunk: object  # the backbone's trunk (its blocks, some unfrozen)
    head: object  # the new nn.Linear
    prep: object  # the backbone's preprocessing
    unfrozen: int  # blocks of the trunk that train


@dataclass
class Training:
    """Everything one epoch of training uses."""

    network: Network
    loader: object  # batches of (positions in the training rows, images)
    labels: object  # tensor: the training rows' labels, by position
    targets: object  # tensor: the teacher's probabilities by position, or None
    optimizer: object
    schedule: object
    loss_fn: object
    settings: FinetuneSettings
    compute: Compute


@dataclass
class FinetuneResult:
    """A fine-tuned network, its epoch chosen, scored on the held-out images: what is saved."""

    network: Network
    heldout: tuple  # (paths, labels, probabilities) of the readable held-out images
    heldout_name: str
    history: list  # per epoch: train loss, accuracy on the selection slice, seconds
    best_epoch: int
    fit_seconds: float
    selection: str  # how the epoch was chosen, for the record
    probe_c: float | None  # the linear probe's C, where the head started as one


class FinetunePlan(NamedTuple):
    """What a fine-tune works on, checked before anything is trained."""

    images: object  # the discovered ImageList
    rows: FinetuneRows
    backbone: object
    folder: Path  # where it writes


def plan_finetune(
    data, out, settings: FinetuneSettings, heldout_paths=None, name: str | None = None, storage_options: tuple = ()
) -> FinetunePlan:
    """The images, their split, the backbone and the output folder, or a clear error for the first
    thing that is wrong; `heldout_paths`: compare's held-out images, scored instead of a hold-out
    drawn here (data without val/ or test/); `name`: the dataset's readable name, as `extract --name`
    gave it (the folder is OUT/finetune/<dataset>-<backbone>/, where compare looks for it);
    `storage_options`: for data in an object store (featurize.remote)."""
    settings.check()
    images = discover(data, name, storage_options)
    rows = finetune_rows(images, data, settings.seed, heldout_paths)
    backbone = get_backbone(settings.backbone)
    if settings.distill is not None:
        settings.distill.check()  # a teacher that cannot be used is refused before anything is made
    return FinetunePlan(images, rows, backbone, ensure_writable(finetune_dir(out, images.name, backbone.name)))


def run_finetune(
    data="data",
    *,
    out=DEFAULT_OUT,
    settings: FinetuneSettings | None = None,
    log=print,
    heldout_paths=None,
    cache_key: str | None = None,
    name: str | None = None,
    storage_options: tuple = (),
    **overrides,
) -> Path:
    """Fine-tune and save; returns the folder it wrote. `overrides` are FinetuneSettings fields
    (epochs=2, weights="random", ...); `cache_key` goes into the record (compare's reuse key);
    `name`: the dataset's readable name (`extract --name`), which names the folder.
    Everything a user can get wrong is refused before anything is made."""
    import torch

    settings = replace(settings or FinetuneSettings(), **overrides)
    images, rows, backbone, folder = plan_finetune(data, out, settings, heldout_paths, name, storage_options)
    compute = settings.compute()
    torch.manual_seed(settings.seed)
    generator = torch.Generator().manual_seed(settings.seed)
    network = build_network(backbone, settings, len(images.class_names), compute.device)
    started = time.perf_counter()  # the fit's time: the teacher's probabilities, the probe, the epochs
    training = prepare_training(network, images, rows, settings, compute, generator, folder, log)
    probe_c = start_head(network, images, rows, settings, compute, log)  # after the teacher's checks
    log(
        f"finetune {backbone.name}: {len(rows.train)} train / {len(rows.select)} to choose the epoch (from train) / "
        f"{len(rows.heldout)} {rows.heldout_name} images, {settings.epochs} epochs, {network.unfrozen} of "
        f"{len(trunk_blocks(network.trunk))} blocks unfrozen, device {compute.device}"
    )
    best_epoch, history = choose_epoch(training, images, rows, log)
    fit_seconds = time.perf_counter() - started
    heldout = predict_rows(network.module, images, rows.heldout, network.prep, compute, settings.tta)
    selection = f"best epoch on a stratified {SELECTION_FRACTION:.0%} slice of train ({len(rows.select)} images)"
    if best_epoch == 0:
        selection += "; every trained epoch did worse than the linear probe it started from, kept instead"
    result = FinetuneResult(network, heldout, rows.heldout_name, history, best_epoch, fit_seconds, selection, probe_c)
    return save_result(folder, result, images, backbone, settings, compute, log, cache_key)


def build_network(backbone, settings: FinetuneSettings, classes: int, device: str) -> Network:
    """The backbone (its weights loaded, the blocks --unfreeze names trainable), dropout and a new
    linear layer, on `device`."""
    import torch
    from torch import nn

    extractor = backbone.load(settings.weights)
    unfrozen = set_trainable(extractor.trunk, settings.unfreeze)
    follow_new_images(extractor.trunk)
    head = nn.Linear(backbone.feature_dim, classes)
    module = nn.Sequential(extractor, nn.Dropout(0.2), head).to(device, memory_format=torch.channels_last)
    return Network(module, extractor.trunk, head, extractor.preprocessing, unfrozen)


def start_head(network: Network, images, rows: FinetuneRows, settings: FinetuneSettings, compute: Compute, log):
    """Under --head-init probe, the new layer starts as a linear probe of the frozen features of the
    training images (experiments.linear_probe); returns its C (None: the layer starts random)."""
    import torch

    if settings.head_init != "probe":
        return None
    started = time.perf_counter()
    extractor = network.module[0]
    W, b, C = probe_head(extractor, images, rows.train, network.prep, compute, settings.seed)
    with torch.no_grad():
        network.head.weight.copy_(torch.from_numpy(W))
        network.head.bias.copy_(torch.from_numpy(b))
    log(
        f"linear probe: logreg C={C:g} on the frozen features of {len(rows.train)} train images "
        f"({time.perf_counter() - started:.0f} s), the new layer's start"
    )
    return C


def prepare_training(
    network: Network,
    images,
    rows: FinetuneRows,
    settings: FinetuneSettings,
    compute: Compute,
    generator,
    folder: Path,
    log,
) -> Training:
    """The training rows' loader (augmented) and labels, the teacher's probabilities when distilling,
    AdamW (the backbone at a lower rate) with warm-up + cosine, and the loss."""
    import torch
    from torch import nn

    loader = train_loader(
        images, rows.train, _augmentation(network.prep, settings.crop_scale, settings.flip), compute, generator
    )
    labels = torch.tensor([images.labels[i] for i in rows.train])
    targets = None
    if settings.distill is not None:
        targets = torch.from_numpy(
            teacher_probabilities(settings.distill.check(), images, rows.train, folder, compute.device, log)
        )
    trainable = [p for p in network.trunk.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(
        [
            {"params": network.head.parameters(), "lr": settings.lr},
            {"params": trainable, "lr": settings.lr * settings.backbone_lr_scale},
        ],
        weight_decay=settings.weight_decay,
    )
    steps = settings.epochs * math.ceil(len(rows.train) / compute.batch_size)
    warmup = max(1, steps // 10)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: warmup_cosine(step, warmup, steps))
    loss_fn = nn.CrossEntropyLoss(label_smoothing=settings.label_smoothing)
    return Training(network, loader, labels, targets, optimizer, schedule, loss_fn, settings, compute)


def _augmentation(prep, crop_scale: float, flip: bool):
    """Random resized crop (at the backbone's crop size and interpolation, keeping `crop_scale` of
    the image or more), and a horizontal flip under `flip`."""
    from torchvision.transforms import v2

    return v2.Compose(
        [
            v2.RandomResizedCrop(
                prep.crop_size,
                scale=(crop_scale, 1.0),
                interpolation=v2.InterpolationMode(prep.interpolation),
                antialias=True,
            ),
            v2.RandomHorizontalFlip(0.5 if flip else 0.0),
        ]
    )


def choose_epoch(training: Training, images, rows: FinetuneRows, log) -> tuple[int, list[dict]]:
    """Train every epoch, score each on the selection slice, and leave the network at the best
    (the first of equals); returns (that epoch, the history). A network that started as a linear
    probe is scored first too (epoch 0), and kept only when it does better than every trained
    epoch: a tie goes to the trained network, the row being the fine-tune."""
    network, settings = training.network, training.settings
    best_accuracy, best_epoch, best_state, history = -1.0, 0, None, []
    if settings.head_init == "probe":
        accuracy = _selection_accuracy(training, images, rows)
        history.append({"epoch": 0, "train_loss": None, "selection_accuracy": accuracy})
        log(f"epoch 0 (the linear probe, before any step): accuracy on the selection slice {accuracy:.4f}")
        start = (accuracy, copy.deepcopy(network.module.state_dict()))
    for epoch in range(1, settings.epochs + 1):
        started = time.perf_counter()
        loss = train_epoch(training, epoch)
        trained = time.perf_counter()
        accuracy = _selection_accuracy(training, images, rows)
        seconds = {
            "train_seconds": round(trained - started, 2),
            "select_seconds": round(time.perf_counter() - trained, 2),
        }
        history.append({"epoch": epoch, "train_loss": loss, "selection_accuracy": accuracy, **seconds})
        log(
            f"epoch {epoch}: train loss {loss:.4f}, accuracy on the selection slice {accuracy:.4f} "
            f"({seconds['train_seconds']:.0f} s training, {seconds['select_seconds']:.0f} s scoring the slice)"
        )
        if accuracy > best_accuracy:
            best_accuracy, best_epoch, best_state = accuracy, epoch, copy.deepcopy(network.module.state_dict())
    if settings.head_init == "probe" and start[0] > best_accuracy:
        log("every trained epoch did worse than the linear probe it started from: keeping the probe (epoch 0)")
        (best_accuracy, best_state), best_epoch = start, 0
    network.module.load_state_dict(best_state)
    return best_epoch, history


def _selection_accuracy(training: Training, images, rows: FinetuneRows) -> float:
    """The network's accuracy on the selection slice of train, as it is now."""
    network = training.network
    _, truth, proba = predict_rows(
        network.module, images, rows.select, network.prep, training.compute, training.settings.tta
    )
    return float((proba.argmax(1) == np.asarray(truth)).mean())


def train_epoch(training: Training, epoch: int) -> float:
    """One pass over the training rows; returns the mean training loss."""
    from tqdm import tqdm

    training.network.module.train()
    keep_batchnorm_statistics(training.network.trunk, every_layer=training.settings.batchnorm == "frozen")
    loader, settings = training.loader, training.settings
    seen, loss_sum = 0, 0.0
    for positions, batch, _ in tqdm(
        checked_batches(loader, training.compute.workers),
        desc=f"epoch {epoch}/{settings.epochs}",
        unit="batch",
        total=len(loader),
        disable=not settings.progress,
    ):
        if batch is None:  # no image of the batch could be read
            continue
        seen, loss_sum = seen + len(positions), loss_sum + _step(training, positions, batch) * len(positions)
    return loss_sum / max(1, seen)


def _step(training: Training, positions: list[int], batch) -> float:
    """One optimiser step on a batch; returns its loss."""
    import torch

    device = training.compute.device
    batch = batch.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
    positions = torch.tensor(positions)
    labels = training.labels[positions].to(device)
    with torch.autocast("cuda", dtype=torch.float16, enabled=device.startswith("cuda")):
        logits = training.network.module(batch)
        distill = training.settings.distill
        loss = (
            training.loss_fn(logits, labels)
            if distill is None
            else distill.loss(logits, labels, training.targets[positions].to(device), training.loss_fn)
        )
    training.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    training.optimizer.step()
    training.schedule.step()
    return loss.item()


def save_result(
    folder: Path,
    result: FinetuneResult,
    images,
    backbone,
    settings: FinetuneSettings,
    compute: Compute,
    log,
    cache_key: str | None = None,
) -> Path:
    """checkpoint.pth, model.joblib (+ .json) and heldout.csv in `folder`; returns the folder."""
    folder.mkdir(parents=True, exist_ok=True)
    checkpoint = _save_checkpoint(folder / "checkpoint.pth", backbone, result.network, images.class_names)
    engine = resolve_engine("auto", compute.device)  # the fingerprint `extract --weights checkpoint.pth` will give
    spec = FeatureSpec(backbone, str(checkpoint), compute_precision(compute.device, engine), engine)
    head = result.network.head
    model = FeatureClassifier.from_linear_layer(
        head.weight.detach().cpu().numpy(),
        head.bias.detach().cpu().numpy(),
        images.class_names,
        spec.config,
        spec.fingerprint,
        str(checkpoint.resolve()),
    )
    paths, labels, proba = result.heldout
    accuracy = float((proba.argmax(1) == np.asarray(labels)).mean()) if len(labels) else float("nan")
    write_heldout_csv(folder / HELDOUT_CSV, paths, labels, proba, images.class_names)
    info = _finetuned_record(result, images, backbone, settings, compute, spec, checkpoint, accuracy)
    info["cache_key"] = cache_key
    save_model(model, folder / "model.joblib", info)
    log(
        f"best epoch {result.best_epoch} (chosen on a slice of train): {result.heldout_name} accuracy {accuracy:.4f}; "
        f"wrote {folder}/ (checkpoint.pth for `extract --weights`, model.joblib, heldout.csv)"
    )
    return folder


def _finetuned_record(result, images, backbone, settings, compute, spec, checkpoint: Path, accuracy: float) -> dict:
    """What the fine-tuned model's .json says: how it was trained and chosen, its held-out accuracy,
    the features its checkpoint gives."""
    return {
        "head": FINETUNE_ROW,
        "description": f"{backbone.name} fine-tuned end to end + a linear layer",
        "best_params": settings.recorded(compute.batch_size, result.best_epoch, result.probe_c),
        "cv": None,
        "selection": result.selection,
        "start_weights": backbone.weights_id(settings.weights),
        "heldout": {"evaluated_on": result.heldout_name, "n": len(result.heldout[0]), "accuracy": accuracy},
        "class_names": images.class_names,
        "dataset": images.name,
        "data_root": str(images.root),
        "feature_fingerprint": spec.fingerprint,
        "feature_config": spec.config,
        "checkpoint": str(checkpoint.resolve()),
        "history": result.history,
        "fit_seconds": round(result.fit_seconds, 3),
        "predict_seconds_per_image": None,
    }


def _save_checkpoint(path: Path, backbone, network: Network, class_names: list) -> Path:
    """What `extract --weights` loads: the trunk's state dict (+ the head and class names)."""
    import torch

    with atomic_write(path) as tmp:
        torch.save(
            {
                "backbone": backbone.name,
                "state_dict": {k: v.cpu() for k, v in network.trunk.state_dict().items()},
                "head": {k: v.cpu() for k, v in network.head.state_dict().items()},
                "class_names": class_names,
            },
            tmp,
        )
    return path
