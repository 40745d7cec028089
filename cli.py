"""cnnfeat command line: each command parses its options, calls one library function, and says
where the output went. torch is imported only inside the libraries, so `--help` is instant."""

from __future__ import annotations

import sys

import click

from common.errors import CnnfeatError, machine_refusal
from common.names import printable
from experiments.choices import (
    AUDIT_NEAR,
    BATCHNORM_MODES,
    EXPLAIN_METHODS,
    FINETUNE_CROP_SCALE,
    FINETUNE_EPOCHS,
    FINETUNE_UNFREEZE,
    HEAD_INITS,
    HEADS,
    NORMALIZE_MODES,
    SCORINGS,
    SEARCH_METHODS,
)
from experiments.layout import DEFAULT_OUT, explain_dir, predictions_csv
from featurize import COMPRESSIONS, DEFAULT_BACKBONE, DTYPES, ENGINES, FUSE_MODES, POOL_MODES, PRESETS, TTA_MODES


class Cli(click.Group):
    """Turns a user-caused error into one clear line and exit status 1, never a traceback."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except CnnfeatError as error:
            raise click.ClickException(str(error)) from None
        except Exception as error:  # a full disk or a file-size limit met inside a library
            refusal = machine_refusal(error)
            if refusal is None:
                raise
            raise click.ClickException(refusal) from None


STORAGE_OPTION = click.option(
    "--storage-option",
    "storage_options",
    multiple=True,
    metavar="KEY=VALUE",
    help="For data in an object store: passed to its fsspec client (s3fs: anon=true, endpoint_url=..., "
    "profile=...); credentials come from the store's own places (AWS_* variables, ~/.aws/). Repeatable.",
)


@click.group(cls=Cli, context_settings={"help_option_names": ["-h", "--help"]})
def cli():
    """Frozen pretrained CNN features + the best classical head, compared honestly."""


# `extract` is long only in its options (17): its body hands them to featurize.extract and prints
# the result
@cli.command()
@click.option(
    "--backbone", default=DEFAULT_BACKBONE, show_default=True, help="Registered backbone (see `cnnfeat backbones`)."
)
@click.option(
    "--data",
    default="data",
    show_default=True,
    help="Image folder (train/ val/ [test/] of class folders, or class folders) or a 'path label' list file; "
    "the same at a URL (s3://bucket/prefix/, gs://, az://); WebDataset shards ('shards/train-{000..127}.tar'); "
    "or a manifest (.csv or .parquet: path, label[, split]). docs/data.md shows each.",
)
@click.option(
    "--name",
    default=None,
    metavar="NAME",
    help="The dataset's name in file names and titles, instead of the --data folder's (or list file's); "
    "the file is OUT/features/NAME-<hash8>-<backbone>.h5 (characters other than letters, digits, . _ + - "
    "become _). Give the same name again to update the same file.",
)
@click.option(
    "--weights",
    default=None,
    help="Default: the backbone's own pretrained weights. PATH: a local checkpoint "
    "(a state dict; loaded safely). 'random': throughput benchmarks only.",
)
@click.option(
    "--trust-pickle",
    is_flag=True,
    help="Also accept a --weights file that is a whole pickled module. Loading it RUNS CODE from the "
    "file: only for files you made or trust.",
)
@click.option("--out", default=DEFAULT_OUT, show_default=True, help="Output root; the file goes to OUT/features/.")
@click.option("--device", default="auto", show_default=True, help="auto (CUDA when present), cpu, cuda or cuda:N.")
@click.option(
    "--engine",
    type=click.Choice(("auto", *ENGINES)),
    default="auto",
    show_default=True,
    help="What runs the backbone: auto = onnxruntime on the CPU (the backbone exported once, kept in "
    "$CNNFEAT_CACHE_DIR or ~/.cache/cnnfeat/onnx), torch on CUDA.",
)
@click.option(
    "--ray",
    default=None,
    metavar="local|ADDRESS",
    help="Run the backbone on a Ray cluster: 'local' starts one here, ADDRESS joins one (`ray start "
    "--head`). One actor per CPU (or per GPU with --device cuda); this process writes the file. "
    "Needs pip install -e '.[ray]'.",
)
@click.option(
    "--batch-size",
    type=click.IntRange(min=1),
    default=None,
    help="Images per batch; each is --tta's views in the forward pass [default: 16 on CPU, 128 on CUDA, "
    "divided by the views].",
)
@click.option(
    "--workers",
    type=click.IntRange(min=0),
    default=None,
    help="Decoding workers: threads with onnxruntime [default: CPU cores], processes with torch "
    "[default: CPU cores - 1]; at most 8 by default, 0 decodes in the main thread.",
)
@click.option(
    "--dtype",
    type=click.Choice(DTYPES),
    default="float32",
    show_default=True,
    help="How the vectors are stored: float16 halves the file (a separate file: its numbers are rounded).",
)
@click.option(
    "--compression",
    type=click.Choice(COMPRESSIONS),
    default=None,
    help="HDF5 compression of the vectors (never changes a number). Default: the file's own (none for a "
    "new file); asking for another one rewrites the file.",
)
@click.option(
    "--preset",
    type=click.Choice(PRESETS),
    default="fast",
    show_default=True,
    help="fast: the last stage's average at the weights' size (the cheapest). accurate: the recipe "
    "benchmarks/feature_variants.py picked (the README says what it sets and costs); the four options "
    "below override either.",
)
@click.option(
    "--layers",
    type=click.IntRange(min=1),
    default=None,
    help="Pool the last N stages, L2-normalise each and concatenate them [default: the preset's; fast: 1]. "
    "docs/backbones.md lists each backbone's stages.",
)
@click.option(
    "--pool",
    type=click.Choice(POOL_MODES),
    default=None,
    help="How each stage's map is pooled: avg, gem (generalised mean, p=3), max, avgmax (the mean of both) "
    "[default: the preset's; fast: avg].",
)
@click.option(
    "--image-size",
    type=click.IntRange(min=32, max=1024),
    default=None,
    help="Crop size in pixels instead of the weights' own (the resize keeps its ratio to the crop).",
)
@click.option(
    "--tta",
    type=click.Choice(TTA_MODES),
    default=None,
    help="flip: the mean of each image's vector and its mirror image's (2 passes); crops: the mean over "
    "five crops (centre, corners) and their mirrors (10 passes) [default: the preset's; fast: none].",
)
@click.option("--strict", is_flag=True, help="Fail (exit 1) if any image cannot be read.")
@click.option(
    "--verify",
    is_flag=True,
    help="Check every stored vector against its checksum and extract the images of "
    "damaged ones again (done by itself after a reader found damage).",
)
@STORAGE_OPTION
@click.option("--quiet", is_flag=True, help="No progress bar.")
def extract(
    backbone,
    data,
    name,
    weights,
    trust_pickle,
    out,
    device,
    engine,
    ray,
    batch_size,
    workers,
    dtype,
    compression,
    preset,
    layers,
    pool,
    image_size,
    tta,
    strict,
    verify,
    storage_options,
    quiet,
):
    """Extract one pooled feature vector per image into an HDF5 file (incremental, resumable).

    Each recipe (--preset, --layers, --pool, --image-size, --tta) gets a file of its own."""
    from featurize import Storage, get_backbone, parse_storage_options, preset_recipe
    from featurize import extract as run_extract

    recipe = preset_recipe(preset, get_backbone(backbone), layers=layers, pool=pool, image_size=image_size, tta=tta)
    result = run_extract(
        data=data,
        backbone=backbone,
        weights=weights,
        out=out,
        device=device,
        batch_size=batch_size,
        workers=workers,
        strict=strict,
        progress=not quiet,
        trust_pickle=trust_pickle,
        engine=engine,
        ray=ray,
        storage=Storage(dtype, compression),
        recipe=recipe,
        verify=verify,
        name=name,
        storage_options=parse_storage_options(storage_options),
    )
    if recipe.config():
        settings = ", ".join(f"{key} {value}" for key, value in recipe.config().items())
        click.echo(
            f"recipe: {settings} (--preset {preset}{', overridden' if any((layers, pool, image_size, tta)) else ''})"
        )
    for note in result.notes:
        click.echo(note)
    if not result.rewritten:
        click.echo(f"up to date: {result.total} images, nothing to extract ({result.seconds:.1f} s)")
    else:
        rate = f" ({result.images_per_second:.1f} img/s overall)" if result.extracted else ""
        click.echo(
            f"{result.total} images: {result.vectors_made} extracted{rate}, {result.vectors_reused} reused, "
            f"{result.dropped} dropped (files gone), {len(result.skipped)} unreadable"
        )
    for path, reason in result.skipped:
        click.echo(f"  skipped {printable(path)}: {printable(reason)}")
    click.echo(f"features: {printable(result.store)}")


# Long only as a list of option declarations, one per setting of SearchSettings
def checked_unfreeze(context, parameter, value):
    """--unfreeze's form (all, none, last-N-blocks), checked as the options are read."""
    from experiments.unfreeze import unfrozen_count

    if value is not None:
        try:
            unfrozen_count(value, 0)
        except CnnfeatError as error:
            raise click.BadParameter(str(error).split(": ", 1)[-1]) from None
    return value


