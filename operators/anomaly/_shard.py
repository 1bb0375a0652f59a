"""Many keys' anomaly state in one Bytewax state: routing by shard, not by key.

Bytewax's keyed ``stateful_batch`` routes every item by its key and calls the
logic once per key per batch. The anomaly operators instead group a batch by
key once (:func:`_group_by_shard`), send each of a few shards one item per
batch (keys spread by a stable CRC-32, the same on every worker and process),
and keep one :class:`_ShardLogic` per shard holding a dict of the per-key
logics. Each key sees exactly the calls it would see under keyed routing:
its events in arrival order, a notification when its own wake-up time has
passed, end of input, and it is dropped when it says it can be.
"""

from __future__ import annotations

import heapq
import zlib
from collections.abc import Callable
from datetime import datetime
from typing import Any, Protocol

import bytewax.operators as op
from bytewax.dataflow import Stream
from bytewax.operators import StatefulBatchLogic
from streamml.operators.anomaly import _clock
from streamml.operators.anomaly._clock import _dt, _Reject

__all__: list[str] = []

_MEMO_LIMIT = 1 << 16
_NOT_A_PAIR = object()  # stands for "this item is not a (key, event) pair" in the grouping loop

Grouped = tuple[dict[str, list[Any]], list[Any]]  # events by key (arrival order), bad items


class _KeyLogic(Protocol):
    """What a per-key logic offers its shard: the StatefulBatchLogic calls, plus its wake time."""

    def on_batch(self, values: list[Any]) -> tuple[list[Any], bool]: ...
    def on_notify(self) -> tuple[list[Any], bool]: ...
    def on_eof(self) -> tuple[list[Any], bool]: ...
    def snapshot(self) -> Any: ...
    def due_us(self) -> int | None:
        """System time (µs since the epoch) to be notified at, or None."""
        ...


class _NotAPair(Exception):
    """A batch holds an item that is not a ``(str key, event)`` pair."""


def _group_pairs(items: list[tuple[Any, Any]], by_key: dict[str, list[Any]]) -> None:
    """Group tuples by key; raise on an item that is not a ``(str, event)`` pair."""
    get = by_key.get
    for key, event in items:
        events = get(key)
        if events is None:
            if not isinstance(key, str):
                raise _NotAPair
            events = by_key[key] = []
        events.append(event)


def _group_each(items: list[Any], by_key: dict[str, list[Any]], bad: list[Any]) -> None:
    """Group items by key, putting those that are not ``(str, event)`` pairs in ``bad``."""
    get = by_key.get
    for item in items:
        try:
            events = get(item[0]) if isinstance(item, tuple) and len(item) == 2 else _NOT_A_PAIR
        except TypeError:  # an unhashable key
            events = _NOT_A_PAIR
        if events is None:
            if not isinstance(item[0], str):
                bad.append(item)
                continue
            events = by_key[item[0]] = []
        elif events is _NOT_A_PAIR:
            bad.append(item)
            continue
        events.append(item[1])


def _group_by_shard(shards: int) -> Callable[[list[Any]], list[tuple[str, Grouped]]]:
    """A batch function: ``(key, event)`` items into ``(shard id, (events by key, bad items))``.

    Events keep their arrival order within a key. Items that are not a
    2-tuple with a ``str`` key go to shard ``"0"`` as bad items, to be
    rejected there. The shard of recent keys is memoised (at most 65,536
    keys; the memo is cleared when full).

    Examples:
        >>> group = _group_by_shard(2)
        >>> group([("a", 1), ("b", 2), ("a", 3), (4, 5), "x"])
        [('0', ({}, [(4, 5), 'x'])), ('1', ({'a': [1, 3], 'b': [2]}, []))]
        >>> _group_by_shard(1)([("a", 1), ("b", 2), ("a", 3)])
        [('0', ({'a': [1, 3], 'b': [2]}, []))]
    """
    names = [str(i) for i in range(shards)]
    memo: dict[str, int] = {}
    crc = zlib.crc32

    def group(items: list[Any]) -> list[tuple[str, Grouped]]:
        by_key: dict[str, list[Any]] = {}
        bad: list[Any] = []
        try:
            if set(map(type, items)) - {tuple}:  # a tuple subclass is fine, but goes the long way
                raise _NotAPair
            _group_pairs(items, by_key)
        except (_NotAPair, TypeError, ValueError):  # a bad item: sort the batch out item by item
            by_key.clear()
            _group_each(items, by_key, bad)
        if shards == 1:
            return [(names[0], (by_key, bad))] if by_key or bad else []
        if len(memo) > _MEMO_LIMIT:
            memo.clear()
        parts: list[dict[str, list[Any]]] = [{} for _ in names]
        for key, events in by_key.items():
            shard = memo.get(key)
            if shard is None:
                shard = memo[key] = crc(key.encode("utf-8", "surrogatepass")) % shards
            parts[shard][key] = events
        return [
            (name, (part, bad if i == 0 else []))
            for i, (name, part) in enumerate(zip(names, parts))
            if part or (i == 0 and bad)
        ]

    return group


def _merge(values: list[Grouped]) -> Grouped:
    """One ``(events by key, bad items)`` from several, order kept within each key.

    Examples:
        >>> _merge([({"a": [1], "b": [2]}, ["x"]), ({"b": [3], "c": [4]}, [])])
        ({'a': [1], 'b': [2, 3], 'c': [4]}, ['x'])
    """
    if len(values) == 1:
        return values[0]
    by_key: dict[str, list[Any]] = {}
    bad: list[Any] = []
    for part, part_bad in values:
        for key, events in part.items():
            have = by_key.get(key)
            if have is None:
                by_key[key] = list(events)
            else:
                have.extend(events)
        bad.extend(part_bad)
    return by_key, bad


