"""Delayed-label join for online evaluation: predictions meet their ground truth, metrics per window."""

from __future__ import annotations

import copy
import heapq
import zlib
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

import bytewax.operators as op
from bytewax.dataflow import Stream, operator
from bytewax.operators import KeyedStream, StatefulBatchLogic
from streamml.operators.join._shards import (
    LEFT,
    NEVER,
    Chunked,
    check_shards,
    late_record,
    micros,
    never,
    pick,
    tag_sides,
    timestamps,
    to_datetime,
)
from streamml.operators.join.metrics import Average, ClassificationStats, RegressionStats

from streamml.errors import Rejected, reject

__all__ = ["LabelJoinOut", "label_join"]

_END = 2**62
_ABSENT: Any = object()  # a field the event does not have (read again the slow way)


@dataclass(frozen=True)
class LabelJoinOut:
    """The streams of :func:`label_join`."""

    labelled: KeyedStream[Any]
    """``(id, prediction with the label field added)``, as soon as the label arrives."""

    unlabelled: KeyedStream[Any]
    """``(id, prediction)`` whose label did not come within ``max_delay``."""

    metrics: Stream[dict[str, Any]]
    """One record per closed window and model version (see :func:`label_join`)."""

    errs: Stream[Rejected]
    """Items missing a field or timestamp, and labels that matched no prediction."""

    late: Stream[Rejected]
    """Predictions and labels older than the watermark on arrival."""


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


# A stored prediction: (ts, event, y_pred, proba, model_version).
_Pred = tuple[int, Any, Hashable, Any, Hashable]


class _LabelState:
    """One shard of a label join.

    Eviction: a prediction leaves when labelled or once the watermark passes
    ``ts + max_delay`` (then counted as unlabelled); a label leaves when it
    labels a prediction or once the watermark passes its timestamp (no later
    prediction can precede it); a window's counts leave once the watermark
    passes ``window end + max_delay`` and they are sent on.
    """

    def __init__(self) -> None:
        self.shard: str | None = None
        self.preds: dict[str, list[_Pred]] = {}
        self.labels: dict[str, list[tuple[int, Any, Hashable]]] = {}
        self.timers: list[tuple[int, str]] = []
        self.parts: dict[tuple[int, Hashable], _WindowPart] = {}
        self.max_seen = NEVER
        self.watermark = NEVER
        self.closed = NEVER

    def copy(self) -> _LabelState:
        return copy.deepcopy(self)  # once per snapshot, not per event

    def size(self) -> int:
        """Predictions, labels and window parts held (for tests of bounded state)."""
        return (
            sum(len(v) for v in self.preds.values())
            + sum(len(v) for v in self.labels.values())
            + len(self.parts)
        )


@dataclass(frozen=True)
class _Config:
    step_id: str
    getters: tuple[Callable[[Any], datetime], Callable[[Any], datetime]]
    max_delay: int
    window: int
    lateness: int
    shards: int
    prediction: str
    label: str
    probability: str | None
    model_version: str
    regression: bool
    pos_label: Hashable
    average: Average

    def new_stats(self) -> ClassificationStats | RegressionStats:
        if self.regression:
            return RegressionStats()
        return ClassificationStats(self.pos_label, self.average)


def _take(store: dict[str, list[tuple]], key: str, lo: int, hi: int) -> Any:
    """Remove and return the first stored item of ``key`` with ``lo <= ts <= hi``.

    The key leaves the store with its last item.
    """
    items = store.get(key)
    if items:
        for i, item in enumerate(items):
            if lo <= item[0] <= hi:
                del items[i]
                if not items:
                    del store[key]
                return item
    return None


