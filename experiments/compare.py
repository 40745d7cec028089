"""`cnnfeat compare`: every head on the same split of the same feature file(s), one honest table.

The run, in order: the settings (CompareSettings), the feature files and the report folder they
name (locked: one writer per report), then per feature file its split and its rows - each head
searched and fitted, or reused (experiments.reuse), the ensembles of those heads, the fine-tuned
network (experiments.finetuned) - then the rows of the files' vectors joined, and last the ranking
(experiments.ranking) and the report (experiments.report)."""

from __future__ import annotations

import glob
import hashlib
import time
from dataclasses import dataclass, field, fields, replace
from functools import partial
from pathlib import Path
from typing import NamedTuple

import numpy as np

from classifiers import HEADS, SearchSettings, ensemble_model, get_head, parse_ensembles, save_model
from common.errors import CnnfeatError, OutputError
from common.files import ensure_writable
from common.locks import exclusive
from common.names import safe_name
from featurize import FuseMode, Recipe, display_name, fuse_features, load_features, recipe_of

from .audit_checks import leaked_rows, untellable
from .choices import AUDIT_NEAR
from .finetune import FinetuneSettings, plan_finetune, run_finetune
from .finetuned import FINETUNE_ROW, finetuned_row
from .fit import Scored, evaluate, fit_and_score, latest_features, provenance
from .layout import DEFAULT_OUT, features_dir, finetune_dir, report_dir
from .plots import Embedding
from .ranking import Row, score_rows
from .recommend import Recommendation, forward_passes, recommend
from .report import write_report
from .reuse import (
    ensemble_key,
    finetune_key,
    head_key,
    reusable,
    reusable_finetune,
    reusable_from_other_reports,
)
from .splits import HeldoutImages, Split, heldout_images, train_eval_split


@dataclass(frozen=True)
class CompareSettings:
    clf: str = "all"  # all, or a comma list of heads
    refit: bool = False  # search again even where nothing changed
    fuse: FuseMode = "concat"  # with several feature files: also every head on their vectors joined; none: not
    ensemble: str = "vote"  # vote, stack, both (comma list or all), or none
    exclude_leaks: bool = False  # held-out images with a near-copy in train left out of every row's score
    search: SearchSettings = field(default_factory=SearchSettings)  # how each head is searched
    finetune: FinetuneSettings | None = None  # also fine-tune each backbone first (its weights and the search's seed)

    def check(self) -> CompareSettings:
        return replace(self, search=self.search.check(), finetune=self.finetune and self.finetune.check())


def compare_settings(settings: CompareSettings | None = None, **overrides) -> CompareSettings:
    """`settings` with `overrides`: fields of CompareSettings (clf="knn", refit=True, ...) or of its
    SearchSettings (cv=3, seed=7, jobs=1, ...). `search` is a SearchSettings or a method's name
    ("halving"); `finetune` FinetuneSettings, or True for the default fine-tune."""
    settings = settings or CompareSettings()
    search = overrides.pop("search", settings.search)
    if isinstance(search, str):
        search = replace(settings.search, search=search)
    finetune = overrides.pop("finetune", settings.finetune)
    if isinstance(finetune, bool):
        finetune = FinetuneSettings() if finetune else None
    own = {f.name for f in fields(CompareSettings)}
    search = replace(search, **{k: v for k, v in overrides.items() if k not in own})
    own_overrides = {k: v for k, v in overrides.items() if k in own}
    return replace(settings, search=search, finetune=finetune, **own_overrides).check()


@dataclass
class CompareOutcome:
    report_dir: Path
    markdown: str
    rows: list
    failures: list  # (backbone, head, reason)
    notes: list
    recommendation: Recommendation


@dataclass
class CompareRun:
    """One compare in progress: what it was asked, where it writes, and what it has to say."""

    settings: CompareSettings
    heads: list  # names, checked
    ensembles: list  # of classifiers' ensemble kinds
    report_dir: Path
    log: object
    notes: list = field(default_factory=list)
    failures: list = field(default_factory=list)  # (feature label, head, reason)

    leaked: dict = field(default_factory=dict)  # feature label -> held-out paths with a near-copy in train
    backbones: dict = field(default_factory=dict)  # feature label -> the forward passes its vectors need
    plain: set = field(default_factory=set)  # labels of each backbone and weights' plain file: fused by default
    tuned: set = field(default_factory=set)  # labels of the file each backbone's fine-tuned row goes beside
    by_default: bool = False  # the files are every one of the dataset's (no --features)

    def note(self, text: str) -> None:
        self.notes.append(text)
        self.log(text)

    def failed(self, label: str, name: str, error: Exception, what: str = "not fitted") -> None:
        self.failures.append((label, name, str(error)))
        self.log(f"{label} {name}: {what}: {error}")


