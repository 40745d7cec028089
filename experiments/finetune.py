"""`cnnfeat finetune`: the backbone plus a new linear layer, trained end to end on the images.

The classic transfer-learning recipe: random resized crop + flip, all layers or only the last N
blocks unfrozen (frozen layers keep their batch-norm statistics), AdamW with warm-up + cosine,
label smoothing, optional flip test-time augmentation. The best epoch is chosen on a stratified
slice of the training images, never on val: val only scores the chosen network, as it scores every
head in `compare`. It writes OUT/finetune/<dataset>-<backbone>/: checkpoint.pth (what `extract
--weights` takes), model.joblib (+ .json, a saved model like every head's) and heldout.csv (its
val predictions, for `compare`).
"""
from __future__ import annotations

import copy
import csv
import json
import math
import re
import time
from pathlib import Path

import numpy as np

from classifiers import FeatureClassifier, save_model, warmup_cosine
from common.errors import CnnfeatError
from common.files import atomic_write, ensure_writable
from featurize import (
    ImageDataset,
    checked_batches,
    compute_precision,
    default_workers,
    discover,
    feature_config,
    get_backbone,
    resolve_device,
    resolve_engine,
)

from .distill import Distillation, teacher_probabilities

FINETUNE_ROW = "finetuned"
SELECTION_FRACTION = 0.2  # of the training images, held back to choose the epoch


def finetune_dir(out, dataset: str, backbone: str) -> Path:
    return Path(out, "finetune", f"{dataset}-{backbone}")


def trunk_blocks(trunk) -> list:
    """The trunk as an ordered list of blocks with weights: top-level children, with containers of
    several blocks (ResNet layers, EfficientNet's block list, ConvNeXt stages) opened up. Heads the
    forward pass never uses (the ImageNet classifier kept in EfficientNet-Lite) are left out."""
    from torch import nn

    blocks = []
    for name, child in trunk.named_children():
        if name in ("_fc", "fc"):
            continue
        parts = list(child.children()) if isinstance(child, (nn.Sequential, nn.ModuleList)) and len(child) > 1 else [child]
        blocks += [part for part in parts if any(True for _ in part.parameters())]
    return blocks


def set_trainable(trunk, unfreeze: str) -> int:
    """Unfreeze 'all', 'none' or 'last-N[-blocks]' of the trunk; returns how many blocks train."""
    blocks = trunk_blocks(trunk)
    if unfreeze == "all":
        count = len(blocks)
    elif unfreeze == "none":
        count = 0
    else:
        match = re.fullmatch(r"last-(\d+)(-blocks?)?", unfreeze)
        if not match:
            raise CnnfeatError(f"--unfreeze {unfreeze!r}: use all, none, or last-N-blocks (e.g. last-2-blocks)")
        count = min(int(match.group(1)), len(blocks))
    trunk.requires_grad_(False)
    for block in blocks[len(blocks) - count:]:
        block.requires_grad_(True)
    return count


def _freeze_frozen_batchnorm(trunk):
    """Frozen layers keep their ImageNet batch-norm statistics: their BN stays in eval mode."""
    from torch import nn
    for module in trunk.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and not any(p.requires_grad for p in module.parameters()):
            module.eval()


def _collate_labelled(items):
    """(the readable images stacked - in shared memory, inside a worker: see extract._collate -, their
    labels), or (None, None)."""
    import torch
    from torch.utils.data import default_collate
    good = [(t, label) for (_, t, _), label in items if t is not None]
    if not good:
        return None, None
    return default_collate([t for t, _ in good]), torch.tensor([label for _, label in good])


def _collate_positions(items):
    """(positions of the readable images, their labels, the images stacked), or None where none is."""
    from torch.utils.data import default_collate
    good = [(i, t, label) for (i, t, _), label in items if t is not None]
    if not good:
        return None
    return [i for i, _, _ in good], [label for _, _, label in good], default_collate([t for _, t, _ in good])


class _Labelled:
    def __init__(self, images: ImageDataset, labels):
        self.images, self.labels = images, labels

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return self.images[i], self.labels[i]


