"""Argument checks every operator runs when the dataflow is built.

A wrong argument must stop the build with a message that says what to give
instead, not pass and turn every event into a dead letter (or crash on the
first batch): ``fields="xy"`` is two fields ``x`` and ``y`` to a loop,
``window=60`` fails deep inside with ``'int' object is not iterable``. Each
check here raises ``ValueError`` naming the argument, what it got (value and
type) and an example of what it takes, and returns the value normalised.

Examples:
    >>> from datetime import timedelta
    >>> names("fields", ["temperature", "vibration"])
    ('temperature', 'vibration')
    >>> names("fields", "xy")
    Traceback (most recent call last):
    ...
    ValueError: fields must be a list of names, e.g. fields=['xy']; got the str 'xy' (a str is a sequence of letters, not of names)
    >>> duration("window", 60)
    Traceback (most recent call last):
    ...
    ValueError: window must be a datetime.timedelta, e.g. window=timedelta(seconds=60); got the int 60
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import Any, Literal

__all__ = [
    "UNKEYED_HINT",
    "count",
    "duration",
    "event_time",
    "flag",
    "function",
    "name",
    "names",
    "number",
    "one_of",
]

UNKEYED_HINT = (
    "key the stream first (op.key_on('key', up, lambda e: e['id'])), or send polars "
    "DataFrames and give key= the key column"
)
"""What to do about an item that is not a ``(key, event)`` pair in a keyed operator's stream."""


def _got(value: Any) -> str:
    return f"the {type(value).__name__} {value!r}"


def name(arg: str, value: Any, *, example: str = "'temperature'") -> str:
    """A field or column name: a non-empty ``str``.

    Examples:
        >>> name("key", "sensor_id")
        'sensor_id'
        >>> name("key", 7)
        Traceback (most recent call last):
        ...
        ValueError: key must be a field or column name (a non-empty str), e.g. key='temperature'; got the int 7
    """
    if not isinstance(value, str) or not value:
        raise ValueError(
            f"{arg} must be a field or column name (a non-empty str), e.g. {arg}={example}; "
            f"got {_got(value)}"
        )
    return value


def names(arg: str, value: Any) -> tuple[str, ...]:
    """A non-empty list (or tuple) of distinct field names; a bare ``str`` is refused.

    A string is iterable, so ``fields="xy"`` would silently mean fields
    ``x`` and ``y``; the message suggests the list the user most likely meant.

    Examples:
        >>> names("fields", ("a", "b"))
        ('a', 'b')
        >>> names("fields", ["a", "a"])
        Traceback (most recent call last):
        ...
        ValueError: fields must not repeat a name; got ['a', 'a']
        >>> names("fields", {"a"})
        Traceback (most recent call last):
        ...
        ValueError: fields must be a list of names, e.g. fields=['temperature', 'pressure']; got the set {'a'}
    """
    if isinstance(value, str):
        raise ValueError(
            f"{arg} must be a list of names, e.g. {arg}=[{value!r}]; got {_got(value)} "
            "(a str is a sequence of letters, not of names)"
        )
    if not isinstance(value, Sequence) or isinstance(value, (bytes, bytearray)) or not value:
        raise ValueError(
            f"{arg} must be a list of names, e.g. {arg}=['temperature', 'pressure']; got {_got(value)}"
        )
    for item in value:
        name(f"each of {arg}", item)
    if len(set(value)) != len(value):
        raise ValueError(f"{arg} must not repeat a name; got {list(value)!r}")
    return tuple(value)


def duration(
    arg: str,
    value: Any,
    *,
    minimum: Literal["any", "zero", "positive"] = "zero",
    optional: bool = False,
) -> timedelta | None:
    """A ``datetime.timedelta`` of at least zero (above zero, or any sign); ``None`` too if ``optional``.

    Numbers are refused rather than guessed at: ``60`` could be seconds or
    milliseconds.

    Examples:
        >>> duration("lateness", timedelta(seconds=2))
        datetime.timedelta(seconds=2)
        >>> duration("ttl", None, optional=True) is None
        True
        >>> duration("lower", timedelta(seconds=-5), minimum="any")
        datetime.timedelta(days=-1, seconds=86395)
        >>> duration("gap", timedelta(0), minimum="positive")
        Traceback (most recent call last):
        ...
        ValueError: gap must be a timedelta > 0, e.g. gap=timedelta(seconds=60); got 0:00:00
    """
    if value is None and optional:
        return None
    if not isinstance(value, timedelta):
        also = " or None" if optional else ""
        raise ValueError(
            f"{arg} must be a datetime.timedelta{also}, e.g. {arg}=timedelta(seconds=60); "
            f"got {_got(value)}"
        )
    if minimum == "positive" and value <= timedelta(0):
        raise ValueError(
            f"{arg} must be a timedelta > 0, e.g. {arg}=timedelta(seconds=60); got {value}"
        )
    if minimum == "zero" and value < timedelta(0):
        raise ValueError(f"{arg} must be a timedelta >= 0; got {value}")
    return value


