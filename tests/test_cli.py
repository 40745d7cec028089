"""The CLI through click's CliRunner: user errors end in one line and exit 1, never a traceback."""

import re
import subprocess
import sys

import pytest
import torch
from click.testing import CliRunner

from cli import cli
from tests.conftest import REPO, write_image


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def assert_one_line_error(result, *fragments):
    assert result.exit_code == 1, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def cli_process(*args, file_size=None, timeout=300):
    """`python cli.py ARGS` in its own process, as a user runs it (stdout a pipe: strict UTF-8, as a
    log file is), under `ulimit -f` of `file_size` bytes when given; (exit status, what it printed).
    An argument may be bytes: a file name that is not UTF-8."""
    import os
    import resource

    def limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (file_size, file_size))

    command = [os.fsencode(sys.executable), os.fsencode(REPO / "cli.py")]
    command += [arg if isinstance(arg, bytes) else os.fsencode(str(arg)) for arg in args]
    done = subprocess.run(
        command, cwd=REPO, capture_output=True, timeout=timeout, preexec_fn=limit if file_size else None
    )
    return done.returncode, done.stdout.decode("utf-8") + done.stderr.decode("utf-8")


def assert_ends_in_one_error_line(code, said, *fragments):
    """A process's output: its last line the one `Error:` line (notes may come before), exit 1."""
    lines = said.strip().splitlines()
    assert code == 1 and lines and lines[-1].startswith("Error: "), (code, said)
    assert "Traceback" not in said and not any(line.startswith("Error: ") for line in lines[:-1]), said
    for fragment in fragments:
        assert fragment in lines[-1], lines[-1]


