"""Files a user's disk really holds: names that are not UTF-8, stores damaged on disk or crafted.
Each test runs the commands the way a user meets them (cli.py processes, or the CLI in-process
where a setting has to be patched) and fails on the code before the fix."""

import json
import os
import shutil

import h5py
import numpy as np
import pytest

import featurize.store
from common.names import printable
from featurize import load_features
from featurize.integrity import DamagedStore, damage_mark
from tests.conftest import write_image, write_tinted
from tests.test_cli import assert_one_line_error, cli_process, run

RANDOM = ("--backbone", "resnet18", "--weights", "random")
BAD_NAME = os.fsdecode(b"bad-\xff\xfe.png")  # as os.listdir gives it: surrogate escapes


@pytest.fixture(scope="module")
def odd_names(tmp_path_factory):
    """Tinted images in train/ and val/, one val image named with bytes that are not UTF-8, in a
    folder whose own name is not UTF-8 either."""
    root = write_tinted(tmp_path_factory.mktemp("names") / os.fsdecode(b"p\xe9re") / "tinted", 12)
    shutil.copy(root / "val" / "red" / "r0.png", os.fsencode(root / "val" / "red") + b"/bad-\xff\xfe.png")
    return root


def test_a_name_that_is_not_utf8_is_stored_losslessly_and_shown_readably(odd_names, tmp_path):
    """Fault 1: every image was extracted, then the store's write failed on that name, at every re-run."""
    out = tmp_path / "out"
    code, said = cli_process("extract", "--data", odd_names, "--out", out, *RANDOM, "--quiet")
    assert code == 0 and "25 images: 25 extracted" in said, said
    code, said = cli_process("extract", "--data", odd_names, "--out", out, *RANDOM)
    assert code == 0 and "up to date: 25 images" in said, said
    store = next((out / "features").glob("*.h5"))
    features = load_features(store)
    assert f"val/red/{BAD_NAME}" in features.paths.tolist()
    bad = features.paths.tolist().index(f"val/red/{BAD_NAME}")
    same = features.paths.tolist().index("val/red/r0.png")  # the same pixels under a plain name
    np.testing.assert_array_equal(features.X[bad], features.X[same])
    with h5py.File(store) as h5:  # the file holds the name's own bytes
        assert b"val/red/bad-\xff\xfe.png" in h5["paths"][:].tolist()

    code, said = cli_process(
        "compare", "--features", store, "--out", out, "--clf", "logreg", "--ensemble", "none", "--cv", "2", "--quiet"
    )
    assert code == 0, said
    report = out / "reports" / store.stem
    predictions = (report / "predictions" / "resnet18-random-logreg.csv").read_text(encoding="utf-8")
    assert "val/red/bad-\\xff\\xfe.png" in predictions  # readable, and the CSV stays UTF-8

    model = report / "models" / "resnet18-random-logreg.joblib"
    code, said = cli_process("predict", "--model", model, "--out", tmp_path / "p.csv", odd_names / "val", "--quiet")
    assert code == 0 and "7 images, 0 unreadable" in said, said
    rows = (tmp_path / "p.csv").read_text(encoding="utf-8").splitlines()
    assert len(rows) == 8 and any(
        row.startswith(printable(odd_names / "val" / "red") + "/bad-\\xff\\xfe.png,red") for row in rows
    ), rows
    code, said = cli_process(
        "explain",
        "--model",
        model,
        "--out",
        tmp_path / "why",
        os.fsencode(odd_names / "val" / "red") + b"/bad-\xff\xfe.png",
    )
    assert code == 0 and "1 pictures, 0 unreadable" in said, said
    assert os.listdir(os.fsencode(tmp_path / "why")) == [b"bad-\xff\xfe.png"]


# -- damaged vectors -----------------------------------------------------------------------------


@pytest.fixture
def small_blocks(monkeypatch):
    """Checksums of 8 rows each (1,024 in real stores), so one damaged block is a few of 48 rows."""
    monkeypatch.setattr(featurize.store, "COPY_ROWS", 8)


@pytest.fixture
def tinted_data(tmp_path):
    return write_tinted(tmp_path / "tinted", 24)


def _extract(data, out, *more):
    result = run("extract", "--data", data, "--out", out, *RANDOM, "--workers", "0", "--quiet", *more)
    assert result.exit_code == 0, result.output
    return result.output


