"""Finding a dataset's images: the three layouts, names, and discovery at size."""

import os
import re

import pytest

from featurize import DataError, discover, display_name
from tests.conftest import write_image


def test_class_folders_without_split(class_folders):
    images = discover(class_folders)
    assert images.layout == "class-folders" and re.fullmatch(r"pets-[0-9a-f]{8}", images.name)
    assert images.class_names == ["cats", "dogs"]
    assert images.paths[0] == "cats/c0.png" and images.labels == [0, 0, 0, 0, 1, 1, 1]
    assert set(images.splits) == {""}


def test_split_folders_share_one_class_list(tmp_path):
    write_image(tmp_path / "d" / "train" / "b" / "1.png", 1)
    write_image(tmp_path / "d" / "train" / "a" / "nested" / "2.png", 2)
    write_image(tmp_path / "d" / "valid" / "c" / "3.png", 3)  # a class only val has
    (tmp_path / "d" / "train" / "a" / "notes.txt").write_text("not an image extension: ignored")
    images = discover(tmp_path / "d")
    assert images.layout == "split-folders"
    assert images.class_names == ["a", "b", "c"]
    assert list(zip(images.paths, images.labels, images.splits)) == [
        ("train/a/nested/2.png", 0, "train"),
        ("train/b/1.png", 1, "train"),
        ("valid/c/3.png", 2, "val"),
    ]


def test_list_files(tmp_path):
    for i in range(3):
        write_image(tmp_path / "imgs" / f"{i}.png", i)
    (tmp_path / "train.txt").write_text("# path label\nimgs/0.png 10\nimgs/1.png 9\n")
    (tmp_path / "val.txt").write_text("imgs/2.png 10\n\n")
    one = discover(tmp_path / "train.txt")
    assert one.layout == "list-file" and one.class_names == ["9", "10"]  # numeric labels sort as numbers
    assert one.labels == [1, 0] and one.splits == ["train", "train"]
    both = discover(tmp_path)
    assert both.paths == ["imgs/0.png", "imgs/1.png", "imgs/2.png"]
    assert both.splits == ["train", "train", "val"]
    (tmp_path / "bad.txt").write_text("only-a-path\n")
    with pytest.raises(DataError, match="bad.txt:1: expected 'path label'"):
        discover(tmp_path / "bad.txt")


def test_list_paths_stay_inside_the_lists_folder(tmp_path):
    write_image(tmp_path / "inside" / "a.png", 0)
    write_image(tmp_path / "outside.png", 1)
    for line in ("../outside.png x", f"{tmp_path / 'outside.png'} x", "sub/../../outside.png x"):
        (tmp_path / "inside" / "list.txt").write_text(f"a.png y\n{line}\n")
        with pytest.raises(DataError, match="list.txt:2: .* is outside the list's folder"):
            discover(tmp_path / "inside" / "list.txt")


def test_two_datasets_with_one_folder_name_get_two_names(tmp_path):
    for project in ("one", "two"):
        write_image(tmp_path / project / "data" / "cats" / "c.png", 0)
    one, two = discover(tmp_path / "one" / "data"), discover(tmp_path / "two" / "data")
    assert one.name.startswith("data-") and two.name.startswith("data-") and one.name != two.name
    assert discover(tmp_path / "one" / "data").name == one.name  # stable for the same folder
    weird = tmp_path / "my photos (2024)"
    write_image(weird / "cats" / "c.png", 0)
    assert re.fullmatch(r"my_photos__2024_-[0-9a-f]{8}", discover(weird).name)  # a plain file-name part


def test_a_symlink_loop_does_not_hang_discovery(tmp_path):
    write_image(tmp_path / "d" / "cats" / "c.png", 0)
    write_image(tmp_path / "d" / "dogs" / "d.png", 1)
    write_image(tmp_path / "d" / "cats" / "sub" / "s.png", 2)
    os.symlink(".", tmp_path / "d" / "cats" / "loop")  # cats/loop -> cats
    os.symlink("..", tmp_path / "d" / "cats" / "sub" / "up")  # cats/sub/up -> cats
    images = discover(tmp_path / "d")
    assert images.paths == ["cats/c.png", "cats/sub/s.png", "dogs/d.png"]  # each real folder once