def test_help_does_not_import_torch():
    """Nor scikit-learn: the choices --help shows come from experiments.choices (tests/experiments/test_choices.py
    pins them to the registries)."""
    code = (
        "import sys, cli; sys.argv = ['cnnfeat', '--help']\ntry: cli.main()\nexcept SystemExit: pass\n"
        "print('torch' in sys.modules, 'sklearn' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True).stdout
    assert "Commands:" in out and out.strip().endswith("False False"), out


def test_extract_then_up_to_date(class_folders, tmp_path):
    first = run(
        "extract",
        "--data",
        class_folders,
        "--out",
        tmp_path,
        "--backbone",
        "resnet18",
        "--weights",
        "random",
        "--workers",
        "0",
        "--quiet",
    )
    assert first.exit_code == 0, first.output
    assert "7 images: 7 extracted" in first.output and re.search(r"pets-[0-9a-f]{8}-resnet18-random\.h5", first.output)
    again = run("extract", "--data", class_folders, "--out", tmp_path, "--backbone", "resnet18", "--weights", "random")
    assert "up to date: 7 images, nothing to extract" in again.output
    half = run(
        "extract",
        "--data",
        class_folders,
        "--out",
        tmp_path,
        "--backbone",
        "resnet18",
        "--weights",
        "random",
        "--workers",
        "0",
        "--quiet",
        "--dtype",
        "float16",
        "--compression",
        "lzf",
    )
    assert "7 images: 7 extracted" in half.output and "resnet18-random-float16.h5" in half.output


def test_a_dataset_named_in_another_script_is_extracted_read_and_compared(class_folders, tmp_path):
    """`--name 'Ärzte 日本'`: its letters kept in the file's name and title, and the store it names opens
    (a reader that allowed ASCII names only once refused it as "not a plain name")."""
    from featurize import load_features

    common = ("--out", tmp_path, "--backbone", "resnet18", "--weights", "random", "--quiet")
    extracted = run("extract", "--data", class_folders, "--name", "Ärzte 日本", "--workers", "0", *common[:-1])
    assert extracted.exit_code == 0, extracted.output
    store = next((tmp_path / "features").glob("Ärzte_日本-*-resnet18-random.h5"))
    assert load_features(store).dataset.startswith("Ärzte_日本-")
    compared = run("compare", "--out", tmp_path, "--clf", "knn", "--cv", "2", "--quiet")
    assert compared.exit_code == 0, compared.output
    assert "# Ärzte_日本: which head wins" in compared.output


def test_extract_name_names_the_file_keeps_the_hash_and_finds_the_file_again(class_folders, tmp_path):
    from featurize import load_features

    common = ("--data", class_folders, "--out", tmp_path, "--backbone", "resnet18", "--weights", "random")
    plain = run("extract", *common, "--workers", "0", "--quiet")
    where = re.search(r"pets-([0-9a-f]{8})-resnet18-random\.h5", plain.output).group(1)
    named = run("extract", *common, "--name", "garden pets", "--workers", "0", "--quiet")
    store = tmp_path / "features" / f"garden_pets-{where}-resnet18-random.h5"
    assert "7 images: 7 extracted" in named.output and named.output.endswith(f"features: {store}\n"), named.output
    assert load_features(store).dataset == f"garden_pets-{where}"
    again = run("extract", *common, "--name", "garden pets")
    assert "up to date: 7 images, nothing to extract" in again.output and str(store) in again.output
    assert sorted(p.name for p in (tmp_path / "features").glob("*.h5")) == [
        store.name,
        f"pets-{where}-resnet18-random.h5",
    ]
    for unusable in ("", "///"):
        assert_one_line_error(run("extract", *common, "--name", unusable), "--name", "nothing in it can name a file")
    code, said = cli_process("extract", "--data", class_folders, "--out", tmp_path, "--name", " ")
    assert_ends_in_one_error_line(code, said, "--name ' ': nothing in it can name a file")
    assert "--name NAME" in run("extract", "--help").output


def test_unreadable_images_named_exit_0_unless_strict(class_folders, tmp_path):
    (class_folders / "cats" / "broken.jpg").write_bytes(b"\xff\xd8\xff not really")
    args = [
        "extract",
        "--data",
        class_folders,
        "--out",
        tmp_path,
        "--backbone",
        "resnet18",
        "--weights",
        "random",
        "--workers",
        "0",
        "--quiet",
    ]
    result = run(*args)
    assert result.exit_code == 0 and "skipped cats/broken.jpg:" in result.output
    assert (
        "8 images: 7 extracted" in result.output and ", 0 reused, 0 dropped (files gone), 1 unreadable" in result.output
    )
    write_image(class_folders / "dogs" / "new.png", seed=91)
    again = run(*args)  # the broken file is neither extracted again nor counted as a reused vector
    assert (
        "9 images: 1 extracted" in again.output and ", 7 reused, 0 dropped (files gone), 1 unreadable" in again.output
    )
    assert_one_line_error(run(*args, "--strict"), "--strict: 1 unreadable images", "cats/broken.jpg")


def test_a_folder_of_only_unreadable_images_is_an_error(tmp_path):
    for name, content in (("a/empty.jpg", b""), ("b/text.jpg", b"not an image")):
        (tmp_path / "data" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "data" / name).write_bytes(content)
    args = ["extract", "--data", tmp_path / "data", "--out", tmp_path / "out", "--backbone", "resnet18"]
    args += ["--weights", "random", "--workers", "0", "--quiet"]
    for _ in range(2):  # the first run and the up-to-date one alike
        assert_one_line_error(run(*args), "none of the 2 images could be read", "a/empty.jpg: empty file")
    assert list((tmp_path / "out" / "features").glob("*.h5"))  # the reasons are kept


@pytest.mark.parametrize(
    "case", ["missing folder", "empty folder", "unknown backbone", "missing weights file", "no cuda"]
)
def test_user_errors_are_one_line(class_folders, tmp_path, case):
    (tmp_path / "empty").mkdir()
    args, fragments = {
        "missing folder": (["--data", tmp_path / "absent"], ["no such file or folder"]),
        "empty folder": (["--data", tmp_path / "empty"], ["no images found"]),
        "unknown backbone": (["--backbone", "resnet5"], ["unknown backbone 'resnet5'", "resnet50"]),
        "missing weights file": (["--weights", tmp_path / "nope.pth"], ["no such file"]),
        "no cuda": (["--device", "cuda"], ["CUDA is not available"]),
    }[case]
    if case == "no cuda" and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    defaults = {"--data": class_folders, "--weights": "random", "--out": tmp_path / "out", "--backbone": "resnet18"}
    for flag, value in zip(args[::2], args[1::2]):
        defaults[flag] = value
    result = run("extract", *[item for pair in defaults.items() for item in pair])
    assert_one_line_error(result, *fragments)


def test_torchvision_weights_offline_is_one_line(class_folders, tmp_path, offline_torch_hub):
    result = run("extract", "--data", class_folders, "--out", tmp_path, "--backbone", "resnet50")
    assert_one_line_error(result, "resnet50-11ad3fa6.pth", "--weights PATH")
    assert list((tmp_path / "features").iterdir()) == []  # no .lock left for a store that does not exist


class _MakesAFolder:
    def __init__(self, target):
        self.target = str(target)

    def __reduce__(self):  # a function of a module torch's safe loader blocks outright (posix)
        import os

        return (os.mkdir, (self.target,))


def test_a_pickle_torch_blocks_is_named_with_the_flag_that_would_run_it(class_folders, tmp_path):
    """Fault 12: torch 2.14 words this 'unsupported GLOBAL posix.mkdir ... is blocked', and the old check
    looked for 'Unsupported global': the user got torch's paragraph and no --trust-pickle."""
    target = tmp_path / "made-by-the-pickle"
    torch.save({"state_dict": _MakesAFolder(target)}, tmp_path / "blocked.pth")
    result = run(
        "extract",
        "--data",
        class_folders,
        "--out",
        tmp_path / "out",
        "--backbone",
        "resnet18",
        "--weights",
        tmp_path / "blocked.pth",
        "--workers",
        "0",
        "--quiet",
    )
    assert_one_line_error(result, "holds pickled Python objects (posix.mkdir)", "runs code", "--trust-pickle")
    assert "Weights only load failed" not in result.output and not target.exists()
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint" * 8)
    junk = run(
        "extract",
        "--data",
        class_folders,
        "--out",
        tmp_path / "out",
        "--backbone",
        "resnet18",
        "--weights",
        tmp_path / "junk.pth",
        "--workers",
        "0",
        "--quiet",
    )
    assert_one_line_error(junk, "not a readable torch checkpoint")
    assert "--trust-pickle" not in junk.output and "weights_only" not in junk.output


def test_backbones_lists_every_backbone_and_where_weights_are():
    result = run("backbones")
    assert result.exit_code == 0
    lines = {line.split()[0]: line for line in result.output.splitlines()[1:]}
    assert {"resnet50", "efficientnet_lite0", "convnext_tiny", "vgg16_bn", "mobilenet_v3_large"} <= set(lines)
    assert " yes " in lines["efficientnet_lite0"] and "efficientnet-lite0-57934424.pth" in lines["efficientnet_lite0"]
    assert "resnet50-11ad3fa6.pth" in lines["resnet50"]
    assert lines["resnet50"].split()[1:3] == ["2048", "4"] and lines["efficientnet_lite0"].split()[1:3] == ["1280", "8"]


def test_demo_data_writes_digit_folders(tmp_path):
    result = run("demo-data", tmp_path / "digits")
    assert result.exit_code == 0 and "1797 digit images" in result.output
    assert len(list((tmp_path / "digits").glob("*/*/*.png"))) == 1797
    assert sorted(p.name for p in (tmp_path / "digits" / "val").iterdir()) == [str(d) for d in range(10)]


class _CreatesAFile:
    def __init__(self, target):
        self.target = str(target)

    def __reduce__(self):  # what unpickling runs
        return (open, (self.target, "w"))


def test_a_hostile_weights_file_is_refused_without_running_it(class_folders, tmp_path):
    target = tmp_path / "created-by-the-pickle"
    torch.save({"state_dict": _CreatesAFile(target)}, tmp_path / "hostile.pth")
    args = [
        "extract",
        "--data",
        class_folders,
        "--out",
        tmp_path / "out",
        "--backbone",
        "resnet18",
        "--weights",
        tmp_path / "hostile.pth",
        "--workers",
        "0",
        "--quiet",
    ]
    assert_one_line_error(run(*args), "runs code from the file; refusing", "--trust-pickle")
    assert not target.exists()
    trusted = run(*args, "--trust-pickle")  # the opt-in is what lets it run: it does, then fits nothing
    assert target.exists()
    assert_one_line_error(trusted, "does not fit backbone resnet18")


def test_a_plain_rerun_keeps_the_files_compression(class_folders, tmp_path):
    """`--compression` once, then the everyday command without it: the file stays compressed, an
    unchanged folder is up to date (no rewrite), a new image is the only one extracted."""
    import h5py

    common = (
        "--data",
        class_folders,
        "--out",
        tmp_path,
        "--backbone",
        "resnet18",
        "--weights",
        "random",
        "--workers",
        "0",
        "--quiet",
    )
    first = run("extract", *common, "--compression", "gzip")
    store = next((tmp_path / "features").glob("*.h5"))
    written = store.stat().st_ino
    again = run("extract", *common)
    assert "up to date: 7 images" in again.output and store.stat().st_ino == written, again.output  # not rewritten
    write_image(class_folders / "cats" / "c9.png", seed=98)
    third = run("extract", *common)
    assert first.exit_code == third.exit_code == 0 and "8 images: 1 extracted" in third.output, third.output
    with h5py.File(store) as h5:
        assert h5["features"].compression == "gzip"
    plain = run("extract", *common, "--compression", "none")  # asked for: rewritten without, nothing extracted
    assert plain.exit_code == 0 and "8 images: 0 extracted, 8 reused" in plain.output, plain.output
    with h5py.File(store) as h5:
        assert h5["features"].compression is None


def _imports_torch(*args) -> tuple[bool, str]:
    """Run `cnnfeat ARGS` in a fresh process as the CLI does; (whether torch got imported, its output)."""
    code = (
        "import sys, cli\nsys.argv = ['cnnfeat', *sys.argv[1:]]\nstatus = 0\n"
        "try: cli.main()\nexcept SystemExit as stop: status = stop.code\n"
        "print('exit', status, 'imported torch:', 'torch' in sys.modules)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, *map(str, args)], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    said = done.stdout + done.stderr
    assert "exit 0 imported torch:" in said and "Traceback" not in said, said
    return said.strip().endswith("imported torch: True"), said


def test_small_jobs_run_without_importing_torch(class_folders, tmp_path):
    """Once a backbone's graph is exported, torch is not needed to run it on a few images (2-3 s of
    a small job's start-up here): an up-to-date extract, one after adding 3 images, predicting one."""
    extract = ("extract", "--data", class_folders, "--out", tmp_path, "--quiet")
    assert _imports_torch(*extract)[0]  # the first run exports the graph with torch
    torch_loaded, said = _imports_torch(*extract)
    assert not torch_loaded and "up to date" in said, said
    for k in range(3):
        write_image(class_folders / "cats" / f"added-{k}.jpg", seed=50 + k, fmt="JPEG")
    torch_loaded, said = _imports_torch(*extract)
    assert not torch_loaded and "3 extracted" in said, said
    assert run("fit", "--clf", "logreg", "--out", tmp_path, "--quiet").exit_code == 0
    model = next((tmp_path / "models").rglob("*.joblib"))
    run(
        "predict", "--model", model, "--out", tmp_path / "warm.csv", "--quiet", class_folders / "cats"
    )  # the graph cached
    torch_loaded, said = _imports_torch(
        "predict", "--model", model, "--out", tmp_path / "p.csv", "--quiet", class_folders / "cats" / "added-0.jpg"
    )
    assert not torch_loaded, said
    assert (tmp_path / "p.csv").read_text().count("\n") == 2
