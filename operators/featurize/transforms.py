"""Feature transforms: scaling, one-hot, feature hashing, hashed text vectors.

Stateless transforms (:func:`standard_scale`, :func:`one_hot`,
:func:`hash_features`, :func:`hash_text`) work on whole micro-batches with
``flat_map_batch``. :func:`online_scale` keeps running statistics per key (or
one global state). Each matches scikit-learn where the semantics are the
same: ``StandardScaler``, ``OneHotEncoder(handle_unknown="ignore")`` plus an
"other" column, ``FeatureHasher`` and ``HashingVectorizer`` (same hash, same
columns, same signs).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import bytewax.operators as op
import numpy as np
from bytewax.dataflow import operator
from bytewax.operators import KeyedStream, StatefulBatchLogic
from streamml.operators.featurize._batch import extract
from streamml.operators.featurize._murmur import murmurhash3_32
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


def _split(up: KeyedStream[Any], mapper: Any) -> FeaturesOut:
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
    up: KeyedStream[Mapping[str, Any]],
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
        up: Keyed stream of ``(key, event)``.
        params: The fields and their mean and scale.
        suffix: Output fields are ``{field}{suffix}``; ``""`` overwrites the field.

    Returns:
        ``oks`` with the scaled fields added; ``errs``: events with a missing,
        non-numeric or non-finite field (see :mod:`._batch`).

    Examples:
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

    def mapper(batch: list[Any]) -> tuple[list, list]:
        cols, errs = extract(step_id, batch, params.fields)
        return _with_columns(cols.keys, cols.events, names, (cols.values - mean) / scale), errs

    return _split(up, mapper)


# -- online scaling -------------------------------------------------------------


@dataclass(frozen=True)
class _Moments:
    """Running count, mean and sum of squared deviations (Welford), per field."""

    n: int
    mean: tuple[float, ...]
    m2: tuple[float, ...]
    seen: datetime  # wall clock of the last event, for the TTL


class _OnlineScaleLogic(StatefulBatchLogic):
    """Welford statistics of one key; discarded after ``ttl`` of wall-clock idleness."""

    def __init__(
        self,
        step_id: str,
        fields: tuple[str, ...],
        names: list[str],
        ttl: timedelta | None,
        resume: _Moments | None,
    ) -> None:
        self.step_id, self.fields, self.names, self.ttl = step_id, fields, names, ttl
        nf = len(fields)
        self.n = resume.n if resume else 0
        self.mean = list(resume.mean) if resume else [0.0] * nf
        self.m2 = list(resume.m2) if resume else [0.0] * nf
        self.seen = resume.seen if resume else datetime.now(timezone.utc)

    def on_batch(self, values: list[Any]) -> tuple[list[Any], bool]:
        self.seen = datetime.now(timezone.utc)
        cols, errs = extract(self.step_id, values, self.fields)
        scaled = np.empty_like(cols.values)
        n, mean, m2 = self.n, self.mean, self.m2
        for i, row in enumerate(cols.values.tolist()):
            n += 1
            for j, x in enumerate(row):
                d = x - mean[j]
                mean[j] += d / n
                m2[j] += d * (x - mean[j])
                std = math.sqrt(m2[j] / n)
                scaled[i, j] = (x - mean[j]) / (std if std > 0 else 1.0)
        self.n = n
        oks = _with_columns(cols.keys, cols.events, self.names, scaled)
        return [(oks, errs)], False

    def notify_at(self) -> datetime | None:
        return self.seen + self.ttl if self.ttl is not None else None

    def on_notify(self) -> tuple[list[Any], bool]:
        return [], True

    def snapshot(self) -> _Moments:
        return _Moments(self.n, tuple(self.mean), tuple(self.m2), self.seen)


@operator
def online_scale(
    step_id: str,
    up: KeyedStream[Mapping[str, Any]],
    *,
    fields: Sequence[str],
    per_key: bool = True,
    ttl: timedelta | None = timedelta(hours=1),
    suffix: str = "_scaled",
) -> FeaturesOut:
    """Standard-scale fields with running statistics learnt from the stream itself.

    Use it when no fitted scaler exists, or when each key (sensor, user) has
    its own normal range. Each event is scaled with the mean and population
    standard deviation of its key's events so far, itself included — the
    same as fitting scikit-learn's ``StandardScaler`` on them and
    transforming this event (a zero deviation scales by 1, so the first
    event gives 0.0).

    Args:
        step_id: Unique ID.
        up: Keyed stream of ``(key, event)``.
        fields: Numeric fields to scale.
        per_key: One set of statistics per key; ``False`` keeps a single
            global set (one state: all events go through one worker).
        ttl: Forget a key's statistics after this much wall-clock time
            without events (``None`` keeps them; only sensible when the keys
            are few).
        suffix: Output fields are ``{field}{suffix}``.

    Returns:
        ``oks`` with the scaled fields added, and ``errs``.

    Examples:
        >>> import bytewax.operators as op
        >>> from bytewax.dataflow import Dataflow
        >>> from bytewax.testing import TestingSource, TestingSink, run_main
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
    names = [f + suffix for f in fields]
    field_t = tuple(fields)

    def build(resume: _Moments | None) -> _OnlineScaleLogic:
        return _OnlineScaleLogic(step_id, field_t, names, ttl, resume)

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


