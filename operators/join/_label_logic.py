"""label_join's shard logic on (id, event) rows: admission, matching and window parts.

Event time is the core's (:class:`~streamml.operators._core.event_time.KeyedEventTime`,
one per shard): lateness per key, keys forgotten after ``ttl`` of their
shard's event time. The shard state is the versioned record
``streamml.join.label``, upgraded from the previous release's pickled
``_LabelState`` (:func:`_from_legacy`). The frames path
(:class:`~streamml.operators.join.label._FrameLogic`) reads and writes frames
around the same matching.
"""

from __future__ import annotations

import math
import numbers
import time
import zlib
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

import numpy as np
from bytewax.operators import StatefulBatchLogic
from streamml.operators._core.admission import _NONE
from streamml.operators._core.arrays import highest, lowest
from streamml.operators._core.event_time import KeyedEventTime
from streamml.operators._core.state import snapshot
from streamml.operators.join._label_frames import (
    to_rows,
)
from streamml.operators.join._label_windows import (
    _END,
    _parts_data,
    _parts_from,
    _WindowPart,
)
from streamml.operators.join._legacy import _LabelState
from streamml.operators.join._resume import resumed
from streamml.operators.join._shards import (
    LEFT,
    NEVER,
    late_records,
    micros,
    read_groups,
)
from streamml.operators.join.metrics import Average, ClassificationStats, RegressionStats

from streamml.errors import Rejected, reject

_KIND = "streamml.join.label"
_VERSION = 1

_ABSENT: Any = object()  # a field the event does not have (read again the slow way)


class MissingField(KeyError):
    """A prediction or label lacks a field it needs (or holds null there)."""


class NotANumber(TypeError):
    """A regression prediction or label is not a real number."""


class NonFinite(ValueError):
    """A regression prediction or label is NaN or infinite."""


def _field(item: Any, name: str, null: bool = False) -> Any:
    """``item[name]``; missing, or null unless ``null``, is a :class:`MissingField`."""
    try:
        value = item[name]
    except (KeyError, IndexError, TypeError):
        raise MissingField(f"field {name!r} is missing") from None
    if value is None and not null:
        raise MissingField(f"field {name!r} is null")
    return value


