"""Drift monitor: population stability index (PSI) of a value per window against a reference."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

import bytewax.operators as op
import bytewax.operators.windowing as win
import numpy as np
from bytewax.dataflow import Stream, operator
from bytewax.operators import KeyedStream, StatefulBatchLogic

from streamml.errors import Rejected, reject
from streamml.metrics import instrumented

__all__ = ["DriftOut", "drift", "psi"]

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_FLOOR = 1e-4  # share given to an empty bin, so PSI stays finite


def _edges(reference: np.ndarray, bins: int) -> np.ndarray:
    """Interior bin edges at the reference's quantiles (fewer if values repeat)."""
    qs = np.quantile(reference, np.arange(1, bins) / bins)
    return np.unique(qs)


def _shares(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    counts = np.bincount(np.searchsorted(edges, values, side="right"), minlength=len(edges) + 1)
    return np.maximum(counts / max(len(values), 1), _FLOOR)


def psi(reference: Sequence[float], current: Sequence[float], *, bins: int = 10) -> float:
    """Population stability index of ``current`` against ``reference``.

    Bins are the reference's quantiles (``bins`` of them, fewer when values
    repeat); an empty bin counts as a 0.01% share. Rules of thumb: < 0.1 no
    shift, 0.1–0.2 moderate, > 0.2 significant.

    Examples:
        >>> rng = np.random.default_rng(0)
        >>> ref = rng.normal(0, 1, 5000)
        >>> psi(ref, rng.normal(0, 1, 5000)) < 0.05, psi(ref, rng.normal(1, 1, 5000)) > 0.2
        (True, True)
    """
    ref = np.asarray(reference, dtype=float)
    if len(ref) == 0:
        raise ValueError("reference must hold at least one value")
    edges = _edges(ref, bins)
    return _psi(_shares(ref, edges), _shares(np.asarray(current, dtype=float), edges))


def _psi(expected: np.ndarray, actual: np.ndarray) -> float:
    return float(np.sum((actual - expected) * np.log(actual / expected)))


@dataclass(frozen=True)
class DriftOut:
    """The streams of :func:`drift`."""

    psi: KeyedStream[dict[str, Any]]
    """``(key, record)`` per closed window: ``window_start``, ``window_end``,
    ``count``, ``psi`` (``None`` for a window used as the reference),
    ``threshold`` and ``alert``."""

    alerts: KeyedStream[dict[str, Any]]
    """The records whose ``psi`` is above ``threshold``."""

    errs: Stream[Rejected]
    """Events whose value or timestamp could not be read, or is not finite."""

    late: Stream[Rejected]
    """Events that arrived after their window closed."""


class _DriftState:
    """The reference of one key: bin edges and shares.

    Eviction: one reference per key, replaced never; windows live in
    Bytewax's window operator and leave when they close.
    """

    def __init__(self) -> None:
        self.edges: np.ndarray | None = None
        self.expected: np.ndarray | None = None


class _DriftLogic(StatefulBatchLogic[Any, Any, _DriftState]):
    def __init__(
        self,
        state: _DriftState,
        reference: np.ndarray | None,
        bins: int,
        threshold: float,
        window: timedelta,
    ) -> None:
        self.state = state
        self.bins = bins
        self.threshold = threshold
        self.window = window
        if state.edges is None and reference is not None:
            self._set_reference(reference)

    def _set_reference(self, values: np.ndarray) -> None:
        self.state.edges = _edges(values, self.bins)
        self.state.expected = _shares(values, self.state.edges)

    def on_batch(self, values: list[tuple[int, list[float]]]) -> tuple[list, bool]:
        out = []
        for window_id, window_values in sorted(values, key=lambda v: v[0]):
            current = np.asarray(window_values, dtype=float)
            start = _EPOCH + window_id * self.window
            record: dict[str, Any] = {
                "window_start": start,
                "window_end": start + self.window,
                "count": len(current),
                "psi": None,
                "threshold": self.threshold,
                "alert": False,
            }
            if self.state.edges is None:
                self._set_reference(current)
            else:
                value = _psi(self.state.expected, _shares(current, self.state.edges))
                record["psi"] = value
                record["alert"] = value > self.threshold
            out.append(record)
        return out, False

    def snapshot(self) -> _DriftState:
        new = _DriftState()
        new.edges = None if self.state.edges is None else self.state.edges.copy()
        new.expected = None if self.state.expected is None else self.state.expected.copy()
        return new


def _reader(
    step_id: str, value: Callable[[Any], float], ts: Callable[[Any], datetime]
) -> Callable[[list[tuple[str, Any]]], list[Any]]:
    def read_one(key: str, event: Any) -> Any:
        try:
            x = float(value(event))
            t = ts(event)
            if not math.isfinite(x):
                return Rejected(step_id, "NonFinite", f"value is {x}", (key, event))
            if t.tzinfo is None:
                raise TypeError("timestamp must be a timezone-aware datetime")
            return (key, (t, x))
        except Exception as exc:  # noqa: BLE001 - bad data goes to errs
            return reject(step_id, exc, (key, event))

    def read(batch: list[tuple[str, Any]]) -> list[Any]:
        return [read_one(k, e) for k, e in batch]

    return read


def _fold(acc: list[float], tx: tuple[datetime, float]) -> list[float]:
    acc.append(tx[1])
    return acc


def _merge(a: list[float], b: list[float]) -> list[float]:
    return a + b


@operator
@instrumented
def drift(
    step_id: str,
    up: KeyedStream[Any],
    *,
    value: Callable[[Any], float],
    ts: Callable[[Any], datetime],
    window: timedelta,
    reference: Sequence[float] | None = None,
    bins: int = 10,
    threshold: float = 0.2,
    lateness: timedelta = timedelta(0),
) -> DriftOut:
    """Population stability index of a feature or prediction per window, with alerts.

    Use it beside a model to see when its inputs or outputs stop looking
    like what it was trained on: per key (a model version, or one constant
    key for the whole stream) and per tumbling event-time ``window`` (aligned
    to the epoch), the distribution of ``value(event)`` is binned at the
    reference's quantiles and compared with the reference by PSI. The
    reference is the given sample (e.g. the training set's values) or, when
    ``reference`` is ``None``, the key's first window. A window whose PSI is
    above ``threshold`` is also emitted on ``alerts``.

    Windows come from Bytewax's ``fold_window`` with an ``EventClock``
    (``lateness`` is its waiting duration); late events go to ``late``.

    Args:
        step_id: Unique step id.
        up: Keyed events.
        value: The number to watch, e.g. ``lambda e: e["score"]``.
        ts: Timestamp of an event (aware UTC datetime).
        window: Window length.
        reference: Reference sample; ``None`` uses each key's first window.
        bins: Number of quantile bins.
        threshold: PSI above which a window is an alert (0.2 is customary).
        lateness: How far out of order events may arrive.

    Returns:
        :class:`DriftOut` with ``psi``, ``alerts``, ``errs`` and ``late``.

    Examples:
        >>> from datetime import datetime, timedelta, timezone
        >>> from bytewax.dataflow import Dataflow
        >>> import bytewax.operators as op
        >>> from bytewax.testing import TestingSource, TestingSink, run_main
        >>> t0 = datetime(2024, 1, 1, tzinfo=timezone.utc)
        >>> scores = [i % 10 / 10 for i in range(100)] + [0.9] * 100  # hour 2 drifts high
        >>> events = [("v1", {"score": s, "ts": t0 + timedelta(seconds=36 * i)})
        ...           for i, s in enumerate(scores)]
        >>> flow = Dataflow("drift_doc")
        >>> out = drift("score_drift", op.input("in", flow, TestingSource(events)),
        ...             value=lambda e: e["score"], ts=lambda e: e["ts"],
        ...             window=timedelta(hours=1), bins=5)
        >>> got = []
        >>> op.output("out", out.psi, TestingSink(got))
        >>> run_main(flow)
        >>> [(r["window_start"].hour, r["count"], r["psi"] and round(r["psi"], 2), r["alert"])
        ...  for _, r in got]
        [(0, 100, None, False), (1, 100, 7.37, True)]
    """
    if window <= timedelta(0):
        raise ValueError(f"window must be > 0; got {window}")
    if bins < 2:
        raise ValueError(f"bins must be >= 2; got {bins}")
    if threshold <= 0:
        raise ValueError(f"threshold must be > 0; got {threshold}")
    if lateness < timedelta(0):
        raise ValueError(f"lateness must be >= 0; got {lateness}")
    ref = None
    if reference is not None:
        ref = np.asarray(reference, dtype=float)
        if len(ref) == 0 or not np.all(np.isfinite(ref)):
            raise ValueError("reference must be a non-empty sample of finite numbers")

    read = op.flat_map_batch("read", up, _reader(f"{step_id}.read", value, ts))
    split = op.branch("ok", read, lambda x: type(x) is not Rejected)
    values: KeyedStream[tuple[datetime, float]] = split.trues
    windows = win.fold_window(
        "windows",
        values,
        win.EventClock(lambda tx: tx[0], wait_for_system_duration=lateness),
        win.TumblingWindower(length=window, align_to=_EPOCH),
        list,
        _fold,
        _merge,
    )

    def build(resume: _DriftState | None) -> _DriftLogic:
        return _DriftLogic(resume or _DriftState(), ref, bins, threshold, window)

    records = op.stateful_batch("psi", windows.down, build)
    late_id = f"{step_id}.windows"
    late = op.map(
        "late",
        windows.late,
        lambda kv: Rejected(late_id, "Late", "arrived after its window closed", kv),
    )
    return DriftOut(
        psi=records,
        alerts=op.filter_value("alerts", records, lambda r: r["alert"]),
        errs=split.falses,
        late=late,
    )
