"""Delayed-label join for online evaluation: predictions meet their ground truth, metrics per window.

Event time is the core's (:class:`~streamml.operators._core.event_time.KeyedEventTime`,
one per shard): lateness per key, keys forgotten after ``ttl`` of their
shard's event time. The shard states and the metrics step's state are
versioned records (``streamml.join.label`` and ``streamml.join.label.metrics``),
upgraded from the previous release's pickled ``_LabelState`` and ``_MetricsState``.

This module holds the operator; the shard logic on rows is in
:mod:`._label_logic`, its frames path in :mod:`._label_frame_logic`, the
metrics windows in :mod:`._label_windows`, reading frames in
:mod:`._label_frames`.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

import bytewax.operators as op
import polars as pl
from bytewax.dataflow import Stream, operator
from bytewax.operators import KeyedStream
from streamml.operators.join._label_frame_logic import _FrameLogic
from streamml.operators.join._label_logic import _Config, _LabelLogic
from streamml.operators.join._label_windows import _MetricsLogic, _WindowPart
from streamml.operators.join._legacy import _LabelState, _MetricsState
from streamml.operators.join._shards import (
    Chunked,
    check_shards,
    micros,
    pick,
    tag_frames,
    tag_sides,
)
from streamml.operators.join.metrics import Average

from streamml.errors import Rejected
from streamml.metrics import instrumented

__all__ = ["LabelJoinOut", "label_join"]

# Kept importable here for recovery stores of the previous release (see _legacy), and
# the shard logic's names for the code that found them here before _label_logic.py.
_LEGACY = (_LabelState, _MetricsState, _WindowPart, _LabelLogic, _Config, _FrameLogic)


@dataclass(frozen=True)
class LabelJoinOut:
    """The streams of :func:`label_join`."""

    labelled: KeyedStream[Any] | Stream[pl.DataFrame]
    """``(id, prediction with the label field added)``, as soon as the label arrives
    (frames: the prediction rows with the label column)."""

    unlabelled: KeyedStream[Any] | Stream[pl.DataFrame]
    """``(id, prediction)`` whose label did not come within ``max_delay`` (frames: their rows)."""

    metrics: Stream[dict[str, Any]]
    """One record per closed window and model version (see :func:`label_join`)."""

    errs: Stream[Rejected]
    """Items missing a field or timestamp, and labels that matched no prediction."""

    late: Stream[Rejected]
    """Predictions and labels older than their id's watermark on arrival."""