class _LabelLogic(StatefulBatchLogic[Any, Any, _LabelState]):
    def __init__(self, cfg: _Config, state: _LabelState) -> None:
        self.cfg = cfg
        self.state = state

    def _part(self, t: int, version: Hashable) -> _WindowPart:
        ws = t - t % self.cfg.window
        part = self.state.parts.get((ws, version))
        if part is None:
            part = self.state.parts[(ws, version)] = _WindowPart(self.cfg.new_stats())
        return part

    def _labelled(self, key: str, pred: _Pred, y_true: Hashable, out: list) -> None:
        t, event, y_pred, proba, version = pred
        part = self._part(t, version)
        part.stats.add(y_true, y_pred, proba)
        part.labelled += 1
        out[0].append((key, {**event, self.cfg.label: y_true}))

    def _read_pred(self, key: str, t: int, event: Any, errs: list) -> _Pred | None:
        cfg = self.cfg
        try:
            y_pred = event[cfg.prediction]
            proba = None if cfg.probability is None else event[cfg.probability]
            if proba is not None and not hasattr(proba, "get"):
                proba = float(proba)
            if cfg.regression:
                y_pred = float(y_pred)
            hash(y_pred)
            return (t, event, y_pred, proba, event.get(cfg.model_version))
        except Exception as exc:  # noqa: BLE001 - bad data goes to errs
            errs.append(reject(cfg.step_id, exc, (key, event)))
            return None

    def _read_label(self, key: str, event: Any, errs: list) -> tuple[bool, Hashable]:
        try:
            y = event[self.cfg.label]
            y = float(y) if self.cfg.regression else y
            hash(y)
            return True, y
        except Exception as exc:  # noqa: BLE001 - bad data goes to errs
            errs.append(reject(self.cfg.step_id, exc, (key, event)))
            return False, None

    def on_batch(self, values: list[tuple[int, str, Any]]) -> tuple[list, bool]:
        cfg, state = self.cfg, self.state
        out: list[list] = [[], [], [], [], []]  # labelled, unlabelled, errs, late, parts
        labelled, errs, late = out[0], out[2], out[3]
        if state.shard is None and values:
            state.shard = str(zlib.crc32(values[0][1].encode()) % cfg.shards)
        preds, labels, timers, parts = state.preds, state.labels, state.timers, state.parts
        delay, window, lateness = cfg.max_delay, cfg.window, cfg.lateness
        heappush = heapq.heappush
        # The usual prediction (a hashable class, a float probability) and label are
        # read inline; anything else goes through _read_pred / _read_label.
        prediction, probability, version_field = cfg.prediction, cfg.probability, cfg.model_version
        label_field = cfg.label
        inline = not cfg.regression
        plain = (int, str, bool)
        watermark, max_seen = state.watermark, state.max_seen
        for side, key, item, t in timestamps(cfg.step_id, values, cfg.getters, never, errs):
            if t < watermark:
                late.append(late_record(cfg.step_id, t, watermark, (key, item)))
                continue
            if t > max_seen:
                max_seen = state.max_seen = t
                watermark = state.watermark = t - lateness
            if side == LEFT:
                pred = None
                if inline and type(item) is dict:
                    y_pred = item.get(prediction, _ABSENT)
                    proba = None if probability is None else item.get(probability, _ABSENT)
                    if type(y_pred) in plain and (proba is None or type(proba) is float):
                        pred = (t, item, y_pred, proba, item.get(version_field))
                if pred is None:
                    pred = self._read_pred(key, t, item, errs)
                    if pred is None:
                        continue
                wv = (t - t % window, pred[4])
                part = parts.get(wv)
                if part is None:
                    part = parts[wv] = _WindowPart(cfg.new_stats())
                part.predictions += 1
                stored = labels.get(key)
                if stored is None:
                    match = None
                elif len(stored) == 1 and t <= stored[0][0] <= t + delay:  # _take's usual case
                    match = stored[0]
                    del labels[key]
                else:
                    match = _take(labels, key, t, t + delay)
                if match is not None:
                    y_true = match[2]
                    part.stats.add(y_true, pred[2], pred[3])
                    part.labelled += 1
                    labelled.append((key, {**item, label_field: y_true}))
                    continue
                waiting = preds.get(key)
                if waiting is None:
                    preds[key] = [pred]
                else:
                    waiting.append(pred)
                heappush(timers, (t + delay, key))
            else:
                y_true = item.get(label_field, _ABSENT) if inline and type(item) is dict else None
                if type(y_true) not in plain:
                    ok, y_true = self._read_label(key, item, errs)
                    if not ok:
                        continue
                match = _take(preds, key, t - delay, t) if key in preds else None
                if match is not None:
                    self._labelled(key, match, y_true, out)
                    continue
                waiting = labels.get(key)
                if waiting is None:
                    labels[key] = [(t, item, y_true)]
                else:
                    waiting.append((t, item, y_true))
                heappush(timers, (t, key))
        self._expire(state.watermark, out)
        self._close(state.watermark - delay, out)
        return ([tuple(out)] if any(out) else []), False

    def _expire(self, watermark: int, out: list) -> None:
        state, cfg = self.state, self.cfg
        timers = state.timers
        while timers and timers[0][0] < watermark:
            _, key = heapq.heappop(timers)
            waiting = state.preds.get(key)
            if waiting:
                keep = []
                for pred in waiting:
                    if pred[0] + cfg.max_delay < watermark:
                        self._part(pred[0], pred[4]).unlabelled += 1
                        out[1].append((key, pred[1]))
                    else:
                        keep.append(pred)
                if keep:
                    state.preds[key] = keep
                else:
                    del state.preds[key]
            stored = state.labels.get(key)
            if stored:
                keep = []
                for lt, event, y in stored:
                    if lt < watermark:
                        out[2].append(
                            Rejected(
                                cfg.step_id,
                                "UnmatchedLabel",
                                f"no prediction for id {key!r} within max_delay before the label",
                                (key, event),
                            )
                        )
                    else:
                        keep.append((lt, event, y))
                if keep:
                    state.labels[key] = keep
                else:
                    del state.labels[key]

    def _close(self, bound: int, out: list) -> None:
        # Windows ending at or before ``bound`` can get no more predictions or labels here.
        state, window = self.state, self.cfg.window
        bound = bound - bound % window if bound < _END else _END
        if bound <= state.closed:
            return
        state.closed = bound
        done = [wv for wv in state.parts if wv[0] + window <= bound]
        parts = out[4]
        for wv in done:
            parts.append((wv[0], wv[1], state.parts.pop(wv)))
        parts.append((state.shard, bound))

    def on_eof(self) -> tuple[list, bool]:
        # Both sides ended: no label can come any more.
        out: list[list] = [[], [], [], [], []]
        self._expire(_END, out)
        self._close(_END, out)
        return ([tuple(out)] if any(out) else []), False

    def snapshot(self) -> _LabelState:
        return self.state.copy()


