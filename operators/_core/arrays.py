"""Small-array NumPy helpers the core calls on every batch.

On the few hundred rows a shard sees per call, a reduction method such as
``a.min()`` spends most of its ~1 µs in NumPy's generic reduction set-up;
``a[a.argmin()]`` gives the same value in about a third of that (NumPy 2.x).
The batch paths of :mod:`.event_time` and the joins use these instead.
"""

from __future__ import annotations

import numpy as np

__all__ = ["highest", "lowest"]


def lowest(a: np.ndarray) -> int:
    """The smallest value of a non-empty integer array, as an ``int``.

    Examples:
        >>> lowest(np.array([5, -2, 9]))
        -2
    """
    return int(a[a.argmin()])


def highest(a: np.ndarray) -> int:
    """The largest value of a non-empty integer array, as an ``int``.

    Examples:
        >>> highest(np.array([5, -2, 9]))
        9
    """
    return int(a[a.argmax()])
