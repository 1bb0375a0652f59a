"""The Kafka key of each ingested record, from a short spec or a function.

Specs (the CLI's ``--key``):

- ``none``: no key (records spread over partitions);
- ``name``: the file name (a camera's frames, a log file's lines);
- ``name-regex:PATTERN``: a group of a regular expression over the file
  name (``name-regex:^(cam\\d+)_`` keys frames by camera);
- ``regex:PATTERN``: a group of a regular expression over the record
  (``regex:user=(\\w+)`` keys log lines by user);
- ``json:FIELD``: a field of the record parsed as JSON (``json:device.id``
  for a nested one).

A regular expression's named group ``key`` is used if it has one, else its
first group, else the whole match. A record the spec finds no key in (no
match, not JSON, no such field) is sent with no key, never dropped; the
agent counts them (``keys missing`` in its progress line).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any

import orjson

__all__ = ["KeyFunction", "key_function"]

KeyFunction = Callable[[Sequence[bytes], Sequence[str]], list[bytes | None]]
"""``(values, labels) -> keys``: one key per value; ``labels`` as in :class:`~streamml.ingest.source.Read`."""


def _group(pattern: re.Pattern[Any]) -> int | str:
    if "key" in pattern.groupindex:
        return "key"
    return 1 if pattern.groups else 0


def _by_name(values: Sequence[bytes], labels: Sequence[str]) -> list[bytes | None]:
    if len(labels) == 1:
        return [labels[0].encode()] * len(values)
    return [label.encode() for label in labels]


def _no_key(values: Sequence[bytes], labels: Sequence[str]) -> list[bytes | None]:
    return [None] * len(values)


def _name_regex(pattern: re.Pattern[str]) -> KeyFunction:
    group = _group(pattern)

    def keys(values: Sequence[bytes], labels: Sequence[str]) -> list[bytes | None]:
        found = [pattern.search(label) for label in labels]
        names = [None if m is None else m.group(group).encode() for m in found]
        return names * len(values) if len(names) == 1 else names

    return keys


def _value_regex(pattern: re.Pattern[bytes]) -> KeyFunction:
    group, search = _group(pattern), pattern.search

    def keys(values: Sequence[bytes], labels: Sequence[str]) -> list[bytes | None]:
        return [None if (m := search(v)) is None else m.group(group) for v in values]

    return keys


def _json_field(path: list[str]) -> KeyFunction:
    def one(value: bytes) -> bytes | None:
        try:
            node = orjson.loads(value)
        except orjson.JSONDecodeError:
            return None
        for part in path:
            if not isinstance(node, dict) or part not in node:
                return None
            node = node[part]
        if node is None:
            return None
        return node.encode() if isinstance(node, str) else orjson.dumps(node)

    def keys(values: Sequence[bytes], labels: Sequence[str]) -> list[bytes | None]:
        return [one(v) for v in values]

    return keys


def key_function(spec: str | KeyFunction | None) -> KeyFunction:
    """Turn a key spec (see the module docstring) into a :data:`KeyFunction`.

    A function passed in is returned as it is. A bad spec raises
    ``ValueError`` saying which specs exist.

    Examples:
        >>> key_function("regex:user=(\\\\w+)")([b"GET / user=ada", b"GET /"], ["access.log"])
        [b'ada', None]
        >>> key_function("json:device.id")([b'{"device": {"id": 7}}', b"not json"], ["x"])
        [b'7', None]
        >>> key_function("name-regex:^(cam\\\\d+)_")([b"..", b".."], ["cam1_0001.jpg", "cam2_0001.jpg"])
        [b'cam1', b'cam2']
        >>> key_function("colour")
        Traceback (most recent call last):
        ...
        ValueError: unknown key spec 'colour'; use none, name, name-regex:PATTERN, regex:PATTERN or json:FIELD
    """
    if callable(spec):
        return spec
    if spec is None or spec == "none":
        return _no_key
    if spec == "name":
        return _by_name
    kind, sep, arg = spec.partition(":")
    if sep and arg and kind in ("regex", "name-regex"):
        try:
            if kind == "regex":
                return _value_regex(re.compile(arg.encode()))
            return _name_regex(re.compile(arg))
        except re.error as exc:
            raise ValueError(f"key spec {spec!r}: bad regular expression: {exc}") from None
    if sep and arg and kind == "json":
        return _json_field(arg.split("."))
    raise ValueError(
        f"unknown key spec {spec!r}; use none, name, name-regex:PATTERN, regex:PATTERN or json:FIELD"
    )