@operator
@instrumented
def label_join(
    step_id: str,
    predictions: KeyedStream[Any] | Stream[pl.DataFrame],
    labels: KeyedStream[Any] | Stream[pl.DataFrame],
    *,
    ts: Callable[[Any], datetime] | str,
    label_ts: Callable[[Any], datetime] | str | None = None,
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
    ttl: timedelta | None = None,
    key: str | None = None,
    shards: int = 16,
) -> LabelJoinOut:
    """Join predictions with ground-truth labels that arrive later, and score the model per window.

    Use it for online evaluation: a fraud score is confirmed by a chargeback
    hours later, a demand forecast by the sales of the day. Both streams are
    keyed by the event id. A prediction at ``t`` is labelled by the first label
    of its id with ``t <= label_ts <= t + max_delay``; it is emitted on
    ``labelled`` (the prediction dict plus the ``label`` field) as soon as the
    label arrives, or on ``unlabelled`` once its id's watermark passes
    ``t + max_delay`` or its id is forgotten (below). A label that labels
    nothing (no prediction, or a second label for the same id) goes to
    ``errs`` as ``UnmatchedLabel``.

    Frames are the unit: with ``key=`` a column name, ``predictions`` and
    ``labels`` are streams of ``polars.DataFrame``, ``ts``/``label_ts``
    name their event-time columns (a time-zone-aware ``Datetime`` or
    epoch-ms integers), and ``labelled``/``unlabelled`` carry frames: the
    prediction rows, with the label column added to the labelled ones.
    Fields are read column by column, and a waiting row stays in a frame
    (no dict per row). With ``key=None`` (the rows path), both sides are
    keyed streams of ``(id, dict)`` and ``ts``/``label_ts`` functions of an
    item. Both paths share one implementation and one state record, so
    either resumes the other's recovery store.

    Time is event time, per id (see
    :mod:`streamml.operators._core.event_time`): an id's watermark is the
    newest timestamp of its prediction and labels minus ``lateness``, and an
    item older than it on arrival goes to ``late`` — whether it is late
    depends only on its id's own items in arrival order, not on
    ``shards=``, workers or batch boundaries (before this release the
    watermark was one per shard). An id waits at most ``ttl`` of its shard's
    event time after its newest item: then it is forgotten, its prediction
    still waiting is unlabelled, and its later items that could have
    matched are late.

    Per tumbling ``window`` of prediction time (aligned to the epoch) and
    ``model_version``, ``metrics`` gets one record once every prediction in
    the window is labelled or expired: ``model_version``, ``window_start``,
    ``window_end``, ``predictions``, ``labelled``, ``unlabelled`` (labels that
    never came), and — from the labelled ones — ``accuracy``, ``precision``,
    ``recall``, ``f1``, ``log_loss`` (classification; log loss needs
    ``probability``) or ``mae`` and ``rmse`` (regression), as scikit-learn
    defines them (``zero_division=0``). A window is closed once no prediction
    of it can still arrive or be labelled: in every shard, every id's
    watermark and the horizon of forgotten ids have passed its end +
    ``max_delay`` (and at end of input).

    A bad key (``BadKey``), an unreadable timestamp (``BadTimestamp``), a
    missing or null prediction or label field (``MissingField``) and, for
    regression, a value that is not a finite number (``NotANumber``,
    ``NonFinite``) go to ``errs`` before they can move their id's watermark.

    Args:
        step_id: Unique step id.
        predictions: Prediction frames, or ``(event id, prediction dict)``.
        labels: Label frames, or ``(event id, label dict)``.
        ts: Event-time column of the prediction frames, or the timestamp of
            a prediction (aware UTC datetime).
        label_ts: The same for labels; ``ts`` when omitted.
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
        lateness: How far out of order the items of an id may arrive.
        ttl: How long an id is kept after its newest item, in its shard's
            event time; at least ``max_delay + lateness``, which is the
            default.
        key: The event id column of both sides' frames; ``None`` for rows.
        shards: Number of state shards (see
            :func:`~streamml.operators.join.enrich`).

    Returns:
        :class:`LabelJoinOut`: ``labelled``, ``unlabelled``, ``metrics``,
        ``errs`` and ``late``.

    Examples:
        Frames (times in epoch milliseconds):

        >>> from datetime import datetime, timedelta, timezone
        >>> import polars as pl
        >>> from bytewax.dataflow import Dataflow
        >>> import bytewax.operators as op
        >>> from bytewax.testing import TestingSource, TestingSink, run_main
        >>> flow = Dataflow("label_frames_doc")
        >>> preds = op.input("preds", flow, TestingSource([pl.DataFrame({
        ...     "tx": ["tx1", "tx2", "tx3"], "prediction": [1, 0, 1], "ts": [0, 60_000, 120_000]})]))
        >>> labels = op.input("labels", flow, TestingSource([pl.DataFrame({
        ...     "tx": ["tx1", "tx2"], "label": [1, 1], "ts": [1_800_000, 2_400_000]})]))
        >>> out = label_join("eval", preds, labels, key="tx", ts="ts",
        ...                  max_delay=timedelta(hours=1), window=timedelta(minutes=5))
        >>> labelled, unlabelled = [], []
        >>> op.output("labelled", out.labelled, TestingSink(labelled))
        >>> op.output("unlabelled", out.unlabelled, TestingSink(unlabelled))
        >>> run_main(flow)
        >>> pl.concat(labelled).sort("tx").select("tx", "prediction", "label").rows()
        [('tx1', 1, 1), ('tx2', 0, 1)]
        >>> pl.concat(unlabelled)["tx"].to_list()
        ['tx3']

        Rows:

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
    if ttl is not None and ttl < max_delay + lateness:
        raise ValueError(f"ttl must be >= max_delay + lateness ({max_delay + lateness}); got {ttl}")
    if task not in ("classification", "regression"):
        raise ValueError(f"task must be 'classification' or 'regression'; got {task!r}")
    if average not in ("binary", "macro", "micro", "weighted"):
        raise ValueError(f"average must be binary, macro, micro or weighted; got {average!r}")
    label_ts = ts if label_ts is None else label_ts
    frames = key is not None
    if frames and not (isinstance(key, str) and isinstance(ts, str) and isinstance(label_ts, str)):
        raise ValueError(
            "for frames, key, ts and label_ts name columns (e.g. key='tx_id', ts='ts'); "
            f"got key={key!r}, ts={ts!r}, label_ts={label_ts!r}"
        )
    if not frames and not (callable(ts) and callable(label_ts)):
        raise ValueError(
            "with key=None, both sides are keyed (id, event) streams and ts/label_ts must be "
            "functions of an event; for frames, give key= the id column's name"
        )
    cfg = _Config(
        step_id=f"{step_id}.join",
        getters=(None, None) if frames else (ts, label_ts),  # type: ignore[arg-type]
        key=key or "",
        timestamps=(ts, label_ts) if frames else ("", ""),  # type: ignore[arg-type]
        max_delay=micros(max_delay),
        window=micros(window),
        lateness=micros(lateness),
        ttl=None if ttl is None else micros(ttl),
        shards=shards,
        prediction=prediction,
        label=label,
        probability=probability,
        model_version=model_version,
        regression=task == "regression",
        pos_label=pos_label,
        average=average,
    )

    def build_metrics(resume: Any) -> _MetricsLogic:
        return _MetricsLogic(cfg, resume)

    if frames:
        tagged = tag_frames("shard", predictions, labels, cfg.key, shards)
        joined = op.stateful_batch("join", tagged.chunks, lambda r: Chunked(_FrameLogic(cfg, r)))
    else:
        tagged = tag_sides("shard", predictions, labels, shards, grouped=True, memo=False)
        joined = op.stateful_batch("join", tagged.chunks, lambda r: _LabelLogic(cfg, r))
    parts = op.flat_map_batch("parts", joined, lambda b: [("all", x) for x in pick(4)(b)])
    metrics = op.stateful_batch("metrics", parts, build_metrics)
    return LabelJoinOut(
        labelled=op.flat_map_batch("labelled", joined, pick(0)),
        unlabelled=op.flat_map_batch("unlabelled", joined, pick(1)),
        metrics=op.key_rm("metrics_records", metrics),
        errs=op.merge("all_errs", tagged.errs, op.flat_map_batch("errs", joined, pick(2))),
        late=op.flat_map_batch("late", joined, pick(3)),
    )