def run_finetune(data="data", backbone="efficientnet_lite0", weights=None, out="artifacts", epochs=5, unfreeze="last-3-blocks",
                 lr=1e-3, backbone_lr_scale=0.1, batch_size=None, label_smoothing=0.1, weight_decay=0.05,
                 tta=False, device="auto", workers=None, seed=0, progress=True, log=print,
                 distill: Distillation | None = None) -> Path:
    """Fine-tune and save; returns the folder it wrote. `distill`: also learn a saved model's
    probabilities (experiments.distill)."""
    import torch
    from torch import nn
    from torch.utils.data import DataLoader
    from torchvision.transforms import v2
    from tqdm import tqdm

    images = discover(data)
    train_rows, select_rows, eval_rows, eval_name = _finetune_rows(images, data, seed)
    record = get_backbone(backbone)
    if distill is not None:
        distill.check()  # a teacher that cannot be used is refused before anything is made
    ensure_writable(finetune_dir(out, images.name, record.name))
    device = resolve_device(device)
    batch_size = batch_size or (64 if device.startswith("cuda") else 16)
    workers = default_workers() if workers is None else workers
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)

    extractor = record.load(weights)
    trunk, prep = extractor.trunk, extractor.preprocessing
    blocks = set_trainable(trunk, unfreeze)
    head = nn.Linear(record.feature_dim, len(images.class_names))
    network = nn.Sequential(extractor, nn.Dropout(0.2), head).to(device, memory_format=torch.channels_last)
    train_transform = v2.Compose([
        v2.RandomResizedCrop(prep.crop_size, interpolation=v2.InterpolationMode(prep.interpolation), antialias=True),
        v2.RandomHorizontalFlip(),
    ])

    # Each training image comes with its position in train_rows: its label, and its teacher's probabilities.
    dataset = _Labelled(ImageDataset(images.root, [images.paths[i] for i in train_rows], train_transform),
                        list(range(len(train_rows))))
    train_loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, generator=generator, num_workers=workers,
                              collate_fn=_collate_labelled, pin_memory=device.startswith("cuda"))
    train_labels = torch.tensor([images.labels[i] for i in train_rows])
    if distill is not None:
        targets = torch.from_numpy(teacher_probabilities(distill.check(), images, train_rows,
                                                         finetune_dir(out, images.name, record.name), device, log))
    trainable = [p for p in trunk.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW([{"params": head.parameters(), "lr": lr},
                                   {"params": trainable, "lr": lr * backbone_lr_scale}], weight_decay=weight_decay)
    total = epochs * math.ceil(len(train_rows) / batch_size)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: warmup_cosine(step, max(1, total // 10), total))
    loss_fn = nn.CrossEntropyLoss(label_smoothing=label_smoothing)
    log(f"finetune {record.name}: {len(train_rows)} train / {len(select_rows)} to choose the epoch (from train) / "
        f"{len(eval_rows)} {eval_name} images, {epochs} epochs, {blocks} of {len(trunk_blocks(trunk))} blocks "
        f"unfrozen, device {device}")

    best = (-1.0, 0, None)
    started = time.perf_counter()
    history = []
    for epoch in range(1, epochs + 1):
        network.train()
        _freeze_frozen_batchnorm(trunk)
        seen, loss_sum = 0, 0.0
        for batch, positions in tqdm(checked_batches(train_loader, workers), desc=f"epoch {epoch}/{epochs}",
                                     unit="batch", total=len(train_loader), disable=not progress):
            if batch is None:
                continue
            batch = batch.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
            labels = train_labels[positions].to(device)
            with torch.autocast("cuda", dtype=torch.float16, enabled=device.startswith("cuda")):
                logits = network(batch)
                loss = (loss_fn(logits, labels) if distill is None else
                        distill.loss(logits, labels, targets[positions].to(device), loss_fn))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            seen, loss_sum = seen + len(labels), loss_sum + loss.item() * len(labels)
        _, truth, proba = _evaluate(network, images, select_rows, prep, device, batch_size, workers, tta)
        accuracy = float((proba.argmax(1) == np.asarray(truth)).mean())
        history.append({"epoch": epoch, "train_loss": loss_sum / max(1, seen), "selection_accuracy": accuracy})
        log(f"epoch {epoch}: train loss {loss_sum / max(1, seen):.4f}, accuracy on the selection slice {accuracy:.4f}")
        if accuracy > best[0]:
            best = (accuracy, epoch, copy.deepcopy(network.state_dict()))
    fit_seconds = time.perf_counter() - started
    network.load_state_dict(best[2])
    heldout = _evaluate(network, images, eval_rows, prep, device, batch_size, workers, tta)
    return _save(out, images, record, network, head, trunk, heldout, eval_name, history, fit_seconds,
                 {"epochs": epochs, "unfreeze": unfreeze, "lr": lr, "backbone_lr_scale": backbone_lr_scale,
                  "label_smoothing": label_smoothing, "weight_decay": weight_decay, "tta": tta,
                  "batch_size": batch_size, "seed": seed, "best_epoch": best[1],
                  **({"distillation": distill.describe()} if distill is not None else {})},
                 f"best epoch on a stratified {SELECTION_FRACTION:.0%} slice of train ({len(select_rows)} images)",
                 record.weights_id(weights), device, log)


def _finetune_rows(images, data, seed):
    """(train, selection slice of train, held-out rows, held-out split name), as image indices."""
    from sklearn.model_selection import train_test_split

    all_train = [i for i, s in enumerate(images.splits) if s == "train"]
    eval_name = next((s for s in ("val", "test") if s in images.splits), None)
    if not all_train or eval_name is None:
        raise CnnfeatError(f"finetune needs train/ and val/ (or test/) splits in {data}: val scores the "
                           f"fine-tuned network as it scores every head")
    labels = [images.labels[i] for i in all_train]
    if min(labels.count(label) for label in set(labels)) < 2:
        raise CnnfeatError("finetune needs at least 2 training images per class: some train, and a slice of "
                           "train chooses the epoch")
    select_size = max(len(set(labels)), math.ceil(SELECTION_FRACTION * len(all_train)))  # a row of each class
    train, select = train_test_split(all_train, test_size=select_size, stratify=labels, random_state=seed)
    eval_rows = [i for i, s in enumerate(images.splits) if s == eval_name]
    return sorted(train), sorted(select), eval_rows, eval_name


def _evaluate(network, images, rows, prep, device, batch_size, workers, tta):
    """Softmax probabilities on the eval images (averaged with the flipped image under TTA)."""
    import torch
    from torch.utils.data import DataLoader

    dataset = _Labelled(ImageDataset(images.root, [images.paths[i] for i in rows], prep.transform()),
                        [images.labels[i] for i in rows])
    network.eval()
    paths, truth, probabilities = [], [], []
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=workers, collate_fn=_collate_positions)
    with torch.inference_mode(), torch.autocast("cuda", dtype=torch.float16, enabled=device.startswith("cuda")):
        for item in checked_batches(loader, workers):
            if item is None:
                continue
            positions, labels, batch = item
            batch = batch.to(device).contiguous(memory_format=torch.channels_last)
            proba = network(batch).float().softmax(1)
            if tta:
                proba = (proba + network(torch.flip(batch, dims=[3])).float().softmax(1)) / 2
            probabilities.append(proba.cpu().numpy())
            paths += [dataset.images.paths[i] for i in positions]
            truth += labels
    return paths, truth, np.concatenate(probabilities) if probabilities else np.zeros((0, 0))


def _save(out, images, record, network, head, trunk, heldout, eval_name, history, fit_seconds, params, selection,
          start_weights, device, log) -> Path:
    import torch

    folder = finetune_dir(out, images.name, record.name)
    folder.mkdir(parents=True, exist_ok=True)
    checkpoint = folder / "checkpoint.pth"
    with atomic_write(checkpoint) as tmp:
        torch.save({"backbone": record.name, "state_dict": {k: v.cpu() for k, v in trunk.state_dict().items()},
                    "head": {k: v.cpu() for k, v in head.state_dict().items()}, "class_names": images.class_names},
                   tmp)
    engine = resolve_engine("auto", device)  # the fingerprint `extract --weights checkpoint.pth` will give
    config, fp = feature_config(record, str(checkpoint), compute_precision(device, engine), engine)
    model = FeatureClassifier.from_linear_layer(head.weight.detach().cpu().numpy(), head.bias.detach().cpu().numpy(),
                                                images.class_names, config, fp, str(checkpoint.resolve()))
    paths, truth, proba = heldout
    accuracy = float((proba.argmax(1) == np.asarray(truth)).mean()) if len(truth) else float("nan")
    names = np.asarray(images.class_names, dtype=object)
    # surrogateescape: a file name that is not UTF-8 goes in as its own bytes, and comes back the same
    with atomic_write(folder / "heldout.csv") as tmp, open(tmp, "w", newline="", encoding="utf-8",
                                                                     errors="surrogateescape") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "true", "predicted", *(f"p_{c}" for c in images.class_names)])
        for p, t, row in zip(paths, truth, proba):
            writer.writerow([p, names[t], names[row.argmax()], *(f"{v:.6f}" for v in row)])
    info = {"head": FINETUNE_ROW, "description": f"{record.name} fine-tuned end to end + a linear layer",
            "best_params": params, "cv": None, "selection": selection, "start_weights": start_weights,
            "heldout": {"evaluated_on": eval_name, "n": len(paths), "accuracy": accuracy},
            "class_names": images.class_names, "dataset": images.name, "data_root": str(images.root),
            "feature_fingerprint": fp, "feature_config": config, "checkpoint": str(checkpoint.resolve()),
            "history": history, "fit_seconds": round(fit_seconds, 3), "predict_seconds_per_image": None}
    save_model(model, folder / "model.joblib", info)
    log(f"best epoch {params['best_epoch']} (chosen on a slice of train): {eval_name} accuracy {accuracy:.4f}; "
        f"wrote {folder}/ (checkpoint.pth for `extract --weights`, model.joblib, heldout.csv)")
    return folder


