"""Feature transforms: scaling, one-hot, feature hashing, hashed text vectors.

Frames are the unit: an item that is a ``polars.DataFrame`` is checked and
transformed on its columns (polars expressions and NumPy; no Python per
row), and comes out as the same rows with the new columns; a bad row
becomes a :class:`~streamml.errors.Rejected` (the row as a dict) and the
rest of its frame goes on (see :mod:`._frame_rows` for the checks).
``(key, event)`` rows, the legacy path, go through the same computation:
each batch's fields are read into columns, computed on, and written into
new dicts. Both units may share a stream.

Stateless transforms (:func:`standard_scale`, :func:`one_hot`,
:func:`hash_features`, :func:`hash_text`) work on whole micro-batches with
``flat_map_batch``. :func:`online_scale` keeps running statistics per key
(frames: routed to shard states by the key column with
:func:`~streamml.operators._core.keys.frame_sharder`) or one global state.
Each matches scikit-learn where the semantics are the same:
``StandardScaler``, ``OneHotEncoder(handle_unknown="ignore")`` plus an
"other" column, ``FeatureHasher`` and ``HashingVectorizer`` (same hash,
same columns, same signs).
"""

from __future__ import annotations

import json
import math
import re
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
from streamml.operators._core.columns import values as column_values
from streamml.operators._core.keys import frame_sharder
from streamml.operators._core.state import restore, snapshot
from streamml.operators.featurize._batch import extract
from streamml.operators.featurize._frame_rows import dispatch, numeric_rows, string_rows
from streamml.operators.featurize._moments import Moments
from streamml.operators.featurize._murmur import murmurhash3_32_packed
from streamml.operators.featurize.outputs import FeaturesOut

from streamml.errors import Rejected

__all__ = [
    "ScalerParams",
    "hash_features",
    "hash_text",
    "one_hot",
    "online_scale",
    "standard_scale",
]


def _split(up: Stream[Any], mapper: Any) -> FeaturesOut:
    """Run a batch mapper returning ``(oks, errs)`` lists; fan the two out as streams."""
    chunks = op.flat_map_batch("batch", up, lambda b: [mapper(b)])
    oks = op.flat_map("oks", chunks, lambda c: c[0])
    errs = op.flat_map("errs", chunks, lambda c: c[1])
    return FeaturesOut(oks, errs)


def _with_columns(
    keys: list[str], events: list[Any], names: Sequence[str], columns: np.ndarray
) -> list[tuple[str, dict]]:
    """New events: each input event plus ``names`` set from the rows of ``columns``."""
    outputs = [dict(e) for e in events]
    for name, column in zip(names, columns.T.tolist()):
        for event, value in zip(outputs, column):
            event[name] = value
    return list(zip(keys, outputs))


def _attach(frame: pl.DataFrame, names: Sequence[str], columns: np.ndarray) -> pl.DataFrame:
    """``frame`` with ``names`` set (added or replaced) from the columns of ``columns``."""
    return frame.with_columns(pl.Series(name, columns[:, j]) for j, name in enumerate(names))


def _frames_out(frame: pl.DataFrame) -> list[pl.DataFrame]:
    """A result frame as a list of outputs: none when every row was rejected."""
    return [frame] if frame.height else []


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
        return [_attach(good, names, scaled(column_values(good, params.fields)))], errs

    def on_rows(batch: list[Any]) -> tuple[list, list]:
        cols, errs = extract(step_id, batch, params.fields)
        return _with_columns(cols.keys, cols.events, names, scaled(cols.values)), errs

    return _split(up, dispatch(on_frame, on_rows))


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
                oks.append(_attach(frame, self.names, self.moments.update(kid, x, now)))
            return [(oks, [])], False
        oks: list[Any] = []
        errs: list[Rejected] = []
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
                    oks += _with_columns(cols.keys, cols.events, self.names, scaled)
                run = []
            if item is not None and not self.frames:
                why = "a frame needs key= (the key column) to be scaled per key"
                errs.append(Rejected(self.step_id, "BadItem", why, item))
            elif item is not None and item.height:
                good, bad = numeric_rows(item, self.step_id, self.fields)
                errs += bad
                if good.height:
                    x = column_values(good, self.fields)
                    oks.append(_attach(good, self.names, self._one_slot(x, now)))
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


