"""Thresholds for anomaly windows: fixed levels, or adaptive per-key quantiles with a warm-up."""

from __future__ import annotations

import bisect
from collections import deque
from dataclasses import dataclass
from datetime import timedelta

from streamml.operators import _validate
from streamml.operators.anomaly._units import _MIN, _positive, _us

__all__ = ["FixedThreshold", "QuantileThreshold", "Threshold"]


@dataclass(frozen=True)
class FixedThreshold:
    """A window opens when the score is above ``open_above`` and stays open while it is at or above ``close_below``.

    ``close_below`` defaults to ``open_above`` (no hysteresis); set it lower
    so a score flapping around ``open_above`` makes one window, not many.

    Examples:
        >>> FixedThreshold(4.0, close_below=2.0)
        FixedThreshold(open_above=4.0, close_below=2.0)
    """

    open_above: float
    close_below: float | None = None

    def __post_init__(self) -> None:
        _validate.number("open_above", self.open_above)
        if self.close_below is None:
            object.__setattr__(self, "close_below", self.open_above)
        _validate.number("close_below", self.close_below)
        if self.close_below > self.open_above:
            raise ValueError(
                f"close_below must be <= open_above; got {self.close_below} > {self.open_above}"
            )

    def _state(self) -> _FixedLevels:
        return _FixedLevels(self.open_above, self.close_below)


@dataclass(frozen=True)
class QuantileThreshold:
    """Adaptive per-key levels: high quantiles of the key's own recent scores.

    A point opens a window when its score is above the ``open_q`` quantile of
    the key's scores of the last ``window`` (and above ``min_open``); the
    window stays open while scores are at or above the ``close_q`` quantile.
    For its first ``warmup`` of event time a key raises nothing.

    State per key: the scores of the last ``window`` (at most ``max_points``);
    evicted once the window is empty. After eviction a key warms up again.

    Examples:
        >>> QuantileThreshold(0.995, close_q=0.95, window=timedelta(hours=6)).warmup
        datetime.timedelta(seconds=3600)
    """

    open_q: float = 0.99
    close_q: float = 0.95
    window: timedelta = timedelta(hours=6)
    warmup: timedelta = timedelta(hours=1)
    min_open: float = 0.0
    max_points: int = 10_000

    def __post_init__(self) -> None:
        for arg in ("open_q", "close_q", "min_open"):
            _validate.number(arg, getattr(self, arg))
        if not 0.0 < self.close_q <= self.open_q < 1.0:
            raise ValueError(
                f"need 0 < close_q <= open_q < 1; got close_q={self.close_q}, open_q={self.open_q}"
            )
        _positive("window", self.window)
        _validate.duration("warmup", self.warmup)
        _validate.count("max_points", self.max_points)
        if self.warmup > self.window:
            raise ValueError(f"warmup must be between 0 and window; got {self.warmup!r}")

    def _state(self) -> _QuantileLevels:
        return _QuantileLevels(self)


Threshold = FixedThreshold | QuantileThreshold


class _FixedLevels:
    __slots__ = ("open", "close")

    def __init__(self, open_above: float, close_below: float) -> None:
        self.open, self.close = open_above, close_below

    def levels(self, ts: int, s: float) -> tuple[float, float]:
        return self.open, self.close

    def expires_at(self) -> int:
        return _MIN

    def snapshot(self) -> None:
        return None

    def restore(self, snap: None) -> None:
        pass


class _QuantileLevels:
    """Recent scores in arrival and sorted order. Eviction: older than ``window`` or beyond ``max_points``."""

    __slots__ = ("cfg", "first", "points", "sorted")

    def __init__(self, cfg: QuantileThreshold) -> None:
        self.cfg = cfg
        self.first = _MIN
        self.points: deque[tuple[int, float]] = deque()
        self.sorted: list[float] = []

    def expires_at(self) -> int:
        return self.points[-1][0] + _us(self.cfg.window) if self.points else _MIN

    def levels(self, ts: int, s: float) -> tuple[float, float] | None:
        cfg, points, srt = self.cfg, self.points, self.sorted
        horizon = ts - _us(cfg.window)
        while points and (points[0][0] <= horizon or len(points) >= cfg.max_points):
            del srt[bisect.bisect_left(srt, points.popleft()[1])]
        if not points:
            self.first = ts
        out = None
        if ts - self.first >= _us(cfg.warmup) and srt:
            last = len(srt) - 1
            hi = max(srt[int(cfg.open_q * last)], cfg.min_open)
            out = (hi, min(srt[int(cfg.close_q * last)], hi))
        points.append((ts, s))
        bisect.insort(srt, s)
        return out

    def snapshot(self) -> dict:
        return {"first": self.first, "points": list(self.points), "sorted": list(self.sorted)}

    def restore(self, snap: dict) -> None:
        self.first = snap["first"]
        self.points, self.sorted = deque(snap["points"]), list(snap["sorted"])
