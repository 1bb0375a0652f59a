"""Moved to :mod:`streamml.operators._core.columns` (shared by every family that reads frames)."""

from streamml.operators._core.columns import check_frame, ts_micros, values

__all__ = ["check_frame", "ts_micros", "values"]
