"""Routing: frames and ``(key, event)`` pairs to shard queues, control items to all of them.

Frames go through the one key router (:func:`streamml.operators._core.keys.route`)
by their ``key=`` column; events by their pair's key, hashed the same way
(:func:`~streamml.operators._core.keys.shard_ids`), so a key lands on the same
shard either way. The bad-key rule is the core's: a null key, or one that is
not text or an integer, is a ``BadKey`` rejection; an item that is neither a
frame nor a pair a ``BadItem``. Rejections travel to shard ``"0"`` (as
:class:`Rejects`), which emits them on ``errs``; nothing raises.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import numpy as np
import polars as pl

from streamml.errors import Rejected

from .._core.keys import route, shard_ids
from .._validate import UNKEYED_HINT

__all__ = ["Chunk", "Rejects", "Swap", "broadcast", "router"]

Event = Mapping[str, Any]
Part = list | pl.DataFrame


class Swap(NamedTuple):
    """A control item broadcast to one shard.

    ``report`` is set on exactly one copy (so a rejection is reported once);
    ``token`` is the same on every copy (so a process loads the model once).
    """

    item: Any
    report: bool
    token: str


class Chunk(NamedTuple):
    """Rows that arrived together, routed to one shard."""

    shard: int
    part: Part


class Rejects(NamedTuple):
    """Items the router rejected (bad keys), passed through a shard to ``errs``."""

    rejected: list[Rejected]


def _bad_row(item: Any, step_id: str) -> Rejected | None:
    """The rejection of a row that is not a ``(key, event)`` pair with a text or integer key."""
    if not (isinstance(item, tuple) and len(item) == 2):
        why = (
            f"expected a (key, event) pair or a polars DataFrame; got {type(item).__name__}: "
            + UNKEYED_HINT
        )
        return Rejected(step_id, "BadItem", why, item)
    key = item[0]
    if isinstance(key, str) or (isinstance(key, int) and not isinstance(key, bool)):
        return None
    what = "None" if key is None else type(key).__name__
    why = f"key is {what}; a key must be text or an integer"
    return Rejected(step_id, "BadKey", why, item)


def _all_good_rows(items: list[Any]) -> bool:
    """Every item is a ``(str key, event)`` pair: the usual row batch, with nothing to reject.

    The check costs the row path about 7 % (``benchmarks/infer.py``'s row
    dataflow, CPU time); ``map``/``list.count`` instead of this generator
    expression gained 1 %, so the plain form stays.
    """
    return all(type(x) is tuple and len(x) == 2 and type(x[0]) is str for x in items)


def router(
    step_id: str, shards: int, key: str | None
) -> Callable[[list[Any]], list[tuple[str, Any]]]:
    """The ``flat_map_batch`` step before the shards: items to ``(shard, Chunk | Rejects)``.

    Examples:
        >>> route_all = router("s", 2, "key")
        >>> frame = pl.DataFrame({"key": ["a", "b", None], "x": [1, 2, 3]})
        >>> [(shard, type(v).__name__, len(v[-1])) for shard, v in route_all([frame, ("a", {})])]
        [('0', 'Rejects', 1), ('1', 'Chunk', 2), ('1', 'Chunk', 1)]

        The null key is rejected; ``"a"`` and ``"b"`` both hash to shard 1, the
        frame's rows as one part and the event as another.
    """

    def route_rows(rows: list, out: list, checked: bool) -> None:
        if not checked:
            good, bad = [], []
            for item in rows:
                rejected = _bad_row(item, step_id)
                if rejected is None:
                    good.append(item)
                else:
                    bad.append(rejected)
            if bad:
                out.append(("0", Rejects(bad)))
            rows = good
        if not rows:
            return
        if shards == 1:
            out.append(("0", Chunk(0, rows)))
            return
        keys = pl.Series([k if type(k) is str else str(k) for k, _ in rows], dtype=pl.String)
        ids = shard_ids(keys, shards)
        present = np.unique(ids).tolist()
        for s in present:
            part = (
                rows if len(present) == 1 else [rows[i] for i in np.flatnonzero(ids == s).tolist()]
            )
            out.append((str(s), Chunk(s, part)))

    def route_frame(frame: pl.DataFrame, out: list) -> None:
        if key is None:
            if shards == 1:
                if frame.height:
                    out.append(("0", Chunk(0, frame)))
                return
            why = f"infer(shards={shards}) routes frames by a key column; pass key="
            bad = [Rejected(step_id, "BadKey", why, row) for row in frame.to_dicts()]
            out.append(("0", Rejects(bad)))
            return
        parts, bad = route(frame, key=key, shards=shards, step_id=step_id)
        if bad:
            out.append(("0", Rejects(bad)))
        out.extend((s, Chunk(int(s), part)) for s, part in parts)

    def route_all(items: list[Any]) -> list[tuple[str, Any]]:
        out: list[tuple[str, Any]] = []
        if _all_good_rows(items):  # the usual row batch, checked at C speed
            route_rows(items, out, checked=True)
            return out
        rows: list[Any] = []
        for item in items:
            if isinstance(item, pl.DataFrame):
                if rows:
                    route_rows(rows, out, checked=False)
                    rows = []
                route_frame(item, out)
            else:
                rows.append(item)
        if rows:
            route_rows(rows, out, checked=False)
        return out

    return route_all


def broadcast(shards: int) -> Callable[[Any], list[tuple[str, Swap]]]:
    """A control item to every shard, reported by shard 0, loaded once per process.

    Examples:
        >>> [(s, x.item, x.report) for s, x in broadcast(2)("model.onnx")]
        [('0', 'model.onnx', True), ('1', 'model.onnx', False)]
    """

    def to_every_shard(item: Any) -> list[tuple[str, Swap]]:
        token = uuid.uuid4().hex
        return [(str(s), Swap(item, s == 0, token)) for s in range(shards)]

    return to_every_shard
