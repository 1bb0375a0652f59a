"""Reading ``rolling`` state from recovery stores written before versioned snapshots.

Until versioned snapshots, a ``rolling`` shard was stored as a pickled
private dataclass (``rolling_agg._Snapshot`` holding a
``_time.WatermarkSnapshot`` and a ``rolling_agg._Held``). Unpickling needs
classes of those names at those paths; these are they, reduced to the
attributes pickle restores, and :func:`upgrade` turns such a snapshot into
the version-1 record data of :mod:`.rolling_agg`. Nothing writes them any
more.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import polars as pl
from streamml.operators._core.state import frame_to_bytes

__all__ = ["Held", "Snapshot", "upgrade"]


class Snapshot:
    """A shard of a pre-versioning store: ``marks``, ``kid_of``, ``free``, ``kmax``, ``clock``,
    ``swept``, ``rows`` and ``held``, as pickle restores them."""


class Held:
    """Held events of a pre-versioning store: ``kid``, ``ts``, ``vals``, ``arrived``, ``keys``,
    ``events``."""


def upgrade(old: Snapshot, width: int) -> dict[str, Any]:
    """The version-1 data (row path) of a pre-versioning snapshot.

    Examples:
        >>> from streamml.operators._time import WatermarkSnapshot
        >>> marks = WatermarkSnapshot()
        >>> marks.__dict__.update(max_seen={"a": 5}, forgotten_max=None)
        >>> held = Held()
        >>> held.__dict__.update(kid=np.array([0]), ts=np.array([5]), vals=np.ones((1, 1)),
        ...                      arrived=np.array([0.0]), keys=["a"], events=[{"x": 1.0}])
        >>> old = Snapshot()
        >>> i = np.array([0])
        >>> old.__dict__.update(marks=marks, kid_of={"a": 0}, free=[], kmax=np.array([5]),
        ...                     clock=5, swept=0, rows=(i, np.array([3]), np.ones((1, 1))),
        ...                     held=held)
        >>> data = upgrade(old, 1)
        >>> data["time"]["keys"], data["pending_events"], data["rows"][1].tolist()
        (['a'], [{'x': 1.0}], [3])
    """
    marks = old.marks
    size = max([*old.kid_of.values(), -1]) + 1
    keys: list[Any] = [None] * size
    for key, kid in old.kid_of.items():
        keys[kid] = key
    kmax = np.full(size, np.iinfo(np.int64).min, dtype=np.int64)
    for key, kid in old.kid_of.items():
        # idle release moved the watermarks' newest time, and kmax with it: take the larger
        kmax[kid] = max(int(old.kmax[kid]), marks.max_seen.get(key, int(old.kmax[kid])))
    r_kid, r_ts, r_x = old.rows
    order = np.argsort(r_kid, kind="stable")  # each key's rows were contiguous, in time order
    held = old.held
    n = len(held.kid)
    return {
        "path": "rows",
        "time": {
            "keys": keys,
            "kmax": kmax,
            "forgotten_max": marks.forgotten_max,
            "newest": int(old.clock),
            "swept": int(old.swept),
            # the row path's held frame: each held event's row id (its place in pending_*)
            "held_frame": frame_to_bytes(pl.DataFrame({"row": np.arange(n, dtype=np.int64)}))
            if n
            else None,
            "held_kid": np.asarray(held.kid, dtype=np.int64),
            "held_ts": np.asarray(held.ts, dtype=np.int64),
            "held_arrived": np.asarray(held.arrived, dtype=np.float64),
            "held_data": np.asarray(held.vals, dtype=np.float64).reshape(n, width),
        },
        "rows": [r_kid[order], r_ts[order], np.asarray(r_x).reshape(-1, width)[order]],
        "pending_keys": list(held.keys),
        "pending_events": list(held.events),
    }
