"""Reading the snapshots of the release before versioned records (version 0), for resuming its stores.

That release stored each shard of :func:`~streamml.operators.anomaly.score`
and :func:`~streamml.operators.anomaly.anomaly_windows` as a plain ``dict``
from key to a tuple of per-key tuples, read back by position:

- ``score``: ``(gate, scorer)``;
- ``anomaly_windows``: ``(gate, levels, scorer, windows)``;
- ``gate``: ``(newest time, watermark (the idle clock's advance included),
  wall time of the newest, pending (time, event, values) rows[, newest
  released time])`` — the last field was added later, so it may be missing;
- scorers, levels and windows: their ``__slots__`` in the order below.

Only builtins were pickled (no streamml class), so nothing here has to stay
importable under an old module path: the layouts are all that the upgrade
(:func:`per_key_v0`) needs, and they are frozen here.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["GateV0", "is_v0", "per_key_v0"]

_MIN = -(1 << 62)

_WINDOWS_SLOTS = (
    "last",
    "open",
    "start",
    "end",
    "n",
    "total",
    "peak",
    "peak_ts",
    "peak_ev",
    "peak_field",
    "tail_n",
    "tail_total",
    "tail_start",
)
"""The ``_Windows.__slots__`` of version 0 that its snapshot held, in order, before ``cand``."""


class GateV0:
    """One key's event-time gate of version 0, by name.

    Examples:
        >>> g = GateV0((50, 47, 0, ((48, {"s": 1.0}, (1.0,)),)))
        >>> g.newest, g.watermark, g.released, [ts for ts, _, _ in g.pending]
        (50, 47, 47, [48])
    """

    def __init__(self, snap: tuple) -> None:
        self.newest, self.watermark, _, pending = snap[:4]
        self.pending: list[tuple[int, Any, tuple[float, ...]]] = list(pending)
        # a snapshot from before `released` was kept: its watermark is the safe floor
        self.released = snap[4] if len(snap) > 4 else self.watermark


def is_v0(record: Any) -> bool:
    """Whether a stored shard state is a version-0 snapshot (not a versioned record).

    Examples:
        >>> is_v0({"pump-1": ((0, 0, 0, ()), None)}), is_v0({}), is_v0({"state": "x", "version": 1, "data": {}})
        (True, True, False)
    """
    if not isinstance(record, Mapping):
        return False
    versioned = {"state", "version", "data"} <= record.keys() and isinstance(
        record.get("version"), int
    )
    return not versioned and all(isinstance(v, tuple) for v in record.values())


def _scorer(kind: str, snap: Any) -> dict[str, Any] | None:
    if snap is None:
        return None
    if kind == "rolling":
        points, s1, s2, ref, since_exact = snap
        return {
            "points": list(points),
            "s1": list(s1),
            "s2": list(s2),
            "ref": tuple(ref),
            "since_exact": since_exact,
        }
    if kind == "robust":
        points, srt = snap
        return {"points": list(points), "sorted": [list(s) for s in srt]}
    n, last, mean, var = snap
    return {"n": n, "last": last, "mean": list(mean), "var": list(var)}


def _levels(snap: Any) -> dict[str, Any] | None:
    if snap is None:  # fixed levels keep nothing
        return None
    first, points, srt = snap
    return {"first": first, "points": list(points), "sorted": list(srt)}


def _windows(snap: tuple) -> dict[str, Any]:
    out = dict(zip(_WINDOWS_SLOTS, snap[:-1], strict=True))
    out["cand"] = [tuple(c) for c in snap[-1]]
    return out


def per_key_v0(snap: tuple, *, windows: bool, scorer: str | None) -> tuple[GateV0, dict[str, Any]]:
    """One key's version-0 tuple as its gate and its version-1 per-key record.

    ``scorer`` is ``"rolling"`` (``ZScore``), ``"robust"``
    (``RobustZScore``), ``"ewma"`` or ``None`` (windows of a score field).

    Examples:
        >>> gate, rec = per_key_v0(((5, 5, 0, ()), (2, 1, (1.0,), (0.5,))), windows=False, scorer="ewma")
        >>> gate.newest, rec
        (5, {'scorer': {'n': 2, 'last': 1, 'mean': [1.0], 'var': [0.5]}})
    """
    if not windows:
        gate, scorer_snap = snap
        return GateV0(gate), {"scorer": _scorer(scorer or "rolling", scorer_snap)}
    gate, levels, scorer_snap, windows_snap = snap
    rec = {
        "scorer": None if scorer is None else _scorer(scorer, scorer_snap),
        "levels": _levels(levels),
        "windows": _windows(windows_snap),
    }
    return GateV0(gate), rec