class _MetricsState:
    """Window parts merged across shards, and how far each shard has closed.

    Eviction: a window leaves when every shard has closed past its end.
    """

    def __init__(self) -> None:
        self.closed: dict[str, int] = {}
        self.parts: dict[tuple[int, Hashable], _WindowPart] = {}


class _MetricsLogic(StatefulBatchLogic[Any, Any, _MetricsState]):
    def __init__(self, cfg: _Config, state: _MetricsState) -> None:
        self.cfg = cfg
        self.state = state

    def on_batch(self, values: list[tuple]) -> tuple[list, bool]:
        state = self.state
        for item in values:
            if len(item) == 2:
                shard, bound = item
                state.closed[shard] = max(bound, state.closed.get(shard, NEVER))
            else:
                ws, version, part = item
                have = state.parts.get((ws, version))
                if have is None:
                    state.parts[(ws, version)] = part
                else:
                    have.merge(part)
        if len(state.closed) < self.cfg.shards:
            return [], False
        return self._emit(min(state.closed.values())), False

    def _emit(self, bound: int) -> list[dict[str, Any]]:
        window = self.cfg.window
        done = sorted(
            (wv for wv in self.state.parts if wv[0] + window <= bound),
            key=lambda wv: (wv[0], str(wv[1])),
        )
        records = []
        for ws, version in done:
            part = self.state.parts.pop((ws, version))
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

    def snapshot(self) -> _MetricsState:
        return copy.deepcopy(self.state)


