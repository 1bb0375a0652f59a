"""label_join's second stage: window counts merged across shards, emitted once every shard closed them.

Each label_join shard sends the counts of the (window, model version) parts it
closed, and how far it has closed; :class:`_MetricsLogic` merges them and emits
a window's record once every shard is past its end. Its state is a versioned
record (``streamml.join.label.metrics``).
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import TYPE_CHECKING, Any

from bytewax.operators import StatefulBatchLogic
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
