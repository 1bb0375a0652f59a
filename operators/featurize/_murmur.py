"""MurmurHash3 (x86, 32-bit) of many byte strings at once, with NumPy.

The hash scikit-learn's ``FeatureHasher`` and ``HashingVectorizer`` use
(``sklearn.utils.murmurhash3_32``), so hashed features here land in the same
columns as a model trained with scikit-learn. Vectorised over the strings: one
pass per 4-byte block of the longest string.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["murmurhash3_32", "murmurhash3_32_packed"]

_C1 = np.uint32(0xCC9E2D51)
_C2 = np.uint32(0x1B873593)


def _rotl(x: np.ndarray, r: int) -> np.ndarray:
    return (x << np.uint32(r)) | (x >> np.uint32(32 - r))


def _mix_k(k: np.ndarray) -> np.ndarray:
    return _rotl(k * _C1, 15) * _C2


def murmurhash3_32(keys: Sequence[bytes], seed: int = 0) -> np.ndarray:
    """Signed 32-bit MurmurHash3 of each byte string (``positive=False`` in scikit-learn).

    Examples:
        >>> murmurhash3_32([b"foo", b"", b"hello world"]).tolist()
        [-156908512, 0, 1586663183]
    """
    n = len(keys)
    if n == 0:
        return np.zeros(0, dtype=np.int32)
    lengths = np.fromiter(map(len, keys), dtype=np.int64, count=n)
    return murmurhash3_32_packed(np.frombuffer(b"".join(keys), dtype=np.uint8), lengths, seed)


def murmurhash3_32_packed(flat: np.ndarray, lengths: np.ndarray, seed: int = 0) -> np.ndarray:
    """:func:`murmurhash3_32` of byte strings given packed: their bytes end to end, and lengths.

    The form a polars ``String`` column gives without a Python object per value.

    Examples:
        >>> flat = np.frombuffer(b"foohello world", dtype=np.uint8)
        >>> murmurhash3_32_packed(flat, np.array([3, 0, 11])).tolist()
        [-156908512, 0, 1586663183]
    """
    n = len(lengths)
    if n == 0:
        return np.zeros(0, dtype=np.int32)
    lengths = np.asarray(lengths, dtype=np.int64)
    blocks = lengths // 4
    width = int(blocks.max()) + 1  # room for the zero-padded tail word
    buf = np.zeros((n, width * 4), dtype=np.uint8)
    total = int(lengths.sum())
    if total:
        rows = np.repeat(np.arange(n), lengths)
        starts = np.cumsum(lengths) - lengths
        cols = np.arange(total) - np.repeat(starts, lengths)
        buf[rows, cols] = flat[:total]
    words = buf.view("<u4")
    h = np.full(n, seed & 0xFFFFFFFF, dtype=np.uint32)
    with np.errstate(over="ignore"):
        for b in range(int(blocks.max())):
            active = blocks > b
            h1 = _rotl(h ^ _mix_k(words[:, b]), 13) * np.uint32(5) + np.uint32(0xE6546B64)
            h = np.where(active, h1, h)
        tail = words[np.arange(n), blocks]  # tail bytes, little-endian, zero padded
        h = np.where(lengths % 4 > 0, h ^ _mix_k(tail), h)
        h ^= lengths.astype(np.uint32)
        h ^= h >> np.uint32(16)
        h *= np.uint32(0x85EBCA6B)
        h ^= h >> np.uint32(13)
        h *= np.uint32(0xC2B2AE35)
        h ^= h >> np.uint32(16)
    return h.view(np.int32)
