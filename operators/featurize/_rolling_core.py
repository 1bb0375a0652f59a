"""The one implementation of ``rolling``: a shard's window rows and the aggregates over them.

Both entry points of :func:`~streamml.operators.featurize.rolling` — frames
(the unit) and ``(key, event)`` rows (the legacy path) — put their accepted
rows through the same :class:`Rolling` state: event time by
:class:`~streamml.operators._core.event_time.KeyedEventTime`, aggregates by
:class:`WindowRows` with the NumPy kernels of :mod:`._kernels`. Only how a
batch is read and how results are written back differ.

Window rows: every key's recent rows, as three arrays sorted by key id
and then (event time, arrival). Released rows always come at the end of
their key's run (nothing earlier than a released row can still be
accepted), so merging a batch in is a stable sort of two sorted runs
(linear), and each released row's window is a range ``[start, end]`` of
the merged arrays: a time window starts at the first row newer than
``t - window``, a count window ``N - 1`` rows back within the key.

Eviction: a row leaves when no future row of its key can use it — older
than the key's watermark minus the longest time window, and not among the
key's last ``N - 1`` rows for the longest count window ``N`` — and with
its key when the key is forgotten (TTL).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from streamml.operators._core.event_time import Held, KeyedEventTime, Released
from streamml.operators.featurize import _kernels as kern
from streamml.operators.featurize._frequency import bin_edges, frequency, is_frequency

__all__ = ["Config", "Rolling", "WindowRows"]


@dataclass
class Config:
    """Validated settings of one ``rolling`` step."""

    step_id: str
    fields: tuple[str, ...]
    plan: list[tuple[int, str]]  # (field index, aggregate) per output column of one window
    names: list[str]  # every time window (order given), then every count window, each the plan
    windows: tuple[int, ...]  # time windows, microseconds, in the order given
    counts: tuple[int, ...]  # count windows (last N events), in the order given
    delay: Any  # timedelta
    ttl: Any  # timedelta
    half_life: float
    max_future: Any  # timedelta | None
    idle_release: Any  # timedelta | None
    window: int = field(init=False)  # the longest time window (0 if none)
    keep_last: int = field(init=False)  # rows a count window needs before each new row
    needed: set[str] = field(init=False)
    gathered: bool = field(init=False)
    frequencies: set[str] = field(init=False)  # distinct counts, top-k (._frequency)
    bins: set[str] = field(init=False)  # histogram bins: counted by prefix sums, not gathered

    def __post_init__(self) -> None:
        self.window = max(self.windows, default=0)
        self.keep_last = max(self.counts, default=1) - 1
        self.needed = {a for _, a in self.plan}
        counted = {a for a in self.needed if is_frequency(a)}
        self.bins = {a for a in counted if a.startswith("bin")}
        self.frequencies = counted - self.bins
        self.gathered = bool(self.frequencies) or any(
            a == "ewma" or a.startswith("p") for a in self.needed
        )


class WindowRows:
    """The window rows of one shard and the aggregates of released rows over them."""

    def __init__(self, cfg: Config, rows: tuple[np.ndarray, ...] | None = None) -> None:
        self.cfg = cfg
        if rows is None:
            empty = np.zeros(0, dtype=np.int64)
            rows = (empty, empty, np.zeros((0, len(cfg.fields))))
        self.rows = rows

    def compute(
        self,
        kid: np.ndarray,
        ts: np.ndarray,
        x: np.ndarray,
        kmax: np.ndarray,
        delay: int,
        n_keys: int,
    ) -> list[np.ndarray]:
        """One column per output name for released rows (given in event-time order), in their order.

        ``kmax`` is each key id's newest accepted time (after this batch),
        ``delay`` the allowed out-of-orderness: together the watermarks that
        decide which rows future windows can still use. ``n_keys``: how many
        keys the shard holds.
        """
        korder = np.argsort(kid, kind="stable")  # (key, time, arrival): the kernels' order
        kid, ts, x = kid[korder], ts[korder], x[korder]
        r_kid, r_ts, r_x = self.rows
        rest = None
        if len(r_kid):  # only the rows of keys with released rows take part ...
            present = np.zeros(len(kmax), dtype=bool)
            present[kid] = True
            # ... unless they are most keys: the others' rows then cost less than taking them out
            mine = None if 2 * int(present.sum()) >= n_keys else present[r_kid]
            if mine is not None and not mine.all():
                rest = (r_kid[~mine], r_ts[~mine], r_x[~mine])
                r_kid, r_ts, r_x = r_kid[mine], r_ts[mine], r_x[mine]
        n_old = len(r_kid)
        all_kid = np.concatenate([r_kid, kid])
        merge = np.argsort(all_kid, kind="stable")  # two sorted runs: a linear merge
        m_kid = all_kid[merge]
        m_ts = np.concatenate([r_ts, ts])[merge]
        m_x = np.concatenate([r_x, x])[merge]
        end = np.flatnonzero(merge >= n_old)
        gstart, middle = kern.group_rows(m_kid)
        starts = self._starts(m_kid, m_ts, gstart, end)
        columns = self._aggregates(m_ts, m_x, middle, end, starts)
        self.rows = self._recent(m_kid, m_ts, m_x, gstart, kmax, delay, rest)
        out = []
        for col in columns:
            back = np.empty_like(col)
            back[korder] = col
            out.append(back)
        return out

    def drop(self, kids: np.ndarray, n_ids: int) -> None:
        """Drop every row of the given (forgotten) key ids."""
        if not len(kids):
            return
        r_kid, r_ts, r_x = self.rows
        gone = np.zeros(max(n_ids, int(kids.max()) + 1), dtype=bool)
        gone[kids] = True
        keep = ~gone[r_kid]
        self.rows = (r_kid[keep], r_ts[keep], r_x[keep])

    def _starts(
        self, m_kid: np.ndarray, m_ts: np.ndarray, gstart: np.ndarray, end: np.ndarray
    ) -> list[np.ndarray]:
        """Each window's first row for each released row ``end``: time windows, then counts."""
        out: list[np.ndarray] = []
        if self.cfg.windows:
            t_end = m_ts[end]
            afters = [t_end - w for w in self.cfg.windows]
            found = kern.group_range_starts(m_kid, m_ts, end, afters)
            if found is None:  # times beyond float64's exact integers: a binary search each
                found = [kern.range_starts(m_ts, gstart[end], end, a) for a in afters]
            out.extend(found)
        first = gstart[end]
        out.extend(np.maximum(first, end - (n - 1)) for n in self.cfg.counts)
        return out

    def _aggregates(
        self,
        m_ts: np.ndarray,
        m_x: np.ndarray,
        middle: np.ndarray,
        end: np.ndarray,
        starts: list[np.ndarray],
    ) -> list[np.ndarray]:
        """One column per output name: every window's aggregates over ``[start, end]``."""
        cfg = self.cfg
        needed = cfg.needed
        ranges = [(start, end) for start in starts]
        moments: list[tuple[np.ndarray | None, np.ndarray]] = []
        if needed & {"var", "std"}:
            moments = kern.range_variances(m_x, m_x[middle], ranges)
        elif needed & {"sum", "mean"}:  # no variance asked for: half the prefix sums
            moments = [(None, t) for t in kern.range_sums_centred(m_x, m_x[middle], ranges)]
        mins = kern.range_reduce(m_x, ranges, np.minimum) if "min" in needed else []
        maxs = kern.range_reduce(m_x, ranges, np.maximum) if "max" in needed else []
        last = m_x[end]
        below = {}  # per bin: how many rows before each row lie in it (exact in float64)
        for agg in cfg.bins:
            lo, hi = bin_edges(agg)
            below[agg] = np.zeros((len(m_x) + 1, m_x.shape[1]))
            np.cumsum((m_x >= lo) & (m_x < hi), axis=0, out=below[agg][1:])
        spans: list[int | None] = [*cfg.windows, *([None] * len(cfg.counts))]
        out = []
        for i, (start, span) in enumerate(zip(starts, spans)):
            count = (end - start + 1).astype(np.float64)
            columns: dict[str, np.ndarray] = {"count": count, "last": last, "first": m_x[start]}
            if moments:
                var, total = moments[i]
                columns.update(sum=total, mean=total / count[:, None])
                if var is not None:
                    columns.update(var=var, std=np.sqrt(var))
            if mins:
                columns["min"] = mins[i]
            if maxs:
                columns["max"] = maxs[i]
            if "delta" in needed or "since" in needed:
                has_prev = end > start
                prev = np.where(has_prev, end - 1, end)
                columns["delta"] = np.where(has_prev[:, None], last - m_x[prev], np.nan)
                columns["since"] = np.where(has_prev, (m_ts[end] - m_ts[prev]) / 1e6, np.nan)
            for agg in cfg.bins:
                columns[agg] = below[agg][end + 1] - below[agg][start]
            if "rate" in needed and span is not None:
                columns["rate"] = count / (span / 1e6)
            if cfg.gathered:
                columns.update(self._gathered(m_ts, m_x, start, end))
            for f, agg in cfg.plan:
                col = columns[agg]
                out.append(col[:, f] if col.ndim == 2 else col)
        return out

    def _gathered(
        self, m_ts: np.ndarray, m_x: np.ndarray, start: np.ndarray, end: np.ndarray
    ) -> dict[str, np.ndarray]:
        """ewma, quantiles and the :mod:`._frequency` aggregates, from the gathered rows of
        each window (in bounded chunks)."""
        cfg = self.cfg
        quantiles = sorted({a for _, a in cfg.plan if a.startswith("p")})
        names = (["ewma"] if cfg.half_life > 0 else []) + quantiles + sorted(cfg.frequencies)
        cols = {name: np.empty((len(start), m_x.shape[1])) for name in names}
        for part in kern.chunks(start, end, m_x.shape[1]):
            s, e = start[part], end[part]
            idx, offsets = kern.gather(s, e)
            lengths = e - s + 1
            x = m_x[idx]
            if cfg.half_life > 0:
                age = (np.repeat(m_ts[e], lengths) - m_ts[idx]) / 1e6
                w = np.exp2(-age / cfg.half_life)[:, None]
                weighted = np.add.reduceat(w * x, offsets, axis=0)
                cols["ewma"][part] = weighted / np.add.reduceat(w, offsets, axis=0)
            for agg in quantiles:
                q = float(agg[1:]) / 100.0
                for f in range(x.shape[1]):
                    cols[agg][part, f] = kern.segment_quantile(x[:, f], offsets, lengths, q)
            if cfg.frequencies:
                for f in range(x.shape[1]):
                    for agg, col in frequency(x[:, f], lengths, cfg.frequencies).items():
                        cols[agg][part, f] = col
        return cols

    def _recent(
        self,
        m_kid: np.ndarray,
        m_ts: np.ndarray,
        m_x: np.ndarray,
        gstart: np.ndarray,
        kmax: np.ndarray,
        delay: int,
        rest: tuple[np.ndarray, np.ndarray, np.ndarray] | None,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The new window rows: ``rest`` merged with the rows some future window can still use."""
        cfg = self.cfg
        keep = np.zeros(len(m_kid), dtype=bool)
        if cfg.windows:
            keep |= m_ts > kmax[m_kid] - delay - cfg.window
        if cfg.keep_last and len(m_kid):
            last = np.empty(len(m_kid), dtype=bool)
            last[-1] = True
            np.not_equal(m_kid[1:], m_kid[:-1], out=last[:-1])
            ends = np.flatnonzero(last)
            group_end = np.repeat(ends, np.diff(ends, prepend=-1))
            keep |= group_end - np.arange(len(m_kid)) < cfg.keep_last
        if not keep.all():
            m_kid, m_ts, m_x = m_kid[keep], m_ts[keep], m_x[keep]
        if rest is None:
            return m_kid, m_ts, m_x
        all_kid = np.concatenate([rest[0], m_kid])
        order = np.argsort(all_kid, kind="stable")  # two sorted runs again
        return (
            all_kid[order],
            np.concatenate([rest[1], m_ts])[order],
            np.concatenate([rest[2], m_x])[order],
        )


class Rolling:
    """One shard of a ``rolling`` step: event time, held rows and window rows.

    Eviction: see :class:`~streamml.operators._core.event_time.KeyedEventTime`
    (keys, held rows) and :class:`WindowRows` (window rows).
    """

    def __init__(
        self,
        cfg: Config,
        *,
        clock: Any,
        time_state: dict[str, Any] | None = None,
        rows: tuple[np.ndarray, ...] | None = None,
    ) -> None:
        from datetime import timedelta

        self.cfg = cfg
        self.et = KeyedEventTime(
            max_delay=cfg.delay,
            guard=timedelta(microseconds=cfg.window),
            ttl=cfg.ttl,
            idle_release=cfg.idle_release,
            max_future=cfg.max_future,
            width=len(cfg.fields),
            clock=clock,
            resume=time_state,
        )
        self.win = WindowRows(cfg, rows)

    def release(self, *, eof: bool = False) -> tuple[Held, list[np.ndarray]]:
        """Released rows (event-time order) and their feature columns, in ``cfg.names`` order."""
        released: Released = self.et.release(eof=eof)
        held = released.held
        columns: list[np.ndarray] = []
        if len(held):
            et = self.et
            n_keys = len(et.kid_of)
            columns = self.win.compute(held.kid, held.ts, held.data, et.kmax, et.delay, n_keys)
        self.win.drop(released.gone, len(self.et.keys))
        if eof:
            self.et.close()
        return held, columns

    def snapshot_data(self) -> dict[str, Any]:
        kid, ts, x = self.win.rows
        return {"time": self.et.snapshot_data(), "rows": [kid.copy(), ts.copy(), x.copy()]}

    @staticmethod
    def parts(data: dict[str, Any], width: int) -> dict[str, Any]:
        """Constructor arguments from :meth:`snapshot_data`."""
        kid, ts, x = data["rows"]
        rows = (
            np.asarray(kid, dtype=np.int64),
            np.asarray(ts, dtype=np.int64),
            np.asarray(x, dtype=np.float64).reshape(-1, width),
        )
        return {"time_state": data["time"], "rows": rows}


def plan_names(
    fields: Sequence[str], plan: list[tuple[int, str]], suffixes: Sequence[str]
) -> list[str]:
    """Output names: every suffix (window), each with every (field, aggregate) of the plan."""
    return [f"{fields[f]}_{a}_{suffix}" for suffix in suffixes for f, a in plan]