class FeatureFile(NamedTuple):
    """One feature file as compare scores it."""

    label: str  # feature_label: what tells it apart in the table and in file names
    data: object  # its Features
    split: Split
    heldout: HeldoutImages


class FileRows(NamedTuple):
    """One feature file's part of the table."""

    file: FeatureFile
    rows: list[Row]


def compare(
    features=None, out=DEFAULT_OUT, settings: CompareSettings | None = None, log=print, **overrides
) -> CompareOutcome:
    """`cnnfeat compare`; `overrides` are CompareSettings fields (clf="knn", refit=True, ...) or
    SearchSettings fields (cv=3, seed=7, jobs=1, ...)."""
    settings = compare_settings(settings, **overrides)
    heads, ensembles = parse_heads(settings.clf), parse_ensembles(settings.ensemble)  # wrong names fail first
    paths, stores = _load_stores(features, out, log)
    normalized = "" if settings.search.normalize == "none" else f"-{settings.search.normalize}"
    folder = ensure_writable(report_dir(out, _report_name(stores) + normalized))  # never over the plain report
    with exclusive(folder, "cnnfeat compare"):  # one writer per report folder: its rows and models agree
        run = CompareRun(settings, heads, ensembles, folder, log, by_default=not features)
        run.plain = {feature_label(data) for data in _one_per_network(stores)}
        run.tuned = _tuned_labels(stores)
        if settings.search.normalize == "power":
            run.note("--normalize power: every head starts with a signed square root and an L2 normalisation")
        _check_finetunes(stores, run, out)
        return _compare_into(run, stores, paths, out)


def parse_heads(clf: str | None) -> list[str]:
    names = list(HEADS) if clf in ("all", None) else list(dict.fromkeys(c.strip() for c in clf.split(",") if c.strip()))
    if not names:
        raise CnnfeatError(f"--clf {clf!r}: no head named; give all, or a comma list of {', '.join(HEADS)}")
    for name in names:
        get_head(name)
    return names


def feature_label(data) -> str:
    """What tells a feature file apart within one dataset: its name less the dataset, e.g.
    `efficientnet_lite0` or `efficientnet_lite0-ft1a2b3c4d` (fine-tuned weights)."""
    if data.parts:  # fused features: their parts' labels joined
        return "+".join(feature_label(part) for part in data.parts)
    stem = Path(data.path).stem
    return stem[len(data.dataset) + 1 :] if stem.startswith(data.dataset + "-") else safe_name(stem)


def _load_stores(features, out, log) -> tuple[list[Path], list]:
    """The feature files asked for, opened; by default every feature file of the newest one's
    dataset under OUT/features (said in a line), so extracting another backbone and running
    `compare` again ranks both backbones and their fusion in one table."""
    if features:
        paths = [Path(p) for p in features]
        return paths, [load_features(p) for p in paths]
    newest = load_features(latest_features(out))
    stores = [newest, *_same_dataset(newest, out, log)]
    stores.sort(key=lambda data: Path(data.path).name)
    paths = [Path(data.path) for data in stores]
    log(
        f"features: {len(paths)} file{'s' if len(paths) > 1 else ''} of {stores[0].dataset}, the dataset extracted "
        f"last under {features_dir(out)} ({', '.join(p.name for p in paths)}; --features chooses)"
    )
    return paths, stores


def _same_dataset(newest, out, log) -> list:
    """The other feature files under OUT/features of the newest one's dataset (named `<dataset>-...`),
    opened; one that cannot be read is said and left out (the newest must open)."""
    dataset, others = newest.dataset, []
    for path in sorted(features_dir(out).glob(glob.escape(dataset) + "-*.h5")):
        if path.resolve() == Path(newest.path).resolve():
            continue
        try:
            data = load_features(path)
        except CnnfeatError as error:
            log(f"features: {path.name} left out: {error}")
            continue
        if data.dataset == dataset:
            others.append(data)
    return others


