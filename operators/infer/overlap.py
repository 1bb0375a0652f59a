"""The overlap thread: a shard's model calls run beside the dataflow, and come back in order.

ONNX Runtime releases the GIL while it computes, so while a batch is in the
model the dataflow can decode, featurize and batch the next events. Each
shard owns one worker thread (one per model copy with ``copies=N``, so N
calls run at once); up to :data:`MAX_IN_FLIGHT` calls (or one per copy, if
more) may run ahead, and their batches are collected oldest first, so every
key's rows leave in order, whichever call finishes first. A call the
model's recent speed says takes under :data:`OVERLAP_MIN_S` runs inline:
handing it over would cost more than it saves.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Protocol

__all__ = ["COLLECT_EVERY_S", "MAX_IN_FLIGHT", "OVERLAP_MIN_S", "ModelThread"]

# Model calls a shard lets run ahead of the dataflow, and how often it looks whether they are done.
MAX_IN_FLIGHT = 8
COLLECT_EVERY_S = 0.0005
# A model call shorter than this runs inline: handing it to the thread costs more than it saves.
OVERLAP_MIN_S = 0.001


class _HasFuture(Protocol):
    future: Future | None


class ModelThread:
    """A shard's model calls in flight, in the order they were submitted.

    Examples:
        >>> class Job:
        ...     future = None
        >>> t = ModelThread(enabled=True, name="eg")
        >>> t.worth_it(rows=10)  # the first call runs in the thread, to learn the model's speed
        True
        >>> job = Job(); t.submit(job, sum, [1, 2, 3])
        >>> [j.future.result() for j in t.finished(wait=True)]
        [6]
        >>> t.learned(rows=1_000, seconds=0.0005); t.worth_it(rows=100)  # 50 µs: inline
        False
        >>> t.shutdown()
    """

    def __init__(self, *, enabled: bool, name: str, threads: int = 1) -> None:
        self.enabled = enabled
        self._name = name
        self._threads = threads
        self._in_flight: deque[Any] = deque()
        self._pool: ThreadPoolExecutor | None = None
        self._row_seconds: float | None = None  # the model's recent time per row

    def __len__(self) -> int:
        return len(self._in_flight)

    def __iter__(self) -> Iterator[Any]:
        return iter(self._in_flight)

    @property
    def learning(self) -> bool:
        """A call is in flight and the model's speed is not known yet: wait for it first."""
        return self.enabled and self._row_seconds is None and bool(self._in_flight)

    def worth_it(self, rows: int) -> bool:
        """Overlap a call expected to take at least ``OVERLAP_MIN_S`` (the first one: to learn)."""
        if not self.enabled:
            return False
        return self._row_seconds is None or rows * self._row_seconds >= OVERLAP_MIN_S

    def learned(self, rows: int, seconds: float) -> None:
        """Remember the model's speed from a call of ``rows`` rows."""
        if rows and seconds > 0:
            self._row_seconds = seconds / rows

    @property
    def full(self) -> bool:
        return len(self._in_flight) >= max(MAX_IN_FLIGHT, self._threads)

    def submit(self, job: _HasFuture, fn: Callable[..., Any], *args: Any) -> None:
        """Run ``fn(*args)`` in a thread; ``job.future`` gets its result."""
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self._threads, thread_name_prefix=self._name)
        job.future = self._pool.submit(fn, *args)
        self._in_flight.append(job)

    def finished(self, *, wait: bool) -> Iterator[Any]:
        """The jobs whose calls are done, oldest first (all of them, waiting, if ``wait``)."""
        while self._in_flight and (wait or self._in_flight[0].future.done()):
            yield self._in_flight.popleft()

    def oldest(self) -> Any:
        """Take the oldest job off (its call may still be running)."""
        return self._in_flight.popleft()

    def shutdown(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False)
            self._pool = None
