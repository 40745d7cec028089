"""cnnfeat command line: each command parses its options, calls one library function, and says
where the output went. torch is imported only inside the libraries, so `--help` is instant."""
from __future__ import annotations

import sys

import click

from featurize.errors import CnnfeatError

DEFAULT_OUT = "artifacts"


class Cli(click.Group):
    """Turns a user-caused error into one clear line and exit status 1, never a traceback."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except CnnfeatError as error:
            raise click.ClickException(str(error)) from None


@click.group(cls=Cli, context_settings={"help_option_names": ["-h", "--help"]})
def cli():
    """Frozen pretrained CNN features + the best classical head, compared honestly."""


@cli.command()
@click.option("--backbone", default="efficientnet_lite0", show_default=True,
              help="Registered backbone (see `cnnfeat backbones`).")
@click.option("--data", default="data", show_default=True,
              help="Image folder (train/ val/ [test/] of class folders, or class folders) or a 'path label' list file.")
@click.option("--weights", default=None,
              help="Default: the backbone's own pretrained weights. PATH: a local checkpoint "
                   "(state dict or full module). 'random': throughput benchmarks only.")
@click.option("--out", default=DEFAULT_OUT, show_default=True, help="Output root; the file goes to OUT/features/.")
@click.option("--device", default="auto", show_default=True, help="auto (CUDA when present), cpu, cuda or cuda:N.")
@click.option("--batch-size", type=click.IntRange(min=1), default=None,
              help="Images per forward pass [default: 16 on CPU, 128 on CUDA].")
@click.option("--workers", type=click.IntRange(min=0), default=None,
              help="Decoding processes [default: CPU cores - 1, at most 8].")
@click.option("--strict", is_flag=True, help="Fail (exit 1) if any image cannot be read.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def extract(backbone, data, weights, out, device, batch_size, workers, strict, quiet):
    """Extract one pooled feature vector per image into an HDF5 file (incremental, resumable)."""
    from featurize import extract as run_extract

    result = run_extract(data=data, backbone=backbone, weights=weights, out=out, device=device,
                         batch_size=batch_size, workers=workers, strict=strict, progress=not quiet)
    for note in result.notes:
        click.echo(note)
    if not result.model_loaded and not result.dropped and result.reused == result.total:
        click.echo(f"up to date: {result.total} images, nothing to extract ({result.seconds:.1f} s)")
    else:
        rate = f" ({result.images_per_second:.1f} img/s overall)" if result.extracted else ""
        click.echo(f"{result.total} images: {result.extracted} extracted{rate}, {result.reused} reused, "
                   f"{result.dropped} dropped (files gone), {len(result.skipped)} unreadable")
    for path, reason in result.skipped:
        click.echo(f"  skipped {path}: {reason}")
    click.echo(f"features: {result.store}")


@cli.command()
def backbones():
    """List backbones: feature size, input, weights source, and whether they load here now."""
    from featurize import BACKBONES

    click.echo(f"{'name':<20} {'dim':>5}  {'input':<16} {'weights':<12} {'here':<5} location")
    for name, record in sorted(BACKBONES.items()):
        prep = record.preprocessing()
        where, available = record.pretrained_location()
        size = f"{prep.resize_size}->{prep.crop_size} {prep.interpolation[:4]}"
        click.echo(f"{name:<20} {record.feature_dim:>5}  {size:<16} {record.source:<12} "
                   f"{'yes' if available else 'no':<5} {where}")


@cli.command("demo-data")
@click.argument("dest", default="data/digits")
def demo_data(dest):
    """Write scikit-learn's digits as train/ and val/ image folders (a dataset needing no download)."""
    from featurize.demo_data import write_digits

    folder, count = write_digits(dest)
    click.echo(f"{count} digit images in {folder}")


def main():
    cli(prog_name="cnnfeat")


if __name__ == "__main__":
    sys.exit(main())
