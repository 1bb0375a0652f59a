"""Shared plumbing of the joins: key shards, tagged sides, batched timestamps, output splitting.

Bytewax's keyed state calls Python once per key per activation. A join keyed
by the user's key (100,000 devices, millions of event ids) would pay that call
for nearly every event, so the joins route each ``(key, value)`` to one of a
fixed number of *shards* (``crc32(key) % shards``, the same in every process)
and keep a dict per shard: one Python call handles a whole batch. The shard
also holds the watermark, which so advances with all the shard's traffic
instead of stalling on an idle key.

Every shard step emits at most one item per call: a triple
``(oks, errs, late)`` of lists, split afterwards by :func:`split_outputs`.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

import bytewax.operators as op
from bytewax.dataflow import Stream, operator
from bytewax.operators import StatefulBatchLogic

from streamml.errors import Rejected, reject

__all__ = [
    "LEFT",
    "RIGHT",
    "CONTROL",
    "Chunked",
    "MISSING",
    "NEVER",
    "late_record",
    "never",
    "pick",
    "Outputs",
    "micros",
    "shard_names",
    "split_outputs",
    "tag_sides",
    "timestamps",
    "check_shards",
    "to_datetime",
]

LEFT = 0
RIGHT = 1
CONTROL = 2

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_US = timedelta(microseconds=1)


class _Missing:
    """The "no default given" marker (a class so it pickles as itself)."""

    def __repr__(self) -> str:
        return "MISSING"

    def __reduce__(self) -> str:
        return "MISSING"


MISSING: Any = _Missing()


NEVER = -(2**62)
"""A timestamp before every real one: the watermark before any event."""


def never(side: int, value: Any) -> bool:
    """A ``skip`` for :func:`timestamps` that skips nothing."""
    return False


def late_record(step_id: str, t: int, watermark: int, original: Any) -> Rejected:
    """The ``Late`` rejection of an item ``watermark - t`` microseconds too old."""
    behind = (watermark - t) / 1e6
    return Rejected(step_id, "Late", f"{behind:g} s older than the watermark", original)


def micros(delta: timedelta) -> int:
    """A timedelta as integer microseconds (the joins' internal time unit)."""
    return delta // _US


def to_datetime(us: int) -> datetime:
    """Integer microseconds since the epoch as an aware UTC datetime."""
    return _EPOCH + timedelta(microseconds=us)


def check_shards(shards: int) -> None:
    if shards < 1:
        raise ValueError(f"shards must be >= 1; got {shards}")


def shard_names(shards: int) -> list[str]:
    return [str(i) for i in range(shards)]


@operator
def tag_sides(
    step_id: str,
    left: Stream[tuple[str, Any]],
    right: Stream[Any],
    shards: int,
    control: type | None = None,
) -> Stream[tuple[str, list[tuple[int, str, Any]]]]:
    """Route both sides of a join to shards: ``(shard, [(side, key, value), ...])``.

    Each upstream batch gives one chunk per shard it touches, in arrival
    order, so the shard step receives a handful of lists instead of every
    item (Bytewax's routing and grouping cost is per item); wrap the shard
    logic in :class:`Chunked` to see the items one by one again.

    Items of type ``control`` on the right side (bootstrap markers) are not
    keyed: each is sent to every shard as ``(CONTROL, "", item)``, behind the
    rows that came before it on the same stream.
    """
    names = shard_names(shards)

    def tagger(side: int) -> Callable[[list[Any]], list[tuple[str, list]]]:
        def tag(batch: list[tuple[str, Any]]) -> list[tuple[str, list]]:
            crc = zlib.crc32
            chunks: dict[str, list] = {}
            for k, v in batch:
                name = names[crc(k.encode()) % shards]
                chunk = chunks.get(name)
                if chunk is None:
                    chunks[name] = [(side, k, v)]
                else:
                    chunk.append((side, k, v))
            return list(chunks.items())

        return tag

    def tag_with_control(batch: list[Any]) -> list[tuple[str, list]]:
        crc = zlib.crc32
        chunks: dict[str, list] = {}
        for item in batch:
            if type(item) is control:
                for name in names:
                    chunks.setdefault(name, []).append((CONTROL, "", item))
            else:
                k, v = item
                chunks.setdefault(names[crc(k.encode()) % shards], []).append((RIGHT, k, v))
        return list(chunks.items())

    return op.merge(
        "merge",
        op.flat_map_batch("shard_left", left, tagger(LEFT)),
        op.flat_map_batch(
            "shard_right", right, tagger(RIGHT) if control is None else tag_with_control
        ),
    )


class Chunked(StatefulBatchLogic[list, Any, Any]):
    """A shard logic fed the chunks of :func:`tag_sides`: it sees their items, in order.

    Everything else (notifications, end of input, snapshots) is the wrapped
    logic's own, so its snapshots are the same as without the wrapper.

    Examples:
        >>> class Echo(StatefulBatchLogic):
        ...     def on_batch(self, values):
        ...         return [values], False
        ...     def snapshot(self):
        ...         return None
        >>> Chunked(Echo()).on_batch([[(0, "a", 1), (0, "b", 2)], [(1, "a", 3)]])
        ([[(0, 'a', 1), (0, 'b', 2), (1, 'a', 3)]], False)
    """

    def __init__(self, inner: StatefulBatchLogic) -> None:
        self.inner = inner

    def on_batch(self, values: list[list]) -> tuple[Iterable[Any], bool]:
        if len(values) == 1:
            return self.inner.on_batch(values[0])
        return self.inner.on_batch([x for chunk in values for x in chunk])

    def on_notify(self) -> tuple[Iterable[Any], bool]:
        return self.inner.on_notify()

    def on_eof(self) -> tuple[Iterable[Any], bool]:
        return self.inner.on_eof()

    def notify_at(self) -> datetime | None:
        return self.inner.notify_at()

    def snapshot(self) -> Any:
        return self.inner.snapshot()


def timestamps(
    step_id: str,
    batch: list[tuple[int, str, Any]],
    getters: tuple[Callable[[Any], datetime], ...],
    skip: Callable[[int, Any], bool],
    errs: list[Rejected],
) -> list[tuple[int, str, Any, int]]:
    """Add integer-microsecond timestamps to a batch of ``(side, key, value)``.

    Items for which ``skip(side, value)`` is true get timestamp 0 without
    calling a getter (control items, tombstones). A getter that raises or
    returns something that is not an aware datetime rejects just that item
    (into ``errs``); the rest of the batch keeps the fast path.
    """
    try:
        if skip is never and getters[0] is getters[-1]:  # one getter, nothing skipped: no calls
            get, epoch, us = getters[0], _EPOCH, _US
            return [(s, k, v, (get(v) - epoch) // us) for s, k, v in batch]
        return [
            (s, k, v, 0 if skip(s, v) else (getters[s](v) - _EPOCH) // _US) for s, k, v in batch
        ]
    except Exception:  # noqa: BLE001 - some item is bad; find it item by item
        pass
    out = []
    for s, k, v in batch:
        try:
            out.append((s, k, v, 0 if skip(s, v) else (getters[s](v) - _EPOCH) // _US))
        except Exception as exc:  # noqa: BLE001 - bad data goes to errs, never raises
            errs.append(reject(step_id, exc, (k, v)))
    return out


@dataclass(frozen=True)
class Outputs:
    """The split streams of a shard step."""

    oks: Stream[Any]
    errs: Stream[Rejected]
    late: Stream[Rejected]


def pick(i: int) -> Callable[[list[tuple[str, tuple[list, ...]]]], Iterable[Any]]:
    """A ``flat_map_batch`` function taking list ``i`` of each shard step's output tuple."""

    def take(batch: list[tuple[str, tuple[list, ...]]]) -> list[Any]:
        return [x for _, lists in batch for x in lists[i]]

    return take


@operator
def split_outputs(step_id: str, up: Stream[tuple[str, tuple[list, list, list]]]) -> Outputs:
    """Unpack the shard steps' ``(shard, (oks, errs, late))`` items into three streams."""
    return Outputs(
        oks=op.flat_map_batch("oks", up, pick(0)),
        errs=op.flat_map_batch("errs", up, pick(1)),
        late=op.flat_map_batch("late", up, pick(2)),
    )
