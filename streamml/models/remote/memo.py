"""Answers kept from a call that raised, so splitting the batch does not score rows twice.

When a service refuses one request of a batch (or answers it with garbage),
the model raises and the inference operator splits the batch in halves to
find the rows at fault, calling the model again on each half. The rows the
service did answer in the failed call are kept here, by their bytes, and the
halves take them from here instead of sending them again: every row is
scored by the service once. An entry is dropped once it is used; the memo
holds at most ``capacity`` rows (the oldest go first — they are then only
sent again).
"""

from __future__ import annotations

import threading
from collections.abc import Mapping

import numpy as np

__all__ = ["AnswerMemo", "row_keys"]


def row_keys(feeds: Mapping[str, np.ndarray], rows: int) -> list[bytes]:
    """One key per row: its bytes in every input.

    Examples:
        >>> row_keys({"x": np.array([[1, 2], [1, 2]], dtype=np.int8)}, 2)
        [b'\\x01\\x02', b'\\x01\\x02']
    """
    arrays = list(feeds.values())
    if len(arrays) == 1:
        only = arrays[0]
        return [only[i].tobytes() for i in range(rows)]
    return [b"\x00".join(a[i].tobytes() for a in arrays) for i in range(rows)]


class AnswerMemo:
    """Rows' answers by row key, bounded; thread-safe.

    Examples:
        >>> memo = AnswerMemo(capacity=2)
        >>> memo.keep([b"a", b"b", b"c"], {"y": np.array([1, 2, 3])})
        >>> len(memo), list(memo.find([b"a", b"c", b"z"]))  # the oldest went first
        (2, [1])
        >>> int(memo.find([b"c"])[0]["y"])
        3
        >>> memo.drop([b"c"]); len(memo)
        1
    """

    def __init__(self, capacity: int) -> None:
        self._capacity = capacity
        self._rows: dict[bytes, dict[str, np.ndarray]] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._rows)

    def keep(self, keys: list[bytes], outputs: Mapping[str, np.ndarray]) -> None:
        """Remember row ``i``'s outputs under ``keys[i]``."""
        with self._lock:
            for i, key in enumerate(keys):
                self._rows.pop(key, None)  # re-inserted as the newest
                self._rows[key] = {name: values[i] for name, values in outputs.items()}
            while len(self._rows) > self._capacity:
                del self._rows[next(iter(self._rows))]

    def find(self, keys: list[bytes]) -> dict[int, dict[str, np.ndarray]]:
        """The known answers, by position in ``keys``."""
        with self._lock:
            return {i: self._rows[k] for i, k in enumerate(keys) if k in self._rows}

    def drop(self, keys: list[bytes]) -> None:
        """Forget rows whose answers were handed out."""
        with self._lock:
            for key in keys:
                self._rows.pop(key, None)