@operator
def label_join(
    step_id: str,
    predictions: KeyedStream[Any],
    labels: KeyedStream[Any],
    *,
    ts: Callable[[Any], datetime],
    label_ts: Callable[[Any], datetime] | None = None,
    max_delay: timedelta,
    window: timedelta,
    task: Literal["classification", "regression"] = "classification",
    prediction: str = "prediction",
    label: str = "label",
    probability: str | None = None,
    model_version: str = "model_version",
    pos_label: Hashable = 1,
    average: Average = "binary",
    lateness: timedelta = timedelta(0),
    shards: int = 16,
) -> LabelJoinOut:
    """Join predictions with ground-truth labels that arrive later, and score the model per window.

    Use it for online evaluation: a fraud score is confirmed by a chargeback
    hours later, a demand forecast by the sales of the day. Both streams are
    keyed by the event id. A prediction at ``t`` is labelled by the first label
    of its id with ``t <= label_ts <= t + max_delay``; it is emitted on
    ``labelled`` (the prediction dict plus the ``label`` field) as soon as the
    label arrives, or on ``unlabelled`` once the watermark passes
    ``t + max_delay``. A label that labels nothing (no prediction, or a second
    label for the same id) goes to ``errs`` as ``UnmatchedLabel``.

    Per tumbling ``window`` of prediction time (aligned to the epoch) and
    ``model_version``, ``metrics`` gets one record once every prediction in
    the window is labelled or expired: ``model_version``, ``window_start``,
    ``window_end``, ``predictions``, ``labelled``, ``unlabelled`` (labels that
    never came), and — from the labelled ones — ``accuracy``, ``precision``,
    ``recall``, ``f1``, ``log_loss`` (classification; log loss needs
    ``probability``) or ``mae`` and ``rmse`` (regression), as scikit-learn
    defines them (``zero_division=0``). A window is closed when every shard
    has seen the watermark pass its end + ``max_delay`` (and at end of input).

    Args:
        step_id: Unique step id.
        predictions: ``(event id, prediction dict)``.
        labels: ``(event id, label dict)``.
        ts: Timestamp of a prediction (aware UTC datetime).
        label_ts: Timestamp of a label; ``ts`` when omitted.
        max_delay: Longest wait for a label after its prediction.
        window: Length of the metric windows.
        task: ``"classification"`` or ``"regression"``.
        prediction: Field of the predicted class or value.
        label: Field of the true class or value in label dicts (and the field
            added to labelled predictions).
        probability: Field with P(``pos_label``) (binary) or a dict class ->
            probability, for log loss; ``None`` skips log loss.
        model_version: Field naming the model version (missing -> ``None``).
        pos_label: Positive class for ``average="binary"``.
        average: ``"binary"``, ``"macro"``, ``"micro"`` or ``"weighted"``.
        lateness: How far out of order items may arrive.
        shards: Number of state shards (see
            :func:`~streamml.operators.join.enrich`).

    Returns:
        :class:`LabelJoinOut`: ``labelled``, ``unlabelled``, ``metrics``,
        ``errs`` and ``late``.

    Examples:
        >>> from datetime import datetime, timedelta, timezone
        >>> from bytewax.dataflow import Dataflow
        >>> import bytewax.operators as op
        >>> from bytewax.testing import TestingSource, TestingSink, run_main
        >>> t0 = datetime(2024, 1, 1, tzinfo=timezone.utc)
        >>> at = lambda m: t0 + timedelta(minutes=m)
        >>> flow = Dataflow("label_doc")
        >>> preds = op.input("preds", flow, TestingSource([
        ...     ("tx1", {"prediction": 1, "p": 0.9, "model_version": "v2", "ts": at(0)}),
        ...     ("tx2", {"prediction": 0, "p": 0.2, "model_version": "v2", "ts": at(1)}),
        ...     ("tx3", {"prediction": 1, "p": 0.7, "model_version": "v2", "ts": at(2)})]))
        >>> labels = op.input("labels", flow, TestingSource([
        ...     ("tx1", {"label": 1, "ts": at(30)}), ("tx2", {"label": 1, "ts": at(40)})]))
        >>> out = label_join("eval", preds, labels, ts=lambda e: e["ts"], probability="p",
        ...                  max_delay=timedelta(hours=1), window=timedelta(minutes=5))
        >>> got = []
        >>> op.output("metrics", out.metrics, TestingSink(got))
        >>> run_main(flow)
        >>> m = got[0]
        >>> m["model_version"], m["predictions"], m["labelled"], m["unlabelled"], m["accuracy"]
        ('v2', 3, 2, 1, 0.5)
        >>> m["precision"], m["recall"], round(m["log_loss"], 3)
        (1.0, 0.5, 0.857)
    """
    check_shards(shards)
    if max_delay < timedelta(0):
        raise ValueError(f"max_delay must be >= 0; got {max_delay}")
    if window <= timedelta(0):
        raise ValueError(f"window must be > 0; got {window}")
    if lateness < timedelta(0):
        raise ValueError(f"lateness must be >= 0; got {lateness}")
    if task not in ("classification", "regression"):
        raise ValueError(f"task must be 'classification' or 'regression'; got {task!r}")
    if average not in ("binary", "macro", "micro", "weighted"):
        raise ValueError(f"average must be binary, macro, micro or weighted; got {average!r}")
    cfg = _Config(
        step_id=f"{step_id}.join",
        getters=(ts, label_ts or ts),
        max_delay=micros(max_delay),
        window=micros(window),
        lateness=micros(lateness),
        shards=shards,
        prediction=prediction,
        label=label,
        probability=probability,
        model_version=model_version,
        regression=task == "regression",
        pos_label=pos_label,
        average=average,
    )

    def build(resume: _LabelState | None) -> Chunked:
        return Chunked(_LabelLogic(cfg, _LabelState() if resume is None else resume))

    def build_metrics(resume: _MetricsState | None) -> _MetricsLogic:
        return _MetricsLogic(cfg, _MetricsState() if resume is None else resume)

    tagged = tag_sides("shard", predictions, labels, shards)
    joined = op.stateful_batch("join", tagged.chunks, build)
    parts = op.flat_map_batch("parts", joined, lambda b: [("all", x) for x in pick(4)(b)])
    metrics = op.stateful_batch("metrics", parts, build_metrics)
    return LabelJoinOut(
        labelled=op.flat_map_batch("labelled", joined, pick(0)),
        unlabelled=op.flat_map_batch("unlabelled", joined, pick(1)),
        metrics=op.key_rm("metrics_records", metrics),
        errs=op.merge("all_errs", tagged.errs, op.flat_map_batch("errs", joined, pick(2))),
        late=op.flat_map_batch("late", joined, pick(3)),
    )