@operator
def one_hot(
    step_id: str,
    up: KeyedStream[Mapping[str, Any]],
    *,
    field: str,
    categories: Sequence[Any],
    other: bool = True,
) -> FeaturesOut:
    """One-hot encode a categorical field over a fixed vocabulary, with an "other" bucket.

    Adds ``{field}_{category}`` (1.0 or 0.0) for each category in order, and
    ``{field}_other``, 1.0 when the value is not in the vocabulary. With
    ``other=False`` an unknown value is an error instead (``UnknownCategory``).
    A missing field is an error (``MissingField``). The category columns
    equal scikit-learn's ``OneHotEncoder(categories=[categories],
    handle_unknown="ignore")``.

    Examples:
        >>> import bytewax.operators as op
        >>> from bytewax.dataflow import Dataflow
        >>> from bytewax.testing import TestingSource, TestingSink, run_main
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

    def mapper(batch: list[Any]) -> tuple[list, list]:
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
                reason = f"{field}={value!r} is not one of the {len(cats)} categories"
                errs.append(Rejected(step_id, "UnknownCategory", reason, item))
                continue
            keys.append(key)
            events.append(event)
            rows.append(pos)
        matrix = np.zeros((len(rows), len(names)))
        matrix[np.arange(len(rows)), np.array(rows, dtype=np.int64)] = 1.0
        return _with_columns(keys, events, names, matrix), errs

    return _split(up, mapper)


# -- hashing ----------------------------------------------------------------------


def _hash_into(tokens: list[str], rows: list[int], n: int, features: int, signed: bool):
    matrix = np.zeros((n, features), dtype=np.float64)
    if tokens:
        h = murmurhash3_32([t.encode("utf-8") for t in tokens]).astype(np.int64)
        cols = np.abs(h) % features
        vals = np.where(h < 0, -1.0, 1.0) if signed else np.ones(len(h))
        np.add.at(matrix, (np.array(rows, dtype=np.int64), cols), vals)
    return matrix


@operator
def hash_features(
    step_id: str,
    up: KeyedStream[Mapping[str, Any]],
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
    missing field, or one that is not a ``str``, is an error.

    Returns:
        ``oks`` with ``output`` set to a float32 array of ``n_features``, and ``errs``.

    Examples:
        >>> import bytewax.operators as op
        >>> from bytewax.dataflow import Dataflow
        >>> from bytewax.testing import TestingSource, TestingSink, run_main
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

    def mapper(batch: list[Any]) -> tuple[list, list]:
        oks_items, tokens, rows, errs = [], [], [], []
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
            row = len(oks_items)
            oks_items.append((key, event))
            tokens.extend(f"{f}={v}" for f, v in zip(fields, values))
            rows.extend([row] * len(values))
        matrix = _hash_into(tokens, rows, len(oks_items), n_features, alternate_sign)
        vectors = matrix.astype(np.float32)
        oks = [(k, {**e, output: v}) for (k, e), v in zip(oks_items, vectors)]
        return oks, errs

    return _split(up, mapper)


_TOKEN = r"(?u)\b\w\w+\b"


@operator
def hash_text(
    step_id: str,
    up: KeyedStream[Mapping[str, Any]],
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
    except ``n_features=2**20``). A missing or non-``str`` field is an error;
    an empty text gives a zero vector.

    Returns:
        ``oks`` with ``output`` (default ``{field}_hashed``) set to a float32
        array of ``n_features``, and ``errs``.

    Examples:
        >>> import bytewax.operators as op
        >>> from bytewax.dataflow import Dataflow
        >>> from bytewax.testing import TestingSource, TestingSink, run_main
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
    tokenize = re.compile(token_pattern).findall
    out_name = output or f"{field}_hashed"

    def grams(text: str) -> list[str]:
        words = tokenize(text.lower() if lowercase else text)
        if lo == hi == 1:
            return words
        found = []
        for n in range(lo, hi + 1):
            found.extend(" ".join(words[i : i + n]) for i in range(len(words) - n + 1))
        return found

    def mapper(batch: list[Any]) -> tuple[list, list]:
        oks_items, tokens, rows, errs = [], [], [], []
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
            found = grams(text)
            rows.extend([len(oks_items)] * len(found))
            tokens.extend(found)
            oks_items.append((key, event))
        matrix = _hash_into(tokens, rows, len(oks_items), n_features, alternate_sign)
        if norm is not None:
            size = np.abs(matrix).sum(1) if norm == "l1" else np.sqrt((matrix * matrix).sum(1))
            matrix /= np.where(size > 0, size, 1.0)[:, None]
        vectors = matrix.astype(np.float32)
        oks = [(k, {**e, out_name: v}) for (k, e), v in zip(oks_items, vectors)]
        return oks, errs

    return _split(up, mapper)
