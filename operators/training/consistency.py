"""Online/offline consistency: replay the events offline and compare with what the online flow emitted."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import polars as pl
from streamml.operators.training.replay import FRAME_ROWS, Features, Source, read_events, replay

from streamml.errors import Rejected

__all__ = ["Consistency", "check_consistency"]

_N = "occurrence"
_SUFFIX = "__online"


@dataclass
class Consistency:
    """What :func:`check_consistency` found."""

    mismatches: pl.DataFrame
    """One row per differing value: the matched columns, occurrence, ``column``, ``offline``, ``online`` (as text)."""

    only_offline: pl.DataFrame
    """Rows the replay produced that the online output lacks."""

    only_online: pl.DataFrame
    """Online rows the replay did not produce."""

    rejected: list[Rejected]
    """Events the replay rejected (the online flow should have rejected the same)."""

    @property
    def ok(self) -> bool:
        """``True`` when every row matched within the tolerance, both ways."""
        return (
            self.mismatches.height == 0
            and self.only_offline.height == 0
            and self.only_online.height == 0
        )


def _numbered(frame: pl.DataFrame, match: list[str]) -> pl.DataFrame:
    """``frame`` with each row's occurrence among the rows that share the ``match`` columns."""
    return frame.with_columns(pl.int_range(pl.len(), dtype=pl.UInt32).over(match).alias(_N))


def _differs(name: str, dtype: pl.DataType, rtol: float, atol: float) -> pl.Expr:
    """True where the offline and online values of ``name`` differ."""
    off, on = pl.col(name), pl.col(name + _SUFFIX)
    if dtype.is_float():
        both_nan = off.is_nan() & on.is_nan()
        close = (off - on).abs() <= atol + rtol * on.abs()
        same = (off.is_null() & on.is_null()) | both_nan | close.fill_null(False)
        return ~same.fill_null(False)
    return ~off.eq_missing(on)


def check_consistency(
    features: Features,
    events: Source,
    online: pl.DataFrame | str | Path,
    *,
    key: str,
    timestamp: str,
    columns: Sequence[str] | None = None,
    match_on: Sequence[str] = (),
    rtol: float = 1e-9,
    atol: float = 1e-12,
    batch_size: int = FRAME_ROWS,
) -> Consistency:
    """Replay ``events`` through ``features`` offline and compare each row with the online output.

    Use it to verify an online path: save what the live flow emitted for
    some events (its Parquet sink, or a topic read into a frame) and check
    that replaying the same events through the same function gives the same
    features. Rows are matched on ``(key, timestamp)`` plus ``match_on``
    and, for several rows that share them, their order (give an event id
    in ``match_on`` when the online rows may come in another order); floats are equal within
    ``atol + rtol * |online|`` (NaN equals NaN, null equals null), other
    values exactly.

    Args:
        features: ``features(step_id, frames)``, as in the online flow.
        events: The events the online flow read (frame, file or :class:`KafkaTopic`).
        online: The rows the online flow emitted (a frame or a Parquet/NDJSON file).
        key: The key column.
        timestamp: The event-time column.
        columns: Columns to compare; every other column of the replay by default.
        match_on: Columns that, with key and time, identify an event (an id).
        rtol: Relative tolerance for float columns.
        atol: Absolute tolerance for float columns.
        batch_size: Rows per replayed frame (files and frames).

    Returns:
        :class:`Consistency`; ``.ok`` when nothing differs.

    Examples:
        >>> import bytewax.operators as op
        >>> def features(step_id, frames):
        ...     return op.map(step_id, frames, lambda f: f.with_columns(y=pl.col("x") * 2))
        >>> events = pl.DataFrame({"id": ["a", "b"], "ms": [0, 0], "x": [1.0, 2.0]})
        >>> online = pl.DataFrame({"id": ["b", "a"], "ms": [0, 0], "x": [2.0, 1.0], "y": [4.0, 2.5]})
        >>> found = check_consistency(features, events, online, key="id", timestamp="ms")
        >>> found.ok, found.mismatches.select("id", "column", "offline", "online").rows()
        (False, [('a', 'y', '2.0', '2.5')])
    """
    online_rows = online if isinstance(online, pl.DataFrame) else read_events(online)
    replayed = replay(features, events, batch_size=batch_size)
    offline = replayed.frame
    match = [key, timestamp, *match_on]
    wanted = (
        list(columns) if columns is not None else [c for c in offline.columns if c not in match]
    )
    if not wanted:
        raise ValueError(f"no columns to compare besides {match}; name them in columns=")
    for name, frame in (("the replay", offline), ("the online output", online_rows)):
        missing = [c for c in (*match, *wanted) if c not in frame.columns]
        if missing and frame.height:
            raise ValueError(f"{name} has no column(s) {missing}; it has {frame.columns}")
    if offline.height == 0 or online_rows.height == 0:
        return Consistency(pl.DataFrame(), offline, online_rows, replayed.rejected)
    ids = [*match, _N]
    left = _numbered(offline.select(*match, *wanted), match)
    right = _numbered(
        online_rows.select(*match, *wanted).cast({c: offline.schema[c] for c in match}), match
    )
    both = left.join(right.rename({c: c + _SUFFIX for c in wanted}), on=ids, how="inner")
    mismatches = pl.concat(
        [
            both.filter(_differs(c, offline.schema[c], rtol, atol)).select(
                *ids,
                pl.lit(c).alias("column"),
                pl.col(c).cast(pl.String).alias("offline"),
                pl.col(c + _SUFFIX).cast(pl.String).alias("online"),
            )
            for c in wanted
        ]
    ).sort(ids)
    return Consistency(
        mismatches,
        left.join(right, on=ids, how="anti").drop(_N),
        right.join(left, on=ids, how="anti").drop(_N),
        replayed.rejected,
    )
