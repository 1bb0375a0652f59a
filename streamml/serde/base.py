"""The batch serde protocols, the failure marker, and the trivial serdes."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol, TypeVar, runtime_checkable

__all__ = [
    "BytesSerde",
    "Deserializer",
    "SerdeError",
    "Serializer",
    "StringSerde",
    "is_error",
    "map_each",
]

T = TypeVar("T")
R = TypeVar("R")


class SerdeError(Exception):
    """Marks one payload that could not be decoded, or one value that could not be encoded.

    Serdes return it in place of the result instead of raising it.

    Attributes:
        kind: A short machine-readable kind (``"DecodeError"``,
            ``"UnknownSchema"``, ``"EncodeError"``, ...).
    """

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.kind, str(self)))


def is_error(item: object) -> bool:
    """True when ``item`` is a :class:`SerdeError` marker.

    Examples:
        >>> is_error(SerdeError("DecodeError", "bad")), is_error({"a": 1})
        (True, False)
    """
    return type(item) is SerdeError


@runtime_checkable
class Deserializer(Protocol):
    """Turns a batch of payloads into values (a :class:`SerdeError` for each failure)."""

    def decode_batch(self, payloads: Sequence[bytes | None]) -> list[Any]: ...


@runtime_checkable
class Serializer(Protocol):
    """Turns a batch of values into payloads (a :class:`SerdeError` for each failure)."""

    def encode_batch(self, values: Sequence[Any]) -> list[bytes | None | SerdeError]: ...


def map_each(
    fn: Callable[[T], R], items: Sequence[T], kind: str, describe: Callable[[Exception], str] = str
) -> list[R | SerdeError]:
    """Apply ``fn`` to every item, turning each exception into a :class:`SerdeError`.

    The whole batch is first tried in one ``map`` (the fast path, with no
    per-item ``try`` and, for a function written in C, no Python bytecode per
    item); only a batch with a failure is redone item by item.

    Examples:
        >>> map_each(int, ["1", "x", "3"], "DecodeError")
        [1, SerdeError("invalid literal for int() with base 10: 'x'"), 3]
    """
    try:
        return list(map(fn, items))
    except Exception:  # noqa: BLE001 - fall back to item-by-item to find the culprits
        pass
    out: list[R | SerdeError] = []
    for item in items:
        try:
            out.append(fn(item))
        except Exception as exc:  # noqa: BLE001 - every failure becomes a marker
            out.append(SerdeError(kind, describe(exc)))
    return out


def _none_safe(fn: Callable[[Any], Any]) -> Callable[[Any], Any]:
    def wrapped(item: Any) -> Any:
        return None if item is None else fn(item)

    return wrapped


class BytesSerde:
    """Pass bytes through unchanged (``None`` stays ``None``).

    Examples:
        >>> BytesSerde().decode_batch([b"a", None])
        [b'a', None]
        >>> BytesSerde().encode_batch([b"a", "no"])
        [b'a', SerdeError('expected bytes, got str')]
    """

    def decode_batch(self, payloads: Sequence[bytes | None]) -> list[Any]:
        return list(payloads)

    def encode_batch(self, values: Sequence[Any]) -> list[bytes | None | SerdeError]:
        return [
            v
            if v is None or isinstance(v, bytes)
            else SerdeError("EncodeError", f"expected bytes, got {type(v).__name__}")
            for v in values
        ]


class StringSerde:
    """UTF-8 text (``None`` stays ``None``); typical for Kafka keys.

    Examples:
        >>> StringSerde().decode_batch([b"pump-1", b"\\xff", None])
        ['pump-1', SerdeError("'utf-8' codec can't decode byte 0xff in position 0: invalid start byte"), None]
    """

    def decode_batch(self, payloads: Sequence[bytes | None]) -> list[Any]:
        if set(map(type, payloads)) <= _BYTES:  # no None: decode in C, no wrapper per item
            return map_each(bytes.decode, payloads, "DecodeError")
        return map_each(_none_safe(bytes.decode), payloads, "DecodeError")

    def encode_batch(self, values: Sequence[Any]) -> list[bytes | None | SerdeError]:
        if set(map(type, values)) <= _STR:  # str(v) is v: encode in C, no wrapper per item
            return map_each(str.encode, values, "EncodeError")
        return map_each(_none_safe(_str_encode), values, "EncodeError")


def _str_encode(value: Any) -> bytes:
    return str(value).encode()


_BYTES = frozenset({bytes})
_STR = frozenset({str})