# -- one-hot ----------------------------------------------------------------------


def _category_positions(col: pl.Series, cats: list[Any], unknown: int) -> np.ndarray:
    """Each value's place in ``cats`` (``unknown`` if none), comparing like with like: text with
    text categories, numbers with numeric ones (``1 == 1.0``), booleans with booleans."""
    dtype = col.dtype
    if dtype == pl.String or isinstance(dtype, (pl.Categorical, pl.Enum)):
        like = [(c, i) for i, c in enumerate(cats) if isinstance(c, str)]
        col = col.cast(pl.String)
    elif dtype == pl.Boolean:
        like = [(c, i) for i, c in enumerate(cats) if isinstance(c, bool)]
    elif dtype.is_numeric():
        like = [
            (c, i)
            for i, c in enumerate(cats)
            if isinstance(c, (int, float)) and not isinstance(c, bool)
        ]
        col = col.cast(pl.Float64)
        like = [(float(c), i) for c, i in like]
    else:
        like = []
    if not like:
        return np.full(len(col), unknown, dtype=np.int64)
    old, new = zip(*like)
    found = col.replace_strict(list(old), list(new), default=unknown, return_dtype=pl.Int64)
    return found.to_numpy()


@operator
def one_hot(
    step_id: str,
    up: Stream[pl.DataFrame] | KeyedStream[Mapping[str, Any]],
    *,
    field: str,
    categories: Sequence[Any],
    other: bool = True,
) -> FeaturesOut:
    """One-hot encode a categorical field over a fixed vocabulary, with an "other" bucket.

    Adds ``{field}_{category}`` (1.0 or 0.0; ``Float64`` columns of a
    frame) for each category in order, and ``{field}_other``, 1.0 when the
    value is not in the vocabulary. With ``other=False`` an unknown value
    is an error instead (``UnknownCategory``). A missing field is an error
    (``MissingField``; in a frame, a null value too — a row's ``None``
    counts as an unknown value). The category columns equal scikit-learn's
    ``OneHotEncoder(categories=[categories], handle_unknown="ignore")``.

    Examples:
        A frame:

        >>> import bytewax.operators as op
        >>> import polars as pl
        >>> from bytewax.dataflow import Dataflow
        >>> from bytewax.testing import TestingSource, TestingSink, run_main
        >>> frame = pl.DataFrame({"os": ["ios", "beos", None]})
        >>> flow = Dataflow("onehot_frames_doc")
        >>> out = one_hot("os", op.input("in", flow, TestingSource([frame])), field="os",
        ...               categories=["android", "ios"])
        >>> oks, errs = [], []
        >>> op.output("oks", out.oks, TestingSink(oks))
        >>> op.output("errs", out.errs, TestingSink(errs))
        >>> run_main(flow)
        >>> oks[0].rows(), [r.error_type for r in errs]
        ([('ios', 0.0, 1.0, 0.0), ('beos', 0.0, 0.0, 1.0)], ['MissingField'])

        ``(key, event)`` rows:

        >>> events = [("u", {"os": "ios"}), ("u", {"os": "beos"})]
        >>> flow = Dataflow("onehot_doc")
        >>> out = one_hot("os", op.input("in", flow, TestingSource(events)), field="os",
        ...               categories=["android", "ios"])
        >>> oks = []
        >>> op.output("oks", out.oks, TestingSink(oks))
        >>> run_main(flow)
        >>> [(e["os_android"], e["os_ios"], e["os_other"]) for _, e in oks]
        [(0.0, 1.0, 0.0), (0.0, 0.0, 1.0)]
    """
    cats = list(categories)
    if len(set(cats)) != len(cats) or not cats:
        raise ValueError(f"categories must be non-empty and distinct; got {cats}")
    index = {c: i for i, c in enumerate(cats)}
    names = [f"{field}_{c}" for c in cats] + ([f"{field}_other"] if other else [])
    unknown = len(cats)

    def matrix(pos: np.ndarray) -> np.ndarray:
        out = np.zeros((len(pos), len(names)))
        out[np.arange(len(pos)), pos] = 1.0
        return out

    def unknown_reason(value: Any) -> str:
        return f"{field}={value!r} is not one of the {len(cats)} categories"

    def on_frame(frame: pl.DataFrame) -> tuple[list, list]:
        if field not in frame.columns:
            why = f"field {field!r} is missing"
            return [], [Rejected(step_id, "MissingField", why, r) for r in frame.to_dicts()]
        col = frame.get_column(field)
        missing = col.is_null().to_numpy() if col.null_count() else np.zeros(len(col), bool)
        pos = _category_positions(col, cats, unknown)
        bad = missing | ((pos == unknown) & (not other))
        errs = []
        for i in np.flatnonzero(bad).tolist():
            row = frame.row(i, named=True)
            if missing[i]:
                errs.append(Rejected(step_id, "MissingField", f"field {field!r} is null", row))
            else:
                errs.append(Rejected(step_id, "UnknownCategory", unknown_reason(row[field]), row))
        if bad.any():
            frame, pos = frame.filter(pl.Series(~bad)), pos[~bad]
        return _frames_out(_attach(frame, names, matrix(pos))), errs

    def on_rows(batch: list[Any]) -> tuple[list, list]:
        keys, events, rows, errs = [], [], [], []
        for item in batch:
            try:
                key, event = item
                value = event[field]
            except (KeyError, TypeError, ValueError):
                errs.append(Rejected(step_id, "MissingField", f"field {field!r} is missing", item))
                continue
            try:
                pos = index.get(value, unknown)
            except TypeError:  # unhashable
                pos = unknown
            if pos == unknown and not other:
                errs.append(Rejected(step_id, "UnknownCategory", unknown_reason(value), item))
                continue
            keys.append(key)
            events.append(event)
            rows.append(pos)
        return _with_columns(keys, events, names, matrix(np.array(rows, dtype=np.int64))), errs

    return _split(up, dispatch(on_frame, on_rows))


