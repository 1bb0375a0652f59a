"""Progress lines of a Kafka source on stderr: events read, rate, consumer lag.

Opt-in, for runs under ``python -m bytewax.run`` where no example script
prints anything: ``kafka.source(..., progress=True)``, or the environment
variable ``STREAMML_PROGRESS`` set to the interval in seconds (``5``). A
line is printed at most once per interval, when a fetch arrives::

    streamml flow.in: 120,000 events read, 41,250/s, lag 80,000

The lag is the sum over the source's partitions in this process of
Bytewax's ``bytewax_kafka_consumer_lag`` gauge (librdkafka's statistics,
every second), ``?`` until the first statistics arrive.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any, TextIO

from bytewax.connectors.kafka import BYTEWAX_CONSUMER_LAG_GAUGE

__all__ = ["DEFAULT_EVERY", "PROGRESS_ENV", "Progress", "progress_interval"]

PROGRESS_ENV = "STREAMML_PROGRESS"
"""Environment variable: print source progress every this many seconds (unset, empty or 0: never)."""

DEFAULT_EVERY = timedelta(seconds=5)
"""Interval of ``progress=True``."""


def progress_interval(progress: bool | timedelta | None) -> float | None:
    """Seconds between progress lines for a source's ``progress`` argument, or None for none.

    ``None`` reads ``STREAMML_PROGRESS``; ``True`` is :data:`DEFAULT_EVERY`.

    Examples:
        >>> progress_interval(True), progress_interval(timedelta(seconds=2)), progress_interval(False)
        (5.0, 2.0, None)
    """
    if progress is None:
        value = os.environ.get(PROGRESS_ENV, "").strip()
        try:
            seconds = float(value or 0)
        except ValueError:
            raise ValueError(
                f"{PROGRESS_ENV} must be the seconds between progress lines, e.g. 5; got {value!r}"
            ) from None
        return seconds if seconds > 0 else None
    if progress is True:
        return DEFAULT_EVERY.total_seconds()
    if progress is False:
        return None
    if isinstance(progress, timedelta) and progress > timedelta(0):
        return progress.total_seconds()
    raise ValueError(
        f"progress must be True, False, None or a positive timedelta; got {progress!r}"
    )


def _lag(input_step: str) -> int | None:
    """Summed consumer lag of the partitions read by ``input_step`` here, None before any."""
    total, seen = 0, False
    for metric in BYTEWAX_CONSUMER_LAG_GAUGE.collect():
        for sample in metric.samples:
            if sample.labels.get("step_id") == input_step:
                total += int(sample.value)
                seen = True
    return total if seen else None


class Progress:
    """A ``flat_map_batch`` function on a source's fetches: counts them, prints now and then.

    It returns no items (a branch beside the source), and prints at most
    once per ``every`` seconds, so its cost is one call per Bytewax batch.

    Args:
        label: The source's full step id, first on each line.
        input_step: The step id of the source's input (labels the lag gauge).
        every: Seconds between lines.
        clock: Monotonic seconds (tests pass their own).
        out: Where lines go (stderr by default).

    Examples:
        >>> import io
        >>> ticks = iter([0.0, 1.0, 5.0])
        >>> buf = io.StringIO()
        >>> p = Progress("flow.in", "flow.in.kafka.kafka_input", 4.0, clock=lambda: next(ticks), out=buf)
        >>> p([[1, 2, 3]]), p([[4] * 997]), p([[5] * 600, [6] * 400])
        ([], [], [])
        >>> print(buf.getvalue().strip())
        streamml flow.in: 2,000 events read, 400/s, lag ?
    """

    def __init__(
        self,
        label: str,
        input_step: str,
        every: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        out: TextIO | None = None,
    ) -> None:
        self._label = label
        self._input_step = input_step
        self._every = every
        self._clock = clock
        self._out = out
        self._lock = threading.Lock()
        self._started: float | None = None
        self._next = 0.0
        self._count = 0

    def __call__(self, fetches: list[list[Any]]) -> list[Any]:
        now = self._clock()
        with self._lock:  # workers of one process share it
            self._count += sum(map(len, fetches))
            if self._started is None:
                self._started, self._next = now, now + self._every
                return []
            if now < self._next:
                return []
            self._next = now + self._every
            count, elapsed = self._count, now - self._started
        lag = _lag(self._input_step)
        rate = count / elapsed if elapsed > 0 else 0.0
        line = (
            f"streamml {self._label}: {count:,} events read, {rate:,.0f}/s, "
            f"lag {'?' if lag is None else f'{lag:,}'}\n"
        )
        (self._out or sys.stderr).write(line)
        return []
