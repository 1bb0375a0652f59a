"""The dynamic batcher: a FIFO of arrived events cut into batches by size and by age.

Events arrive in chunks (whatever Bytewax hands the step at once). A batch is
due when ``max_batch`` events are waiting, or when the oldest waiting event
has waited ``max_wait`` — then everything waiting goes, in batches of at most
``max_batch``. With ``max_wait`` 0 every arrival is run at once. Order is
first in, first out, so each key's events leave in the order they came.

Eviction: after each :meth:`DynamicBatcher.due` fewer than ``max_batch``
events wait, none longer than ``max_wait`` (the owner asks for a notification
at :meth:`DynamicBatcher.deadline`), and everything is flushed at end of
input.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from typing import Generic, TypeVar

__all__ = ["DynamicBatcher"]

T = TypeVar("T")

# A notification may fire a hair before the deadline by another clock;
# treat "almost due" as due rather than sleeping again for microseconds.
_SLACK_S = 1e-4


class DynamicBatcher(Generic[T]):
    """Queue events and cut them into batches bounded by size and waiting time.

    Times are ``time.monotonic()`` seconds, given by the caller.

    Examples:
        >>> b = DynamicBatcher(max_batch=3, max_wait_s=0.010)
        >>> b.push(["a", "b"], now=0.0)
        >>> [items for items, _ in b.due(now=0.001)]
        []
        >>> b.deadline()
        0.01
        >>> b.push(["c", "d"], now=0.002)
        >>> [items for items, _ in b.due(now=0.002)]
        [['a', 'b', 'c']]
        >>> [(items, arrivals) for items, arrivals in b.due(now=0.012)]
        [(['d'], [(1, 0.002)])]
    """

    def __init__(self, *, max_batch: int, max_wait_s: float) -> None:
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        # Each entry: [arrival time, items, offset of the first item not yet taken].
        self._chunks: deque[list] = deque()
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def push(self, items: list[T], now: float) -> None:
        """Queue a chunk of events that arrived together at ``now``."""
        if items:
            self._chunks.append([now, items, 0])
            self._size += len(items)

    def deadline(self) -> float | None:
        """When the oldest waiting event must run, or ``None`` when nothing waits."""
        return self._chunks[0][0] + self.max_wait_s if self._chunks else None

    def pending(self) -> list[T]:
        """Every waiting event, oldest first (for snapshots)."""
        return [x for _, items, offset in self._chunks for x in items[offset:]]

    def due(self, now: float) -> Iterator[tuple[list[T], list[tuple[int, float]]]]:
        """Yield the batches to run now, each with ``(count, arrival time)`` runs."""
        while self._size >= self.max_batch:
            yield self._take(self.max_batch)
        if self._chunks and now + _SLACK_S >= self._chunks[0][0] + self.max_wait_s:
            yield from self.flush()

    def flush(self) -> Iterator[tuple[list[T], list[tuple[int, float]]]]:
        """Yield everything waiting, in batches of at most ``max_batch``."""
        while self._size:
            yield self._take(self.max_batch)

    def _take(self, n: int) -> tuple[list[T], list[tuple[int, float]]]:
        head = self._chunks[0]
        arrived, items, offset = head
        if offset == 0 and len(items) == n:  # the common case: one chunk is one batch
            self._chunks.popleft()
            self._size -= n
            return items, [(n, arrived)]
        batch: list[T] = []
        arrivals = []
        while self._chunks and len(batch) < n:
            head = self._chunks[0]
            arrived, items, offset = head
            count = min(n - len(batch), len(items) - offset)
            batch.extend(items[offset : offset + count])
            arrivals.append((count, arrived))
            if offset + count == len(items):
                self._chunks.popleft()
            else:
                head[2] = offset + count
        self._size -= len(batch)
        return batch, arrivals