def search_options(command):
    """The options of `fit` and `compare` that say how heads are searched (one SearchSettings)."""
    options = [
        click.option("--cv", type=click.IntRange(min=2), default=5, show_default=True, help="Cross-validation folds."),
        click.option(
            "--scoring",
            type=click.Choice(SCORINGS),
            default="accuracy",
            show_default=True,
            help="What the search maximises and the table ranks by.",
        ),
        click.option(
            "--search",
            type=click.Choice(SEARCH_METHODS),
            default="auto",
            show_default=True,
            help="grid: every candidate on every fold; halving: successive halving; coordinate: one "
            "parameter at a time; path: a path of weight decays trained side by side (linear); "
            "auto: path for linear, the full grid for the others but, above 1,000 training rows, "
            "out-of-bag scores for rf and coordinate for mlp, and above 10,000 halving.",
        ),
        click.option(
            "--budget",
            type=click.FloatRange(min=0, min_open=True),
            default=None,
            help="Seconds per head: an exhaustive grid search that stops at its best candidate so far "
            "(the report says so).",
        ),
        click.option(
            "--normalize",
            type=click.Choice(NORMALIZE_MODES),
            default="none",
            show_default=True,
            help="power: a signed square root, then each vector scaled to unit length, before each head's own "
            "scaling (it travels with the saved model; `export` does not take it).",
        ),
        click.option("--jobs", type=int, default=-1, show_default=True, help="Parallel fits (-1: every core)."),
        click.option(
            "--seed", type=int, default=0, show_default=True, help="Seed of CV folds, hold-out split, estimators."
        ),
        click.option(
            "--ray",
            default=None,
            metavar="local|ADDRESS",
            help="Run the cross-validation fits as tasks on a Ray cluster ('local' starts one here; the "
            "same scores). Needs pip install -e '.[ray]'.",
        ),
        click.option("--verbose", is_flag=True, help="Print every cross-validation fit."),
        click.option("--quiet", is_flag=True, help="No progress bars."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def search_settings(cv, scoring, search, budget, normalize, jobs, seed, ray, verbose, quiet):
    from classifiers import SearchSettings

    return SearchSettings(
        cv=cv,
        scoring=scoring,
        search=search,
        seed=seed,
        budget=budget,
        normalize=normalize,
        jobs=jobs,
        verbose=2 if verbose else 0,
        progress=not quiet,
        ray=ray,
    )


@cli.command()
@click.option("--clf", required=True, help=f"Head: {', '.join(HEADS)} (see `cnnfeat heads`).")
@click.option("--features", default=None, help="Feature file [default: the newest under OUT/features].")
@click.option("--out", default=DEFAULT_OUT, show_default=True, help="Output root; the model goes to OUT/models/.")
@click.option(
    "--grid",
    default=None,
    help="JSON (string or file) replacing or narrowing the default grid, e.g. '{\"C\": [0.1, 1]}'.",
)
@search_options
def fit(clf, features, out, grid, **options):
    """Grid-search a head on cached features, refit it, score it on val/test, save it."""
    from experiments.fit import fit_model

    outcome = fit_model(
        features=features, out=out, clf=clf, grid=grid, settings=search_settings(**options), log=click.echo
    )
    info = outcome.info
    held = info["heldout"]
    click.echo(
        f"best {info['best_params']}: CV {info['cv']['scoring']} {info['cv']['mean']:.4f} "
        f"± {info['cv']['std']:.4f} ({info['cv']['seconds']:.1f} s)"
    )
    click.echo(
        f"{held['evaluated_on']} ({held['n']} images): accuracy {held['accuracy']:.4f}, balanced "
        f"{held['balanced_accuracy']:.4f}, macro-F1 {held['f1_macro']:.4f}"
        + (f", log-loss {held['log_loss']:.4f}" if held["log_loss"] is not None else "")
    )
    click.echo(f"model: {printable(outcome.model_path)} (+ {printable(outcome.json_path.name)})")


@cli.command()
@click.option("--model", "model_path", required=True, help="A .joblib file written by `cnnfeat fit`.")
@click.argument("inputs", nargs=-1, required=True)
@click.option(
    "--out",
    "out_csv",
    default=None,
    help=f"CSV to write, or a folder to write predictions.csv in [default: {predictions_csv('<model>.joblib')}].",
)
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option(
    "--batch-size",
    type=click.IntRange(min=1),
    default=None,
    help="Images per batch; each is its features' --tta views in the forward pass.",
)
@click.option(
    "--workers",
    type=click.IntRange(min=0),
    default=None,
    help="Decoding workers (threads with onnxruntime, processes with torch) [default: none below 64 "
    "images, else as extract's].",
)
@STORAGE_OPTION
@click.option("--quiet", is_flag=True, help="No progress bar.")
def predict(model_path, inputs, out_csv, device, batch_size, workers, storage_options, quiet):
    """Predict images (files, folders, or URLs of objects or of an object store's folders) with a saved
    model; one CSV row per image."""
    from experiments.predict import predict_to_csv
    from featurize import parse_storage_options

    options = {"device": device, "batch_size": batch_size, "workers": workers, "progress": not quiet}
    path, rows, failed = predict_to_csv(
        model_path, inputs, out_csv, **options, storage_options=parse_storage_options(storage_options)
    )
    click.echo(f"{rows} images, {failed} unreadable: {printable(path)}")


@cli.command()
@click.option("--model", "model_path", required=True, help="A .joblib file written by `cnnfeat fit` or `compare`.")
@click.option("--out", required=True, help="Folder to write model.onnx into.")
def export(model_path, out):
    """Write the model (backbone + head) as one ONNX graph: uint8 images in, label and probabilities
    out, class names and preprocessing in its metadata. Loading it runs no code: the format to share."""
    from classifiers import export_onnx

    click.echo(f"model: {printable(export_onnx(model_path, out))}")


@cli.command()
@click.option("--model", "model_path", required=True, help="A .joblib (fit/compare) or a model.onnx (export).")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind (0.0.0.0: every interface).")
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=8000,
    show_default=True,
    help="0: any free port (the line printed at start says which).",
)
@click.option(
    "--max-batch",
    type=click.IntRange(min=1),
    default=16,
    show_default=True,
    help="Images of concurrent requests run together (1: every request alone).",
)
@click.option(
    "--max-wait-ms",
    type=click.FloatRange(min=0),
    default=2.0,
    show_default=True,
    help="How long a request waits for others to share its batch.",
)
@click.option(
    "--max-request-mb",
    type=click.FloatRange(min=0.001),
    default=20.0,
    show_default=True,
    help="Larger requests are refused (413) before they are read.",
)
@click.option(
    "--max-pixels",
    type=click.IntRange(min=1),
    default=40_000_000,
    show_default=True,
    help="An image that would decode to more pixels is refused from its header (16-bit ones count "
    "twice); a JPEG far larger than the crop decodes at a reduced scale first. Bounds the memory "
    "of one decode: ~4 bytes a pixel (JPEG, PNG, WebP) to ~17 (TIFF, BMP).",
)
@click.option(
    "--decode-threads",
    type=click.IntRange(min=1),
    default=2,
    show_default=True,
    help="Uploads decoded at once (with --max-pixels, what bounds decoding's memory).",
)
@click.option(
    "--max-queue",
    type=click.IntRange(min=1),
    default=32,
    show_default=True,
    help="/predict requests in the server at once (reading, decoding, waiting for the model); one "
    "more is answered 503 with a Retry-After header, before its body is read.",
)
@click.option(
    "--docs",
    is_flag=True,
    help="Also serve /docs, /redoc and /openapi.json (off by default: the pages load Swagger's "
    "scripts from a CDN, and a model server need not publish its schema).",
)
@click.option("--device", default="auto", show_default=True, help="For a .joblib model: auto, cpu, cuda or cuda:N.")
def serve(model_path, host, port, device, **limits):
    """Serve a model over HTTP: POST /predict (multipart field 'images'), GET /health (503 when the model
    loop has stopped), GET /model."""
    from serving.app import serve as run_server
    from serving.settings import ServeSettings

    run_server(model_path, host, port, ServeSettings(**limits), device, log=click.echo)


@cli.command()
@click.option(
    "--features",
    multiple=True,
    help="Feature file(s); several = several backbones or recipes, one table [default: every feature file under "
    "OUT/features of the dataset whose file was written last].",
)
@click.option("--out", default=DEFAULT_OUT, show_default=True, help="Output root; reports go to OUT/reports/.")
@click.option("--clf", default="all", show_default=True, help="Heads: all, or a comma list (svm,rf,...).")
@click.option("--finetune", "with_finetune", is_flag=True, help="Also fine-tune the backbone end to end first.")
@click.option(
    "--finetune-epochs",
    type=click.IntRange(min=1),
    default=None,
    help=f"With --finetune: its epochs (the best is chosen on a slice of train).  [default: {FINETUNE_EPOCHS}]",
)
@click.option(
    "--finetune-unfreeze",
    default=None,
    callback=checked_unfreeze,
    help=f"With --finetune: which blocks train (all, none, last-N-blocks).  [default: {FINETUNE_UNFREEZE}]",
)
@click.option(
    "--finetune-no-flip",
    is_flag=True,
    help="With --finetune: no mirrored images in training (where a mirror image is another class: letters, digits).",
)
@click.option("--refit", is_flag=True, help="Search again even where nothing changed.")
@click.option(
    "--exclude-leaks",
    is_flag=True,
    help="Leave out of every row's score the held-out images with a near-copy in train (as `audit` finds "
    "them); without it the report says how many there are and the best row's score without them.",
)
@click.option(
    "--fuse",
    type=click.Choice(FUSE_MODES),
    default="concat",
    show_default=True,
    help="With several feature files: also fit every head on each image's vectors joined (each "
    "backbone's L2-normalised first); none: only the files one by one.",
)
@click.option(
    "--ensemble",
    default="vote",
    show_default=True,
    metavar="vote|stack|vote,stack|all|none",
    help="Rows combining each feature file's heads: vote (the mean of their probabilities; no fit) and "
    "stack (logistic regression on their out-of-fold probabilities; each head fitted CV+1 more times).",
)
@search_options
def compare(
    features,
    out,
    clf,
    with_finetune,
    finetune_epochs,
    finetune_unfreeze,
    finetune_no_flip,
    refit,
    exclude_leaks,
    fuse,
    ensemble,
    **options,
):
    """Fit every head on the same split, then write and print one report table."""
    from experiments.compare import CompareSettings
    from experiments.compare import compare as run_compare
    from experiments.finetune import FinetuneSettings

    search = search_settings(**options)
    if not with_finetune and (finetune_epochs or finetune_unfreeze or finetune_no_flip):
        raise CnnfeatError("--finetune-epochs, --finetune-unfreeze and --finetune-no-flip need --finetune")
    settings = CompareSettings(
        clf=clf,
        refit=refit,
        exclude_leaks=exclude_leaks,
        fuse=fuse,
        ensemble=ensemble,
        search=search,
        finetune=(
            FinetuneSettings(
                epochs=finetune_epochs or FINETUNE_EPOCHS,
                unfreeze=finetune_unfreeze or FINETUNE_UNFREEZE,
                flip=not finetune_no_flip,
                progress=search.progress,  # --quiet: no epoch bars
            )
            if with_finetune
            else None
        ),
    )
    outcome = run_compare(features=list(features) or None, out=out, settings=settings, log=click.echo)
    click.echo("")
    click.echo(outcome.markdown)
    click.echo(
        f"report: {printable(outcome.report_dir)}/report.html (+ report.md with per-class scores, .csv, .json, "
        f"predictions/, confusion/, summary.png, per_class.png, embedding.png, models/)"
    )
    chosen = outcome.recommendation.row
    click.echo(
        f"use: {chosen.backbone} {chosen.head}, {printable(chosen.model_path or '(not saved)')} "
        f"(why: the report's Recommendation)"
    )


@cli.command()
@click.option(
    "--features", multiple=True, help="Feature file(s), each audited alone [default: the newest under OUT/features]."
)
@click.option("--out", default=DEFAULT_OUT, show_default=True, help="Output root; audits go to OUT/audit/.")
@click.option(
    "--clf",
    default="logreg",
    show_default=True,
    help="The head whose out-of-fold probabilities (--cv folds) the label check reads.",
)
@click.option(
    "--near",
    type=click.FloatRange(0, 1, min_open=True),
    default=AUDIT_NEAR,
    show_default=True,
    help="Cosine similarity at and above which two images are copies (measured: docs/audit.md).",
)
@search_options
def audit(features, out, clf, near, **options):
    """Find leaks, duplicates, likely wrong labels and outliers in a feature file's images."""
    from experiments.audit import AuditSettings
    from experiments.audit import audit as run_audit

    settings = AuditSettings(clf=clf, near=near, search=search_settings(**options))
    for outcome in run_audit(features=list(features) or None, out=out, settings=settings, log=click.echo):
        click.echo("")
        click.echo(printable(outcome.markdown))
        click.echo(f"audit: {printable(outcome.folder)}/audit.html (+ issues.csv, audit.md, audit.json)")


@cli.command()
@click.option("--model", "model_path", required=True, help="A .joblib file written by `fit` or `compare`.")
@click.argument("inputs", nargs=-1, required=True)
@click.option("--out", default=None, help=f"Folder for one PNG per image [default: {explain_dir()}].")
@click.option("--class", "class_name", default=None, help="Explain this class [default: the predicted one].")
@click.option(
    "--method",
    type=click.Choice(EXPLAIN_METHODS),
    default="auto",
    show_default=True,
    help="cam: the exact class activation map (linear heads on one backbone); occlusion: any head; "
    "auto: cam where it exists.",
)
@click.option(
    "--feature-maps",
    "feature_maps",
    is_flag=False,
    flag_value="last",
    default=None,
    metavar="[LAYER]",
    help="Also <image>-maps.png: the 16 strongest channels of LAYER (a module name such as layer3 or "
    "_blocks.10; alone: the last feature map).",
)
@click.option("--filters", is_flag=True, help="Also filters.png: the first convolution's kernels.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
def explain(model_path, inputs, out, class_name, method, feature_maps, filters, device):
    """Heatmaps of where the model looks: one PNG per image (files or folders)."""
    from experiments.explain import ExplainSettings, explain_images

    settings = ExplainSettings(
        class_name=class_name, method=method, device=device, feature_maps=feature_maps, filters=filters
    )
    explained = explain_images(model_path, inputs, out, settings, log=click.echo)
    click.echo(
        f"{len(explained.written)} pictures, {len(explained.failures)} unreadable: {printable(explained.folder)}"
    )


@cli.command()
@click.option("--backbone", default=DEFAULT_BACKBONE, show_default=True, help="Registered backbone.")
@click.option(
    "--data",
    default="data",
    show_default=True,
    help="Image folder (train/ and val/ or test/, else a seeded 20% hold-out as compare draws it) or a list file; "
    "or any other --data extract takes (a URL, shards, a manifest).",
)
@click.option(
    "--name",
    default=None,
    metavar="NAME",
    help="The dataset's name, as `extract --name` gave it: the network goes to OUT/finetune/NAME-<hash8>-<backbone>/, "
    "where compare finds it beside that feature file.",
)
@click.option(
    "--weights",
    default=None,
    help="Start from: the backbone's own pretrained weights [default], a checkpoint PATH, or 'random'.",
)
@click.option("--out", default=DEFAULT_OUT, show_default=True, help="Output root; writes OUT/finetune/.")
@click.option("--epochs", type=click.IntRange(min=1), default=FINETUNE_EPOCHS, show_default=True)
@click.option(
    "--unfreeze",
    default=FINETUNE_UNFREEZE,
    show_default=True,
    callback=checked_unfreeze,
    help="all, none, or last-N-blocks.",
)
@click.option(
    "--crop-scale",
    type=click.FloatRange(0, 1, min_open=True),
    default=FINETUNE_CROP_SCALE,
    show_default=True,
    help="Random crops keep at least this share of the image.",
)
@click.option(
    "--flip/--no-flip",
    default=True,
    show_default=True,
    help="Also train on mirrored images (--no-flip where a mirror image is another class: letters, digits).",
)
@click.option(
    "--head-init",
    type=click.Choice(HEAD_INITS),
    default=HEAD_INITS[0],
    show_default=True,
    help="probe: the new layer starts as a logistic regression on the frozen features; random.",
)
@click.option(
    "--batchnorm",
    type=click.Choice(BATCHNORM_MODES),
    default=BATCHNORM_MODES[0],
    show_default=True,
    help="frozen: every batch-norm layer keeps its pretrained statistics; train: unfrozen ones update theirs.",
)
@click.option("--lr", type=float, default=1e-3, show_default=True, help="Head learning rate (backbone: x0.1).")
@click.option("--batch-size", type=click.IntRange(min=1), default=None, help="[default: 16 on CPU, 64 on CUDA]")
@click.option("--label-smoothing", type=float, default=0.1, show_default=True)
@click.option("--tta", is_flag=True, help="Average with the horizontally flipped image when evaluating.")
@click.option("--device", default="auto", show_default=True)
@click.option("--workers", type=click.IntRange(min=0), default=None, help="Decoding processes.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option(
    "--teacher",
    default=None,
    help="A saved model (.joblib: any head, ensemble or fused model) whose "
    "probabilities the network also learns (distillation).",
)
@click.option(
    "--temperature",
    type=click.FloatRange(min=0, min_open=True),
    default=4.0,
    show_default=True,
    help="With --teacher: how much both distributions are softened.",
)
@click.option(
    "--alpha",
    type=click.FloatRange(0, 1),
    default=0.5,
    show_default=True,
    help="With --teacher: the teacher's share of the loss (the labels get 1 - alpha).",
)
@STORAGE_OPTION
@click.option("--quiet", is_flag=True, help="No progress bars.")
def finetune(data, name, out, teacher, temperature, alpha, storage_options, quiet, **settings):
    """Fine-tune a backbone + linear layer end to end; the epoch is chosen on a slice of train."""
    from experiments.distill import Distillation
    from experiments.finetune import FinetuneSettings, run_finetune
    from featurize import parse_storage_options

    distill = Distillation(teacher, temperature, alpha) if teacher else None
    settings = FinetuneSettings(**settings, progress=not quiet, distill=distill)
    options = parse_storage_options(storage_options)
    run_finetune(data, out=out, settings=settings, log=click.echo, name=name, storage_options=options)


@cli.command()
def heads():
    """List heads and their default grids."""
    from classifiers import HEADS

    for name, head in HEADS.items():
        grid = " | ".join(", ".join(f"{k}={v}" for k, v in g.items()) for g in head.grid)
        click.echo(f"{name:<7} {head.description}\n        grid: {grid}")


@cli.command()
def backbones():
    """List backbones: feature size, stages (for extract --layers), input, weights source, and whether
    they load here now."""
    from featurize import BACKBONES

    click.echo(f"{'name':<20} {'dim':>5} {'stages':>6}  {'input':<16} {'weights':<12} {'here':<5} location")
    for name, backbone in sorted(BACKBONES.items()):
        prep = backbone.preprocessing()
        where, available = backbone.pretrained_location()
        size = f"{prep.resize_size}->{prep.crop_size} {prep.interpolation[:4]}"
        click.echo(
            f"{name:<20} {backbone.feature_dim:>5} {len(backbone.stage_dims):>6}  {size:<16} {backbone.source:<12} "
            f"{'yes' if available else 'no':<5} {where}"
        )


@cli.command("demo-data")
@click.argument("dest", default="data/digits")
def demo_data(dest):
    """Write scikit-learn's digits as train/ and val/ image folders in DEST (default data/digits; a
    dataset needing no download): then `extract --data data/digits`."""
    from featurize import write_digits

    folder, count = write_digits(dest)
    click.echo(f"{count} digit images in {printable(folder)}")


def main():
    for stream in (sys.stdout, sys.stderr):  # a file name that is not UTF-8 is shown escaped, never a crash
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")
    cli(prog_name="cnnfeat")


if __name__ == "__main__":
    sys.exit(main())