def _bad_item(item: Any) -> tuple[None, _Reject]:
    """A rejection, without key, for an item that is not a ``(str key, event)`` pair."""
    if type(item) is tuple and len(item) == 2:
        why = f"expected a (str key, event) pair; the key is {type(item[0]).__name__}"
    else:
        why = f"expected a (str key, event) pair; got {type(item).__name__}"
    return None, _Reject(("BadItem", why, item))


class _ShardLogic(StatefulBatchLogic):
    """One shard: the per-key logics of many keys, and when each wants to be woken.

    Outputs are lists of ``(key, value)`` (``key`` is None for a bad item's
    rejection), one list per call that has any.

    Eviction: a key is removed as soon as its logic says it can be dropped
    (the rule of the per-key logic); nothing else is kept per key. The heap
    of wake times holds at most one live entry per key and is rebuilt when
    stale entries outnumber live ones.
    """

    def __init__(self, make: Callable[[Any], _KeyLogic], resume: dict[str, Any] | None) -> None:
        self.make = make
        self.keys: dict[str, _KeyLogic] = {}
        # key -> its wake time (system µs); heap entries that differ from it are stale
        self.due: dict[str, int] = {}
        self.heap: list[tuple[int, str]] = []
        self.snaps: dict[str, Any] = {}  # the last snapshot of each key
        self.dirty: set[str] = set()  # keys whose state changed since the last snapshot
        if resume is not None:
            for key, snap in resume.items():
                self.keys[key] = make(snap)
                self._after(key, False)

    def _after(self, key: str, discard: bool) -> None:
        """Record a call to ``key``'s logic: drop it, or (re)schedule its wake time."""
        self.dirty.add(key)
        if discard:
            del self.keys[key]
            self.due.pop(key, None)
            return
        due = self.keys[key].due_us()
        if due is None:
            self.due.pop(key, None)
        elif self.due.get(key) != due:
            self.due[key] = due
            heapq.heappush(self.heap, (due, key))

    def on_batch(self, values: list[Grouped]) -> tuple[list[list], bool]:
        by_key, bad = _merge(values)
        out = [_bad_item(item) for item in bad]
        keys, make, due, heap = self.keys, self.make, self.due, self.heap
        self.dirty.update(by_key)
        for key, events in by_key.items():  # _after, inlined: this loop runs once per key per batch
            logic = keys.get(key)
            if logic is None:
                logic = keys[key] = make(None)
            got, discard = logic.on_batch(events)
            if got:
                out.extend([(key, v) for v in got])
            if discard:
                del keys[key]
                due.pop(key, None)
                continue
            at = logic.due_us()
            if at is None:
                due.pop(key, None)
            elif due.get(key) != at:
                due[key] = at
                heapq.heappush(heap, (at, key))
        return ([out] if out else []), False

    def on_notify(self) -> tuple[list[list], bool]:
        """Notify every key whose wake time has passed (the earliest one at least: it is why we were called)."""
        now = _clock._now_us()
        heap, due = self.heap, self.due
        ready: list[str] = []
        while heap:
            at, key = heap[0]
            if due.get(key) != at:
                heapq.heappop(heap)
                continue
            if at > now and ready:
                break
            heapq.heappop(heap)
            del due[key]
            ready.append(key)
            if at > now:
                break
        out: list = []
        for key in ready:
            got, discard = self.keys[key].on_notify()
            if got:
                out.extend([(key, v) for v in got])
            self._after(key, discard)
        return ([out] if out else []), False

    def on_eof(self) -> tuple[list[list], bool]:
        out: list = []
        for key, logic in list(self.keys.items()):
            got, discard = logic.on_eof()
            if got:
                out.extend([(key, v) for v in got])
            self._after(key, discard)
        return ([out] if out else []), False

    def notify_at(self) -> datetime | None:
        heap, due = self.heap, self.due
        if len(heap) > 2 * len(due) + 64:
            self.heap = heap = [(at, key) for key, at in due.items()]
            heapq.heapify(heap)
        while heap and due.get(heap[0][1]) != heap[0][0]:
            heapq.heappop(heap)
        return _dt(heap[0][0]) if heap else None

    def snapshot(self) -> dict[str, Any]:
        snaps, keys = self.snaps, self.keys
        for key in self.dirty:
            logic = keys.get(key)
            if logic is None:
                snaps.pop(key, None)
            else:
                snaps[key] = logic.snapshot()
        self.dirty.clear()
        return dict(snaps)


def _unshard(batch: list[tuple[str, list]]) -> list[tuple[str | None, Any]]:
    """Flatten the shards' output lists into their ``(key, value)`` items.

    Examples:
        >>> _unshard([("0", [("a", 1), ("b", 2)]), ("3", [("c", 3)])])
        [('a', 1), ('b', 2), ('c', 3)]
    """
    if len(batch) == 1:
        return batch[0][1]
    return [kv for _, chunk in batch for kv in chunk]


def per_key_in_shards(
    up: Stream[Any], shards: int, make_key_logic: Callable[[Any], _KeyLogic]
) -> Stream[tuple[str | None, Any]]:
    """Run one ``make_key_logic(snapshot or None)`` per key, many keys to a shard state.

    The steps (``shard``, ``shard_state``, ``unshard``) are added to the
    calling operator; out come the logics' ``(key, value)`` items.
    """
    sharded = op.flat_map_batch("shard", up, _group_by_shard(shards))
    state = op.stateful_batch(
        "shard_state", sharded, lambda resume: _ShardLogic(make_key_logic, resume)
    )
    return op.flat_map_batch("unshard", state, _unshard)
