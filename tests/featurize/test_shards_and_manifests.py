"""WebDataset shards and manifests as --data: the vectors of the same images in a folder; shards made
here from real image files, on disk and on the S3 server of tests/s3_server.py."""

import io
import tarfile

import numpy as np
import pandas as pd
import pytest

from featurize import discover, extract, load_features
from tests.conftest import write_image
from tests.featurize.test_object_store import RANDOM, _extract, _local, _pets
from tests.test_cli import assert_ends_in_one_error_line, assert_one_line_error, cli_process, run

IN_PROCESS = {"backbone": "resnet18", "weights": "random", "engine": "torch", "workers": 0, "progress": False}
CLASSES = ["cats", "dogs"]


def _write_shards(folder, shards_dir, per_shard=3, names=True):
    """The images of `folder` (split/class/file) as shards `<split>-00000N.tar` of `per_shard` samples:
    KEY.<ext> + KEY.cls (the class index; classes.txt beside them, or the class name when not `names`)."""
    shards_dir.mkdir(parents=True, exist_ok=True)
    (shards_dir / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    keys = {}  # shard path of the image -> its folder path
    for split in ("train", "val"):
        files = sorted((folder / split).rglob("*.*"))
        for number, start in enumerate(range(0, len(files), per_shard)):
            shard = f"{split}-{number:06d}.tar"
            with tarfile.open(shards_dir / shard, "w") as tar:
                for path in files[start : start + per_shard]:
                    key = f"{path.parent.name}_{path.stem}"
                    label = str(CLASSES.index(path.parent.name)) if names else path.parent.name
                    _add(tar, f"{key}.cls", label.encode())
                    _add(tar, f"{key}{path.suffix}", path.read_bytes())
                    keys[f"{shard}/{key}{path.suffix}"] = path.relative_to(folder).as_posix()
    return keys


def _add(tar, name, data):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def _assert_same(shards, keys, folder):
    renamed = [keys[p] for p in shards.paths]
    order = [renamed.index(p) for p in folder.paths]
    np.testing.assert_allclose(shards.X[order], folder.X, atol=1e-5)
    assert [shards.class_names[y] for y in shards.y[order]] == [folder.class_names[y] for y in folder.y]
    assert list(shards.splits[order]) == list(folder.splits)


def test_local_shards_give_the_folder_vectors_and_a_cut_shard_keeps_its_whole_samples(tmp_path):
    folder = _pets(tmp_path / "pets")
    keys = _write_shards(folder, tmp_path / "shards")
    reference = load_features(extract(data=folder, out=tmp_path / "a", **IN_PROCESS).store)
    first = extract(data=str(tmp_path / "shards" / "{train-000000,val-000000}.tar"), out=tmp_path / "b", **IN_PROCESS)
    pattern = str(tmp_path / "shards" / "{train-{000000..000002},val-000000}.tar")
    result = extract(data=pattern, out=tmp_path / "b", **IN_PROCESS)  # more shards: the same file, grown
    shards = load_features(result.store)
    _assert_same(shards, keys, reference)
    assert first.store == result.store and (first.extracted, result.extracted, result.skipped) == (5, 5, [])
    assert discover(pattern).layout == "shards"

    again = extract(data=pattern, out=tmp_path / "b", **IN_PROCESS)
    assert (again.extracted, again.rewritten) == (0, False)

    cut = tmp_path / "shards" / "train-000001.tar"  # samples: cats_c3.cls, cats_c3.png, dogs_d0.cls, dogs_d0.jpg, ...
    whole = cut.read_bytes()
    with tarfile.open(cut) as tar:
        members = tar.getmembers()
    inside = members[3].offset_data + members[3].size // 2  # in the middle of dogs_d0.jpg's bytes
    cut.write_bytes(whole[:inside])
    result = extract(data=pattern, out=tmp_path / "b", **IN_PROCESS)
    assert any("train-000001.tar is truncated" in note and "dogs_d0" in note for note in result.notes), result.notes
    assert result.skipped == [("train-000001.tar/dogs_d0.jpg", "truncated shard: it ends inside this sample")]
    assert result.dropped == 1  # dogs_d1, after the cut: lost
    kept = load_features(result.store)
    assert "train-000001.tar/cats_c3.png" in list(kept.paths) and len(kept.paths) == 8


def test_shards_labelled_by_class_name_and_their_errors(tmp_path):
    folder = _pets(tmp_path / "pets", 1)
    _write_shards(folder, tmp_path / "shards", names=False)
    (tmp_path / "shards" / "classes.txt").unlink()
    images = discover(str(tmp_path / "shards" / "{train,val}-000000.tar"))
    assert images.class_names == CLASSES and sorted(set(images.splits)) == ["train", "val"]
    code, said = cli_process("extract", "--data", tmp_path / "shards" / "test-{000000..000001}.tar", *RANDOM)
    assert_ends_in_one_error_line(code, said, "shard", "test-000000.tar not found")


def test_shards_in_a_bucket_are_indexed_once(s3, tmp_path):
    folder = _pets(tmp_path / "pets")
    keys = _write_shards(folder, tmp_path / "shards")
    s3.upload_folder(tmp_path / "shards", s3.bucket, "shards")
    pattern = f"s3://{s3.bucket}/shards/{{train-{{000000..000002}},val-000000}}.tar"
    said, remote = _extract(pattern, tmp_path / "out")
    _, reference = _local(folder, tmp_path / "local")
    _assert_same(remote, keys, reference)
    assert remote.data_root == f"s3://{s3.bucket}/shards"
    s3.proxy.requests.clear()
    said, _ = _extract(pattern, tmp_path / "out")
    assert "up to date: 10 images" in said and s3.proxy.gets(".tar") == 0  # each shard's index from the cache


def test_a_shard_that_cannot_be_read_now_is_one_line_and_not_remembered(s3, tmp_path):
    _write_shards(_pets(tmp_path / "pets", 1), tmp_path / "shards")
    s3.upload_folder(tmp_path / "shards", s3.bucket, "shards")
    pattern = f"s3://{s3.bucket}/shards/{{train,val}}-000000.tar"
    s3.proxy.denied.add("/shards/train-000000.tar")
    code, said = cli_process("extract", "--data", pattern, *RANDOM, "--out", tmp_path / "out")
    assert_ends_in_one_error_line(code, said, "access denied")
    s3.proxy.denied.clear()  # readable again: indexed whole, not from a remembered failure
    said, store = _extract(pattern, tmp_path / "out")
    assert len(store.paths) == 4 and not any("truncated" in line for line in said.splitlines()), said


def test_a_manifest_of_files_and_objects_as_csv_and_parquet(s3, tmp_path):
    folder = _pets(tmp_path / "pets", 2)
    s3.upload_folder(folder, s3.bucket, "data")
    rows = []
    for path in sorted(folder.rglob("*.*")):
        relative = path.relative_to(folder).as_posix()
        split, label = relative.split("/")[:2]
        where = f"s3://{s3.bucket}/data/{relative}" if label == "dogs" else f"pets/{relative}"
        rows.append({"path": where, "label": label, "split": split})
    rows[0]["path"] = str(folder / rows[0]["path"].removeprefix("pets/"))  # an absolute path
    pd.DataFrame(rows).to_csv(tmp_path / "manifest.csv", index=False)
    pd.DataFrame(rows).to_parquet(tmp_path / "manifest.parquet")
    _, reference = _local(folder, tmp_path / "local")
    for manifest in ("manifest.csv", "manifest.parquet"):
        said, store = _extract(tmp_path / manifest, tmp_path / f"out-{manifest}")
        assert "6 extracted" in said, said
        renamed = [p.split("/data/", 1)[-1].removeprefix("pets/").removeprefix(str(folder) + "/") for p in store.paths]
        order = [renamed.index(p) for p in reference.paths]
        np.testing.assert_allclose(store.X[order], reference.X, atol=1e-5)
        assert list(store.splits[order]) == list(reference.splits)
    (tmp_path / "bad.parquet").write_bytes(pd.DataFrame({"file": ["a.png"], "class": ["cats"]}).to_parquet())
    (tmp_path / "nolabel.csv").write_text("path,label\npets/train/cats/c0.png,\n")
    (tmp_path / "twice.csv").write_text("path,label\npets/a.png,cats\npets/a.png,dogs\n")
    for name, expected in (
        ("bad.parquet", "a manifest needs the columns path and label"),
        ("nolabel.csv", "nolabel.csv:2: no label"),
        ("twice.csv", "twice.csv:3: pets/a.png is listed twice"),
    ):
        assert_one_line_error(run("extract", "--data", tmp_path / name, *RANDOM), expected)
    (tmp_path / "lines.csv").write_text("pets/train/cats/c0.png cats\npets/train/dogs/d0.jpg dogs\n")
    assert discover(tmp_path / "lines.csv").layout == "list-file"  # a .csv of 'path label' lines, as before


@pytest.mark.parametrize("cut_at", [100, 700])
def test_a_shard_cut_in_its_first_header_or_sample_has_no_samples(tmp_path, cut_at):
    folder = tmp_path / "one"
    write_image(folder / "train" / "cats" / "c0.png", seed=1)
    write_image(folder / "train" / "dogs" / "d0.png", seed=2)
    _write_shards(folder, tmp_path / "shards", per_shard=2)
    shard = tmp_path / "shards" / "train-000000.tar"
    shard.write_bytes(shard.read_bytes()[:cut_at])
    code, said = cli_process("extract", "--data", shard, *RANDOM, "--out", tmp_path / "out")
    assert_ends_in_one_error_line(code, said, "no samples (KEY.jpg + KEY.cls) in 1 shards")