# -- hashing ----------------------------------------------------------------------


def _hash_tokens(
    tokens: pl.Series, rows: np.ndarray, n: int, features: int, signed: bool
) -> np.ndarray:
    """A float64 ``(n, features)`` matrix: each token (a ``String`` series) hashed into row
    ``rows[i]`` with scikit-learn's MurmurHash3 (bytes read packed: no Python object per token)."""
    matrix = np.zeros((n, features), dtype=np.float64)
    if len(tokens):
        lengths = tokens.str.len_bytes().to_numpy().astype(np.int64)
        joined = tokens.str.join("").item() if len(tokens) > 1 else tokens.item()
        flat = np.frombuffer(joined.encode("utf-8"), dtype=np.uint8)
        h = murmurhash3_32_packed(flat, lengths).astype(np.int64)
        cols = np.abs(h) % features
        vals = np.where(h < 0, -1.0, 1.0) if signed else np.ones(len(h))
        np.add.at(matrix, (rows, cols), vals)
    return matrix


def _field_tokens(columns: Sequence[pl.Series], fields: Sequence[str]) -> pl.Series:
    """``"{field}={value}"`` of every row and field, row after row."""
    frame = pl.DataFrame([col.cast(pl.String).alias(str(j)) for j, col in enumerate(columns)])
    tokens = frame.select(
        pl.concat_list(
            [pl.concat_str([pl.lit(f"{name}="), pl.col(str(j))]) for j, name in enumerate(fields)]
        )
    )
    return tokens.to_series().explode()


