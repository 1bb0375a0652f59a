"""Recovery: a shard's waiting rows and its model source as a versioned plain record.

A snapshot is a ``streamml.infer`` record of :mod:`streamml.operators._core.state`,
version 1::

    {"pending": [{"rows": [(key, event), ...]} | {"frame": Arrow IPC bytes}, ...],
     "source": the control item or path that installed the serving model, or None}

Rows in the model thread at a snapshot have not been emitted: they are saved
as waiting. A model object is not saved (it may not pickle, and an ONNX one is
its whole file): a model that came as a path, bytes or message is loaded
again on resume. Stores written before versioned records hold a pickled
:class:`_Snapshot`, read as version 0 and upgraded.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

import polars as pl

from .._core.state import frame_from_bytes, frame_to_bytes, restore, snapshot

__all__ = ["STATE", "STATE_VERSION", "record", "restore_record"]

Event = Mapping[str, Any]
Part = list | pl.DataFrame

STATE = "streamml.infer"
STATE_VERSION = 1


class _Snapshot(NamedTuple):
    """The recovery state written before versioned records (read-only, for old stores).

    Bytewax unpickles it as ``streamml.operators.infer._Snapshot``; it is
    upgraded to version 1 of the ``streamml.infer`` record when read.
    """

    pending: tuple[tuple[str, Event], ...]
    source: Any


def _upgrade_0_to_1(data: dict[str, Any]) -> dict[str, Any]:
    pending = list(data["pending"])
    return {"pending": [{"rows": pending}] if pending else [], "source": data["source"]}


def restore_record(resume: Any) -> tuple[list[Part], Any]:
    if isinstance(resume, _Snapshot):
        resume = snapshot(STATE, 0, {"pending": resume.pending, "source": resume.source})
    data = restore(resume, kind=STATE, version=STATE_VERSION, upgrades={0: _upgrade_0_to_1})
    parts = [frame_from_bytes(p["frame"]) if "frame" in p else p["rows"] for p in data["pending"]]
    return parts, data["source"]


def _part_record(part: Part) -> dict[str, Any]:
    if isinstance(part, pl.DataFrame):
        return {"frame": frame_to_bytes(part)}
    return {"rows": list(part)}


def record(parts: list[Part], source: Any) -> dict[str, Any]:
    """The snapshot record of a shard's waiting ``parts`` and its model ``source``.

    Examples:
        >>> rec = record([pl.DataFrame({"x": [1.5]}), [("k", {"x": 2})]], "model.onnx")
        >>> rec["state"], rec["version"], rec["data"]["pending"][1], rec["data"]["source"]
        ('streamml.infer', 1, {'rows': [('k', {'x': 2})]}, 'model.onnx')
        >>> parts, source = restore_record(rec)
        >>> parts[0]["x"].to_list(), parts[1], source
        ([1.5], [('k', {'x': 2})], 'model.onnx')
    """
    return snapshot(
        STATE, STATE_VERSION, {"pending": [_part_record(p) for p in parts], "source": source}
    )
