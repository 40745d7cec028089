"""Notes on a search's best candidate at the edge of its grid: the best may lie past it, and the
note gives the wider grid to search next (a --grid the user can paste)."""

from __future__ import annotations

import json
import numbers
from typing import NamedTuple

import numpy as np

from .grids import candidate_key, refusal, short_name


class Edge(NamedTuple):
    """A numeric parameter whose best value is an end of its grid's values."""

    ordered: list  # the grid's numeric values, sorted
    best: object  # the best value: ordered[0] or ordered[-1]

    @property
    def low(self) -> bool:
        """Whether the best is the smallest value (else the largest)."""
        return self.best == self.ordered[0]

    @property
    def inward(self):
        """The value next to the edge, inside the grid."""
        return self.ordered[1] if self.low else self.ordered[-2]


def edge_notes(head, pipeline, grid: list[dict], best: dict, results: dict | None = None) -> list[str]:
    """A note for each numeric parameter (3 or more values) whose best value is the smallest or the
    largest of its grid: the best may lie past it. Not where the estimator refuses every value past
    it (n_neighbors=1), so the note's wider grid always runs, nor where the next value inward scored
    the same (`results`: the search's cv_results_), so the grid is not at fault."""
    notes = []
    for key, values in _searched(grid, best).items():
        edge = _at_edge(values, best[key])
        if edge is None:
            continue
        past = [v for v in _past(edge) if not refusal(pipeline, key, v)]
        if past and not _tied_inward(results, best, key, edge.inward):
            notes.append(_edge_note(head.name, key, values, edge, past))
    return notes


def _searched(grid: list[dict], best: dict) -> dict:
    """The sub-grid of `grid` the best candidate is from ({} where none is)."""
    return next((g for g in grid if set(g) == set(best) and all(best[k] in g[k] for k in g)), {})


def _at_edge(values: list, best) -> Edge | None:
    """The Edge where `best` is the smallest or largest of 3 or more numeric `values`; None otherwise."""
    ordered = sorted({v for v in values if _is_number(v)})
    if len(ordered) < 3 or not _is_number(best) or best not in (ordered[0], ordered[-1]):
        return None
    return Edge(ordered, best)


def _edge_note(head_name: str, key: str, values: list, edge: Edge, past: list) -> str:
    name, ordered = short_name(key), edge.ordered
    # the grid's own values and those past its edge: a search of it cannot send the user back
    wider = ", ".join(_shown(v) for v in [*sorted({*ordered, *past}), *(v for v in values if not _is_number(v))])
    return (
        f"{head_name}: best {name}={_shown(edge.best)} is the {'smallest' if edge.low else 'largest'} value "
        f"of its grid ({_shown(ordered[0])} to {_shown(ordered[-1])}): the best may lie past it; widen "
        f"the grid, e.g. --grid '{{\"{name}\": [{wider}]}}'"
    )


def _tied_inward(results: dict | None, best: dict, key: str, inward) -> bool:
    """Whether the candidate that is `best` but for `key` = `inward` scored as well as the best."""
    if not results or "params" not in results:
        return False
    scores = {candidate_key(p): s for p, s in zip(results["params"], results["mean_test_score"]) if not np.isnan(s)}
    neighbour = scores.get(candidate_key({**best, key: inward}))
    return neighbour is not None and neighbour >= scores.get(candidate_key(best), np.inf)


def _is_number(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _past(edge: Edge) -> list:
    """Two values past the edge, spaced as its last two: by their ratio where they have one sign
    (decades stay decades), else by their difference. Integers stay integers where rounding keeps
    the values apart (n_neighbors 21 -> 29, 41)."""
    ordered, edge_value, inner = edge.ordered, edge.best, edge.inward
    if edge_value * inner <= 0:
        return [edge_value + (edge_value - inner), edge_value + 2 * (edge_value - inner)]
    past = [edge_value * (edge_value / inner), edge_value * (edge_value / inner) ** 2]
    rounded = [round(v) for v in past]
    if all(isinstance(v, numbers.Integral) for v in ordered) and len({edge_value, *rounded}) == 3:
        return rounded
    return past


def _shown(value) -> str:
    """A grid value as --grid's JSON writes it."""
    return f"{value:g}" if isinstance(value, float) else json.dumps(value)