def _report_name(stores) -> str:
    """One store: its file name; several: the dataset and each one's label. Refuses a mix of datasets
    (the heads would be ranked on different images) and two files that cannot be told apart."""
    datasets = sorted({s.dataset for s in stores})
    if len(datasets) > 1:
        raise CnnfeatError(
            f"compare ranks heads on one dataset's held-out images; these feature files are of "
            f"{len(datasets)} datasets ({', '.join(datasets)})"
        )
    labels = [feature_label(s) for s in stores]
    if len(set(labels)) < len(labels):
        raise CnnfeatError(f"two feature files with the same name: {', '.join(str(s.path) for s in stores)}")
    if len(stores) == 1:
        return Path(stores[0].path).stem
    name = f"{datasets[0]}-{'+'.join(labels)}"
    return name if len(name) <= 150 else f"{datasets[0]}-{hashlib.sha256(name.encode()).hexdigest()[:8]}"


def _compare_into(run: CompareRun, stores, paths, out) -> CompareOutcome:
    fused = _fused(stores, run)  # joined first: files that cannot be are refused before any fit
    tables = [_file_rows(data, run, out) for data in stores]
    if fused is not None:
        tables.append(_file_rows(fused, run, out=None))
    rows = [row for table in tables for row in table.rows]
    if not rows:
        raise CnnfeatError("no head could be fitted: " + "; ".join(f"{h}: {r}" for _, h, r in run.failures))
    run.notes += _model_notes(rows)
    search = run.settings.search
    score_rows(rows, search.scoring, search.seed)
    run.notes += _leak_note(rows[0], run)
    joined = {feature_label(fused)} if fused is not None else set()
    recommendation = recommend(rows, run.backbones, search.scoring, joined, log=run.log)
    markdown = write_report(
        run.report_dir,
        rows,
        run.failures,
        run.notes,
        meta={
            "dataset": stores[0].dataset,
            "title": display_name(stores[0].dataset),
            "data_root": stores[0].data_root,
            "feature_files": [str(p) for p in paths],
            "exclude_leaks": run.settings.exclude_leaks,
            **search.result_settings(),
        },
        embedding=_embedding(rows, tables),
        recommendation=recommendation,
    )
    return CompareOutcome(run.report_dir, markdown, rows, run.failures, run.notes, recommendation)


def _model_notes(rows: list[Row]) -> list[str]:
    """What each saved model's record notes (a lowered fold count, a best value at its grid's edge...),
    named by its row."""
    return [
        f"{row.backbone} {row.head}: {note.removeprefix(row.head + ': ')}"
        for row in rows
        for note in row.info.get("notes", [])
    ]


def _fused(stores, run: CompareRun):
    """Each image's vectors of the several feature files joined (--fuse), or None. Taken by default
    (no --features), only each backbone's plain file joins (a backbone beside its own mirror-averaged
    vectors is no fusion), and files that cannot be joined leave out the fused rows, with a note."""
    if run.by_default:
        stores = [data for data in stores if feature_label(data) in run.plain]
    if len(stores) < 2 or run.settings.fuse == "none":
        return None
    try:
        fused, notes = fuse_features(stores, run.log)
    except CnnfeatError as error:
        if not run.by_default:
            raise
        run.note(f"no fused rows: {error} (--features chooses the files, --fuse none leaves fusion out)")
        return None
    run.notes.extend(notes)
    return fused


def _tuned_labels(stores) -> set:
    """The file beside which each backbone's fine-tuned row goes: its plain file, of its own weights
    before random ones (a backbone's fine-tunes share one folder: one fine-tune per backbone)."""
    chosen = {}
    for data in sorted(_one_per_network(stores), key=lambda d: (d.weights_source != "", feature_label(d))):
        chosen.setdefault(data.backbone, data)
    return {feature_label(data) for data in chosen.values()}


def _one_per_network(stores) -> list:
    """Of each backbone and weights, its plain file: the plain recipe, float32 (the others are its variants)."""
    chosen = {}

    def variant_last(data):
        return recipe_of(data.config) != Recipe(), "storage_dtype" in data.config, feature_label(data)

    for data in sorted(stores, key=variant_last):
        chosen.setdefault((data.backbone, data.weights_source), data)
    return list(chosen.values())


def _file_rows(data, run: CompareRun, out) -> FileRows:
    """One feature file's rows: its heads, their ensembles, and (`out` given) its fine-tuned network."""
    label = feature_label(data)
    run.backbones[label] = forward_passes(data)
    split, excluded = _split(data, label, run)
    file = FeatureFile(label, data, split, heldout_images(data, split, excluded))
    rows = _head_rows(file, run)
    rows += _ensemble_rows(file, rows, run)
    if out is not None:
        rows += _finetuned_rows(file, run, out)
    return FileRows(file, rows)


