"""label_join's second stage: window counts merged across shards, emitted once every shard closed them.

Each label_join shard sends the counts of the (window, model version) parts it
closed, and how far it has closed; :class:`_MetricsLogic` merges them and emits
a window's record once every shard is past its end. Its state is a versioned
record (``streamml.join.label.metrics``).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import TYPE_CHECKING, Any

import numpy as np
from bytewax.operators import StatefulBatchLogic
from streamml.operators._core.arrays import highest, lowest
from streamml.operators._core.state import snapshot
from streamml.operators.join._legacy import _MetricsState
from streamml.operators.join._resume import resumed
from streamml.operators.join._shards import NEVER, to_datetime
from streamml.operators.join.metrics import ClassificationStats, RegressionStats

if TYPE_CHECKING:  # label.py imports this module
    from streamml.operators.join._label_logic import _Config

_METRICS_KIND = "streamml.join.label.metrics"
_VERSION = 1

_END = 2**62
"""A bound past every window: end of input closes them all."""


class _WindowPart:
    """Counts of one (window, model version) in one shard, mergeable across shards."""

    __slots__ = ("stats", "predictions", "labelled", "unlabelled")

    def __init__(self, stats: ClassificationStats | RegressionStats) -> None:
        self.stats = stats
        self.predictions = 0
        self.labelled = 0
        self.unlabelled = 0

    def merge(self, other: _WindowPart) -> None:
        self.stats.merge(other.stats)
        self.predictions += other.predictions
        self.labelled += other.labelled
        self.unlabelled += other.unlabelled


def window_parts(
    parts: dict[tuple[int, Hashable], _WindowPart],
    ts: np.ndarray,
    versions: list[Hashable],
    window: int,
    new_stats: Callable[[], ClassificationStats | RegressionStats],
) -> tuple[list[_WindowPart], np.ndarray]:
    """The parts of the rows' (window, version) pairs (``ts``: the rows' prediction times),
    made where missing, and each row's index in that list.

    Examples:
        >>> parts = {}
        >>> got, index = window_parts(parts, np.array([0, 12, 3]), ["a", "a", "a"], 10, RegressionStats)
        >>> len(got), index.tolist(), sorted(parts)
        (2, [0, 1, 0], [(0, 'a'), (10, 'a')])
    """
    n = len(versions)
    starts = ts - ts % window
    distinct = list(dict.fromkeys(versions))
    nv = len(distinct)
    if nv == 1:
        code = np.zeros(n, dtype=np.int64)
    else:
        index = {v: i for i, v in enumerate(distinct)}
        code = np.fromiter(map(index.__getitem__, versions), np.int64, n)
    first = lowest(starts)
    slot = (starts - first) // window
    if highest(slot) >= 1 << 12:  # windows far apart: pairs one by one
        pairs = list(zip(starts.tolist(), versions))
        keyed = {wv: i for i, wv in enumerate(dict.fromkeys(pairs))}
        found = [parts.get(wv) or parts.setdefault(wv, _WindowPart(new_stats())) for wv in keyed]
        return found, np.fromiter(map(keyed.__getitem__, pairs), np.int64, n)
    code += slot * nv
    counts = np.bincount(code)
    used = np.flatnonzero(counts)
    table = np.zeros(len(counts), dtype=np.int64)
    table[used] = np.arange(len(used))
    found = []
    for c in used.tolist():
        wv = (first + c // nv * window, distinct[c % nv])
        part = parts.get(wv)
        if part is None:
            part = parts[wv] = _WindowPart(new_stats())
        found.append(part)
    return found, table[code]


def _parts_data(parts: dict[tuple[int, Hashable], _WindowPart]) -> list[list]:
    """Window parts as builtins: ``[start, version, predictions, labelled, unlabelled, stats]``."""
    return [
        [ws, version, p.predictions, p.labelled, p.unlabelled, p.stats.to_data()]
        for (ws, version), p in parts.items()
    ]


def _parts_from(data: list[list], regression: bool) -> dict[tuple[int, Hashable], _WindowPart]:
    stats_type = RegressionStats if regression else ClassificationStats
    parts = {}
    for ws, version, predictions, labelled, unlabelled, stats in data:
        part = parts[(ws, version)] = _WindowPart(stats_type.from_data(stats))
        part.predictions, part.labelled, part.unlabelled = predictions, labelled, unlabelled
    return parts


class _MetricsLogic(StatefulBatchLogic):
    """Window parts merged across shards, and how far each shard has closed.

    Eviction: a window leaves when every shard has closed past its end.
    """

    def __init__(self, cfg: _Config, resume: Any) -> None:
        self.cfg = cfg
        self.closed: dict[str, int] = {}
        self.parts: dict[tuple[int, Hashable], _WindowPart] = {}
        upgrades = {0: _metrics_from_legacy}
        data = resumed(resume, kind=_METRICS_KIND, version=_VERSION, upgrades=upgrades)
        if data is not None:
            self.closed = dict(data["closed"])
            self.parts = _parts_from(data["parts"], cfg.regression)

    def on_batch(self, values: list[tuple]) -> tuple[list, bool]:
        for item in values:
            if len(item) == 2:
                shard, bound = item
                self.closed[shard] = max(bound, self.closed.get(shard, NEVER))
            else:
                ws, version, part = item
                have = self.parts.get((ws, version))
                if have is None:
                    self.parts[(ws, version)] = part
                else:
                    have.merge(part)
        if len(self.closed) < self.cfg.shards:
            return [], False
        return self._emit(min(self.closed.values())), False

    def _emit(self, bound: int) -> list[dict[str, Any]]:
        window = self.cfg.window
        done = sorted(
            (wv for wv in self.parts if wv[0] + window <= bound),
            key=lambda wv: (wv[0], str(wv[1])),
        )
        records = []
        for ws, version in done:
            part = self.parts.pop((ws, version))
            records.append(
                {
                    "model_version": version,
                    "window_start": to_datetime(ws),
                    "window_end": to_datetime(ws + window),
                    "predictions": part.predictions,
                    "labelled": part.labelled,
                    "unlabelled": part.unlabelled,
                    **part.stats.result(),
                }
            )
        return records

    def on_eof(self) -> tuple[list, bool]:
        return self._emit(_END), False

    def snapshot(self) -> dict[str, Any]:
        data = {"closed": dict(self.closed), "parts": _parts_data(self.parts)}
        return snapshot(_METRICS_KIND, _VERSION, data)


def _metrics_from_legacy(state: _MetricsState) -> dict[str, Any]:
    """The previous release's merge step state as a version-1 record."""
    return {"closed": dict(state.closed), "parts": _parts_data(state.parts)}
