"""Progress lines of a Kafka source on stderr: events read, rate, consumer lag.

Opt-in, for runs under ``python -m bytewax.run`` where no example script
prints anything: ``kafka.source(..., progress=True)``, or the environment
variable ``STREAMML_PROGRESS`` set to the interval in seconds (``5``). A
line is printed at most once per interval, when a fetch arrives::

    streamml flow.in: 120,000 events read, 41,250/s, lag 80,000

and, when a bounded run (``tail=False``) has read every partition to its
end, a last line with the time it took::

    streamml flow.in: 400,000 events read, 44,100/s, 9.07 s, end of input

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
from datetime import datetime, timedelta
from typing import Any, TextIO

from bytewax.connectors.kafka import BYTEWAX_CONSUMER_LAG_GAUGE
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition

__all__ = ["DEFAULT_EVERY", "PROGRESS_ENV", "Progress", "WithProgress", "progress_interval"]

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
    """Counts a source's fetches, prints a line now and then, and a last one at the end of input.

    :class:`WithProgress` calls it: :meth:`opened` for each partition it
    builds, :meth:`read` with each batch of fetches (a line at most once
    per ``every`` seconds, so its cost is one call per Bytewax batch), and
    :meth:`ended` when a partition reaches its end in a bounded run. When
    every partition opened in this process has ended, the last line says
    how many events were read, in how long::

        streamml flow.in: 2,000 events read, 400/s, 5.00 s, end of input

    Args:
        every: Seconds between lines.
        clock: Monotonic seconds (tests pass their own).
        out: Where lines go (stderr by default).

    Examples:
        >>> import io
        >>> ticks = iter([0.0, 0.5, 1.0, 5.0, 6.0])
        >>> buf = io.StringIO()
        >>> p = Progress(4.0, clock=lambda: next(ticks), out=buf)
        >>> p.opened("flow.in.kafka.kafka_input")
        >>> p.read([[1, 2, 3]]), p.read([[4] * 997]), p.read([[5] * 600, [6] * 400])
        (None, None, None)
        >>> p.ended()
        >>> print(buf.getvalue().strip())
        streamml flow.in: 2,000 events read, 400/s, lag ?
        streamml flow.in: 2,000 events read, 333/s, 6.00 s, end of input
    """

    def __init__(
        self,
        every: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        out: TextIO | None = None,
    ) -> None:
        self._every = every
        self._clock = clock
        self._out = out
        self._lock = threading.Lock()  # workers of one process share it
        self._input_step = self._label = ""
        self._open = 0
        self._started: float | None = None
        self._next = 0.0
        self._count = 0

    def opened(self, input_step: str) -> None:
        """A partition of ``input_step`` (``{source}.kafka.kafka_input``) starts; the first starts the clock."""
        now = self._clock()
        with self._lock:
            self._input_step, self._label = input_step, input_step.rsplit(".", 2)[0]
            self._open += 1
            if self._started is None:
                self._started, self._next = now, now + self._every

    def read(self, fetches: list[list[Any]]) -> None:
        """Count a batch of fetches; print a line when ``every`` seconds have passed."""
        now = self._clock()
        with self._lock:
            self._count += sum(map(len, fetches))
            if now < self._next:
                return
            self._next = now + self._every
            count, elapsed = self._count, now - (self._started or 0.0)
        lag = _lag(self._input_step)
        self._write(f"{self._rate(count, elapsed)}, lag {'?' if lag is None else f'{lag:,}'}")

    def ended(self) -> None:
        """A partition reached its end; after the last one open here, the last line."""
        now = self._clock()
        with self._lock:
            self._open -= 1
            if self._open:
                return
            count, elapsed = self._count, now - (self._started or 0.0)
        self._write(f"{self._rate(count, elapsed)}, {elapsed:,.2f} s, end of input")

    def _rate(self, count: int, elapsed: float) -> str:
        rate = count / elapsed if elapsed > 0 else 0.0
        return f"{count:,} events read, {rate:,.0f}/s"

    def _write(self, text: str) -> None:
        (self._out or sys.stderr).write(f"streamml {self._label}: {text}\n")


class _PartWithProgress(StatefulSourcePartition[Any, Any]):
    """A source partition whose batches and end are reported to a :class:`Progress`."""

    def __init__(self, part: StatefulSourcePartition[Any, Any], progress: Progress) -> None:
        self._part, self._progress = part, progress
        self._ended = False

    def next_batch(self) -> list[Any]:
        try:
            batch = self._part.next_batch()
        except StopIteration:
            if not self._ended:
                self._ended = True
                self._progress.ended()
            raise
        if batch:
            self._progress.read(batch)
        return batch

    def next_awake(self) -> datetime | None:
        return self._part.next_awake()

    def snapshot(self) -> Any:
        return self._part.snapshot()

    def close(self) -> None:
        self._part.close()


class WithProgress(FixedPartitionedSource[Any, Any]):
    """A source of fetches (lists of messages) that reports them to a :class:`Progress`.

    Parts, their names and snapshots are the wrapped source's, so a
    recovery store resumes with or without progress.

    Args:
        source: The source; each item it emits is one fetch.
        every: Seconds between progress lines.
    """

    def __init__(self, source: FixedPartitionedSource[Any, Any], every: float) -> None:
        self._source = source
        self.progress = Progress(every)

    def list_parts(self) -> list[str]:
        return self._source.list_parts()

    def build_part(self, step_id: str, for_part: str, resume_state: Any) -> _PartWithProgress:
        part = self._source.build_part(step_id, for_part, resume_state)
        self.progress.opened(step_id)
        return _PartWithProgress(part, self.progress)