@operator
def hash_features(
    step_id: str,
    up: Stream[pl.DataFrame] | KeyedStream[Mapping[str, Any]],
    *,
    fields: Sequence[str],
    n_features: int = 1024,
    alternate_sign: bool = True,
    output: str = "hashed",
) -> FeaturesOut:
    """Hash high-cardinality string fields into a fixed-width float32 vector.

    Each field's value ``v`` becomes the token ``"{field}={v}"`` hashed into
    one of ``n_features`` columns (with a hash-derived sign when
    ``alternate_sign``) — the same as scikit-learn's
    ``FeatureHasher(n_features, input_type="dict")`` on ``{field: v}``. A
    missing field (in a frame, or null) is ``MissingField``; one that is
    not a ``str`` (a frame column that is not text) is ``NotAString``.

    Returns:
        ``oks`` with ``output`` set to a float32 array of ``n_features``
        (frames: a ``pl.Array(pl.Float32, n_features)`` column), and ``errs``.

    Examples:
        >>> import bytewax.operators as op
        >>> import polars as pl
        >>> from bytewax.dataflow import Dataflow
        >>> from bytewax.testing import TestingSource, TestingSink, run_main
        >>> frame = pl.DataFrame({"merchant": ["acme", None], "city": ["oslo", "rome"]})
        >>> flow = Dataflow("hash_frames_doc")
        >>> out = hash_features("h", op.input("in", flow, TestingSource([frame])),
        ...                     fields=["merchant", "city"], n_features=8)
        >>> oks, errs = [], []
        >>> op.output("oks", out.oks, TestingSink(oks))
        >>> op.output("errs", out.errs, TestingSink(errs))
        >>> run_main(flow)
        >>> oks[0]["hashed"].to_list(), [r.error_type for r in errs]
        ([[0.0, 1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0]], ['MissingField'])

        ``(key, event)`` rows:

        >>> events = [("t", {"merchant": "acme", "city": "oslo"})]
        >>> flow = Dataflow("hash_doc")
        >>> out = hash_features("h", op.input("in", flow, TestingSource(events)),
        ...                     fields=["merchant", "city"], n_features=8)
        >>> oks = []
        >>> op.output("oks", out.oks, TestingSink(oks))
        >>> run_main(flow)
        >>> oks[0][1]["hashed"]
        array([0., 1., 0., 0., 0., 1., 0., 0.], dtype=float32)
    """
    if n_features < 1:
        raise ValueError(f"n_features must be >= 1; got {n_features}")
    if not fields or isinstance(fields, str):
        raise ValueError(f"fields must be a non-empty list of field names; got {fields!r}")
    fields = list(fields)

    def vectors(columns: Sequence[pl.Series], n: int) -> np.ndarray:
        tokens = _field_tokens(columns, fields)
        rows = np.repeat(np.arange(n), len(fields))
        return _hash_tokens(tokens, rows, n, n_features, alternate_sign).astype(np.float32)

    def on_frame(frame: pl.DataFrame) -> tuple[list, list]:
        good, errs = string_rows(frame, step_id, fields)
        if not good.height:
            return [], errs
        matrix = vectors([good.get_column(f) for f in fields], good.height)
        return [good.with_columns(pl.Series(output, matrix))], errs

    def on_rows(batch: list[Any]) -> tuple[list, list]:
        oks_items, columns, errs = [], [[] for _ in fields], []
        for item in batch:
            try:
                key, event = item
                values = [event[f] for f in fields]
            except (KeyError, TypeError, ValueError):
                errs.append(Rejected(step_id, "MissingField", f"one of {fields} is missing", item))
                continue
            if not all(isinstance(v, str) for v in values):
                bad = next(f for f, v in zip(fields, values) if not isinstance(v, str))
                reason = f"field {bad!r} must be a str to hash"
                errs.append(Rejected(step_id, "NotAString", reason, item))
                continue
            oks_items.append((key, event))
            for column, v in zip(columns, values):
                column.append(v)
        if not oks_items:
            return [], errs
        series = [pl.Series(column, dtype=pl.String) for column in columns]
        matrix = vectors(series, len(oks_items))
        return [(k, {**e, output: v}) for (k, e), v in zip(oks_items, matrix)], errs

    return _split(up, dispatch(on_frame, on_rows))


_TOKEN = r"(?u)\b\w\w+\b"


