"""The names the CLI offers (experiments.choices, read at --help time without torch or scikit-learn)
against the registries and checks they copy: --help cannot disagree with the code."""

import pytest

import featurize
from classifiers import HEADS, NORMALIZE_MODES, SCORINGS, SearchSettings
from common.errors import CnnfeatError
from experiments import choices


def _valid_after(error: CnnfeatError, start: str, end: str = "") -> tuple[str, ...]:
    """The comma list a refusal names as valid, e.g. 'valid: a, b' -> ('a', 'b')."""
    listed = str(error).split(start, 1)[1]
    return tuple((listed.split(end, 1)[0] if end else listed).split(", "))


def test_heads_are_the_registry_s_in_its_order():
    assert choices.HEADS == tuple(HEADS)


def test_scorings_are_the_searches():
    assert choices.SCORINGS == tuple(SCORINGS)


def test_search_methods_are_what_the_search_accepts():
    for method in choices.SEARCH_METHODS:
        SearchSettings(search=method).check()
    with pytest.raises(CnnfeatError) as refused:
        SearchSettings(search="exhaustive").check()
    assert _valid_after(refused.value, "valid: ") == choices.SEARCH_METHODS


def test_normalize_modes_are_the_searches():
    assert choices.NORMALIZE_MODES == NORMALIZE_MODES
    with pytest.raises(CnnfeatError) as refused:
        SearchSettings(normalize="l1").check()
    assert _valid_after(refused.value, "valid: ") == choices.NORMALIZE_MODES


def test_engines_are_what_featurize_accepts():
    for engine in ("auto", *featurize.ENGINES):
        featurize.resolve_engine(engine, "cpu")
    with pytest.raises(CnnfeatError) as refused:
        featurize.resolve_engine("tensorrt", "cpu")
    assert _valid_after(refused.value, "(choose ", ")") == ("auto", *featurize.ENGINES)


def test_explain_methods_are_what_explain_accepts(tmp_path):
    from experiments.explain import ExplainSettings, explain_images

    with pytest.raises(CnnfeatError) as refused:  # refused before the model is even looked for
        explain_images(tmp_path / "absent.joblib", [], tmp_path, ExplainSettings(method="gradcam"))
    assert _valid_after(refused.value, "valid: ") == choices.EXPLAIN_METHODS


def test_the_cli_offers_them():
    import cli

    option = {(command.name, param.name): param for command in cli.cli.commands.values() for param in command.params}
    assert tuple(option["extract", "engine"].type.choices) == ("auto", *featurize.ENGINES)
    assert tuple(option["explain", "method"].type.choices) == choices.EXPLAIN_METHODS
    for command in ("fit", "compare"):
        assert tuple(option[command, "scoring"].type.choices) == choices.SCORINGS
        assert tuple(option[command, "search"].type.choices) == choices.SEARCH_METHODS
    assert f"Head: {', '.join(HEADS)} (" in option["fit", "clf"].help  # linear included
    for command in ("extract", "finetune"):
        assert option[command, "backbone"].default == featurize.DEFAULT_BACKBONE