def test_discovery_holds_strings_not_path_objects(tmp_path):
    """A million images: discover made a Path per file (~380 bytes a file at its peak, 10 s per
    200,000 files here), where the list itself needs ~90 bytes a file."""
    import tracemalloc

    files = 20_000
    for i in range(files):
        folder = tmp_path / "d" / f"class{i % 4}" / ("deep" if i % 3 == 0 else "")
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{i:05d}.jpg").touch()
    discover(tmp_path / "d")  # a warm-up: imports and caches are not the list
    tracemalloc.start()
    images = discover(tmp_path / "d")
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert len(images) == files and images.paths[0] == "class0/00004.jpg"  # a folder's files, then its folders
    assert images.paths[1] == "class0/00008.jpg" and images.paths[-1] == "class3/deep/19995.jpg"
    assert all(type(p) is str for p in images.paths)
    assert peak / files < 150, f"{peak / files:.0f} bytes a file"  # measured: 102 (the Path objects: 384)


def test_a_given_name_replaces_the_folder_s_and_keeps_its_hash(tmp_path, class_folders):
    plain = discover(class_folders)
    named = discover(class_folders, name="garden pets")
    assert named.name == "garden_pets-" + plain.name.removeprefix("pets-")  # made a plain file-name part
    assert named.paths == plain.paths and named.class_names == plain.class_names
    (tmp_path / "train.txt").write_text("pets/cats/c0.png cat\n")
    listed, named_list = discover(tmp_path / "train.txt"), discover(tmp_path / "train.txt", name="cats")
    assert named_list.name == "cats-" + listed.name.rsplit("-", 1)[1] and listed.name != plain.name


@pytest.mark.parametrize("name", ["", "   ", "///", "._-+", "__"])
def test_a_name_with_nothing_to_name_a_file_by_is_refused(class_folders, name):
    with pytest.raises(DataError, match=r"--name .*: nothing in it can name a file"):
        discover(class_folders, name=name)


def test_display_name_drops_the_hash_of_where_the_data_is(class_folders):
    assert display_name(discover(class_folders).name) == "pets"
    assert display_name(discover(class_folders, name="pets-2024").name) == "pets-2024"
    assert display_name("data-32517dac") == "data"
    assert display_name("my_photos__2024_-0a1b2c3d") == "my_photos__2024_"
    assert display_name("cafe-deadbeef-0a1b2c3d") == "cafe-deadbeef"  # only the last: the hash
    for unhashed in ("data", "data-32517DAC", "data-32517da", "data-32517dac0", "-32517dac", "data_32517dac"):
        assert display_name(unhashed) == unhashed


def test_missing_and_empty_folders_are_clear_errors(tmp_path):
    with pytest.raises(DataError, match="no such file or folder"):
        discover(tmp_path / "absent")
    (tmp_path / "empty" / "cats").mkdir(parents=True)
    with pytest.raises(DataError, match="no images found"):
        discover(tmp_path / "empty")


def test_a_dataset_one_folder_down_or_an_image_as_data_is_refused_with_what_was_meant(tmp_path):
    """`demo-data` writes data/digits/{train,val}/...; `extract` with its default --data data would
    have stored one class, digits, and only `fit` would have said so."""

    for split in ("train", "val"):
        for label in ("a", "b"):
            write_image(tmp_path / "data" / "digits" / split / label / "0.png", 0)
    with pytest.raises(DataError, match=r"holds train/, val/.*Did you mean --data .*data/digits\?$"):
        discover(tmp_path / "data")
    assert discover(tmp_path / "data" / "digits").class_names == ["a", "b"]
    with pytest.raises(DataError, match="an image; --data takes a folder"):
        discover(tmp_path / "data" / "digits" / "val" / "a" / "0.png")


def test_a_name_in_another_script_keeps_its_letters(class_folders):
    """`--name 'Ärzte 日本'` once became `rzte____` (every letter outside ASCII dropped or replaced)."""
    from featurize import display_name

    named = discover(class_folders, name="Ärzte 日本")
    assert named.name.startswith("Ärzte_日本-") and display_name(named.name) == "Ärzte_日本"
