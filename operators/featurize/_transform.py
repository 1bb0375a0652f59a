"""What the feature transforms share: running a batch mapper as ``(oks, errs)`` streams, and
writing computed columns into events or frames."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import bytewax.operators as op
import numpy as np
import polars as pl
from bytewax.dataflow import Stream
from streamml.operators.featurize.outputs import FeaturesOut

__all__ = ["attach", "split_out", "with_columns"]


def split_out(up: Stream[Any], mapper: Any) -> FeaturesOut:
    """Run a batch mapper returning ``(oks, errs)`` lists; fan the two out as streams."""
    chunks = op.flat_map_batch("batch", up, lambda b: [mapper(b)])
    oks = op.flat_map("oks", chunks, lambda c: c[0])
    errs = op.flat_map("errs", chunks, lambda c: c[1])
    return FeaturesOut(oks, errs)


def with_columns(
    keys: list[str], events: list[Any], names: Sequence[str], columns: np.ndarray
) -> list[tuple[str, dict]]:
    """New events: each input event plus ``names`` set from the rows of ``columns``."""
    outputs = [dict(e) for e in events]
    for name, column in zip(names, columns.T.tolist()):
        for event, value in zip(outputs, column):
            event[name] = value
    return list(zip(keys, outputs))


def attach(frame: pl.DataFrame, names: Sequence[str], columns: np.ndarray) -> pl.DataFrame:
    """``frame`` with ``names`` set (added or replaced) from the columns of ``columns``."""
    return frame.with_columns(pl.Series(name, columns[:, j]) for j, name in enumerate(names))