def load_finetuned_row(out, data, eval_paths, truth, log):
    """The fine-tuned network's held-out predictions as a compare row; None when there is no bundle
    for this dataset and backbone. A bundle that cannot be ranked fairly beside the heads (another
    data root, its epoch chosen on val, other held-out images) is a clear error."""
    folder = finetune_dir(out, data.dataset, data.backbone)
    if not (folder / "model.json").is_file() or not (folder / "heldout.csv").is_file():
        return None
    info = json.loads((folder / "model.json").read_text())
    if info.get("start_weights", data.config["weights"]) != data.config["weights"]:
        return None  # fine-tuned from other weights than this file's: it belongs beside that one
    if info.get("data_root") != data.data_root:
        raise CnnfeatError(f"{folder} was fine-tuned on {info.get('data_root')}, not {data.data_root}")
    if not info.get("selection"):
        raise CnnfeatError(f"{folder} chose its epoch on the images it is scored on (an older cnnfeat); run "
                           f"`cnnfeat finetune` again")
    with open(folder / "heldout.csv", newline="", encoding="utf-8", errors="surrogateescape") as handle:
        rows = list(csv.DictReader(handle))
    scored, wanted = {r["path"] for r in rows}, set(eval_paths)
    if scored != wanted or len(rows) != len(scored):
        raise CnnfeatError(f"{folder / 'heldout.csv'} scores other images than compare ({len(wanted - scored)} "
                           f"of compare's missing, {len(scored - wanted)} others); run `cnnfeat finetune` again")
    expected = dict(zip(eval_paths, truth))
    if any(expected[r["path"]] != r["true"] for r in rows):
        raise CnnfeatError(f"{folder / 'heldout.csv'} gives other true classes than the feature file")
    classes = info["class_names"]
    proba = np.asarray([[float(r[f"p_{c}"]) for c in classes] for r in rows]).reshape(len(rows), len(classes))
    log(f"{data.backbone} {FINETUNE_ROW}: from {folder}")
    return {"info": info, "paths": [r["path"] for r in rows], "truth": [r["true"] for r in rows],
            "predicted": [r["predicted"] for r in rows], "classes": classes,
            "proba": proba / proba.sum(axis=1, keepdims=True).clip(min=1e-12)}  # undo the CSV's rounding
