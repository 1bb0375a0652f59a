"""Feature scaling: :func:`standard_scale` (fitted parameters) and :func:`online_scale`
(running statistics).

Frames are the unit: an item that is a ``polars.DataFrame`` is checked and
transformed on its columns (polars expressions and NumPy; no Python per
row), and comes out as the same rows with the new columns; a bad row
becomes a :class:`~streamml.errors.Rejected` (the row as a dict) and the
rest of its frame goes on (see :mod:`._frame_rows` for the checks).
``(key, event)`` rows, the legacy path, go through the same computation:
each batch's fields are read into columns, computed on, and written into
new dicts. Both units may share a stream.

:func:`standard_scale` is stateless and works on whole micro-batches with
``flat_map_batch``. :func:`online_scale` keeps running statistics per key
(frames: routed to shard states by the key column with
:func:`~streamml.operators._core.keys.frame_sharder`) or one global state.
Both match scikit-learn's ``StandardScaler`` where the semantics are the same.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from functools import partial
from pathlib import Path
from typing import Any

import bytewax.operators as op
import numpy as np
import polars as pl
from bytewax.dataflow import Stream, operator
from bytewax.operators import KeyedStream, StatefulBatchLogic
from streamml.operators import _validate
from streamml.operators._core.columns import values as column_values
from streamml.operators._core.keys import frame_sharder
from streamml.operators._core.state import restore, snapshot
from streamml.operators.featurize._batch import extract
from streamml.operators.featurize._frame_rows import dispatch, numeric_rows
from streamml.operators.featurize._moments import Moments
from streamml.operators.featurize._transform import attach, split_out, with_columns
from streamml.operators.featurize.outputs import FeaturesOut

from streamml.errors import Rejected
from streamml.metrics import instrumented

__all__ = [
    "ScalerParams",
    "online_scale",
    "standard_scale",
]


# -- standard scaling ---------------------------------------------------------


@dataclass(frozen=True)
class ScalerParams:
    """Fitted standard-scaling parameters: ``(x - mean) / scale`` per field.

    Examples:
        >>> from sklearn.preprocessing import StandardScaler
        >>> fitted = StandardScaler().fit([[0.0, 10.0], [2.0, 30.0]])
        >>> ScalerParams.from_sklearn(fitted, ["a", "b"])
        ScalerParams(fields=('a', 'b'), mean=(1.0, 20.0), scale=(1.0, 10.0))
    """

    fields: tuple[str, ...]
    mean: tuple[float, ...]
    scale: tuple[float, ...]

    def __post_init__(self) -> None:
        if not (len(self.fields) == len(self.mean) == len(self.scale)) or not self.fields:
            raise ValueError(
                "fields, mean and scale must be non-empty and of equal length; got "
                f"{len(self.fields)}, {len(self.mean)}, {len(self.scale)}"
            )
        bad = [f for f, s in zip(self.fields, self.scale) if not (math.isfinite(s) and s > 0)]
        bad += [f for f, m in zip(self.fields, self.mean) if not math.isfinite(m)]
        if bad:
            raise ValueError(f"mean must be finite and scale finite and > 0; not so for {bad}")

    @classmethod
    def from_sklearn(cls, scaler: Any, fields: Sequence[str]) -> ScalerParams:
        """From a fitted ``sklearn.preprocessing.StandardScaler`` (columns in ``fields`` order)."""
        n = len(fields)
        mean = scaler.mean_ if getattr(scaler, "mean_", None) is not None else np.zeros(n)
        scale = scaler.scale_ if getattr(scaler, "scale_", None) is not None else np.ones(n)
        if len(mean) != n:
            raise ValueError(f"the scaler was fitted on {len(mean)} columns; got {n} fields")
        return cls(tuple(fields), tuple(map(float, mean)), tuple(map(float, scale)))

    @classmethod
    def from_json(cls, path: str | Path) -> ScalerParams:
        """From a JSON file ``{"fields": [...], "mean": [...], "scale": [...]}``."""
        data = json.loads(Path(path).read_text())
        return cls(tuple(data["fields"]), tuple(data["mean"]), tuple(data["scale"]))

    def to_json(self, path: str | Path) -> None:
        """Write the JSON file :meth:`from_json` reads."""
        doc = {"fields": list(self.fields), "mean": list(self.mean), "scale": list(self.scale)}
        Path(path).write_text(json.dumps(doc, indent=2))


@operator
@instrumented
def standard_scale(
    step_id: str,
    up: Stream[pl.DataFrame] | KeyedStream[Mapping[str, Any]],
    *,
    params: ScalerParams,
    suffix: str = "_scaled",
) -> FeaturesOut:
    """Standard-scale numeric fields with fitted parameters: ``(x - mean) / scale``.

    Use it to apply exactly the scaling a model was trained with, loaded from
    the fitted scikit-learn scaler (:meth:`ScalerParams.from_sklearn`) or a
    JSON file (:meth:`ScalerParams.from_json`).

    Args:
        step_id: Unique ID.
        up: Frames, or a keyed stream of ``(key, event)`` rows.
        params: The fields and their mean and scale.
        suffix: Output fields are ``{field}{suffix}`` (``Float64`` columns
            of a frame); ``""`` overwrites the field.

    Returns:
        ``oks`` with the scaled fields added; ``errs``: rows with a missing
        (frames: or null), non-numeric or non-finite field (``MissingField``,
        ``NotANumber``, ``NonFinite``; see :mod:`._frame_rows`, rows:
        :mod:`._batch`).

    Examples:
        A frame in, its rows scaled out; the row with a null is rejected:

        >>> import bytewax.operators as op
        >>> import polars as pl
        >>> from bytewax.dataflow import Dataflow
        >>> from bytewax.testing import TestingSource, TestingSink, run_main
        >>> params = ScalerParams(fields=("temp",), mean=(20.0,), scale=(2.0,))
        >>> flow = Dataflow("scale_frames_doc")
        >>> frame = pl.DataFrame({"id": ["s1", "s2", "s3"], "temp": [23.0, None, 19.0]})
        >>> out = standard_scale("scale", op.input("in", flow, TestingSource([frame])), params=params)
        >>> oks, errs = [], []
        >>> op.output("oks", out.oks, TestingSink(oks))
        >>> op.output("errs", out.errs, TestingSink(errs))
        >>> run_main(flow)
        >>> oks[0].rows(), [(r.error_type, r.original["id"]) for r in errs]
        ([('s1', 23.0, 1.5), ('s3', 19.0, -0.5)], [('MissingField', 's2')])

        ``(key, event)`` rows:

        >>> import bytewax.operators as op
        >>> from bytewax.dataflow import Dataflow
        >>> from bytewax.testing import TestingSource, TestingSink, run_main
        >>> params = ScalerParams(fields=("temp",), mean=(20.0,), scale=(2.0,))
        >>> flow = Dataflow("scale_doc")
        >>> up = op.input("in", flow, TestingSource([("s1", {"temp": 23.0}), ("s1", {})]))
        >>> out = standard_scale("scale", up, params=params)
        >>> oks, errs = [], []
        >>> op.output("oks", out.oks, TestingSink(oks))
        >>> op.output("errs", out.errs, TestingSink(errs))
        >>> run_main(flow)
        >>> oks, [r.error_type for r in errs]
        ([('s1', {'temp': 23.0, 'temp_scaled': 1.5})], ['MissingField'])
    """
    mean = np.array(params.mean)
    scale = np.array(params.scale)
    names = [f + suffix for f in params.fields]

    def scaled(x: np.ndarray) -> np.ndarray:
        return (x - mean) / scale

    def on_frame(frame: pl.DataFrame) -> tuple[list, list]:
        good, errs = numeric_rows(frame, step_id, params.fields)
        if not good.height:
            return [], errs
        return [attach(good, names, scaled(column_values(good, params.fields)))], errs

    def on_rows(batch: list[Any]) -> tuple[list, list]:
        cols, errs = extract(step_id, batch, params.fields)
        return with_columns(cols.keys, cols.events, names, scaled(cols.values)), errs

    return split_out(up, dispatch(on_frame, on_rows))


# -- online scaling -------------------------------------------------------------

_SCALE_KIND = "streamml.featurize.online_scale"
_SCALE_VERSION = 1


@dataclass(frozen=True)
class _Moments:
    """The pickled state of a key in stores written before versioned snapshots (read, never
    written): upgraded to the version-1 record by :func:`_upgrade_moments`."""

    n: int
    mean: tuple[float, ...]
    m2: tuple[float, ...]
    seen: datetime  # wall clock of the last event, for the TTL


def _upgrade_moments(old: _Moments) -> dict[str, Any]:
    """The version-1 data of a pre-versioning key state (one key; its name was the state key)."""
    return {
        "path": "rows",
        "keys": [None],
        "n": np.array([old.n], dtype=np.int64),
        "mean": np.array([old.mean], dtype=np.float64),
        "m2": np.array([old.m2], dtype=np.float64),
        "seen": np.array([old.seen.timestamp()]),
    }


class _OnlineScaleLogic(StatefulBatchLogic):
    """One state of :func:`online_scale`: the :class:`Moments` of its keys, and how items are read.

    Frames (``key`` set): a shard's frames, already checked and routed;
    each row counts for its key. Rows (``key=None``): the ``(key, event)``
    items of one key, or of every key with ``per_key=False``: one set of
    statistics (slot 0). Eviction: keys idle ``ttl`` of wall-clock time
    are dropped; a state left with no key is discarded.
    """

    def __init__(
        self,
        step_id: str,
        fields: tuple[str, ...],
        names: list[str],
        ttl: timedelta | None,
        resume: Any,
        key: str | None = None,
        clock: Callable[[], float] = time.time,
        frames: bool = False,
    ) -> None:
        self.step_id, self.fields, self.names, self.key = step_id, fields, names, key
        self.frames = frames  # a row state that also takes frames (the global state)
        self.ttl = None if ttl is None else ttl.total_seconds()
        self.clock = clock
        path = "rows" if key is None else "frames"
        data = None
        if isinstance(resume, _Moments):  # a store from before versioned snapshots
            data = _upgrade_moments(resume)
        elif resume is not None:
            data = restore(resume, kind=_SCALE_KIND, version=_SCALE_VERSION)
        if data is not None and data["path"] != path:
            raise ValueError(
                f"the recovery store holds the {data['path']} path's state of this "
                f"online_scale step; it now reads {path}: use a new recovery store"
            )
        self.path = path
        self.moments = Moments(len(fields), data)
        # downtime is not idleness (as for the event-time core's idle advance): a restored
        # key's TTL counts from the restart, else a store resumed over an hour later would
        # come back empty
        self.moments.seen[:] = clock()

    def on_batch(self, values: list[Any]) -> tuple[list[Any], bool]:
        now = self.clock()
        self.moments.expire(now, self.ttl)
        if self.key is not None:
            oks = []
            for frame in values:
                kid = self.moments.kids(frame.get_column(self.key))
                x = column_values(frame, self.fields)
                oks.append(attach(frame, self.names, self.moments.update(kid, x, now)))
            return [(oks, [])], False
        oks: list[Any] = []
        errs: list[Rejected] = []
        if pl.DataFrame not in set(map(type, values)):  # rows only, the usual batch: one run
            cols, errs = extract(self.step_id, values, self.fields)
            if cols.keys:
                oks = with_columns(
                    cols.keys, cols.events, self.names, self._one_slot(cols.values, now)
                )
            return [(oks, errs)], not len(self.moments)
        run: list[Any] = []  # consecutive rows; a frame (per_key=False only) ends a run
        for item in [*values, None]:
            if item is not None and not isinstance(item, pl.DataFrame):
                run.append(item)
                continue
            if run:
                cols, bad = extract(self.step_id, run, self.fields)
                errs += bad
                if cols.keys:
                    scaled = self._one_slot(cols.values, now)
                    oks += with_columns(cols.keys, cols.events, self.names, scaled)
                run = []
            if item is not None and not self.frames:
                why = "a frame needs key= (the key column) to be scaled per key"
                errs.append(Rejected(self.step_id, "BadItem", why, item))
            elif item is not None and item.height:
                good, bad = numeric_rows(item, self.step_id, self.fields)
                errs += bad
                if good.height:
                    x = column_values(good, self.fields)
                    oks.append(attach(good, self.names, self._one_slot(x, now)))
        return [(oks, errs)], not len(self.moments)

    def _one_slot(self, x: np.ndarray, now: float) -> np.ndarray:
        """Rows of the state's one set of statistics (a row state's key, or the global one)."""
        return self.moments.update_one(x, now)

    def notify_at(self) -> datetime | None:
        due = self.moments.due(self.ttl)
        return None if due is None else datetime.fromtimestamp(due, tz=timezone.utc)

    def on_notify(self) -> tuple[list[Any], bool]:
        self.moments.expire(self.clock(), self.ttl)
        return [], not len(self.moments)

    def snapshot(self) -> dict[str, Any]:
        return snapshot(_SCALE_KIND, _SCALE_VERSION, {"path": self.path, **self.moments.data()})


@operator
@instrumented
def online_scale(
    step_id: str,
    up: Stream[pl.DataFrame] | KeyedStream[Mapping[str, Any]],
    *,
    fields: Sequence[str],
    key: str | None = None,
    per_key: bool = True,
    ttl: timedelta | None = timedelta(hours=1),
    suffix: str = "_scaled",
    shards: int = 8,
) -> FeaturesOut:
    """Standard-scale fields with running statistics learnt from the stream itself.

    Use it when no fitted scaler exists, or when each key (sensor, user) has
    its own normal range. Each row is scaled with the mean and population
    standard deviation of its key's rows so far, itself included, in
    arrival order — the same as fitting scikit-learn's ``StandardScaler``
    on them and transforming this row (a zero deviation scales by 1, so
    the first row gives 0.0).

    Frames: give ``key`` the key column; frames are routed to ``shards``
    states by it (:func:`~streamml.operators._core.keys.frame_sharder`:
    a missing, null or unusable key is ``BadKey``, a non-frame item
    ``BadItem``), and each output frame holds the rows of one shard with
    ``Float64`` columns ``{field}{suffix}``. Rows (``key=None``, the legacy
    path): a keyed stream of ``(key, event)``, one state per key. Bad
    values reject their row only (``MissingField``, ``NotANumber``,
    ``NonFinite``) and change no statistic.

    State: per key its count, mean and sum of squared deviations, snapshot
    as a versioned record (stores written by the previous release, which
    pickled a private class per key, are upgraded when read).

    Args:
        step_id: Unique ID.
        up: Frames (with ``key``), or a keyed stream of ``(key, event)``
            (``key=None``).
        fields: Numeric fields to scale.
        key: The key column of the frames; ``None`` for rows.
        per_key: One set of statistics per key; ``False`` keeps a single
            global set (one state: everything goes through one worker; a
            frame needs no key column then, and ``key`` must be ``None``).
        ttl: Forget a key's statistics after this much wall-clock time
            without rows (``None`` keeps them; only sensible when the keys
            are few). After a restore the TTL counts from the restart:
            downtime is not idleness.
        suffix: Output fields are ``{field}{suffix}``.
        shards: Number of state shards of the frame path (keys are spread
            over them by a stable hash).

    Returns:
        ``oks`` with the scaled fields added, and ``errs``.

    Examples:
        Frames, keyed by a column:

        >>> import bytewax.operators as op
        >>> import polars as pl
        >>> from bytewax.dataflow import Dataflow
        >>> from bytewax.testing import TestingSource, TestingSink, run_main
        >>> frame = pl.DataFrame({"id": ["a", "a", "b", "a"], "x": [1.0, 3.0, 100.0, float("nan")]})
        >>> flow = Dataflow("online_frames_doc")
        >>> out = online_scale("z", op.input("in", flow, TestingSource([frame])), fields=["x"],
        ...                    key="id")
        >>> oks, errs = [], []
        >>> op.output("oks", out.oks, TestingSink(oks))
        >>> op.output("errs", out.errs, TestingSink(errs))
        >>> run_main(flow)
        >>> pl.concat(oks).sort("id").rows(), [r.error_type for r in errs]
        ([('a', 1.0, 0.0), ('a', 3.0, 1.0), ('b', 100.0, 0.0)], ['NonFinite'])

        ``(key, event)`` rows:

        >>> events = [("a", {"x": 1.0}), ("a", {"x": 3.0}), ("b", {"x": 100.0})]
        >>> flow = Dataflow("online_doc")
        >>> out = online_scale("z", op.input("in", flow, TestingSource(events)), fields=["x"])
        >>> oks = []
        >>> op.output("oks", out.oks, TestingSink(oks))
        >>> run_main(flow)
        >>> sorted((k, e["x_scaled"]) for k, e in oks)
        [('a', 0.0), ('a', 1.0), ('b', 0.0)]
    """
    if not fields or isinstance(fields, str):
        raise ValueError(f"fields must be a non-empty list of field names; got {fields!r}")
    _validate.duration("ttl", ttl, minimum="any", optional=True)
    if ttl is not None and ttl <= timedelta(0):
        raise ValueError(f"ttl must be > 0 or None; got {ttl}")
    if shards < 1:
        raise ValueError(f"shards must be >= 1; got {shards}")
    if key is not None and not per_key:
        raise ValueError(
            "per_key=False keeps one global state and reads no key column: drop key=, "
            "or keep per_key=True"
        )
    if key is not None and not isinstance(key, str):
        raise ValueError(f"key names the frames' key column (e.g. key='sensor_id'); got {key!r}")
    names = [f + suffix for f in fields]
    field_t = tuple(fields)

    if key is not None:
        check = partial(numeric_rows, step_id=step_id, fields=field_t)
        mixed = op.flat_map_batch(
            "shard",
            up,
            frame_sharder(step_id, key=key, shards=shards, check=lambda f: check(f)),
        )
        split = op.branch("split", mixed, lambda item: isinstance(item, Rejected))
        chunks = op.stateful_batch(
            "state",
            split.falses,
            lambda resume: _OnlineScaleLogic(step_id, field_t, names, ttl, resume, key),
        )
        oks = op.flat_map("oks", chunks, lambda kc: kc[1][0])
        errs = op.flat_map("errs", chunks, lambda kc: kc[1][1])
        return FeaturesOut(oks, op.merge("all_errs", split.trues, errs))

    def build(resume: Any) -> _OnlineScaleLogic:
        return _OnlineScaleLogic(step_id, field_t, names, ttl, resume, frames=not per_key)

    def route(item: Any) -> tuple[str, Any]:
        """Key the state by the event's key (or one global key); keep the item whole."""
        if not per_key:
            return "global", item
        ok = isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], str)
        return (item[0] if ok else ""), item

    chunks = op.stateful_batch("state", op.map("route", up, route), build)
    oks = op.flat_map("oks", chunks, lambda kc: kc[1][0])
    errs = op.flat_map("errs", chunks, lambda kc: kc[1][1])
    return FeaturesOut(oks, errs)
