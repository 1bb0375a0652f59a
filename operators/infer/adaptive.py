"""Adaptive batch size: the batch that holds a target model latency per call.

A model whose cost per row changes (a bigger input, a busier machine, a
remote service under load) needs a different ``max_batch`` at different
times: too big and each call takes longer than the flow can wait, too small
and the per-call overhead dominates. :class:`AdaptiveBatchSize` learns it as
Apache Beam's ``BatchElements`` does: it fits ``latency = a + b * size`` by
least squares over the most recent calls and picks the largest size whose
predicted latency is within the target, never more than ``growth`` times the
largest batch it has seen (so a wrong fit cannot jump far) and never outside
``[1, max_batch]``.

State: a window of the last ``window`` calls' (size, seconds); older calls
are evicted as new ones arrive, so a change in the model's cost is learned
within a window. It is an estimate of speed, not data: recovery snapshots do
not keep it, and a resumed step learns it again from size 1.
"""

from __future__ import annotations

import math
from collections import deque

__all__ = ["AdaptiveBatchSize"]


class AdaptiveBatchSize:
    """Chooses the next batch size from the latency of recent model calls.

    Before two different sizes have been seen, the size doubles while a
    call is faster than the target and halves while it is slower. Then the
    line through the window's calls gives it; when all of them had one size
    (it has settled), the last fit's cost per call and the last call's time
    give the cost per row.

    Args:
        target_s: The model latency per call to hold, in seconds.
        max_batch: The largest size it may choose.
        window: How many recent calls the fit uses.
        growth: How much larger than the largest batch seen it may go.

    Examples:
        A model that takes 2 ms per call plus 0.1 ms per row, with a target of
        12 ms: the best size is 100 rows.

        >>> sizer = AdaptiveBatchSize(target_s=0.012, max_batch=1000)
        >>> sizes = []
        >>> for _ in range(12):
        ...     size = sizer.size
        ...     sizes.append(size)
        ...     sizer.observe(size, 0.002 + 0.0001 * size)
        >>> sizes
        [1, 2, 4, 8, 16, 32, 64, 100, 100, 100, 100, 100]

        When each row starts to cost twice as much, it follows within a few calls:

        >>> for _ in range(40):
        ...     sizer.observe(sizer.size, 0.002 + 0.0002 * sizer.size)
        >>> sizer.size
        50
    """

    def __init__(
        self, *, target_s: float, max_batch: int, window: int = 16, growth: float = 2.0
    ) -> None:
        if not target_s > 0:
            raise ValueError(f"target latency must be > 0 seconds; got {target_s!r}")
        self.target_s = target_s
        self.max_batch = max_batch
        self.growth = growth
        self._calls: deque[tuple[int, float]] = deque(maxlen=window)
        self._size = 1
        self._explored = False  # two different sizes seen: the fit decides
        self._a = 0.0  # the fit's cost per call, kept for when the window holds one size

    @property
    def size(self) -> int:
        """The size of the next batch."""
        return self._size

    def observe(self, size: int, seconds: float) -> None:
        """Learn from a call of ``size`` rows that took ``seconds``, and choose the next size."""
        if size < 1 or not math.isfinite(seconds) or seconds < 0:
            return
        self._calls.append((size, seconds))
        self._size = self._choose(size, seconds)

    def _choose(self, size: int, seconds: float) -> int:
        sizes = [s for s, _ in self._calls]
        cap = max(1, min(self.max_batch, math.floor(self.growth * max(sizes))))
        fit = _fit(self._calls) if len(set(sizes)) > 1 else None
        self._explored = self._explored or fit is not None
        if not self._explored:
            wanted = size * 2 if seconds <= self.target_s else size // 2
        else:
            if fit is not None and fit[1] > 0:
                a, b = fit
                self._a = max(0.0, a)
            elif seconds > self._a:  # one size (it settled): the cost per call as last fitted
                a, b = self._a, (seconds - self._a) / size
            else:  # no cost per row visible
                a, b = 0.0, 0.0
            if b <= 0:
                wanted = cap
            elif a < self.target_s:  # the largest size predicted within the target
                wanted = math.floor((self.target_s - a) / b * (1 + 1e-9))
            else:  # the call alone costs more than the target
                wanted = 1
        return max(1, min(cap, wanted))


def _fit(calls: deque[tuple[int, float]]) -> tuple[float, float]:
    """Least squares ``seconds = a + b * size``; needs two different sizes.

    Examples:
        >>> _fit(deque([(1, 3.0), (2, 5.0), (4, 9.0)]))
        (1.0, 2.0)
    """
    n = len(calls)
    mean_x = sum(s for s, _ in calls) / n
    mean_y = sum(t for _, t in calls) / n
    sxx = sum((s - mean_x) ** 2 for s, _ in calls)
    sxy = sum((s - mean_x) * (t - mean_y) for s, t in calls)
    b = sxy / sxx
    return mean_y - b * mean_x, b
