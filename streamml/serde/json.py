"""JSON values, decoded and encoded in batches with orjson.

orjson is 3–4× faster than the standard library at both ends (about 400k
loads/s against 100–140k here), and JSON decoding is often the per-message
floor of a pipeline, so it earns its place as a dependency.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson

from streamml.serde.base import SerdeError, map_each

__all__ = ["JsonSerde"]


def _default(obj: Any) -> Any:
    """Encode what orjson does not know natively: NumPy scalars, sets, bytes."""
    if hasattr(obj, "item"):  # NumPy scalar
        return obj.item()
    if isinstance(obj, (set, frozenset)):
        return sorted(obj)
    if isinstance(obj, (bytes, bytearray)):
        return obj.decode("utf-8", errors="replace")
    raise TypeError(f"{type(obj).__name__} is not JSON serializable")


class JsonSerde:
    """JSON in and out; a ``None`` payload (a tombstone) decodes to ``None``.

    Encoding handles ``datetime`` (RFC 3339), NumPy arrays and scalars. NaN and
    infinity, which JSON cannot represent, are written as ``null`` by orjson;
    pass ``allow_nan=False`` to reject such values instead.

    Examples:
        >>> serde = JsonSerde()
        >>> serde.decode_batch([b'{"t": 1.5}', b'{broken', None])
        [{'t': 1.5}, SerdeError('unexpected character...'), None]
        >>> serde.encode_batch([{"t": 1.5}])
        [b'{"t":1.5}']
    """

    def __init__(self, *, allow_nan: bool = True) -> None:
        self._allow_nan = allow_nan
        self._options = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS

    def decode_batch(self, payloads: Sequence[bytes | None]) -> list[Any]:
        loads = orjson.loads
        if None not in payloads:
            return map_each(loads, payloads, "DecodeError")
        return map_each(lambda p: None if p is None else loads(p), payloads, "DecodeError")

    def _dumps(self, value: Any) -> bytes:
        if not self._allow_nan and _has_non_finite(value):
            raise ValueError("value contains NaN or infinity, which JSON cannot represent")
        return orjson.dumps(value, default=_default, option=self._options)

    def encode_batch(self, values: Sequence[Any]) -> list[bytes | None | SerdeError]:
        if self._allow_nan and _NONE_TYPE not in map(type, values):
            # The usual batch: orjson called straight from one comprehension, no
            # Python function per value (a functools.partial with keywords is slower).
            dumps, options = orjson.dumps, self._options
            try:
                return [dumps(v, default=_default, option=options) for v in values]
            except Exception:  # noqa: BLE001 - map_each finds the culprits
                pass
        return map_each(lambda v: None if v is None else self._dumps(v), values, "EncodeError")


_NONE_TYPE = type(None)


def _has_non_finite(value: Any) -> bool:
    if isinstance(value, float):
        return value != value or value in (float("inf"), float("-inf"))
    if isinstance(value, dict):
        return any(_has_non_finite(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return any(_has_non_finite(v) for v in value)
    return False