def _damage(store, row: int, how: str):
    """Change the bytes of stored vector `row` in place, as a failing disk or a stray write would (in
    a compressed store: bytes in the middle of the chunk holding it)."""
    with h5py.File(store) as h5:
        features = h5["features"]
        per_chunk, itemsize = features.chunks[0], features.dtype.itemsize
        info = features.id.get_chunk_info_by_coord((row - row % per_chunk, 0))
        compressed = features.compression is not None
        offset = info.byte_offset + (info.size // 2 if compressed else (row % per_chunk) * features.shape[1] * itemsize)
    with open(store, "r+b") as handle:
        handle.seek(offset + 40)
        if how == "64 bytes":
            handle.write(bytes(64))
            handle.seek(offset + 40)
            handle.write(b"\xff" * 8)  # a NaN among the zeros
        else:  # one exponent byte: a number off by a factor, silently
            byte = handle.read(itemsize)[itemsize - 1]
            handle.seek(offset + 40 + itemsize - 1)
            handle.write(bytes([byte ^ 0x01]))


STORAGES = {
    "float32": (),
    "float16": ("--dtype", "float16"),
    "gzip": ("--compression", "gzip"),
    "float16 lzf": ("--dtype", "float16", "--compression", "lzf"),
}


@pytest.mark.parametrize(
    "how,storage",
    [
        ("64 bytes", "float32"),
        ("exponent", "float32"),
        ("exponent", "float16"),
        ("64 bytes", "gzip"),
        ("64 bytes", "float16 lzf"),
    ],
)
def test_damaged_vectors_stop_readers_and_extract_repairs_them(tinted_data, tmp_path, small_blocks, how, storage):
    """Fault 5: 'up to date', then fit died with scikit-learn's NaN traceback or trained on a wrong number.
    In a compressed store the damaged chunk cannot even be decompressed: the same line, the same repair
    (of every row in that HDF5 chunk: here all 48)."""
    out, options = tmp_path / "out", STORAGES[storage]
    _extract(tinted_data, out, *options)
    store = next((out / "features").glob("*.h5"))
    before = load_features(store)
    row = 21  # in the third block of 8 rows: rows 16..23
    _damage(store, row, how)
    compressed = "gzip" in storage or "lzf" in storage  # the damage reaches past the row: which rows, it says

    for command in (
        ["fit", "--clf", "logreg", "--features", store, "--out", out, "--cv", "2"],
        ["compare", "--features", store, "--out", out, "--clf", "logreg", "--cv", "2"],
    ):
        assert_one_line_error(
            run(*command),
            store.name,
            "do not match their checksums",
            "rows (from row" if compressed else "8 rows (from row 16)",
        )
    with pytest.raises(DamagedStore):  # row 21's block (in a compressed store, wherever the damage reached)
        load_features(store, lazy=True).X[slice(0, 48) if compressed else slice(20, 22)]
    if not compressed:  # the other blocks read as they are
        np.testing.assert_array_equal(load_features(store, lazy=True).X[0:16], before.X[0:16])
    assert damage_mark(store).exists()

    said = _extract(tinted_data, out, *options)  # the plain command: the mark makes it check, and repair
    assert "failed their checksums" in said and "48 images: " in said and " extracted" in said, said
    if not compressed:
        assert "8 rows of" in said and "48 images: 8 extracted" in said, said
    repaired = load_features(store)
    np.testing.assert_allclose(repaired.X, before.X, rtol=1e-3 if "float16" in storage else 1e-5, atol=1e-6)
    assert not damage_mark(store).exists()
    assert run("fit", "--clf", "logreg", "--features", store, "--out", out, "--cv", "2").exit_code == 0


def test_a_store_from_before_checksums_is_rewritten_once_with_them(tinted_data, tmp_path):
    out = tmp_path / "out"
    _extract(tinted_data, out)
    store = next((out / "features").glob("*.h5"))
    before = load_features(store)
    with h5py.File(store, "r+") as h5:  # what an earlier cnnfeat wrote
        del h5["checksums"], h5.attrs["checksum_rows"], h5.attrs["sealed"]
    np.testing.assert_array_equal(load_features(store, lazy=True).X[3:9], before.X[3:9])  # read as it is
    assert "48 images: 0 extracted, 48 reused" in _extract(tinted_data, out)
    with h5py.File(store) as h5:
        assert h5["checksums"].shape == (1,)
    assert "up to date" in _extract(tinted_data, out)


def test_extract_verify_finds_damage_no_reader_has_met(tinted_data, tmp_path, small_blocks):
    out = tmp_path / "out"
    _extract(tinted_data, out)
    store = next((out / "features").glob("*.h5"))
    _damage(store, 40, "exponent")
    assert "up to date" in _extract(tinted_data, out)  # the everyday check reads no vector
    said = _extract(tinted_data, out, "--verify")
    assert "48 images: 8 extracted" in said, said
    assert "up to date" in _extract(tinted_data, out, "--verify")


def test_damage_found_while_copying_the_old_rows_is_repaired_in_the_same_run(tinted_data, tmp_path, small_blocks):
    """A new image makes extract copy every old vector: a damaged one is extracted again, not laundered
    into the new store under a fresh checksum."""
    out = tmp_path / "out"
    _extract(tinted_data, out)
    store = next((out / "features").glob("*.h5"))
    before = load_features(store)
    _damage(store, 3, "64 bytes")
    write_image(tinted_data / "train" / "red" / "new.png", seed=77, tint=(1.0, 0.4, 0.4))
    said = _extract(tinted_data, out)
    assert "damaged vectors found while copying" in said and "49 images: 9 extracted" in said, said
    after = load_features(store)
    for path, vector in zip(before.paths, before.X):
        np.testing.assert_allclose(after.X[after.paths.tolist().index(path)], vector, rtol=1e-5, atol=1e-6)


# -- malformed attributes and columns ------------------------------------------------------------


def _cut_short(h5, name):
    h5.attrs[name] = h5.attrs[name][: len(h5.attrs[name]) // 2]


CRAFTED = {
    "class_names cut short": lambda h5: _cut_short(h5, "class_names"),
    "storage cut short": lambda h5: _cut_short(h5, "storage"),
    "config cut short": lambda h5: _cut_short(h5, "config"),
    "config not an object": lambda h5: h5.attrs.modify("config", json.dumps(["resnet18"])),
    "labels past the classes": lambda h5: h5["labels"].write_direct(np.full(h5["labels"].shape, 99, np.int64)),
    "a column cut short": lambda h5: (h5.move("splits", "old"), h5.create_dataset("splits", data=h5["old"][:-3])),
    "checksums missing a block": lambda h5: (h5.move("checksums", "old"), h5.create_dataset("checksums", data=[1])),
}


def _flip_labels(store):
    """Flip the low bit of 20 stored labels in the file itself (a contiguous dataset: its bytes in place)."""
    with h5py.File(store) as h5:
        offset = h5["labels"].id.get_offset()
    with open(store, "r+b") as handle:
        for row in range(0, 40, 2):
            handle.seek(offset + 8 * row)
            value = handle.read(1)[0]
            handle.seek(offset + 8 * row)
            handle.write(bytes([value ^ 1]))


CHANGED = {  # damage outside the vectors that a reader would otherwise use without a word
    "labels": (_flip_labels, "its labels column does not match its checksum", "48 images: 0 extracted"),
    "a split": (
        lambda store: _with_h5(
            store, lambda h5: h5["splits"].write_direct(np.asarray([b"trai\xff"], dtype=object), np.s_[0:1], np.s_[3:4])
        ),
        "its splits column",
        "0 extracted",
    ),
    "a path": (
        lambda store: _with_h5(
            store, lambda h5: h5["paths"].write_direct(np.asarray([b"red/x.png"], dtype=object), np.s_[0:1], np.s_[5:6])
        ),
        "its paths column",
        "1 extracted",
    ),
    "the crop size in the config": (
        lambda store: _with_h5(
            store,
            lambda h5: h5.attrs.modify("config", h5.attrs["config"].replace('"crop_size": 224', '"crop_size": 264')),
        ),
        "its attributes do not match their checksum",
        "48 extracted",
    ),
}


def _with_h5(store, change):
    with h5py.File(store, "r+") as h5:
        change(h5)


@pytest.mark.parametrize("case", list(CHANGED))
def test_changed_labels_splits_paths_or_config_are_refused_and_repaired(tinted_data, tmp_path, case):
    """Damage beside the vectors: fit trained on 20 wrong labels, or on a config that no longer
    says how its vectors were made, with exit 0."""
    out = tmp_path / "out"
    _extract(tinted_data, out)
    store = next((out / "features").glob("*.h5"))
    damage, fragment, repaired = CHANGED[case]
    damage(store)
    assert_one_line_error(
        run("fit", "--clf", "logreg", "--features", store, "--out", out, "--cv", "2"), store.name, fragment
    )
    said = _extract(tinted_data, out)
    assert repaired in said, said
    assert run("fit", "--clf", "logreg", "--features", store, "--out", out, "--cv", "2").exit_code == 0


@pytest.mark.parametrize("case", list(CRAFTED))
def test_a_malformed_store_is_refused_in_one_line_and_rebuilt_by_extract(tinted_data, tmp_path, small_blocks, case):
    """Fault 6: JSONDecodeError on every extract; KeyError / IndexError in fit."""
    out = tmp_path / "out"
    _extract(tinted_data, out)
    store = next((out / "features").glob("*.h5"))
    with h5py.File(store, "r+") as h5:
        CRAFTED[case](h5)
    assert_one_line_error(
        run("fit", "--clf", "logreg", "--features", store, "--out", out, "--cv", "2"), store.name, "damaged"
    )
    said = _extract(tinted_data, out)
    if case == "labels past the classes":  # its vectors are whole: kept, the labels written anew
        assert "48 images: 0 extracted" in said, said
    else:
        assert "rebuilding it" in said and "48 images: 48 extracted" in said, said
    assert len(load_features(store).paths) == 48
