"""Routing keyed items to a few shard states in whole batches.

Bytewax calls a stateful logic once per key per batch, so 1,000 keys mean
1,000 small Python calls. Grouping a batch by a stable hash of the key into
``shards`` sub-batches instead gives each shard state one large batch to work
on with NumPy, and still sends every key to the same state on every worker
(CRC-32 is stable across processes, unlike ``hash``).
"""

from __future__ import annotations

import zlib
from typing import Any

__all__ = ["group_by_shard"]


def group_by_shard(items: list[Any], shards: int) -> list[tuple[str, list[Any]]]:
    """Split ``(key, value)`` items into ``(shard id, items)`` pairs, order kept within a shard.

    Items whose key is not a ``str`` go to shard ``"0"``, where the state
    rejects them.

    Examples:
        >>> group_by_shard([("a", 1), ("b", 2), ("a", 3)], 1)
        [('0', [('a', 1), ('b', 2), ('a', 3)])]
        >>> sorted(len(part) for _, part in group_by_shard([(str(i), i) for i in range(100)], 4))
        [24, 24, 26, 26]
    """
    if shards == 1:
        return [("0", items)]
    parts: dict[int, list[Any]] = {}
    crc = zlib.crc32
    for item in items:
        try:
            shard = crc(item[0].encode()) % shards
        except (AttributeError, TypeError, IndexError, KeyError):
            shard = 0
        part = parts.get(shard)
        if part is None:
            parts[shard] = [item]
        else:
            part.append(item)
    return [(str(shard), part) for shard, part in parts.items()]