def _split(data, label: str, run: CompareRun) -> tuple[Split, int]:
    """The feature file's train/held-out split, with what is worth saying about it, and how many
    held-out images --exclude-leaks left out."""
    split = train_eval_split(data, run.settings.search.seed)
    if split.note:
        run.note(f"{label}: {split.note}")
    leaked = _leak_check(data, label, split, run)
    if run.settings.exclude_leaks and len(leaked):
        run.note(
            f"{label}: {len(leaked)} of {len(split.heldout)} {split.name} images have a near-copy in train "
            f"(cosine >= {AUDIT_NEAR}); left out of every row's score (--exclude-leaks)"
        )
        split = replace(split, heldout=np.setdiff1d(split.heldout, leaked))
    held = set(data.y[split.heldout].tolist())
    missing = [c for i, c in enumerate(data.class_names) if i not in held]
    if missing:
        run.note(
            f"{label}: class {', '.join(missing)} has no {split.name} images: its recall is unmeasured, "
            f"and balanced accuracy and macro-F1 cover the other classes only"
        )
    return split, len(leaked) if run.settings.exclude_leaks else 0


def _leak_check(data, label: str, split: Split, run: CompareRun) -> np.ndarray:
    """The held-out rows with a near-copy in train (audit's rule), remembered so the report can give
    the best row's score without them (a hold-out compare drew itself included: a copy across it
    inflates the score as much); none where the check cannot run or cannot tell."""
    try:
        leaked, alike = leaked_rows(data, split)
    except CnnfeatError as error:  # faiss missing: the table is still honest about everything else
        run.note(f"{label}: no leak check ({error})")
        return np.zeros(0, dtype=np.int64)
    if untellable(len(leaked), len(split.heldout), alike):
        run.note(
            f"{label}: no leak check: {len(leaked)} of {len(split.heldout)} {split.name} images are at cosine >= "
            f"{AUDIT_NEAR} to a training image, and {alike:.0%} of training images to another, so that threshold "
            "cannot tell copies apart in these vectors (`audit --near` with a higher one lists them)"
        )
        return np.zeros(0, dtype=np.int64)
    if not run.settings.exclude_leaks:  # left out instead: the report's rows are already without them
        run.leaked[label] = ({str(p) for p in data.paths[leaked]}, len(split.heldout), split.name)
    return leaked


def _leak_note(best: Row, run: CompareRun) -> list[str]:
    """How many held-out images of the best row's file leaked, and its score without them."""
    paths, total, name = run.leaked.get(best.backbone, (set(), 0, ""))
    if not paths:
        return []
    clean = np.array([p not in paths for p in best.paths])
    without = f"{best.correct[clean].mean():.4f}" if clean.any() else "-"
    return [
        f"{best.backbone}: {len(paths)} of {total} {name} images have a near-copy in train (cosine >= "
        f"{AUDIT_NEAR}; `cnnfeat audit` lists them): the best row, {best.head}, scores "
        f"{best.metrics['accuracy']:.4f} on all of them, {without} without them; --exclude-leaks leaves them "
        f"out of every row"
    ]


def _embedding(rows, tables: list[FileRows]) -> Embedding | None:
    """The held-out vectors of the best row that was fitted on vectors, with its predictions."""
    best = next((row for row in rows if row.model is not None), None)
    if best is None:
        return None
    file = next(table.file for table in tables if table.file.label == best.backbone)
    return Embedding(
        file.data.X[file.split.heldout],
        best.truth,
        best.predicted,
        f"{best.backbone}; mistakes of its {best.head}, the best row on them",
    )


def _head_rows(file: FeatureFile, run: CompareRun) -> list[Row]:
    """Every asked head searched, fitted and scored on one feature file's split (or reused)."""
    rows = []
    for head in run.heads:
        if run.settings.clf in ("all", "", None) and _too_many_rows(head, len(file.split.train), file.label, run):
            continue
        key = head_key(file.data, file.split, head, run.settings.search)
        log = partial(_labelled, run.log, file.label)  # "efficientnet_lite0 svm: grid search over ..."
        fit = partial(fit_and_score, file.data, file.split, head, settings=run.settings.search, log=log)
        rows += _row_or_failure(file, head, run, key, fit)
    return rows


