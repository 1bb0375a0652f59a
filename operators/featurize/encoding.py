"""Categorical encoding: :func:`one_hot` over a fixed vocabulary.

Frames are the unit: an item that is a ``polars.DataFrame`` is checked and
transformed on its columns (polars expressions and NumPy; no Python per
row), and comes out as the same rows with the new columns; a bad row
becomes a :class:`~streamml.errors.Rejected` (the row as a dict) and the
rest of its frame goes on (see :mod:`._frame_rows` for the checks).
``(key, event)`` rows, the legacy path, go through the same computation:
each batch's fields are read into columns, computed on, and written into
new dicts. Both units may share a stream.

:func:`one_hot` is stateless and works on whole micro-batches with
``flat_map_batch``. It matches scikit-learn's
``OneHotEncoder(handle_unknown="ignore")`` plus an "other" column.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import polars as pl
from bytewax.dataflow import Stream, operator
from bytewax.operators import KeyedStream
from streamml.operators.featurize._frame_rows import dispatch
from streamml.operators.featurize._transform import attach, split_out, with_columns
from streamml.operators.featurize.outputs import FeaturesOut

from streamml.errors import Rejected
from streamml.metrics import instrumented

__all__ = [
    "one_hot",
]


def _frames_out(frame: pl.DataFrame) -> list[pl.DataFrame]:
    """A result frame as a list of outputs: none when every row was rejected."""
    return [frame] if frame.height else []


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
@instrumented
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
        return _frames_out(attach(frame, names, matrix(pos))), errs

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
        return with_columns(keys, events, names, matrix(np.array(rows, dtype=np.int64))), errs

    return split_out(up, dispatch(on_frame, on_rows))