class _Grams:
    """Texts to word n-grams: polars' Rust regex on whole columns where it matches Python's ``re``
    exactly (the default ``token_pattern`` on ASCII text), Python's ``re`` on the other texts."""

    def __init__(self, token_pattern: str, lowercase: bool, lo: int, hi: int) -> None:
        self.pattern = token_pattern
        self.findall = re.compile(token_pattern).findall
        self.lowercase, self.lo, self.hi = lowercase, lo, hi
        self.columnar = token_pattern == _TOKEN

    def _python(self, text: str) -> list[str]:
        words = self.findall(text.lower() if self.lowercase else text)
        if self.lo == self.hi == 1:
            return words
        found = []
        for n in range(self.lo, self.hi + 1):
            found.extend(" ".join(words[i : i + n]) for i in range(len(words) - n + 1))
        return found

    def __call__(self, texts: pl.Series) -> tuple[pl.Series, np.ndarray]:
        """Every n-gram of every text (a ``String`` series without nulls), and each one's row."""
        n = len(texts)
        if self.columnar:
            fast = texts.str.contains(r"^[\x00-\x7F]*$").to_numpy()
        else:
            fast = np.zeros(n, dtype=bool)
        tokens: list[pl.Series] = []
        rows: list[np.ndarray] = []
        at = np.flatnonzero(fast)
        if len(at):
            part = texts if len(at) == n else texts.gather(at)
            if self.lowercase:
                part = part.str.to_lowercase()
            lists = part.str.extract_all(self.pattern)
            lens = lists.list.len().fill_null(0).to_numpy().astype(np.int64)
            words = lists.explode().drop_nulls()
            word_rows = np.repeat(at, lens)
            for size in range(self.lo, self.hi + 1):
                if size == 1:
                    tokens.append(words)
                    rows.append(word_rows)
                    continue
                if len(words) < size:
                    continue
                span = len(words) - size + 1
                same = word_rows[size - 1 :] == word_rows[:span]  # rows are grouped in order
                grams = pl.DataFrame({"w": words}).select(
                    pl.concat_str([pl.col("w").shift(-j) for j in range(size)], separator=" ")
                )
                keep = np.flatnonzero(same)
                tokens.append(grams.to_series().slice(0, span).gather(keep))
                rows.append(word_rows[:span][keep])
        slow = np.flatnonzero(~fast)
        if len(slow):
            found = [self._python(t) for t in texts.gather(slow).to_list()]
            tokens.append(pl.Series([g for grams in found for g in grams], dtype=pl.String))
            rows.append(np.repeat(slow, [len(g) for g in found]).astype(np.int64))
        if not tokens:
            return pl.Series([], dtype=pl.String), np.zeros(0, dtype=np.int64)
        return pl.concat(tokens), np.concatenate(rows)