def _labelled(log, label: str, line: str) -> None:
    log(f"{label} {line}")


def _too_many_rows(head: str, rows: int, label: str, run: CompareRun) -> bool:
    """`--clf all` leaves out a head whose default grid would take hours at this size, and says so."""
    limit = get_head(head).scales_badly_above
    if limit is None or rows <= limit:
        return False
    run.note(
        f"{label}: {head} left out of --clf all: {rows:,} training rows is past {limit:,}, where its "
        f"search takes hours (its cost grows with rows squared); --clf {head} runs it anyway"
    )
    return True


def _ensemble_rows(file: FeatureFile, members: list[Row], run: CompareRun) -> list[Row]:
    """The asked ensembles of the rows' fitted heads (all on this feature file's training rows)."""
    members = [row for row in members if hasattr(row.model.pipeline_, "predict_proba")]
    if len(members) < 2:
        return []
    rows = []
    for kind in run.ensembles:
        key = ensemble_key(kind, [row.info["cache_key"] for row in members], run.settings.search)
        rows += _row_or_failure(file, kind, run, key, partial(_fit_ensemble, kind, file, members, run))
    return rows


def _fit_ensemble(kind, file: FeatureFile, members: list[Row], run: CompareRun) -> Scored:
    names, search, data, split = [row.head for row in members], run.settings.search, file.data, file.split
    run.log(
        f"{file.label} {kind}: "
        + (
            f"soft vote of {', '.join(names)}"
            if kind == "vote"
            else f"logistic regression on the out-of-fold probabilities of {', '.join(names)} "
            f"({search.cv} folds; each head fitted {search.cv + 1} more times)"
        )
    )
    started = time.perf_counter()
    model = ensemble_model(
        kind,
        {row.head: row.model for row in members},
        data.X[split.train],
        data.y[split.train],
        search.cv,
        search.seed,
        search.jobs,
    )
    seconds = time.perf_counter() - started
    scored = evaluate(model, data, split)
    selection = (
        "mean of the heads' probabilities"
        if kind == "vote"
        else f"logistic regression on {search.cv}-fold out-of-fold probabilities on train"
    )
    info = {
        "head": kind,
        "members": names,
        "best_params": {"members": "+".join(names)},
        "selection": selection,
        "heldout": scored.scores,
        **provenance(data, search.seed),
        "fit_seconds": round(seconds, 3),
        "predict_seconds_per_image": scored.seconds_per_image,
        "notes": [],
    }
    return Scored(model, info, scored.predicted, scored.proba)


def _row_or_failure(file: FeatureFile, name: str, run: CompareRun, key: str, fit) -> list[Row]:
    """[the row of model `name`], or [] and a failure noted where it cannot be fitted. The machine's
    refusal to write (a full disk) is not this model's: it stops the run."""
    try:
        return [_saved_or_fitted(file, name, run, key, fit)]
    except OutputError:
        raise
    except CnnfeatError as error:
        run.failed(file.label, name, error)
        return []


def _saved_or_fitted(file: FeatureFile, name: str, run: CompareRun, key: str, fit) -> Row:
    """The row of model `name`: the one saved under this key (in this report folder or another) when
    there is one, else `fit()`'s (a Scored); saved here for next time."""
    normalized = "" if run.settings.search.normalize == "none" else f"-{run.settings.search.normalize}"
    model_path = run.report_dir / "models" / f"{file.label}-{name}{normalized}.joblib"
    reused = None if run.settings.refit else _saved_model(model_path, key, name, file.data.fingerprint, run.log)
    if reused is not None:
        model, info = reused
        X_heldout = file.data.X[file.split.heldout]
        predicted, proba = model.predict(X_heldout), model.predict_proba(X_heldout)
    else:
        scored = fit()
        model, info, predicted, proba = scored.model, {**scored.info, "cache_key": key}, scored.predicted, scored.proba
        save_model(model, model_path, info)
    return Row(
        file.label,
        name,
        info,
        file.heldout.paths,
        file.heldout.truth,
        list(predicted),
        proba,
        list(model.classes_),
        reused=reused is not None,
        model=model,
        model_path=str(model_path),
    )


