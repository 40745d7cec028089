"""The store's bookkeeping at size: numpy columns by position, found by hashed paths."""

import tracemalloc

import numpy as np

import featurize.placement
from featurize.integrity import take_rows
from featurize.journal import Journal
from featurize.placement import IN_JOURNAL, IN_STORE, NOWHERE, SKIPPED, PathIndex, Placement
from featurize.store import VectorReader, load_features, place_store_rows, store_matches, write_store
from tests.conftest import generated_store

PATHS = [f"class{i % 7}/{i:06d}.jpg" for i in range(500)]


def test_path_index_finds_every_path_and_only_those_even_when_every_hash_collides(monkeypatch):
    asked = PATHS[::-3] + ["elsewhere.jpg", "class1/000001.jpg "]
    expected = [PATHS.index(p) if p in PATHS else -1 for p in asked]
    assert PathIndex(PATHS).positions(asked).tolist() == expected
    monkeypatch.setattr(featurize.placement, "_hashes", lambda paths: np.zeros(len(paths), np.int64))
    assert PathIndex(PATHS).positions(asked).tolist() == expected  # every lookup a collision: still exact
    assert PathIndex([]).positions(["a"]).tolist() == [-1]


def test_placement_later_rows_win_and_rows_of_other_paths_are_counted():
    placement = Placement(PATHS[:4])
    identities = np.arange(10).reshape(5, 2)
    dropped = placement.put_paths(
        [PATHS[0], "gone.jpg", PATHS[2], PATHS[0], PATHS[3]],
        identities,
        [10, 11, 12, 13, 14],
        ["", "", "unreadable", "", ""],
        IN_STORE,
    )
    assert dropped == 1
    assert placement.kind.tolist() == [IN_STORE, NOWHERE, SKIPPED, IN_STORE]
    assert placement.locator[[0, 3]].tolist() == [13, 14] and placement.identity[0].tolist() == [6, 7]
    assert placement.reasons == {2: "unreadable"}
    placement.put([2, 1], [[4, 5], [0, 0]], [99, 98], ["", ""])  # re-extracted: no longer skipped
    assert placement.kind.tolist() == [IN_STORE, IN_JOURNAL, IN_JOURNAL, IN_STORE] and placement.reasons == {}
    now = np.array([[6, 7], [0, 0], [4, 5], [0, 1]])  # the last file changed since its row was made
    assert placement.todo(now).tolist() == [3]


def test_a_one_file_update_of_a_large_store_holds_tens_of_bytes_a_row_not_a_python_object(tmp_path):
    """The fault: every row of the old store became a dict entry of tuples (0.75 GiB at a million
    rows; this measurement gave 419 bytes a row). Now a one-file update of 60,000 rows allocates
    under 100 bytes a row (66 measured) beyond the image list itself, and writes the right store."""
    rows, dim = 60_000, 8
    store, images, identities, attrs, X = generated_store(tmp_path, rows, dim)
    identities[123] = (-5, -5)  # one file changed
    tracemalloc.start()
    placement = Placement(images.paths)
    assert place_store_rows(placement, store, attrs["fingerprint"], str(tmp_path)) == 0
    todo = placement.todo(identities)
    journal = Journal(tmp_path / "scale.h5.partial", attrs["fingerprint"], dim)
    placement.put(
        todo, identities[todo], journal.append([images.paths[123]], identities[todo], X[todo] + 1, [""]), [""]
    )
    journal.close()
    write_store(store, images, identities, placement, dim, attrs, VectorReader(dim, store, journal.path))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert todo.tolist() == [123] and peak / rows < 100, peak / rows
    features = load_features(store)
    expected = X.copy()
    expected[123] += 1
    np.testing.assert_array_equal(features.X, expected)
    assert list(features.paths) == images.paths and store_matches(store, attrs["fingerprint"], images, identities)


def test_take_rows_reads_just_the_rows_asked_for_from_a_lazy_store(tmp_path):
    store, _, _, _, X = generated_store(tmp_path, 3_000, dim=5)
    lazy = load_features(store, lazy=True).X
    rng = np.random.default_rng(1)
    for rows in (
        np.arange(3_000),
        np.flatnonzero(rng.random(3_000) < 0.01),
        rng.integers(0, 3_000, 500),
        np.array([2_999, 0, 0, 17]),
        np.array([], np.int64),
    ):
        for block in (1, 7, 1_000_000):
            np.testing.assert_array_equal(take_rows(lazy, rows, block), X[rows])
            np.testing.assert_array_equal(take_rows(X, rows, block), X[rows])
