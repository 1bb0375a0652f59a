"""Reading ``window_agg`` state from recovery stores written before versioned snapshots.

Until versioned snapshots, ``window_agg`` ran on Bytewax's windowing operator
and its state was that operator's per-key snapshot, pickled, at
``<step>.window.stateful_batch``: an object with ``clock_state``
(``watermark_base``, the key's watermark), ``logic_states`` (each open
window's ``(µs, values)`` rows) and ``queue`` (admitted events still waiting
for the watermark, as ``(featurize.windows._Row, datetime)`` pairs).
Unpickling it needs a class named ``_Row`` in :mod:`.windows`: :class:`Row`
is it, reduced to what pickle restores. :func:`upgrade` reads such a
snapshot by its attributes (no Bytewax class is imported) into the open and
held rows of one key, which the key's row state takes over
(:meth:`~streamml.operators.featurize._window_core.Windows.adopt`). Nothing
writes them any more.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from streamml.operators._time import micros, to_micros
from streamml.operators.featurize._window_core import Fixed, Spec

__all__ = ["Handover", "Row", "is_legacy", "upgrade"]


class Row:
    """A queued event of a pre-versioning store: ``at``, ``us``, ``values``, ``original``."""


class Handover:
    """One key's state from a pre-versioning store, on its way to the key's row state."""

    __slots__ = ("data",)

    def __init__(self, data: dict[str, Any]) -> None:
        self.data = data


def is_legacy(resume: Any) -> bool:
    """Whether ``resume`` is a pre-versioning (Bytewax windowing) snapshot."""
    return all(hasattr(resume, name) for name in ("clock_state", "logic_states", "queue"))


def upgrade(old: Any, spec: Spec) -> dict[str, Any]:
    """One key's rows of a pre-versioning snapshot: newest time, held rows and open rows.

    Examples:
        >>> from datetime import datetime, timedelta, timezone
        >>> from types import SimpleNamespace as NS
        >>> from streamml.operators.featurize._window_core import Windows
        >>> t0 = datetime(2024, 1, 1, tzinfo=timezone.utc)
        >>> queued = Row()
        >>> queued.__dict__.update(us=to_micros(t0) + 5_000_000, values=(2.0,))
        >>> old = NS(clock_state=NS(watermark_base=t0 + timedelta(seconds=4)),
        ...          logic_states={1: [(to_micros(t0) + 3_000_000, (1.0,))]},
        ...          queue=[(queued, t0 + timedelta(seconds=5))])
        >>> spec = Spec("w", ("x",), ((0, "count"),), ("x_count",),
        ...             Fixed(3_000_000, 3_000_000, to_micros(t0)), timedelta(seconds=1),
        ...             None, None, False)
        >>> data = upgrade(old, spec)
        >>> data["newest"] - to_micros(t0), data["held_ts"].tolist(), data["lo"].tolist()
        (5000000, [1704067205000000], [1])
        >>> windows = Windows(spec)
        >>> windows.adopt("k", data)
        >>> closed = windows.step(eof=True)
        >>> [windows.names[k] for k in closed.kid.tolist()], closed.columns[0].tolist()
        (['k'], [2.0])
    """
    width = len(spec.fields)
    ts: list[int] = []
    xs: list[tuple[float, ...]] = []
    lo: list[int] = []
    windows = spec.windows
    opened = sorted(old.logic_states)
    for wid in opened:
        for us, values in old.logic_states[wid]:
            if isinstance(windows, Fixed):
                # a row sits in every open window holding it: take it from the first one
                first = int(windows.first_id(np.array([us]))[0])
                if wid != min(w for w in opened if w >= first):
                    continue
                lo.append(wid)
            ts.append(int(us))
            xs.append(tuple(values))
    order = np.argsort(np.array(ts, dtype=np.int64), kind="stable")
    queued = [entry[0] for entry in old.queue]
    return {
        # the key's newest time: its watermark plus max_delay (a restart is not idleness)
        "newest": to_micros(old.clock_state.watermark_base) + micros(spec.max_delay),
        "held_ts": np.array([r.us for r in queued], dtype=np.int64),
        "held_x": np.array([r.values for r in queued], dtype=np.float64).reshape(
            len(queued), width
        ),
        "ts": np.array(ts, dtype=np.int64)[order],
        "x": np.array(xs, dtype=np.float64).reshape(len(ts), width)[order],
        "lo": np.array(lo if lo else [0] * len(ts), dtype=np.int64)[order],
    }
