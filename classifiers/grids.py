"""A head's grid as it is searched: the default grid with `--grid` applied, in full `clf__` names,
every value checked by the estimator's own scikit-learn parameter rules before any fit."""

from __future__ import annotations

import json

from common.errors import CnnfeatError, error_line

from .heads import Head

GRID_SHAPE = "a JSON object of parameter -> list of values, or a list of such objects"


def resolve_grid(head: Head, override=None) -> list[dict]:
    """The head's default grid with `override` applied, in full `clf__` names, validated.

    `override` is a dict (its keys replace those values in every sub-grid that has them; a key no
    sub-grid has is added to all: the SVM's gamma goes to its RBF sub-grid only) or a list of dicts
    (replaces the grid). Unknown parameters, empty lists of values and
    values the estimator refuses are a clear error here, before any fit."""
    pipeline = head.build(0)
    params = pipeline.get_params()
    if (override is not None and not isinstance(override, (dict, list))) or override == []:
        raise CnnfeatError(f"--grid: expected {GRID_SHAPE}; got {json.dumps(override, default=repr)}")
    if isinstance(override, list):
        grids = [_in_full(head, params, g) for g in override]
    else:
        grids = [_in_full(head, params, g) for g in head.grid]
        if override:
            grids = _overridden(grids, _in_full(head, params, override), params)
    _check_values(head, pipeline, grids)
    return grids


def _in_full(head: Head, params: dict, grid) -> dict:
    """One sub-grid in full parameter names, each a list of values (JSON lists made tuples)."""
    if not isinstance(grid, dict):
        raise CnnfeatError(f"--grid: expected {GRID_SHAPE}; got {json.dumps(grid, default=repr)}")
    for key, values in grid.items():
        if values == []:
            raise CnnfeatError(f"--grid: {key} has an empty list of values; give it at least one")
    return {
        _full_name(head, params, key): [_tuple_sizes(v) for v in (values if isinstance(values, list) else [values])]
        for key, values in grid.items()
    }


def _full_name(head: Head, params: dict, key: str) -> str:
    """`key` (C, or clf__C) as the pipeline's parameter name; an error naming the valid ones."""
    short = {k.split("__", 1)[1]: k for k in params if k.startswith("clf__")}
    name = key if "__" in key else short.get(key, key)
    if not name.startswith(("clf__", "scale__")) or name not in params:
        raise CnnfeatError(f"--grid: {head.name} has no parameter {key!r}; valid: {', '.join(sorted(short))}")
    return name


def _overridden(grids: list[dict], given: dict, defaults: dict) -> list[dict]:
    """`grids` with each key of `given` replacing its values in the sub-grids that have it (added to
    all where none has it); sub-grids made equal to another, or inside another, are dropped."""
    merged = [{**g, **{k: v for k, v in given.items() if k in g or not any(k in h for h in grids)}} for g in grids]
    merged = list({repr(sorted(g.items())): g for g in merged}.values())
    return [g for g in merged if not any(_covered(g, other, defaults) for other in merged)]


def _covered(grid: dict, other: dict, defaults: dict) -> bool:
    """Whether every candidate of `grid` is one of `other`'s: its keys are some of other's, with the
    same values, and other's further keys list the value `grid` leaves at its default."""
    return (
        set(grid) < set(other)
        and all(grid[k] == other[k] for k in grid)
        and all(defaults.get(k) in other[k] for k in set(other) - set(grid))
    )


def _check_values(head: Head, pipeline, grids: list[dict]) -> None:
    """Every value of `grids` as its estimator would take it: a refused one would otherwise fail its
    fits midway through the search (a traceback), or be skipped with a warning among good ones."""
    for grid in grids:
        for key, values in grid.items():
            for value in values:
                why = refusal(pipeline, key, value)
                if why:
                    raise CnnfeatError(
                        f"--grid: {head.name} cannot take {short_name(key)}={json.dumps(value, default=repr)}: {why}"
                    )


def refusal(pipeline, key: str, value) -> str | None:
    """Why the step of `pipeline` that owns parameter `key` (clf__C) refuses `value`, by scikit-learn's
    own parameter validation (what its fit would raise); None where it takes it."""
    from sklearn.utils._param_validation import (
        InvalidParameterError,
        validate_parameter_constraints,
    )

    owner_key, name = key.rsplit("__", 1)
    owner = pipeline.get_params()[owner_key]
    rules = getattr(owner, "_parameter_constraints", None)
    try:
        validate_parameter_constraints(rules or {}, {name: value}, caller_name=type(owner).__name__)
    except InvalidParameterError as error:
        return error_line(error)
    return None


def short_name(key: str) -> str:
    """A grid key as --grid may write it: clf__C -> C (a scaler's scale__with_mean stays whole)."""
    return key.split("__", 1)[1] if key.startswith("clf__") else key


def _tuple_sizes(value):
    return tuple(value) if isinstance(value, list) else value  # JSON lists -> hidden_layer_sizes tuples


def candidate_key(params: dict, leaving_out: str | None = None) -> str:
    """A candidate's parameters (but `leaving_out`) as a hashable, order-free key."""
    return repr(sorted((k, v) for k, v in params.items() if k != leaving_out))


def coordinate_count(grids: list[dict]) -> int:
    """Candidates a coordinate search evaluates: per sub-grid, the first parameter's values and
    each further parameter's values but the one it holds."""
    return sum(1 + sum(len(values) - 1 for values in grid.values()) for grid in grids)


def axes_first(grid: dict, axes: tuple) -> dict:
    """`grid` with the parameters named in `axes` first (the order a coordinate search sweeps them)."""
    first = [f"clf__{axis}" for axis in axes if f"clf__{axis}" in grid]
    return {**{key: grid[key] for key in first}, **{k: v for k, v in grid.items() if k not in first}}
