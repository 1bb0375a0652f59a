"""Hypothesis strategies for testing stream flows: messy keyed event streams and bad input.

Needs `hypothesis <https://hypothesis.readthedocs.io>`_ (streamml's ``dev``
extra; ``pip install hypothesis``). Each strategy draws input a real stream
gives a flow, with the ground truth a test needs to check the outcome:

- :func:`keyed_events`: ``(key, event)`` pairs out of order within a
  lateness bound, plus late events and duplicates, each event with a unique
  ``id``; :class:`EventStream` says which ids are late under the one
  lateness rule (older than the key's newest time seen minus ``max_delay``);
- :func:`bad_events`: items a numeric operator must reject, never crash on;
- :func:`corrupt_payloads`: Kafka message values a decoder must dead-letter.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from hypothesis import strategies as st

__all__ = ["EventStream", "bad_events", "corrupt_payloads", "keyed_events", "late_ids"]

T0 = datetime(2024, 1, 1, tzinfo=timezone.utc)


@dataclass(frozen=True)
class EventStream:
    """Keyed events in arrival order, and what a correct operator must make of them.

    Attributes:
        items: ``(key, event)`` pairs in arrival order; each event a dict
            with ``id`` (unique, except that a duplicate repeats its
            original's), ``key``, ``ts`` (a UTC ``datetime``) and the value
            fields.
        max_delay: The lateness bound the stream was drawn for.
        late: ids of the events late under the one lateness rule.
        duplicates: ids that arrive more than once.
    """

    items: list[tuple[str, dict[str, Any]]]
    max_delay: timedelta
    late: frozenset[int]
    duplicates: frozenset[int]

    def on_time(self) -> list[tuple[str, dict[str, Any]]]:
        """The items that are not late (arrival order): what the ``oks`` come from."""
        return [item for item, lt in zip(self.items, self._late_flags()) if not lt]

    def _late_flags(self) -> list[bool]:
        return _late_flags(self.items, self.max_delay)


def _late_flags(items: Sequence[tuple[str, dict[str, Any]]], max_delay: timedelta) -> list[bool]:
    newest: dict[str, datetime] = {}
    flags = []
    for key, event in items:
        seen = newest.get(key)
        late = seen is not None and event["ts"] < seen - max_delay
        flags.append(late)
        if not late:
            newest[key] = event["ts"] if seen is None else max(seen, event["ts"])
    return flags


def late_ids(items: Sequence[tuple[str, dict[str, Any]]], max_delay: timedelta) -> frozenset[int]:
    """The ids of the events older than their key's newest time seen (arrival order) minus
    ``max_delay``: the one lateness rule, as a brute-force reference.

    Examples:
        >>> ev = lambda i, s: ("k", {"id": i, "ts": T0 + timedelta(seconds=s)})
        >>> sorted(late_ids([ev(0, 10), ev(1, 4), ev(2, 6), ev(3, 12)], timedelta(seconds=5)))
        [1]
    """
    return frozenset(e["id"] for (_, e), lt in zip(items, _late_flags(items, max_delay)) if lt)


@st.composite
def keyed_events(
    draw: st.DrawFn,
    *,
    keys: Sequence[str] = ("a", "b", "c"),
    fields: Sequence[str] = ("x",),
    max_delay: timedelta = timedelta(seconds=5),
    max_size: int = 40,
    step: timedelta = timedelta(seconds=1),
    late: bool = True,
    duplicates: bool = True,
    start: datetime = T0,
    values: st.SearchStrategy[float] | None = None,
) -> EventStream:
    """Draw an :class:`EventStream`: keyed events out of order within ``max_delay``, with some
    late events and duplicates when asked.

    Times are on a grid of ``step`` from ``start`` (so ties happen); each
    event arrives as if delayed by less than ``max_delay``, so none of
    these is late. Then late events (older than their key's newest so far
    by more than ``max_delay``) and duplicates (an event arriving again
    later, with the same ``id``; late or not by the same rule) are
    inserted. Field values are drawn from ``values`` (default: finite
    floats; a few repeated values make distinct counts and top-k matter).

    Examples:
        >>> from hypothesis import given, settings
        >>> @settings(max_examples=20, database=None)
        ... @given(keyed_events(max_delay=timedelta(seconds=3)))
        ... def check(stream):
        ...     newest = {}
        ...     for key, e in stream.on_time():  # on time: within max_delay of the key's newest
        ...         assert e["ts"] >= newest.get(key, e["ts"]) - stream.max_delay
        ...         newest[key] = max(newest.get(key, e["ts"]), e["ts"])
        >>> check()
    """
    if max_delay < timedelta(0) or step <= timedelta(0):
        raise ValueError(f"max_delay must be >= 0 and step > 0; got {max_delay}, {step}")
    n = draw(st.integers(0, max_size))
    value = values if values is not None else st.floats(-1e6, 1e6, allow_nan=False)
    delay_steps = max_delay / step
    events = []
    for i in range(n):
        key = draw(st.sampled_from(list(keys)))
        ts = start + step * draw(st.integers(0, 3 * n + 3))
        lag = draw(st.floats(0, delay_steps, exclude_max=True)) if delay_steps > 0 else 0.0
        event = {"id": i, "key": key, "ts": ts, **{f: draw(value) for f in fields}}
        events.append((ts + step * lag, i, (key, event)))
    events.sort(key=lambda e: (e[0], e[1]))
    items = [item for *_, item in events]
    if late and items:
        for m, j in enumerate(draw(st.lists(st.integers(0, len(items) - 1), max_size=3))):
            key, event = items[j]
            old = dict(event, id=n + m, ts=event["ts"] - max_delay - step)
            items.insert(j + 1, (key, {**old, **{f: draw(value) for f in fields}}))
    dupes: set[int] = set()
    if duplicates and items:
        for j in draw(st.lists(st.integers(0, len(items) - 1), max_size=3)):
            where = draw(st.integers(j + 1, len(items)))
            items.insert(where, items[j])
            dupes.add(items[j][1]["id"])
    return EventStream(items, max_delay, late_ids(items, max_delay), frozenset(dupes))


def bad_events(
    *, fields: Sequence[str] = ("x",), keys: Sequence[str] = ("a", "b")
) -> st.SearchStrategy[Any]:
    """Items a numeric operator on ``(key, event)`` rows must reject (to ``errs``), never crash on:
    not a pair, a non-text key, a missing or non-numeric or non-finite field, a missing, naive or
    non-datetime ``ts``.

    Examples:
        >>> from hypothesis import find
        >>> item = find(bad_events(), lambda i: type(i) is tuple and type(i[1]) is dict
        ...             and "x" not in i[1])
        >>> item[0], sorted(item[1])
        ('a', ['ts'])
    """
    ts = st.just(T0)
    good = {f: st.just(1.0) for f in fields}
    field = st.sampled_from(list(fields))
    key = st.sampled_from(list(keys))
    wrong_value = st.one_of(
        st.sampled_from([math.nan, math.inf, -math.inf, None, "2.5", True]),
        st.text(max_size=3),
        st.binary(max_size=3),
        st.lists(st.floats(), max_size=2),
    )

    def with_value(f: str, v: Any) -> dict[str, Any]:
        return {"ts": T0, **{g: 1.0 for g in fields}, f: v}

    def without(f: str) -> dict[str, Any]:
        return {"ts": T0, **{g: 1.0 for g in fields if g != f}}

    event_ok = st.fixed_dictionaries({"ts": ts, **good})
    return st.one_of(
        st.none(),
        st.integers(),
        st.text(max_size=5),
        st.tuples(st.integers(), event_ok),  # a key that is not text
        st.tuples(key, st.one_of(st.none(), st.integers(), st.text(max_size=3))),  # not a dict
        st.tuples(key, st.builds(with_value, field, wrong_value)),
        st.tuples(key, st.builds(without, field)),
        st.tuples(
            key,
            st.fixed_dictionaries(
                {
                    "ts": st.one_of(
                        st.none(),
                        st.integers(),
                        st.just(T0.replace(tzinfo=None)),  # naive
                        st.text(max_size=5),
                    ),
                    **good,
                }
            ),
        ),
    )


def corrupt_payloads(valid: Sequence[bytes] = ()) -> st.SearchStrategy[bytes]:
    """Kafka message values a decoder must reject: random bytes, non-UTF-8, JSON that is not an
    object or lacks fields, Confluent wire-format headers with unknown schema ids or nothing
    after them, and — given ``valid`` payloads — each truncated or with one byte flipped.

    A flipped or truncated payload can still decode (a flipped digit in JSON); a test should
    assert that each payload ends as a result or a dead letter, never a crash.

    Examples:
        >>> from hypothesis import find
        >>> find(corrupt_payloads([b'{"x": 1.0}']), lambda b: b.startswith(b"\\x00"))
        b'\\x00'
    """
    wire = st.builds(
        lambda schema_id, rest: b"\x00" + schema_id.to_bytes(4, "big") + rest,
        st.integers(0, 2**32 - 1),
        st.binary(max_size=8),
    )
    json_junk = st.sampled_from(
        [b"", b"{", b"null", b"[]", b"42", b'"text"', b"{}", b'{"x": "nan"}', b"\xff\xfe"]
    )
    strategies = [st.binary(max_size=32), json_junk, wire]
    strategies.append(
        st.builds(
            lambda d: json.dumps(d).encode(),
            st.dictionaries(st.text(max_size=3), st.integers() | st.text(max_size=3), max_size=3),
        )
    )
    if valid:
        source = st.sampled_from(list(valid))
        strategies.append(
            source.flatmap(lambda b: st.integers(0, max(len(b) - 1, 0)).map(lambda n: b[:n]))
        )
        strategies.append(
            source.filter(len).flatmap(
                lambda b: st.tuples(st.integers(0, len(b) - 1), st.integers(1, 255)).map(
                    lambda at: b[: at[0]] + bytes([b[at[0]] ^ at[1]]) + b[at[0] + 1 :]
                )
            )
        )
    return st.one_of(strategies)
