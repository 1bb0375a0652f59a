"""Routing ``(key, event)`` rows to a few shard states in whole batches (the legacy row path).

Bytewax calls a stateful logic once per key per batch, so 1,000 keys mean
1,000 small Python calls. Grouping a batch by a stable hash of the key into
``shards`` sub-batches instead gives each shard state one large batch to work
on with NumPy, and still sends every key to the same state on every worker.

The rule is :func:`streamml.operators._core.keys.route`'s — CRC-32 of the
key's UTF-8 text modulo ``shards`` (stable across processes, unlike
``hash``) — applied to a list of rows with a memo instead of to a frame's
key column (tests check the two agree). Frames go through ``route`` itself.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from typing import Any

__all__ = ["shard_grouper"]

_CACHE_LIMIT = 1 << 16


def shard_grouper(shards: int) -> Callable[[list[Any]], list[tuple[str, list[Any]]]]:
    """A batch function splitting ``(key, value)`` items into ``(shard id, items)`` pairs.

    Order is kept within a shard. Items whose key is not a ``str`` go to
    shard ``"0"``, where the state rejects them. The shard of recent keys is
    memoised (at most 65,536 keys; the memo is cleared when full).

    Examples:
        >>> shard_grouper(1)([("a", 1), ("b", 2), ("a", 3)])
        [('0', [('a', 1), ('b', 2), ('a', 3)])]
        >>> split = shard_grouper(4)([(str(i), i) for i in range(100)])
        >>> sorted(len(part) for _, part in split)
        [24, 24, 26, 26]
    """
    if shards == 1:
        return lambda items: [("0", items)]
    names = [str(i) for i in range(shards)]
    memo: dict[Any, int] = {}
    crc = zlib.crc32

    def group(items: list[Any]) -> list[tuple[str, list[Any]]]:
        if len(memo) > _CACHE_LIMIT:
            memo.clear()
        parts: list[list[Any]] = [[] for _ in names]
        get = memo.get
        for item in items:
            try:
                key = item[0]
                shard = get(key)
                if shard is None:
                    shard = memo[key] = crc(key.encode()) % shards
            except (AttributeError, TypeError, IndexError, KeyError):
                shard = 0
            parts[shard].append(item)
        return [(names[i], part) for i, part in enumerate(parts) if part]

    return group