def _number(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise NotANumber(f"field {name!r} is {type(value).__name__} {value!r:.40}, not a number")
    number = float(value)
    if not math.isfinite(number):
        raise NonFinite(f"field {name!r} is {number}")
    return number


# A stored prediction: (ts, event, y_pred, proba, model_version).
_Pred = tuple[int, Any, Hashable, Any, Hashable]


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
    ttl: int | None = None  # µs; None: max_delay + lateness
    clock: Callable[[], float] = time.time
    key: str = ""  # frames: the id column
    timestamps: tuple[str, str] = ("", "")  # frames: the event-time columns of each side

    def new_stats(self) -> ClassificationStats | RegressionStats:
        if self.regression:
            return RegressionStats()
        return ClassificationStats(self.pos_label, self.average)

    def key_ttl(self) -> int:
        """How long an id is kept after its newest item (µs of its shard's event time)."""
        return max(1, self.max_delay + self.lateness if self.ttl is None else self.ttl)


_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_UNMATCHED = "no prediction for id {!r} within max_delay before the label"
_FIRST_US = micros(datetime.min.replace(tzinfo=timezone.utc) - _EPOCH)
_LAST_US = micros(datetime.max.replace(tzinfo=timezone.utc) - _EPOCH)


def _outside(ts: np.ndarray, is_pred: np.ndarray, window: int) -> np.ndarray | None:
    """Which predictions' metric windows start or end outside ``datetime``'s range (``None``: none).

    Examples:
        >>> w = micros(timedelta(days=1))
        >>> _outside(np.array([0, _LAST_US, _LAST_US]), np.array([True, True, False]), w).tolist()
        [False, True, False]
    """
    if not len(ts) or (lowest(ts) >= _FIRST_US + window and highest(ts) <= _LAST_US - window):
        return None
    starts = ts - ts % window
    bad = ((starts < _FIRST_US) | (starts > _LAST_US - window)) & is_pred
    return bad if bad.any() else None


def _reject_outside(step_id: str, originals: list) -> list[Rejected]:
    why = "its metrics window lies outside the range of datetime (years 1-9999)"
    return [Rejected(step_id, "BadTimestamp", why, x) for x in originals]


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


class _LabelLogic(StatefulBatchLogic):
    """One shard of a label join.

    ``preds`` and ``labels`` hold, per id, what waits for its other half;
    ``parts`` the counts of each (window, model version) not yet sent on.

    Eviction: a prediction leaves when labelled or once its id's watermark
    passes ``ts + max_delay`` (then counted as unlabelled); a label leaves
    when it labels a prediction or once its id's watermark passes its
    timestamp (no prediction that is not late can precede it); an id idle
    for ``ttl`` of its shard's event time is forgotten (its waiting items
    leave as above). A window's counts leave once no prediction of it can
    still arrive or change — every id's watermark and the horizon of
    forgotten ids past its end plus ``max_delay`` — and are sent on.
    """

    def __init__(self, cfg: _Config, resume: Any) -> None:
        self.cfg = cfg
        upgrades = {0: lambda old: _from_legacy(old, cfg)}
        data = resumed(resume, kind=_KIND, version=_VERSION, upgrades=upgrades)
        if data is not None:
            data = self._held_as_mine(data)
        self.et = KeyedEventTime(
            max_delay=timedelta(microseconds=cfg.lateness),
            # a forgotten id's prediction at t left unlabelled: every label it could have
            # met (at most t + max_delay, and t is at most the id's newest time) is late
            guard=timedelta(microseconds=cfg.max_delay + 1),
            ttl=timedelta(microseconds=cfg.key_ttl()),
            clock=cfg.clock,
            resume=None if data is None else data["time"],
        )
        self.shard: str | None = None
        self.preds: dict[str, list[_Pred]] = {}
        self.labels: dict[str, list[tuple[int, Any, Hashable]]] = {}
        self.parts: dict[tuple[int, Hashable], _WindowPart] = {}
        self.closed = NEVER
        if data is not None:
            self.shard = data["shard"]
            self.preds = {k: [tuple(p) for p in v] for k, v in data["preds"].items()}
            self.labels = {k: [tuple(x) for x in v] for k, v in data["labels"].items()}
            self.parts = _parts_from(data["parts"], cfg.regression)
            self.closed = data["closed"]

    def _held_as_mine(self, data: dict[str, Any]) -> dict[str, Any]:
        """A resumed record with its waiting events as this path holds them (dicts)."""
        return to_rows(data) if "stores" in data else data

    def size(self) -> int:
        """Predictions, labels and window parts held (for tests of bounded state)."""
        return (
            sum(len(v) for v in self.preds.values())
            + sum(len(v) for v in self.labels.values())
            + len(self.parts)
        )

    def _part(self, t: int, version: Hashable) -> _WindowPart:
        ws = t - t % self.cfg.window
        part = self.parts.get((ws, version))
        if part is None:
            part = self.parts[(ws, version)] = _WindowPart(self.cfg.new_stats())
        return part

    def _read_pred(self, key: str, event: Any, errs: list) -> tuple | None:
        cfg = self.cfg
        try:
            y_pred = _field(event, cfg.prediction)
            # a null probability: no log loss for this one (as the inline read takes it)
            proba = None if cfg.probability is None else _field(event, cfg.probability, True)
            if proba is not None and not hasattr(proba, "get"):
                proba = float(proba)
            if cfg.regression:
                y_pred = _number(y_pred, cfg.prediction)
            hash(y_pred)
            version = event.get(cfg.model_version) if hasattr(event, "get") else None
            return (y_pred, proba, version)
        except Exception as exc:  # noqa: BLE001 - bad data goes to errs
            errs.append(reject(cfg.step_id, exc, (key, event)))
            return None

    def _read_label(self, key: str, event: Any, errs: list) -> Any:
        cfg = self.cfg
        try:
            y = _field(event, cfg.label)
            y = _number(y, cfg.label) if cfg.regression else y
            hash(y)
            return y
        except Exception as exc:  # noqa: BLE001 - bad data goes to errs
            errs.append(reject(cfg.step_id, exc, (key, event)))
            return _ABSENT

    def _read(self, rows: list, sides: list[int], errs: list) -> tuple[list, list[int] | None]:
        """Each row's prediction ``(y_pred, proba, version)`` or label, read before the row
        can move its id's watermark; and the positions of the readable rows (``None``: all)."""
        cfg = self.cfg
        # The usual prediction (a hashable class, a float probability) and label are
        # read inline; anything else goes through _read_pred / _read_label.
        prediction, probability, version_field = cfg.prediction, cfg.probability, cfg.model_version
        label_field = cfg.label
        inline = not cfg.regression
        plain = (int, str, bool)
        values: list = []
        bad: list[int] = []
        for i, ((key, item), side) in enumerate(zip(rows, sides)):
            if side == LEFT:
                if inline and type(item) is dict:
                    y_pred = item.get(prediction, _ABSENT)
                    proba = None if probability is None else item.get(probability, _ABSENT)
                    if type(y_pred) in plain and (proba is None or type(proba) is float):
                        values.append((y_pred, proba, item.get(version_field)))
                        continue
                value = self._read_pred(key, item, errs)
                if value is None:
                    bad.append(i)
                values.append(value)
            else:
                y_true = item.get(label_field, _ABSENT) if inline and type(item) is dict else None
                if type(y_true) not in plain:
                    y_true = self._read_label(key, item, errs)
                    if y_true is _ABSENT:
                        bad.append(i)
                values.append(y_true)
        if not bad:
            return values, None
        skip = set(bad)
        keep = [i for i in range(len(rows)) if i not in skip]
        return [values[i] for i in keep], keep

    def on_batch(self, values: list[tuple[int, list[tuple[str, Any]]]]) -> tuple[list, bool]:
        cfg = self.cfg
        out: list[list] = [[], [], [], [], []]  # labelled, unlabelled, errs, late, parts
        errs = out[2]
        if self.shard is None and values:
            self.shard = str(zlib.crc32(values[0][1][0][0].encode()) % cfg.shards)
        rows, ts, side_arr = read_groups(cfg.step_id, values, cfg.getters, errs)
        sides = side_arr.tolist()
        read, keep = self._read(rows, sides, errs)
        if keep is not None:
            rows, ts, sides = [rows[i] for i in keep], ts[keep], [sides[i] for i in keep]
        bad = _outside(ts, np.asarray(sides) == LEFT, cfg.window) if rows else None
        if bad is not None:
            errs += _reject_outside(cfg.step_id, [rows[i] for i in np.flatnonzero(bad)])
            ok = np.flatnonzero(~bad).tolist()
            rows, ts, sides = [rows[i] for i in ok], ts[ok], [sides[i] for i in ok]
            read = [read[i] for i in ok]
        if rows:
            rows, sides, read, t_ok, _ = self._admit(rows, sides, read, ts, out, rows.__getitem__)
            self._step(rows, sides, read, t_ok, out)
        self._release(out)
        return self._emit(out), False

    def _admit(
        self,
        rows: list,
        sides: list[int],
        read: list,
        ts: np.ndarray,
        out: list,
        original: Callable[[int], Any],
    ) -> tuple[list, list[int], list, list[int], np.ndarray | None]:
        """The rows that are not late (the late ones into ``out``), their sides, values and
        times, and the positions of the kept rows (``None``: all)."""
        adm = self.et.admit([k for k, _ in rows], ts)
        if not len(adm.late):
            return rows, sides, read, adm.ts.tolist(), None
        out[3] = late_records(self.cfg.step_id, adm, ts, original)
        ok = adm.ok.tolist()
        rows, read = [rows[i] for i in ok], [read[i] for i in ok]
        return rows, [sides[i] for i in ok], read, adm.ts.tolist(), adm.ok

    def _step(self, rows: list, sides: list[int], read: list, ts: list[int], out: list) -> None:
        check = self._match(rows, sides, read, ts, out[0])
        if check:
            self._expire(check, out)

    def _release(self, out: list) -> None:
        """Forget idle ids (their waiting items leave) and close the windows that are done."""
        released = self.et.release()
        if released.gone_keys:
            self._flush(released.gone_keys, out)
        self._close(self._bound(), out)

    def _emit(self, out: list) -> list:
        """The call's output: labelled predictions as ``(id, prediction + label field)``."""
        if out[0]:
            field = self.cfg.label
            out[0] = [(k, {**e, field: y}) for k, e, y, _ in out[0]]
        return [tuple(out)] if any(out) else []

    def _match(
        self,
        rows: list,
        sides: list[int],
        read: list,
        ts: list[int],
        labelled: list,
        deferred: list | None = None,
    ) -> set[str]:
        """Label what meets its other half, store the rest; the ids to check for expiry.

        A labelled prediction goes into ``labelled`` as ``(id, prediction item, label,
        label item)``, and is counted in its window part; with ``deferred``, its
        ``(part, label, prediction, probability)`` goes there to be counted later.
        """
        cfg = self.cfg
        preds, labels, parts = self.preds, self.labels, self.parts
        delay, window = cfg.max_delay, cfg.window
        check: set[str] = set()  # ids that held items before a row came: their watermark moved
        for (key, item), side, value, t in zip(rows, sides, read, ts):
            if side == LEFT:
                y_pred, proba, version = value
                wv = (t - t % window, version)
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
                    if deferred is None:
                        part.stats.add(y_true, y_pred, proba)
                        part.labelled += 1
                    else:
                        deferred.append((part, y_true, y_pred, proba))
                    labelled.append((key, item, y_true, match[1]))
                    if key in labels or key in preds:
                        check.add(key)
                    continue
                waiting = preds.get(key)
                if waiting is None:
                    preds[key] = [(t, item, y_pred, proba, version)]
                    if stored is not None:
                        check.add(key)
                else:
                    waiting.append((t, item, y_pred, proba, version))
                    check.add(key)
            else:
                y_true = value
                match = _take(preds, key, t - delay, t) if key in preds else None
                if match is not None:
                    mt, event, y_pred, proba, version = match
                    part = self._part(mt, version)
                    if deferred is None:
                        part.stats.add(y_true, y_pred, proba)
                        part.labelled += 1
                    else:
                        deferred.append((part, y_true, y_pred, proba))
                    labelled.append((key, event, y_true, item))
                    if key in labels or key in preds:
                        check.add(key)
                    continue
                waiting = labels.get(key)
                if waiting is None:
                    labels[key] = [(t, item, y_true)]
                    if key in preds:
                        check.add(key)
                else:
                    waiting.append((t, item, y_true))
                    check.add(key)
        return check

    def _expire(self, keys: set[str], out: list) -> None:
        """Items of ``keys`` their id's watermark has passed: unlabelled, or unmatched labels."""
        delay = self.cfg.max_delay
        watermark = self.et.watermark
        for key in keys:
            mark = watermark(key)
            if mark is None:
                continue
            waiting = self.preds.get(key)
            if waiting:
                gone = [p for p in waiting if p[0] + delay < mark]
                if gone:
                    self._unlabelled(key, gone, out)
                    keep = [p for p in waiting if p[0] + delay >= mark]
                    if keep:
                        self.preds[key] = keep
                    else:
                        del self.preds[key]
            stored = self.labels.get(key)
            if stored:
                gone = [x for x in stored if x[0] < mark]
                if gone:
                    self._unmatched(key, gone, out)
                    keep = [x for x in stored if x[0] >= mark]
                    if keep:
                        self.labels[key] = keep
                    else:
                        del self.labels[key]

    def _unlabelled(self, key: str, preds: list[_Pred], out: list) -> None:
        for pred in preds:
            self._part(pred[0], pred[4]).unlabelled += 1
            out[1].append((key, pred[1]))

    def _unmatched(self, key: str, labels: list[tuple], out: list) -> None:
        why = _UNMATCHED.format(key)
        out[2].extend(
            Rejected(self.cfg.step_id, "UnmatchedLabel", why, (key, event))
            for _, event, _ in labels
        )

    def _flush(self, keys: list[str], out: list) -> None:
        """Forgotten ids (or all at the end): what waits for them leaves."""
        for key in keys:
            preds = self.preds.pop(key, None)
            if preds:
                self._unlabelled(key, preds, out)
            labels = self.labels.pop(key, None)
            if labels:
                self._unmatched(key, labels, out)

    def _bound(self) -> int:
        """No prediction before this time can still arrive or change here (see the class doc)."""
        et = self.et
        if et.forgotten_max is None:  # an id never seen may still bring any time
            return NEVER
        floor = et.forgotten_max + et.guard
        window = self.cfg.window
        if floor - floor % window <= self.closed:  # no new window could close
            return NEVER
        kmax = et.kmax[: len(et.keys)]
        known = kmax[kmax != _NONE]
        if len(known):
            floor = min(floor, int(known.min()) - et.delay - self.cfg.max_delay)
        return floor

    def _close(self, bound: int, out: list) -> None:
        # Windows ending at or before ``bound`` can get no more predictions or labels here.
        window = self.cfg.window
        bound = bound - bound % window if bound < _END else _END
        if bound <= self.closed:
            return
        self.closed = bound
        done = [wv for wv in self.parts if wv[0] + window <= bound]
        parts = out[4]
        for wv in done:
            parts.append((wv[0], wv[1], self.parts.pop(wv)))
        parts.append((self.shard, bound))

    def on_eof(self) -> tuple[list, bool]:
        # Both sides ended: no label can come any more.
        out: list[list] = [[], [], [], [], []]
        self._flush(sorted(set(self.preds) | set(self.labels)), out)
        self._close(_END, out)
        return self._emit(out), False

    def _data(self) -> dict[str, Any]:
        return {
            "time": self.et.snapshot_data(),
            "shard": self.shard,
            "preds": {k: [list(p) for p in v] for k, v in self.preds.items()},
            "labels": {k: [list(x) for x in v] for k, v in self.labels.items()},
            "parts": _parts_data(self.parts),
            "closed": self.closed,
        }

    def snapshot(self) -> dict[str, Any]:
        return snapshot(_KIND, _VERSION, self._data())


def _from_legacy(state: _LabelState, cfg: _Config) -> dict[str, Any]:
    """The previous release's shard state as a version-1 record.

    The old state kept one watermark per shard: each of its ids gets the
    shard's newest time as its own, and the horizon of forgotten ids is set
    to the old watermark, so what was late stays late and no window it
    closed gets a prediction again.
    """
    keys = list(dict.fromkeys([*state.preds, *state.labels]))
    newest = state.max_seen if keys else _NONE
    forgotten = None if state.watermark == NEVER else state.watermark - cfg.max_delay - 1
    time_data = {
        "keys": keys,
        "kmax": np.full(len(keys), newest, dtype=np.int64),
        "forgotten_max": forgotten,
        "newest": newest,
        "swept": _NONE,
        "held_frame": None,
        "held_kid": np.zeros(0, dtype=np.int64),
        "held_ts": np.zeros(0, dtype=np.int64),
        "held_arrived": np.zeros(0),
        "held_data": np.zeros((0, 0)),
    }
    return {
        "time": time_data,
        "shard": state.shard,
        "preds": {k: [list(p) for p in v] for k, v in state.preds.items()},
        "labels": {k: [list(x) for x in v] for k, v in state.labels.items()},
        "parts": _parts_data(state.parts),
        "closed": state.closed,
    }
