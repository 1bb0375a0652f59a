"""The join states of the release before versioned snapshots, kept only to read old recovery stores.

Recovery stores written by that release hold pickled instances of these
classes under their old module paths (``streamml.operators.join.interval._IntervalState``
and so on); each join module imports its old names from here, so unpickling
still finds them, and its ``upgrades`` step from version 0 turns one into
today's record. Nothing else uses them. (A label join's window parts were
pickled as ``label._WindowPart``, a class that lives on with the same slots,
and its metrics as the public ``ClassificationStats``/``RegressionStats``.)
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "_AsofState",
    "_Buffer",
    "_EnrichState",
    "_IntervalState",
    "_LabelState",
    "_MetricsState",
    "_Versions",
    "is_legacy",
]


class _Buffer:
    """One key's stored events of one side, sorted by timestamp (parallel lists)."""

    __slots__ = ("ts", "items", "matched")


class _IntervalState:
    """One shard of an interval join: ``lefts``/``rights`` (key → _Buffer), ``max_seen``, …"""


class _Versions:
    """One key's versions of an as-of join: ``ts``, ``values``."""

    __slots__ = ("ts", "values")


class _AsofState:
    """One shard of an as-of join: ``versions``, ``pending`` ``(t, seq, key, event)``, …"""


class _EnrichState:
    """One shard of an enrichment join: ``table``, ``waiting``, ``deadlines``, ``held``, ``ready``."""


class _LabelState:
    """One shard of a label join: ``preds``, ``labels``, ``parts``, ``shard``, ``max_seen``, …"""


class _MetricsState:
    """The label join's merge step: ``closed`` (shard → bound) and ``parts``."""


_OLD = (_IntervalState, _AsofState, _EnrichState, _LabelState, _MetricsState)


def is_legacy(resume: Any) -> bool:
    """Whether a resumed snapshot is one of the old release's pickled states."""
    return isinstance(resume, _OLD)