@operator
def hash_text(
    step_id: str,
    up: Stream[pl.DataFrame] | KeyedStream[Mapping[str, Any]],
    *,
    field: str,
    n_features: int = 1024,
    ngram_range: tuple[int, int] = (1, 1),
    lowercase: bool = True,
    token_pattern: str = _TOKEN,
    alternate_sign: bool = True,
    norm: str | None = "l2",
    output: str | None = None,
) -> FeaturesOut:
    """Turn a short text into a hashed bag of words (and n-grams): a float32 vector.

    For posts, reviews, log lines: lower-case, split into tokens with
    ``token_pattern``, form word n-grams, hash each into one of
    ``n_features`` columns with a signed count, then scale rows to unit
    ``norm`` (``"l2"``, ``"l1"`` or ``None``). Equal to scikit-learn's
    ``HashingVectorizer`` with the same arguments (its defaults are these,
    except ``n_features=2**20``). A missing field (in a frame, or null) is
    ``MissingField``, a non-``str`` one (a frame column that is not text)
    ``NotAString``; an empty text gives a zero vector.

    Speed: with the default ``token_pattern``, ASCII texts are split by
    polars on the whole column (its regex agrees with Python's there);
    other texts, and any other pattern, by Python's ``re``, a call per text.

    Returns:
        ``oks`` with ``output`` (default ``{field}_hashed``) set to a float32
        array of ``n_features`` (frames: a ``pl.Array(pl.Float32,
        n_features)`` column), and ``errs``.

    Examples:
        >>> import bytewax.operators as op
        >>> import polars as pl
        >>> from bytewax.dataflow import Dataflow
        >>> from bytewax.testing import TestingSource, TestingSink, run_main
        >>> frame = pl.DataFrame({"id": [1, 2], "text": ["Great great product", None]})
        >>> flow = Dataflow("text_frames_doc")
        >>> out = hash_text("bow", op.input("in", flow, TestingSource([frame])), field="text",
        ...                 n_features=8)
        >>> oks, errs = [], []
        >>> op.output("oks", out.oks, TestingSink(oks))
        >>> op.output("errs", out.errs, TestingSink(errs))
        >>> run_main(flow)
        >>> [round(v, 3) for v in oks[0]["text_hashed"][0]], [r.error_type for r in errs]
        ([0.0, 0.0, -0.447, 0.0, 0.894, 0.0, 0.0, 0.0], ['MissingField'])

        ``(key, event)`` rows:

        >>> posts = [("p1", {"text": "Great great product"}), ("p2", {"text": 42})]
        >>> flow = Dataflow("text_doc")
        >>> out = hash_text("bow", op.input("in", flow, TestingSource(posts)), field="text",
        ...                 n_features=8)
        >>> oks, errs = [], []
        >>> op.output("oks", out.oks, TestingSink(oks))
        >>> op.output("errs", out.errs, TestingSink(errs))
        >>> run_main(flow)
        >>> [round(v, 3) for v in oks[0][1]["text_hashed"].tolist()], [r.error_type for r in errs]
        ([0.0, 0.0, -0.447, 0.0, 0.894, 0.0, 0.0, 0.0], ['NotAString'])
    """
    lo, hi = ngram_range
    if not 1 <= lo <= hi:
        raise ValueError(f"ngram_range must be (min, max) with 1 <= min <= max; got {ngram_range}")
    if n_features < 1:
        raise ValueError(f"n_features must be >= 1; got {n_features}")
    if norm not in ("l2", "l1", None):
        raise ValueError(f"norm must be 'l2', 'l1' or None; got {norm!r}")
    grams = _Grams(token_pattern, lowercase, lo, hi)
    out_name = output or f"{field}_hashed"

    def vectors(texts: pl.Series) -> np.ndarray:
        tokens, rows = grams(texts)
        matrix = _hash_tokens(tokens, rows, len(texts), n_features, alternate_sign)
        if norm is not None:
            size = np.abs(matrix).sum(1) if norm == "l1" else np.sqrt((matrix * matrix).sum(1))
            matrix /= np.where(size > 0, size, 1.0)[:, None]
        return matrix.astype(np.float32)

    def on_frame(frame: pl.DataFrame) -> tuple[list, list]:
        good, errs = string_rows(frame, step_id, [field])
        if not good.height:
            return [], errs
        matrix = vectors(good.get_column(field).cast(pl.String))
        return [good.with_columns(pl.Series(out_name, matrix))], errs

    def on_rows(batch: list[Any]) -> tuple[list, list]:
        oks_items, texts, errs = [], [], []
        for item in batch:
            try:
                key, event = item
                text = event[field]
            except (KeyError, TypeError, ValueError):
                errs.append(Rejected(step_id, "MissingField", f"field {field!r} is missing", item))
                continue
            if not isinstance(text, str):
                reason = f"field {field!r} is {type(text).__name__}, not a str"
                errs.append(Rejected(step_id, "NotAString", reason, item))
                continue
            texts.append(text)
            oks_items.append((key, event))
        if not oks_items:
            return [], errs
        matrix = vectors(pl.Series(texts, dtype=pl.String))
        return [(k, {**e, out_name: v}) for (k, e), v in zip(oks_items, matrix)], errs

    return _split(up, dispatch(on_frame, on_rows))