def count(arg: str, value: Any, *, minimum: int = 1) -> int:
    """An ``int`` (not a ``bool``) of at least ``minimum``.

    Examples:
        >>> count("shards", 4)
        4
        >>> count("min_points", "3")
        Traceback (most recent call last):
        ...
        ValueError: min_points must be an int >= 1; got the str '3'
    """
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{arg} must be an int >= {minimum}; got {_got(value)}")
    return value


def number(arg: str, value: Any) -> float:
    """A finite real number (``int`` or ``float``, not ``bool``, not text), as a ``float``.

    Examples:
        >>> number("open_above", 4)
        4.0
        >>> number("open_above", "4")
        Traceback (most recent call last):
        ...
        ValueError: open_above must be a finite number, e.g. open_above=4.0; got the str '4'
    """
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(float(value))
    ):
        raise ValueError(f"{arg} must be a finite number, e.g. {arg}=4.0; got {_got(value)}")
    return float(value)


def flag(arg: str, value: Any) -> bool:
    """A ``bool``: ``alerts="no"`` would otherwise count as true.

    Examples:
        >>> flag("alerts", "no")
        Traceback (most recent call last):
        ...
        ValueError: alerts must be True or False; got the str 'no'
    """
    if not isinstance(value, bool):
        raise ValueError(f"{arg} must be True or False; got {_got(value)}")
    return value


def event_time(key: Any, timestamp: Any) -> None:
    """``key`` and ``timestamp`` of a keyed event-time operator agree on frames or rows.

    Frames: ``key`` and ``timestamp`` name columns. Rows (``key=None``): the
    stream is ``(key, event)`` pairs and ``timestamp`` is a function of the
    event; a column name there most likely means ``key=`` was forgotten.

    Examples:
        >>> event_time("sensor_id", "ts")
        >>> event_time(None, "ts")
        Traceback (most recent call last):
        ...
        ValueError: with key=None, up is a keyed stream of (key, event) rows and timestamp must be a function event -> timezone-aware datetime (e.g. timestamp=lambda e: e['ts']); got the str 'ts'. For frames, give key= the key column's name
    """
    if key is None:
        if not callable(timestamp):
            example = f"e[{timestamp!r}]" if isinstance(timestamp, str) else "e['ts']"
            raise ValueError(
                "with key=None, up is a keyed stream of (key, event) rows and timestamp must be "
                f"a function event -> timezone-aware datetime (e.g. timestamp=lambda e: {example}); "
                f"got {_got(timestamp)}. For frames, give key= the key column's name"
            )
        return
    if not isinstance(key, str) or not key or not isinstance(timestamp, str) or not timestamp:
        raise ValueError(
            "for frames, key and timestamp name columns (e.g. key='sensor_id', timestamp='ts'); "
            f"got key={key!r}, timestamp={timestamp!r}"
        )


def one_of(arg: str, value: Any, kinds: tuple[type, ...], example: str) -> Any:
    """``value`` if it is an instance of one of ``kinds`` (a class given instead is named as such).

    Examples:
        >>> one_of("threshold", 4.0, (int,), "FixedThreshold(4.0)")
        Traceback (most recent call last):
        ...
        ValueError: threshold must be int, e.g. threshold=FixedThreshold(4.0); got the float 4.0
        >>> one_of("model", dict, (dict,), "{}")
        Traceback (most recent call last):
        ...
        ValueError: model must be dict, e.g. model={}; got the class dict itself: create an instance, e.g. dict(...)
    """
    if isinstance(value, kinds) and not isinstance(value, type):
        return value
    wanted = " or ".join(k.__name__ for k in kinds)
    if isinstance(value, type):
        got = f"the class {value.__name__} itself: create an instance, e.g. {value.__name__}(...)"
    else:
        got = _got(value)
    raise ValueError(f"{arg} must be {wanted}, e.g. {arg}={example}; got {got}")


def function(arg: str, value: Any, example: str) -> Callable[..., Any]:
    """A callable.

    Examples:
        >>> function("loader", "onnx", "OnnxModel")
        Traceback (most recent call last):
        ...
        ValueError: loader must be a function, e.g. loader=OnnxModel; got the str 'onnx'
    """
    if not callable(value):
        raise ValueError(f"{arg} must be a function, e.g. {arg}={example}; got {_got(value)}")
    return value
