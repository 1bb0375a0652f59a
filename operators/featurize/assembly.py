"""Vector assembly: named features into the exact float vector layout a model was trained with."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import bytewax.operators as op
import numpy as np
import polars as pl
from bytewax.dataflow import Stream, operator
from bytewax.operators import KeyedStream
from streamml.operators.featurize._frame_rows import dispatch
from streamml.operators.featurize.outputs import FeaturesOut

from streamml.errors import Rejected
from streamml.metrics import instrumented

__all__ = ["Feature", "FeatureSchema", "assemble"]

_DTYPES = {"float32": np.float32, "float64": np.float64}


@dataclass(frozen=True)
class Feature:
    """One named input of a model.

    Attributes:
        name: The event field holding it.
        default: The value used for a missing or non-finite feature when the
            assembly fills defaults; ``None``: never filled (always an error).
        width: 1 for a number; ``n`` for a field holding a length-``n``
            array or sequence (e.g. a hashed text vector).
    """

    name: str
    default: float | None = 0.0
    width: int = 1


@dataclass(frozen=True)
class FeatureSchema:
    """Names, order, dtype and defaults of a model's input vector.

    Examples:
        >>> schema = FeatureSchema([Feature("temp_mean_60s"), Feature("temp_std_60s", default=1.0)])
        >>> schema.names, schema.width
        (['temp_mean_60s', 'temp_std_60s'], 2)
        >>> FeatureSchema.from_dict(schema.to_dict()) == schema
        True
    """

    features: Sequence[Feature]
    dtype: Literal["float32", "float64"] = "float32"

    def __post_init__(self) -> None:
        object.__setattr__(self, "features", tuple(self.features))
        names = [f.name for f in self.features]
        if not names:
            raise ValueError("a FeatureSchema needs at least one Feature")
        if len(set(names)) != len(names):
            raise ValueError(f"feature names must be distinct; got {names}")
        if self.dtype not in _DTYPES:
            raise ValueError(f"dtype must be 'float32' or 'float64'; got {self.dtype!r}")
        for f in self.features:
            if f.width < 1:
                raise ValueError(f"feature {f.name!r}: width must be >= 1; got {f.width}")
            if f.default is not None and not math.isfinite(f.default):
                raise ValueError(f"feature {f.name!r}: default must be finite or None")

    @property
    def names(self) -> list[str]:
        """Feature names in vector order."""
        return [f.name for f in self.features]

    @property
    def width(self) -> int:
        """Length of the assembled vector."""
        return sum(f.width for f in self.features)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able description (see :meth:`from_dict`)."""
        return {
            "dtype": self.dtype,
            "features": [
                {"name": f.name, "default": f.default, "width": f.width} for f in self.features
            ],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FeatureSchema:
        """From ``{"dtype": ..., "features": [{"name", "default", "width"}, ...]}``."""
        return cls(
            [
                Feature(f["name"], f.get("default", 0.0), f.get("width", 1))
                for f in data["features"]
            ],
            data.get("dtype", "float32"),
        )

    @classmethod
    def from_json(cls, path: str | Path) -> FeatureSchema:
        """Read a schema written by :meth:`to_json`."""
        return cls.from_dict(json.loads(Path(path).read_text()))

    def to_json(self, path: str | Path) -> None:
        """Write the schema as JSON, to keep next to the model file."""
        Path(path).write_text(json.dumps(self.to_dict(), indent=2))


_MISSING = object()


def _column(events: list[Any], feature: Feature, limit: float) -> tuple[np.ndarray, np.ndarray]:
    """The feature's values as a float array, and per event why it is invalid (or None)."""
    n, w = len(events), feature.width
    out = np.full((n, w), np.nan)
    problems: list[str | None] = [None] * n
    name = feature.name
    raw = [e.get(name, _MISSING) for e in events]
    fast = w == 1 and set(map(type, raw)) <= {float, int}
    if fast:
        try:
            out[:, 0] = raw
        except OverflowError:  # an int too large for float64
            fast = False
    if not fast:
        for i, v in enumerate(raw):
            if v is _MISSING:
                problems[i] = f"{name} is missing"
                continue
            try:
                if v is None or isinstance(v, (str, bytes)):
                    raise TypeError
                arr = np.asarray(v, dtype=np.float64).reshape(-1)
            except (TypeError, ValueError, OverflowError):
                problems[i] = f"{name} is {type(v).__name__}, not a number"
                continue
            if arr.shape != (w,):
                problems[i] = f"{name} has shape {arr.shape}, expected ({w},)"
                continue
            out[i] = arr
    why = np.array(problems, dtype=object)
    _checked(out, why, name, limit)
    return out, why


def _checked(out: np.ndarray, problems: np.ndarray, name: str, limit: float) -> None:
    """Mark rows not finite, or too large for the dtype, where no problem was found yet."""
    bad = ~np.isfinite(out).all(axis=1)
    too_big = ~bad & (np.abs(np.where(bad[:, None], 0.0, out)) > limit).any(axis=1)
    fresh = problems == None  # noqa: E711 - elementwise on an object array
    problems[bad & fresh] = f"{name} is not finite"
    problems[too_big & fresh] = f"{name} overflows the dtype"


def _frame_column(
    frame: pl.DataFrame, feature: Feature, limit: float
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`_column` of a frame: the feature's column as a float ``(n, width)`` array, and per
    row why it is invalid (``None`` if valid), on whole columns."""
    n, w, name = frame.height, feature.width, feature.name
    out = np.full((n, w), np.nan)
    problems = np.full(n, None, dtype=object)
    if name not in frame.columns or frame.schema[name] == pl.Null:
        problems[:] = f"{name} is missing"
        return out, problems
    col = frame.get_column(name)
    dtype = col.dtype
    nested = isinstance(dtype, (pl.List, pl.Array))
    inner = dtype.inner if nested else dtype
    if not (inner.is_numeric() or inner == pl.Boolean):
        problems[:] = f"{name} is {dtype}, not a number"
        return out, problems
    missing = col.is_null().to_numpy() if col.null_count() else np.zeros(n, dtype=bool)
    problems[missing] = f"{name} is missing"
    if not nested:
        if w != 1:
            problems[~missing] = f"{name} has shape (1,), expected ({w},)"
            return out, problems
        out[:, 0] = col.cast(pl.Float64).fill_null(np.nan).to_numpy()
    else:
        lens = col.list.len().fill_null(0).to_numpy() if isinstance(dtype, pl.List) else None
        if lens is None:
            lens = np.where(missing, 0, dtype.size)
        wrong = ~missing & (lens != w)
        for i in np.flatnonzero(wrong).tolist():
            problems[i] = f"{name} has shape ({int(lens[i])},), expected ({w},)"
        good = ~missing & ~wrong
        if good.any():
            flat = col.filter(pl.Series(good)).explode().cast(pl.Float64).fill_null(np.nan)
            out[good] = flat.to_numpy().reshape(-1, w)
    _checked(out, problems, name, limit)
    return out, problems


def _assemble(
    columns: list[tuple[np.ndarray, np.ndarray]],
    schema: FeatureSchema,
    fill: bool,
    dtype: Any,
) -> tuple[np.ndarray, list[list[str]], np.ndarray]:
    """The vectors of rows with each feature's ``(values, problems)``: each invalid value filled
    with its feature's default (``fill``, when it has one) or the row rejected. Returns the
    matrix, every row's unfilled problems, and the mask of rejected rows."""
    n = len(columns[0][0]) if columns else 0
    problems: list[list[str]] = [[] for _ in range(n)]
    rejected = np.zeros(n, dtype=bool)
    parts = []
    for feature, (col, why) in zip(schema.features, columns):
        bad = np.flatnonzero(why != None)  # noqa: E711 - elementwise on an object array
        if len(bad):
            if fill and feature.default is not None:
                col[bad] = feature.default
            else:
                col[bad] = 0.0  # the row is rejected; keep the cast quiet
                rejected[bad] = True
                for i in bad.tolist():
                    problems[i].append(why[i])
        parts.append(col)
    return np.concatenate(parts, axis=1).astype(dtype), problems, rejected


@operator
@instrumented
def assemble(
    step_id: str,
    up: Stream[pl.DataFrame] | KeyedStream[Mapping[str, Any]],
    *,
    schema: FeatureSchema,
    on_invalid: Literal["error", "default"] = "error",
    output: str = "features",
) -> FeaturesOut:
    """Put named features into one vector in the schema's order and dtype.

    Use it as the last featurization step, so the inference operator gets
    exactly the layout the model was trained with. A feature that is
    missing, not a number (``str``, ``None``; ``bool`` counts as 0/1), of
    the wrong width, not finite (NaN, Inf) or too large for the dtype is either filled with its
    declared default (``on_invalid="default"``; a feature without default
    still rejects) or rejects the event (``"error"``); the ``errs`` record
    names every bad feature (``error_type="InvalidFeature"``).

    Frames: each feature is a column — a number (``Boolean`` counts as
    0/1) for a width-1 feature, a ``List`` or ``Array`` of numbers of the
    feature's width otherwise; a missing column or a null is missing, a
    column of text not a number; each invalid row is rejected alone, the
    rest of the frame goes on. Rows: a feature is a field of the event.

    Returns:
        ``oks``: frames with an ``output`` column of ``pl.Array(dtype,
        schema.width)``, or ``(key, event)`` with ``output`` set to a 1-D
        array of ``schema.width`` values of ``schema.dtype``; ``errs``.

    Examples:
        A frame, with the invalid rows rejected:

        >>> import bytewax.operators as op
        >>> import polars as pl
        >>> from bytewax.dataflow import Dataflow
        >>> from bytewax.testing import TestingSource, TestingSink, run_main
        >>> schema = FeatureSchema([Feature("b"), Feature("a", default=None)])
        >>> frame = pl.DataFrame({"id": [1, 2, 3], "a": [1.0, None, float("inf")], "b": [2, 3, 4]})
        >>> flow = Dataflow("assemble_frames_doc")
        >>> out = assemble("vec", op.input("in", flow, TestingSource([frame])), schema=schema)
        >>> oks, errs = [], []
        >>> op.output("oks", out.oks, TestingSink(oks))
        >>> op.output("errs", out.errs, TestingSink(errs))
        >>> run_main(flow)
        >>> oks[0]["features"].to_list(), [(r.original["id"], r.reason) for r in errs]
        ([[2.0, 1.0]], [(2, 'a is missing'), (3, 'a is not finite')])

        ``(key, event)`` rows, invalid values filled with defaults:

        >>> import bytewax.operators as op
        >>> from bytewax.dataflow import Dataflow
        >>> from bytewax.testing import TestingSource, TestingSink, run_main
        >>> schema = FeatureSchema([Feature("b"), Feature("a", default=-1.0)])
        >>> events = [("k", {"a": 1.0, "b": 2}), ("k", {"b": 3.0}), ("k", {"a": float("nan")})]
        >>> flow = Dataflow("assemble_doc")
        >>> up = op.input("in", flow, TestingSource(events))
        >>> out = assemble("vec", up, schema=schema, on_invalid="default")
        >>> oks = []
        >>> op.output("oks", out.oks, TestingSink(oks))
        >>> run_main(flow)
        >>> [e["features"].tolist() for _, e in oks]
        [[2.0, 1.0], [3.0, -1.0], [0.0, -1.0]]
    """
    if on_invalid not in ("error", "default"):
        raise ValueError(f"on_invalid must be 'error' or 'default'; got {on_invalid!r}")
    dtype = _DTYPES[schema.dtype]
    limit = float(np.finfo(dtype).max)
    fill = on_invalid == "default"

    def on_rows(batch: list[Any]) -> tuple[list, list]:
        keys, events, errs = [], [], []
        for item in batch:
            if isinstance(item, tuple) and len(item) == 2 and isinstance(item[1], Mapping):
                keys.append(item[0])
                events.append(item[1])
            else:
                errs.append(Rejected(step_id, "BadItem", "expected a (key, event) pair", item))
        columns = [_column(events, feature, limit) for feature in schema.features]
        matrix, problems, _ = _assemble(columns, schema, fill, dtype)
        oks = []
        for i, (key, event) in enumerate(zip(keys, events)):
            if problems[i]:
                reason = "; ".join(problems[i])
                errs.append(Rejected(step_id, "InvalidFeature", reason, (key, event)))
            else:
                oks.append((key, {**event, output: matrix[i]}))
        return oks, errs

    def on_frame(frame: pl.DataFrame) -> tuple[list, list]:
        columns = [_frame_column(frame, feature, limit) for feature in schema.features]
        matrix, problems, rejected = _assemble(columns, schema, fill, dtype)
        errs = []
        if rejected.any():
            at = np.flatnonzero(rejected)
            for i, row in zip(at.tolist(), frame[at].iter_rows(named=True)):
                errs.append(Rejected(step_id, "InvalidFeature", "; ".join(problems[i]), row))
            keep = ~rejected
            frame, matrix = frame.filter(pl.Series(keep)), matrix[keep]
        if not frame.height:
            return [], errs
        return [frame.with_columns(pl.Series(output, matrix))], errs

    chunks = op.flat_map_batch("batch", up, lambda b: [dispatch(on_frame, on_rows)(b)])
    return FeaturesOut(
        op.flat_map("oks", chunks, lambda c: c[0]),
        op.flat_map("errs", chunks, lambda c: c[1]),
    )