def _saved_model(model_path: Path, key: str, name: str, fingerprint: str, log):
    """(model, info) saved under this key, here or by a compare into another report folder (then
    saved here too, so this report's models/ holds every row's), with a line saying which; or None."""
    label = model_path.stem.removesuffix("-power").removesuffix(f"-{name}")
    found = reusable(model_path, key, name, fingerprint, log)
    if found is not None:
        log(f"{label} {name}: nothing changed, reusing the fitted model ({model_path.name}; --refit searches again)")
        return found
    found = reusable_from_other_reports(model_path, key, name, fingerprint, log)
    if found is None:
        return None
    model, info, source = found
    save_model(model, model_path, info)
    log(
        f"{label} {name}: nothing changed, reusing the model fitted for another report "
        f"({source.parent.parent.name}; --refit searches again)"
    )
    return model, info


def _finetuned_rows(file: FeatureFile, run: CompareRun, out) -> list[Row]:
    """The fine-tuned network's row (fine-tuned first under --finetune, from pretrained or random
    weights only, scored on compare's own held-out images): none where there is no fine-tune of
    this backbone, a failure where it cannot be ranked beside the heads. A backbone's second feature
    file (its --tta/--layers/... or float16 variant, its random weights) gets none: one fine-tune per backbone,
    one row, beside its plain file (_tuned_labels)."""
    if file.label not in run.tuned:
        return []
    settings = _finetune_settings(file.data, run)
    try:
        if settings is not None:
            _finetune_unless_unchanged(file.data, settings, run, out)
        row = finetuned_row(out, file.data, file.label, file.heldout, run.log)
    except CnnfeatError as error:  # the heads' rows stand; the report says why this one is missing
        run.failed(file.label, FINETUNE_ROW, error, "left out")
        return []
    return [row] if row is not None else []


def _finetune_unless_unchanged(data, settings, run: CompareRun, out) -> None:
    """Fine-tune on the feature file's images, scored on compare's drawn hold-out, unless the saved
    fine-tune was made from the same images, settings and hold-out (and --refit is not given)."""
    drawn = _drawn(data, train_eval_split(data, run.settings.search.seed))  # before --exclude-leaks
    key = finetune_key(data, settings, drawn)
    folder = finetune_dir(out, data.dataset, data.backbone)
    if not run.settings.refit and reusable_finetune(folder, key):
        run.log(f"{data.backbone} {FINETUNE_ROW}: nothing changed since {folder} was fine-tuned; reusing it")
        return
    if (folder / "model.json").is_file():
        run.log(
            f"{data.backbone} {FINETUNE_ROW}: replacing the fine-tune in {folder} (made by `finetune`, or from "
            "other settings or images)"
        )
    run_finetune(
        _images_of(data),
        out=out,
        settings=settings,
        log=run.log,
        heldout_paths=drawn,
        cache_key=key,
        name=display_name(data.dataset),  # where finetuned_row looks, also for a dataset named by `extract --name`
    )


def _check_finetunes(stores, run: CompareRun, out) -> None:
    """--finetune: what each fine-tune needs (its images, their split, enough of each class, the
    backbone's weights, a folder to write) checked before any head is searched, so a fine-tune that
    cannot run fails now, in one line, and not after minutes of searching."""
    for data in stores:
        settings = _finetune_settings(data, run)
        if settings is None or feature_label(data) not in run.tuned:
            continue
        try:
            split = train_eval_split(data, run.settings.search.seed)
            plan = plan_finetune(_images_of(data), out, settings, _drawn(data, split), display_name(data.dataset))
            plan.backbone.load(settings.weights)  # weights that must be downloaded fail here
        except CnnfeatError as error:
            raise CnnfeatError(
                f"--finetune ({feature_label(data)}) cannot fine-tune on the images this feature file was "
                f"extracted from: {error}"
            ) from None


def _finetune_settings(data, run: CompareRun):
    """The fine-tune of this feature file's backbone under --finetune (from the same pretrained or
    random weights, the search's seed), or None: not asked, or the file's vectors come from a
    checkpoint (a fine-tune's own)."""
    finetune = run.settings.finetune
    if finetune is None or data.weights_source not in ("", "random"):
        return None
    return replace(finetune, backbone=data.backbone, seed=run.settings.search.seed, weights=data.weights_source or None)


def _images_of(data) -> str:
    """What the feature file was extracted from, for its fine-tune: the list file or the folder."""
    return data.data_source or data.data_root


def _drawn(data, split: Split) -> list | None:
    """The held-out images compare drew itself (no val/ or test/ split): the fine-tune scores exactly these."""
    return [str(p) for p in data.paths[split.heldout]] if split.name == "holdout" else None
