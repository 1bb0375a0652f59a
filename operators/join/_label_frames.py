"""label_join's frame path: a side's columns read at once, and stored rows kept in frames.

A prediction frame gives each row's ``(y_pred, proba, version)`` and a label
frame each row's label, read column by column (no dict per row); a row the
rows path would reject (a missing or null field, a regression value that is
not a finite number, an unhashable class) is rejected here with the same
error type, the row as a dict for its original. The shard keeps the rows
waiting for their other half in :class:`~streamml.operators.join._shards.RowStore`
frames under integer ids, and its state record holds those ids where the
rows path holds the events themselves: :func:`to_frames` and :func:`to_rows`
turn one record into the other, so either path resumes the other's state.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl
from streamml.operators.join._shards import RowStore

from streamml.errors import Rejected

if TYPE_CHECKING:  # label.py imports this module
    from streamml.operators.join._label_logic import _Config

__all__ = ["read_labels", "read_predictions", "to_frames", "to_rows"]


def _reject_rows(
    step_id: str,
    frame: pl.DataFrame,
    bad: np.ndarray,
    why: Callable[[int], tuple[str, str]],
    errs: list[Rejected],
) -> None:
    """A rejection per row of ``frame`` where ``bad``; ``why(i)`` is its (error type, reason)."""
    idx = np.flatnonzero(bad)
    rows = frame[pl.Series(idx.astype(np.uint32))].to_dicts()
    for i, row in zip(idx.tolist(), rows):
        kind, reason = why(i)
        errs.append(Rejected(step_id, kind, reason, row))


def _values(
    step_id: str,
    frame: pl.DataFrame,
    name: str,
    regression: bool,
    bad: np.ndarray,
    errs_out: list[tuple[np.ndarray, Callable[[int], tuple[str, str]]]],
) -> list[Any] | None:
    """The values of a required column (``None``: every row rejected), marking bad rows."""
    if name not in frame.columns:
        errs_out.append(
            (
                np.ones(frame.height, dtype=bool),
                lambda i: ("MissingField", f"field {name!r} is missing"),
            )
        )
        return None
    col = frame.get_column(name)
    dtype = col.dtype
    if col.null_count():
        nulls = col.is_null().to_numpy()
        errs_out.append((nulls & ~bad, lambda i: ("MissingField", f"field {name!r} is null")))
        bad |= nulls
    if regression:
        if not dtype.is_numeric():
            values = col.to_list()
            errs_out.append(
                (
                    ~bad,
                    lambda i: (
                        "NotANumber",
                        f"field {name!r} is {type(values[i]).__name__} {values[i]!r:.40}, not a number",
                    ),
                )
            )
            return None
        floats = col if dtype == pl.Float64 else col.cast(pl.Float64)
        values = floats.to_list()
        finite = np.isfinite(floats.to_numpy())  # a null is NaN here: already in bad
        if not finite.all():
            errs_out.append(
                (~finite & ~bad, lambda i: ("NonFinite", f"field {name!r} is {values[i]}"))
            )
            bad |= ~finite
        return values
    if dtype.is_nested() or dtype == pl.Object:
        errs_out.append((~bad, lambda i: ("TypeError", f"unhashable type: {dtype}")))
        return None
    return col.to_list()


def _read(
    step_id: str,
    frame: pl.DataFrame,
    read: Callable[[np.ndarray, list], list[list[Any]] | None],
    errs: list[Rejected],
) -> tuple[pl.DataFrame, list[list[Any]], np.ndarray | None]:
    bad = np.zeros(frame.height, dtype=bool)
    found: list[tuple[np.ndarray, Callable[[int], tuple[str, str]]]] = []
    columns = read(bad, found)
    if columns is None:
        bad[:] = True
    for mask, why in found:
        if mask.any():
            _reject_rows(step_id, frame, mask, why, errs)
    if not bad.any():
        return frame, columns, None  # type: ignore[return-value]
    keep = np.flatnonzero(~bad)
    kept = keep.tolist()
    columns = [[c[i] for i in kept] for c in columns] if columns is not None else []
    return frame[pl.Series(keep.astype(np.uint32))], columns, keep


def read_predictions(
    cfg: _Config, frame: pl.DataFrame, errs: list[Rejected]
) -> tuple[pl.DataFrame, list[list[Any]], np.ndarray | None]:
    """The readable rows of a prediction frame, their columns ``[y_pred, proba, version]``
    (lists), and their positions in ``frame`` (``None``: all of them); the others rejected
    into ``errs``.

    Examples:
        >>> from streamml.operators.join._label_logic import _Config
        >>> cfg = _Config("s", (None, None), 0, 1, 0, 1, "prediction", "label", "p",
        ...               "model_version", False, 1, "binary")
        >>> errs = []
        >>> good, values, keep = read_predictions(
        ...     cfg, pl.DataFrame({"prediction": [1, None], "p": [0.9, 0.2]}), errs)
        >>> values, keep.tolist(), [(r.error_type, r.reason) for r in errs]
        ([[1], [0.9], [None]], [0], [('MissingField', "field 'prediction' is null")])
    """
    n = frame.height

    def read(bad: np.ndarray, found: list) -> list[list[Any]] | None:
        y = _values(cfg.step_id, frame, cfg.prediction, cfg.regression, bad, found)
        if y is None:
            return None
        proba: list[Any] = [None] * n
        name = cfg.probability
        if name is not None:
            if name not in frame.columns:
                found.append((~bad, lambda i: ("MissingField", f"field {name!r} is missing")))
                return None
            col = frame.get_column(name)
            # a struct: a dict class -> probability per row
            if isinstance(col.dtype, pl.Struct) or col.dtype == pl.Float64:
                proba = col.to_list()
            elif col.dtype.is_numeric():
                proba = col.cast(pl.Float64).to_list()
            else:
                floats = col.cast(pl.Float64, strict=False)
                lost = (floats.is_null() & col.is_not_null()).to_numpy()
                if lost.any():
                    raw = col.to_list()
                    found.append(
                        (
                            lost & ~bad,
                            lambda i: ("ValueError", f"could not convert {raw[i]!r:.40} to float"),
                        )
                    )
                    bad |= lost
                proba = floats.to_list()
        version_name = cfg.model_version
        versions = (
            frame.get_column(version_name).to_list()
            if version_name in frame.columns
            else [None] * n
        )
        return [y, proba, versions]

    return _read(cfg.step_id, frame, read, errs)


def read_labels(
    cfg: _Config, frame: pl.DataFrame, errs: list[Rejected]
) -> tuple[pl.DataFrame, list[Any], np.ndarray | None]:
    """The readable rows of a label frame, ``[labels]``, and their positions (``None``: all).

    Examples:
        >>> from streamml.operators.join._label_logic import _Config
        >>> cfg = _Config("s", (None, None), 0, 1, 0, 1, "prediction", "y", None,
        ...               "model_version", True, 1, "binary")
        >>> errs = []
        >>> good, values, keep = read_labels(cfg, pl.DataFrame({"y": [2.5, float("nan")]}), errs)
        >>> values, keep.tolist(), [(r.error_type, r.reason) for r in errs]
        ([[2.5]], [0], [('NonFinite', "field 'y' is nan")])
    """

    def read(bad: np.ndarray, found: list) -> list[list[Any]] | None:
        values = _values(cfg.step_id, frame, cfg.label, cfg.regression, bad, found)
        return None if values is None else [values]

    return _read(cfg.step_id, frame, read, errs)


def to_frames(data: dict[str, Any], key: str) -> dict[str, Any]:
    """A rows-path state record's waiting events moved into row stores (ids in their place),
    each with its id in the ``key`` column, as frame rows have it.

    Examples:
        >>> data = to_frames({"preds": {"a": [[5, {"x": 1}, 1, None, "v"]]}, "labels": {}}, "k")
        >>> data["preds"], data["next_id"], RowStore(data["stores"][0]).gather([0]).rows()
        ({'a': [[5, 0, 1, None, 'v']]}, 1, [('a', 1)])
    """
    next_id = 0
    stores = []
    converted: dict[str, Any] = {}
    for name in ("preds", "labels"):
        events, held = [], {}
        for k, items in data[name].items():
            held[k] = []
            for item in items:
                events.append({key: k, **item[1]})
                held[k].append([item[0], next_id, *item[2:]])
                next_id += 1
        store = RowStore()
        if events:
            try:
                frame = pl.DataFrame(events, infer_schema_length=None)
            except Exception as exc:  # noqa: BLE001 - say what to do instead
                raise ValueError(
                    "the recovery store holds this label join's waiting events as rows that "
                    f"do not make one frame ({exc}); resume it on the rows path or use a new "
                    "recovery store"
                ) from exc
            start = next_id - len(events)
            store.add(frame, np.arange(start, next_id, dtype=np.int64))
        stores.append(store.snapshot_data())
        converted[name] = held
    return {**data, **converted, "stores": stores, "next_id": next_id}


def to_rows(data: dict[str, Any]) -> dict[str, Any]:
    """A frame-path state record's stored rows as the rows path holds them (dicts).

    Examples:
        >>> rows = to_rows(to_frames({"preds": {"a": [[5, {"x": 1}, 1, None, "v"]]},
        ...                           "labels": {}}, "k"))
        >>> rows["preds"], "stores" in rows
        ({'a': [[5, {'k': 'a', 'x': 1}, 1, None, 'v']]}, False)
    """
    out = {k: v for k, v in data.items() if k not in ("stores", "next_id")}
    for name, stored in zip(("preds", "labels"), data["stores"]):
        held = data[name]
        ids = [item[1] for items in held.values() for item in items]
        rows = iter(RowStore(stored).gather(ids).to_dicts() if ids else [])
        out[name] = {
            key: [[item[0], next(rows), *item[2:]] for item in items] for key, items in held.items()
        }
    return out
