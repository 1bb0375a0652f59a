"""Point-in-time label join: each feature row gets the first label of its key within a delay."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import polars as pl
from streamml.operators.training.replay import FRAME_ROWS, Features, Source, read_events, replay

from streamml.errors import Rejected

__all__ = ["TrainingTable", "join_labels", "training_table"]

_T = "__streamml_t_us"


def _micros(frame: pl.DataFrame, column: str, what: str) -> pl.Expr:
    """An expression of ``column`` as epoch microseconds (Datetime, or integer epoch ms)."""
    if column not in frame.columns:
        raise ValueError(f"{what} has no timestamp column {column!r}; it has {frame.columns}")
    dtype = frame.schema[column]
    if isinstance(dtype, pl.Datetime):
        if dtype.time_zone is None:
            raise ValueError(f"{what}'s {column!r} is a naive Datetime; make it time-zone aware")
        return pl.col(column).dt.epoch("us")
    if dtype.is_integer():
        return pl.col(column).cast(pl.Int64) * 1000
    raise ValueError(f"{what}'s {column!r} is {dtype}; use a zoned Datetime or epoch ms")


def join_labels(
    table: pl.DataFrame,
    labels: pl.DataFrame,
    *,
    key: str,
    timestamp: str,
    label: str | Sequence[str],
    label_delay: timedelta,
    label_timestamp: str | None = None,
) -> tuple[pl.DataFrame, list[Rejected]]:
    """Add to each row of ``table`` the first label of its key at or after its time, within ``label_delay``.

    The label of an event at ``t`` is the earliest label row of the same
    key with a timestamp in ``[t, t + label_delay]`` (of several labels at
    one instant, the last in ``labels``' order: a correction); a row with
    none gets nulls. Labels after ``t + label_delay`` are never used, so the
    table holds only what was known ``label_delay`` after each event, like
    Chronon's label join. Label rows with a null key or time are rejected.

    Args:
        table: Feature rows (key and event-time columns).
        labels: Label rows (key, time and the ``label`` columns).
        key: The key column of both.
        timestamp: The event-time column of ``table`` (zoned Datetime or epoch ms).
        label: Label column(s) of ``labels`` to add.
        label_delay: How long after an event its label may come (>= 0).
        label_timestamp: The time column of ``labels``; ``timestamp`` by default.

    Returns:
        ``(table with the label columns, rejected label rows)``, in ``table``'s row order.

    Examples:
        >>> feats = pl.DataFrame({"id": ["a", "a", "b"], "ms": [0, 10_000, 0], "x": [1.0, 2.0, 3.0]})
        >>> labs = pl.DataFrame({"id": ["a", "a", "b"], "ms": [5_000, 60_000, 1_000], "y": [1, 0, 1]})
        >>> out, bad = join_labels(feats, labs, key="id", timestamp="ms", label="y",
        ...                        label_delay=timedelta(seconds=30))
        >>> out["y"].to_list(), bad
        ([1, None, 1], [])
    """
    label_cols = [label] if isinstance(label, str) else list(label)
    label_ts = label_timestamp or timestamp
    if not isinstance(label_delay, timedelta) or label_delay < timedelta(0):
        raise ValueError(f"label_delay must be a timedelta >= 0; got {label_delay!r}")
    for name, frame, cols in (("table", table, [key]), ("labels", labels, [key, *label_cols])):
        missing = [c for c in cols if c not in frame.columns]
        if missing:
            raise ValueError(f"{name} has no column(s) {missing}; it has {frame.columns}")
    clash = [c for c in label_cols if c in table.columns]
    if clash:
        raise ValueError(f"label column(s) {clash} are already feature columns; rename them")
    if labels.schema[key] != table.schema[key] and not (
        labels.schema[key].is_numeric() and table.schema[key].is_numeric()
    ):
        raise ValueError(
            f"key {key!r} is {table.schema[key]} in the table but {labels.schema[key]} in the "
            "labels; cast one so the same key compares equal"
        )
    bad_rows = labels.filter(pl.col(key).is_null() | pl.col(label_ts).is_null())
    rejected = [
        Rejected("join_labels", "MissingField", f"label row without {key!r} or {label_ts!r}", row)
        for row in bad_rows.to_dicts()
    ]
    right = (
        labels.drop_nulls([key, label_ts])
        .with_columns(_micros(labels, label_ts, "labels").alias(_T))
        .unique([key, _T], keep="last", maintain_order=True)
        .select(pl.col(key).cast(table.schema[key]), _T, *label_cols)
        .sort(key, _T)
    )
    order = "__streamml_row"
    left = table.with_row_index(order).with_columns(_micros(table, timestamp, "table").alias(_T))
    joined = left.sort(key, _T).join_asof(
        right,
        on=_T,
        by=key,
        strategy="forward",
        tolerance=label_delay // timedelta(microseconds=1),
        check_sortedness=False,
    )
    return joined.sort(order).drop(order, _T), rejected


@dataclass
class TrainingTable:
    """The training table of :func:`training_table`, and everything left out of it."""

    table: pl.DataFrame
    """One row per replayed event that the features kept: features then labels (null: none came)."""

    rejected: list[Rejected]
    """Events the source or the features rejected, and label rows without key or time."""


def training_table(
    features: Features,
    source: Source,
    labels: pl.DataFrame | str | Path,
    *,
    key: str,
    timestamp: str,
    label: str | Sequence[str],
    label_delay: timedelta,
    label_timestamp: str | None = None,
    batch_size: int = FRAME_ROWS,
) -> TrainingTable:
    """Replay stored events through the online featurization and join point-in-time labels.

    Use it to build a model's training data from the code that serves it:
    ``features`` is the same function the online flow calls, so each row's
    features are what the live flow computed for that event (the featurize
    operators use only events at or before it), and its label is the one
    that arrived within ``label_delay`` after it (:func:`join_labels`).

    Args:
        features: ``features(step_id, frames)``, as in the online flow.
        source: Events: a frame, a Parquet/NDJSON file, or a :class:`KafkaTopic`.
        labels: Label rows: a frame or a Parquet/NDJSON file.
        key: The key column (events and labels).
        timestamp: The event-time column (zoned Datetime or epoch ms).
        label: Label column(s) to add.
        label_delay: How long after an event its label may come.
        label_timestamp: The labels' time column; ``timestamp`` by default.
        batch_size: Rows per replayed frame (files and frames).

    Returns:
        :class:`TrainingTable`.

    Examples:
        >>> from streamml.operators.featurize import rolling
        >>> def features(step_id, frames):
        ...     return rolling(step_id, frames, key="id", timestamp="ms",
        ...                    window=timedelta(seconds=60), fields=["x"], aggregates=["mean"])
        >>> events = pl.DataFrame({"id": ["a", "a", "a"], "ms": [0, 10_000, 20_000],
        ...                        "x": [1.0, 3.0, 8.0]})
        >>> labels = pl.DataFrame({"id": ["a"], "ms": [15_000], "fault": [1]})
        >>> out = training_table(features, events, labels, key="id", timestamp="ms",
        ...                      label="fault", label_delay=timedelta(seconds=5))
        >>> out.table.select("ms", "x_mean_60s", "fault").rows()
        [(0, 1.0, None), (10000, 2.0, 1), (20000, 4.0, None)]
    """
    replayed = replay(features, source, batch_size=batch_size)
    label_rows = labels if isinstance(labels, pl.DataFrame) else read_events(labels)
    if replayed.frame.height == 0:
        empty = replayed.frame
        return TrainingTable(empty, replayed.rejected)
    table, bad_labels = join_labels(
        replayed.frame,
        label_rows,
        key=key,
        timestamp=timestamp,
        label=label,
        label_delay=label_delay,
        label_timestamp=label_timestamp,
    )
    return TrainingTable(table, [*replayed.rejected, *bad_labels])
