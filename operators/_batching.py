"""The dynamic batcher: a FIFO of arrived chunks cut into batches by size and by age.

Events arrive in chunks: whatever Bytewax hands a step at once, as a list of
events or as one ``polars.DataFrame``. A batch is due when ``max_batch`` rows
are waiting, or when the oldest waiting row has waited ``max_wait`` — then
everything waiting goes, in batches of at most ``max_batch`` rows. With
``max_wait`` 0 every arrival is run at once. Order is first in, first out, so
each key's rows leave in the order they came.

Small chunks are joined into one batch (lists concatenated, frames with
``pl.concat``) and a big chunk is sliced (a frame slice is a zero-copy view).
A batch never mixes kinds of chunk: rows and frames, or frames with different
schemas, which ``pl.concat`` cannot stack; a batch ends where the kind
changes.

Eviction: after each :meth:`DynamicBatcher.due` fewer than ``max_batch``
rows wait, none longer than ``max_wait`` (the owner asks for a notification
at :meth:`DynamicBatcher.deadline`), and everything is flushed at end of
input.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from typing import Any, Generic, TypeVar

import polars as pl

__all__ = ["DynamicBatcher"]

C = TypeVar("C", list, pl.DataFrame)

# A notification may fire a hair before the deadline by another clock;
# treat "almost due" as due rather than sleeping again for microseconds.
_SLACK_S = 1e-4


def _kind(chunk: Any) -> Any:
    """What chunks must share to be joined into one batch."""
    return chunk.schema if isinstance(chunk, pl.DataFrame) else list


def _piece(chunk: Any, offset: int, count: int) -> Any:
    if isinstance(chunk, pl.DataFrame):
        return chunk.slice(offset, count)
    return chunk[offset : offset + count]


def _join(pieces: list[Any]) -> Any:
    if len(pieces) == 1:
        return pieces[0]
    if isinstance(pieces[0], pl.DataFrame):
        return pl.concat(pieces, how="vertical", rechunk=False)
    return [x for piece in pieces for x in piece]


class DynamicBatcher(Generic[C]):
    """Queue chunks of rows and cut them into batches bounded by size and waiting time.

    A chunk is a list of events or a ``polars.DataFrame``; a batch is one of
    the same type. Times are ``time.monotonic()`` seconds, given by the caller.

    Examples:
        >>> b = DynamicBatcher(max_batch=3, max_wait_s=0.010)
        >>> b.push(["a", "b"], now=0.0)
        >>> [batch for batch, _ in b.due(now=0.001)]
        []
        >>> b.deadline()
        0.01
        >>> b.push(["c", "d"], now=0.002)
        >>> [batch for batch, _ in b.due(now=0.002)]
        [['a', 'b', 'c']]
        >>> [(batch, arrivals) for batch, arrivals in b.due(now=0.012)]
        [(['d'], [(1, 0.002)])]

        Frames are joined and sliced the same way:

        >>> import polars as pl
        >>> b.push(pl.DataFrame({"x": [1, 2]}), now=0.0)
        >>> b.push(pl.DataFrame({"x": [3, 4, 5, 6]}), now=0.001)
        >>> [batch["x"].to_list() for batch, _ in b.flush()]
        [[1, 2, 3], [4, 5, 6]]
    """

    def __init__(self, *, max_batch: int, max_wait_s: float) -> None:
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        # Each entry: [arrival time, chunk, offset of the first row not yet taken, kind].
        self._chunks: deque[list] = deque()
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def push(self, chunk: C, now: float) -> None:
        """Queue a chunk of rows that arrived together at ``now``."""
        if len(chunk):
            self._chunks.append([now, chunk, 0, _kind(chunk)])
            self._size += len(chunk)

    def deadline(self) -> float | None:
        """When the oldest waiting row must run, or ``None`` when nothing waits."""
        return self._chunks[0][0] + self.max_wait_s if self._chunks else None

    def pending(self) -> list[C]:
        """Every waiting chunk (its rows not yet taken), oldest first (for snapshots)."""
        return [
            chunk if offset == 0 else _piece(chunk, offset, len(chunk) - offset)
            for _, chunk, offset, _ in self._chunks
        ]

    def due(self, now: float) -> Iterator[tuple[C, list[tuple[int, float]]]]:
        """Yield the batches to run now, each with ``(count, arrival time)`` runs."""
        while self._size >= self.max_batch:
            yield self._take(self.max_batch)
        if self._chunks and now + _SLACK_S >= self._chunks[0][0] + self.max_wait_s:
            yield from self.flush()

    def flush(self) -> Iterator[tuple[C, list[tuple[int, float]]]]:
        """Yield everything waiting, in batches of at most ``max_batch`` rows."""
        while self._size:
            yield self._take(self.max_batch)

    def _take(self, n: int) -> tuple[C, list[tuple[int, float]]]:
        head = self._chunks[0]
        arrived, chunk, offset, kind = head
        if offset == 0 and len(chunk) == n:  # the common case: one chunk is one batch
            self._chunks.popleft()
            self._size -= n
            return chunk, [(n, arrived)]
        pieces: list[Any] = []
        arrivals = []
        taken = 0
        while self._chunks and taken < n:
            head = self._chunks[0]
            arrived, chunk, offset, chunk_kind = head
            if chunk_kind is not kind and chunk_kind != kind:
                break  # rows and frames, or frames of two schemas, are not joined
            count = min(n - taken, len(chunk) - offset)
            pieces.append(_piece(chunk, offset, count))
            arrivals.append((count, arrived))
            taken += count
            if offset + count == len(chunk):
                self._chunks.popleft()
            else:
                head[2] = offset + count
        self._size -= taken
        return _join(pieces), arrivals
