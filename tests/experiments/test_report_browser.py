"""report.html in a real browser (Debian's chromium, headless, through scripts/browser.py): every
picture loads, a click on a column's name sorts the table, and a screenshot can be taken. No skip when
chromium is missing: the failure says how to install it."""

import struct
import subprocess
import sys

import pytest

from experiments.compare import compare
from experiments.per_class import mistakes
from experiments.report_html import report_page
from scripts import browser
from scripts.browser import BrowserMissing, open_page
from tests.conftest import REPO, write_tinted_with_mistakes

QUIET = {"log": lambda _: None}

COLUMN = """(key) => {
  const col = [...document.querySelectorAll("#results thead th")].findIndex((th) => th.dataset.column === key);
  return [...document.querySelectorAll("#results tbody tr")].map((tr) => [tr.cells[col].textContent,
                                                                        tr.cells[col].dataset.sort]);
}"""


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR", "not a PNG"
    return struct.unpack(">II", data[16:24])


def test_report_page_in_chromium_shows_every_picture_sorts_and_screenshots(tmp_path):
    from featurize import extract

    data = write_tinted_with_mistakes(tmp_path / "tinted", 16)
    store = extract(data=data, backbone="resnet18", weights="random", out=tmp_path, workers=0, progress=False).store
    outcome = compare(features=[store], out=tmp_path, clf="logreg,knn", cv=2, jobs=1, **QUIET)
    report = outcome.report_dir / "report.html"
    with open_page(report) as page:
        images = page.evaluate("[...document.images].map((i) => [i.alt, i.complete, i.naturalWidth])")
        assert all(complete and width > 0 for _, complete, width in images), images
        shown = {alt for alt, _, _ in images}
        rows = {f"{row.backbone} {row.head}" for row in outcome.rows}
        assert {"summary", "embedding", "per-class F1", *rows} <= shown
        wrong = {m.path for found in mistakes(outcome.recommendation.row).values() for m in found}
        assert wrong and {alt for alt in shown if alt.startswith("val/")} == wrong  # each mistake's thumbnail
        captions = page.eval_on_selector_all("#confusion figcaption", "(all) => all.map((c) => c.textContent)")
        assert captions == [f"{row.backbone} {row.head}" for row in outcome.rows]
        headers = page.eval_on_selector_all("#results th", "(all) => all.map((th) => th.textContent)")
        assert headers[:4] == ["#", "backbone", "head", "accuracy (95% CI)"] and "ci_low" not in headers

        heads = [text for text, _ in page.evaluate(COLUMN, "head")]
        assert sorted(heads) == ["knn", "logreg", "vote"]
        page.click('#results th[data-column="head"] button')
        assert [text for text, _ in page.evaluate(COLUMN, "head")] == sorted(heads)
        page.click('#results th[data-column="head"] button')
        assert [text for text, _ in page.evaluate(COLUMN, "head")] == sorted(heads, reverse=True)

        page.click('#results th[data-column="fit_seconds"] button')  # numbers: by data-sort, not as text
        seconds = [float(sort) for _, sort in page.evaluate(COLUMN, "fit_seconds")]
        assert seconds == sorted(seconds)
        page.click('#results th[data-column="fit_seconds"] button')
        assert [float(sort) for _, sort in page.evaluate(COLUMN, "fit_seconds")] == sorted(seconds, reverse=True)

        page.click('#results th[data-column="rank"] button')
        ranks = [text for text, _ in page.evaluate(COLUMN, "rank")]
        assert ranks == ["1", "2", "3"]
        assert page.get_attribute('#results th[data-column="rank"]', "aria-sort") == "ascending"

    shot = tmp_path / "shots" / "report.png"  # the README's screenshot, as scripts/screenshot_report.py takes it
    done = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "screenshot_report.py"), str(report), str(shot), "--width", "1000"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    width, height = png_size(shot.read_bytes())
    assert width == 1000 and height > 900 and shot.stat().st_size > 20_000  # the whole page, pictures included


def test_numbers_sort_as_numbers_and_a_missing_one_sorts_last_both_ways(tmp_path):
    def rec(rank, head, log_loss, fit):
        return {
            **dict(rank=rank, backbone="b", head=head, n=10, reused=False, best_params=None, selected_by=None),
            **dict(accuracy=0.9, ci_low=0.8, ci_high=1.0, balanced_accuracy=0.9, f1_macro=0.9, log_loss=log_loss),
            **dict(cv_mean=None, cv_std=None, cv_folds=None, mcnemar_p_vs_best=None, fit_seconds=fit),
            "predict_ms_per_image": None,
        }

    recs = [rec(1, "a", 9.25, 10.5), rec(2, "b", None, 9.5), rec(3, "c", 10.75, 100.0)]
    page_file = tmp_path / "report.html"
    meta = {"dataset": "d", "scoring": "accuracy"}
    page_file.write_text(report_page({}, [], recs, [], [], meta, sections=["<p id=extra>extra</p>"]))
    with open_page(page_file) as page:
        assert page.evaluate("document.querySelector('#extra').nextElementSibling.id") == "results"
        page.click('#results th[data-column="log_loss"] button')
        assert [text for text, _ in page.evaluate(COLUMN, "log_loss")] == ["9.250", "10.750", "—"]
        page.click('#results th[data-column="log_loss"] button')
        assert [text for text, _ in page.evaluate(COLUMN, "log_loss")] == ["10.750", "9.250", "—"]
        page.click('#results th[data-column="fit_seconds"] button')
        assert [text for text, _ in page.evaluate(COLUMN, "fit_seconds")] == ["9.50", "10.50", "100.00"]


def test_no_chromium_fails_saying_how_to_install_it(tmp_path, monkeypatch):
    monkeypatch.setattr(browser.shutil, "which", lambda _: None)
    with pytest.raises(BrowserMissing, match="apt-get install -y chromium"):
        with open_page(tmp_path / "report.html"):
            pass
