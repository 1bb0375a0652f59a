"""Snapshots as versioned plain records, so a stored state outlives a refactoring.

Bytewax pickles whatever a stateful logic's ``snapshot()`` returns into the
recovery store. A pickled private class (or a tuple read back by position)
ties every existing store to today's module paths and field order: a rename
and the next resume fails. Every streamml state is therefore snapshot as a
plain record::

    {"state": "streamml.featurize.rolling", "version": 2, "data": {...}}

whose ``data`` holds only builtins, ``bytes`` and NumPy arrays, and frames as
Arrow IPC bytes (:func:`frame_to_bytes`). :func:`restore` reads a record
back, upgrading one written by an older version step by step, and refuses a
record of another kind or of a newer version with a message that says what
to do.
"""

from __future__ import annotations

import io
import pickle
from collections.abc import Callable, Mapping
from typing import Any

import polars as pl

__all__ = ["StateVersionError", "frame_from_bytes", "frame_to_bytes", "restore", "snapshot"]


class StateVersionError(ValueError):
    """A recovery store holds a state this version of streamml cannot read."""


def snapshot(kind: str, version: int, data: Any) -> dict[str, Any]:
    """A versioned snapshot record.

    Examples:
        >>> snapshot("streamml.example", 1, {"n": 3})
        {'state': 'streamml.example', 'version': 1, 'data': {'n': 3}}
    """
    return {"state": kind, "version": version, "data": data}


def restore(
    record: Any,
    *,
    kind: str,
    version: int,
    upgrades: Mapping[int, Callable[[Any], Any]] | None = None,
) -> Any:
    """The ``data`` of a snapshot record, upgraded to ``version``.

    ``upgrades[v]`` turns version ``v``'s data into version ``v + 1``'s;
    a record of an older version goes through each upgrade in turn.

    Examples:
        >>> old = snapshot("streamml.example", 1, {"n": 3})
        >>> restore(old, kind="streamml.example", version=2,
        ...         upgrades={1: lambda d: {**d, "seen": []}})
        {'n': 3, 'seen': []}
        >>> try:
        ...     restore(old, kind="streamml.other", version=1)
        ... except StateVersionError as exc:
        ...     print(exc)
        the recovery store holds a 'streamml.example' state where this step keeps 'streamml.other': was the step id reused for another operator? Use a new recovery store or another step id.
    """
    if not isinstance(record, Mapping) or {"state", "version", "data"} - record.keys():
        raise StateVersionError(
            f"the recovery store holds {type(record).__name__!s} where a {kind!r} state "
            "record was expected (a store written before versioned snapshots?); "
            "resume with the streamml release that wrote it, or start a new recovery store"
        )
    if record["state"] != kind:
        raise StateVersionError(
            f"the recovery store holds a {record['state']!r} state where this step keeps "
            f"{kind!r}: was the step id reused for another operator? Use a new recovery "
            "store or another step id."
        )
    found, data = record["version"], record["data"]
    if found > version:
        raise StateVersionError(
            f"the {kind!r} state in the recovery store is version {found}, newer than this "
            f"streamml reads ({version}); resume with the newer release"
        )
    steps = upgrades or {}
    while found < version:
        if found not in steps:
            raise StateVersionError(f"no upgrade of {kind!r} state from version {found}")
        data, found = steps[found](data), found + 1
    return data


_OBJECTS = b"streamml-objects-1\n"
"""Prefix of a snapshot frame that had ``Object`` columns (Arrow IPC itself starts ``ARROW1``)."""


def frame_to_bytes(frame: pl.DataFrame) -> bytes:
    """A frame as Arrow IPC bytes, for a snapshot.

    Arrow cannot hold polars' ``Object`` columns (Python values of no Arrow
    type: integers beyond 64 bits, mixed values): those are pickled beside
    the IPC bytes of the other columns, so a frame of any dtype round-trips.

    Examples:
        >>> f = pl.DataFrame({"k": ["a"], "x": [1.5]})
        >>> frame_from_bytes(frame_to_bytes(f)).equals(f)
        True
        >>> o = pl.DataFrame([pl.Series("k", ["a", "b"]), pl.Series("x", [2**70, "y"], dtype=pl.Object)])
        >>> back = frame_from_bytes(frame_to_bytes(o))
        >>> back.columns, back["x"].to_list(), back.schema["x"]
        (['k', 'x'], [1180591620717411303424, 'y'], Object)
    """
    objects = [name for name, dtype in frame.schema.items() if dtype == pl.Object]
    buffer = io.BytesIO()
    frame.drop(objects).write_ipc(buffer)
    if not objects:
        return buffer.getvalue()
    held = {name: frame.get_column(name).to_list() for name in objects}
    return _OBJECTS + pickle.dumps((buffer.getvalue(), frame.columns, held))


def frame_from_bytes(data: bytes) -> pl.DataFrame:
    """The frame :func:`frame_to_bytes` wrote."""
    if not data.startswith(_OBJECTS):
        return pl.read_ipc(io.BytesIO(data))
    ipc, order, held = pickle.loads(data[len(_OBJECTS) :])
    rest = pl.read_ipc(io.BytesIO(ipc))
    columns = [pl.Series(name, values, dtype=pl.Object) for name, values in held.items()]
    return rest.with_columns(columns).select(order)
