"""Frames and rows through one featurize transform: per-row checks on columns, and the dispatch.

The stateless transforms (``standard_scale``, ``one_hot``, the hashers,
``assemble``) take either unit on the same stream: each item that is a
``polars.DataFrame`` is checked and computed on as columns, and the
``(key, event)`` rows of a batch go through the row adapter. The checks
here are :func:`streamml.operators._core.columns.check_frame`'s rules for
fields, without a timestamp (which these transforms do not have), plus the
string rule of the hashers; each row gets the first problem found, fields
in the order given, and only rejected rows become Python records:

==========================================  ==================
input                                       ``error_type``
==========================================  ==================
field column missing, or the row's value    ``MissingField``
null
numeric field: column not numeric (text,    ``NotANumber``
boolean, …)
numeric field: NaN or +/-Inf                ``NonFinite``
string field: column not text               ``NotAString``
==========================================  ==================
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import polars as pl

from streamml.errors import Rejected

__all__ = ["Reasons", "dispatch", "numeric_rows", "reject", "string_rows"]

Reasons = list[tuple[str, str, "np.ndarray | None"]]
"""Problems found, in priority order: ``(error_type, reason, row mask or None = every row)``."""


def reject(frame: pl.DataFrame, step_id: str, reasons: Reasons) -> tuple[pl.DataFrame, list]:
    """The rows no reason applies to, and a :class:`Rejected` (first reason) for each other row.

    Examples:
        >>> f = pl.DataFrame({"x": [1, 2, 3]})
        >>> good, bad = reject(f, "s", [("Odd", "x is odd", np.array([True, False, True]))])
        >>> good["x"].to_list(), [(r.error_type, r.original) for r in bad]
        ([2], [('Odd', {'x': 1}), ('Odd', {'x': 3})])
    """
    if not reasons:
        return frame, []
    n = frame.height
    code = np.full(n, -1, dtype=np.int64)
    for i, (_, _, mask) in enumerate(reasons):
        hit = np.ones(n, dtype=bool) if mask is None else mask
        code[hit & (code < 0)] = i
    bad = np.flatnonzero(code >= 0)
    if not len(bad):
        return frame, []
    errs = []
    for i, row in zip(bad.tolist(), frame[bad].iter_rows(named=True)):
        kind, why, _ = reasons[code[i]]
        errs.append(Rejected(step_id, kind, why, row))
    return (frame.clear() if len(bad) == n else frame.filter(pl.Series(code < 0))), errs


def _nulls(frame: pl.DataFrame, name: str, reasons: Reasons) -> pl.Series | None:
    """Add a ``MissingField`` reason for a missing column or its nulls; the column, if usable."""
    if name not in frame.columns:
        reasons.append(("MissingField", f"field {name!r} is missing", None))
        return None
    col = frame.get_column(name)
    if col.null_count():
        reasons.append(("MissingField", f"field {name!r} is null", col.is_null().to_numpy()))
    return col


def numeric_problems(frame: pl.DataFrame, fields: Sequence[str]) -> Reasons:
    """The reasons rows of ``frame`` cannot give ``fields`` as finite numbers."""
    reasons: Reasons = []
    for name in fields:
        if name not in frame.columns:
            reasons.append(("MissingField", f"field {name!r} is missing", None))
            continue
        dtype = frame.schema[name]
        if dtype == pl.Null:  # every value null (a frame of rows that all lack it)
            reasons.append(("MissingField", f"field {name!r} is null", None))
            continue
        if not dtype.is_numeric():
            reasons.append(("NotANumber", f"field {name!r} is {dtype}, not a number", None))
            continue
        col = _nulls(frame, name, reasons)
        if dtype.is_float():
            finite = col.is_finite().fill_null(True)
            if not finite.all():
                reasons.append(("NonFinite", f"field {name!r} is not finite", ~finite.to_numpy()))
    return reasons


def numeric_rows(
    frame: pl.DataFrame, step_id: str, fields: Sequence[str]
) -> tuple[pl.DataFrame, list[Rejected]]:
    """The rows whose ``fields`` are all finite numbers, and the others rejected.

    Examples:
        >>> f = pl.DataFrame({"x": [1.0, None, float("inf")], "s": ["a", "b", "c"]})
        >>> good, bad = numeric_rows(f, "s", ["x"])
        >>> good["s"].to_list(), [r.error_type for r in bad]
        (['a'], ['MissingField', 'NonFinite'])
        >>> [r.error_type for r in numeric_rows(f, "s", ["s"])[1]]
        ['NotANumber', 'NotANumber', 'NotANumber']
    """
    return reject(frame, step_id, numeric_problems(frame, fields))


def _is_text(dtype: pl.DataType) -> bool:
    return dtype == pl.String or isinstance(dtype, (pl.Categorical, pl.Enum))


def string_rows(
    frame: pl.DataFrame, step_id: str, fields: Sequence[str]
) -> tuple[pl.DataFrame, list[Rejected]]:
    """The rows whose ``fields`` are all text, and the others rejected.

    Examples:
        >>> f = pl.DataFrame({"u": ["a", None], "n": [1, 2]})
        >>> good, bad = string_rows(f, "s", ["u"])
        >>> good.height, [r.error_type for r in bad]
        (1, ['MissingField'])
        >>> [r.error_type for r in string_rows(f, "s", ["n"])[1]]
        ['NotAString', 'NotAString']
    """
    reasons: Reasons = []
    for name in fields:
        dtype = frame.schema.get(name)
        if dtype is not None and dtype != pl.Null and not _is_text(dtype):
            why = f"field {name!r} is {frame.schema[name]}, not a str"
            reasons.append(("NotAString", why, None))
            continue
        _nulls(frame, name, reasons)
    return reject(frame, step_id, reasons)


def dispatch(
    on_frame: Callable[[pl.DataFrame], tuple[list, list]],
    on_rows: Callable[[list[Any]], tuple[list, list]],
) -> Callable[[list[Any]], tuple[list, list]]:
    """A batch function: each non-empty frame through ``on_frame``, the other items (rows, and
    anything else, which the row path rejects as it always has) through ``on_rows`` at once."""

    def mapper(batch: list[Any]) -> tuple[list, list]:
        rows = [x for x in batch if not isinstance(x, pl.DataFrame)]
        if len(rows) == len(batch):
            return on_rows(batch)
        oks, errs = on_rows(rows) if rows else ([], [])
        for item in batch:
            if isinstance(item, pl.DataFrame) and item.height:
                more_oks, more_errs = on_frame(item)
                oks += more_oks
                errs += more_errs
        return oks, errs

    return mapper
