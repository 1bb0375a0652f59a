"""label_join's shard logic on frames: the usual rows matched on columns, the rest by the row loop.

:class:`_FrameLogic` reads a call's frames column by column
(:mod:`._label_frames`), admits their rows through the core's event time,
matches the usual ones on columns and hands the others to
:class:`~streamml.operators.join._label_logic._LabelLogic`'s row loop; its
state record is the rows path's (waiting rows held by id in row stores), so
either path resumes the other's.
"""

from __future__ import annotations

import zlib
from typing import Any

import numpy as np
import polars as pl
from streamml.operators.join._label_frames import (
    read_labels,
    read_predictions,
    to_frames,
)
from streamml.operators.join._label_logic import (
    _UNMATCHED,
    _Config,
    _LabelLogic,
    _outside,
    _reject_outside,
)
from streamml.operators.join._label_windows import window_parts
from streamml.operators.join._shards import (
    LEFT,
    RowStore,
    frame_times,
    late_records,
    unfit,
)

from streamml.errors import Rejected

_NO_ITEM = -(2**63)  # nothing of the other side waits for the id
_MANY = 2**63 - 1  # more than one item of the other side waits
_COLUMNS_FROM = 192
"""Rows of a call from which the usual ones are matched on columns; below, by the row loop.
The column path costs some 60 NumPy calls a call: on benchmarks.join's label race (16
shards, ~125 rows a call) it took 617 ms against the row loop's 501; on the fraud-shaped
calls (~250 prediction and ~1,000 label rows) 254 ms against 290 (/tmp/t34/abrep.sh)."""


class _FrameLogic(_LabelLogic):
    """One shard of a label join on frames: ``(side, frame)`` in, frames out.

    Matching, event time and windows are :class:`_LabelLogic`'s; a waiting
    prediction or label holds the id of its row in ``stores`` (predictions,
    labels) where the rows path holds the event, and labelled and
    unlabelled predictions leave as one frame each per call. The state
    record is the rows path's with ids for events, plus the stores (see
    :mod:`~streamml.operators.join._label_frames`).

    The usual rows (an id once in the call, at most one item of the other
    side waiting for it and none of its own: see :meth:`_usual_rows`) are
    matched on columns, their window counts added per batch in arrival
    order; a prediction labelled on arrival leaves from its own frame and is
    never stored. An item waiting alone is a tuple in ``lone``; the row loop
    (:meth:`_match`) takes the other rows.

    Eviction: a row leaves its store when its item leaves the state
    (labelled, unlabelled, unmatched); a late row or a prediction labelled
    on arrival is stored dropped (or not at all).
    """

    def __init__(self, cfg: _Config, resume: Any) -> None:
        self.stores = (RowStore(), RowStore())
        self.next_id = 0
        self.gone: tuple[list[int], list[int]] = ([], [])  # ids leaving the stores this call
        self.unmatched: list[tuple[str, int]] = []  # (key, label id) found unmatched this call
        # predictions labelled on arrival this call: (their places in the call, label ids)
        self.fresh: list[tuple[np.ndarray, tuple[int, ...]]] = []
        self.call: tuple[list[tuple[int, pl.DataFrame]], np.ndarray] = ([], np.zeros(1))
        # an item waiting alone for its id (predictions, labels): the tuple itself, no list
        # around it (a list per waiting row cost a garbage-collector scan of each, again and
        # again); it moves into ``preds``/``labels`` when a second item or the row loop needs it
        self.lone: tuple[dict[str, tuple], dict[str, tuple]] = ({}, {})
        super().__init__(cfg, resume)

    def _held_as_mine(self, data: dict[str, Any]) -> dict[str, Any]:
        if "stores" not in data:  # the rows path's record
            data = to_frames(data, self.cfg.key)
        self.stores = (RowStore(data["stores"][0]), RowStore(data["stores"][1]))
        self.next_id = data["next_id"]
        return data

    def on_batch(self, values: list[tuple[int, pl.DataFrame]]) -> tuple[list, bool]:
        cfg = self.cfg
        out: list[list] = [[], [], [], [], []]  # labelled, unlabelled, errs, late, parts
        errs = out[2]
        frames: list[tuple[int, pl.DataFrame]] = []
        keys: list[str] = []
        times: list[np.ndarray] = []
        sides: list[np.ndarray] = []
        columns: list[list[Any]] = [[], [], []]  # y (prediction or label), proba, version
        for side, frame in values:
            if unfit(cfg.step_id, self.stores[side], side, frame, frames, errs):
                continue
            frame, ts = frame_times(cfg.step_id, frame, cfg.timestamps[side], errs)
            if not frame.height:
                continue
            if side == LEFT:
                bad = _outside(ts, np.ones(len(ts), dtype=bool), cfg.window)
                if bad is not None:
                    errs += _reject_outside(cfg.step_id, frame.filter(pl.Series(bad)).to_dicts())
                    frame, ts = frame.filter(pl.Series(~bad)), ts[~bad]
            reader = read_predictions if side == LEFT else read_labels
            frame, got, keep = reader(cfg, frame, errs)
            if not frame.height:
                continue
            frames.append((side, frame))
            keys += frame.get_column(cfg.key).cast(pl.String).to_list()
            times.append(ts if keep is None else ts[keep])
            sides.append(np.full(frame.height, side, dtype=np.int8))
            columns[0] += got[0]
            nones = [None] * frame.height
            columns[1] += got[1] if side == LEFT else nones
            columns[2] += got[2] if side == LEFT else nones
        if frames:
            self._add(frames, keys, np.concatenate(times), np.concatenate(sides), columns, out)
        self._release(out)
        return self._emit(out), False

    def _add(
        self,
        frames: list[tuple[int, pl.DataFrame]],
        keys: list[str],
        ts: np.ndarray,
        sides: np.ndarray,
        columns: list[list[Any]],
        out: list,
    ) -> None:
        """Admit a call's readable rows, store those that may wait, and match them."""
        if self.shard is None:
            crc = zlib.crc32(keys[0].encode("utf-8", "surrogatepass"))
            self.shard = str(crc % self.cfg.shards)
        n = len(keys)
        ids = np.arange(self.next_id, self.next_id + n, dtype=np.int64)
        self.next_id += n
        starts = np.cumsum([0] + [f.height for _, f in frames])
        adm = self.et.admit(keys, ts)
        pos = None  # each admitted row's place in the call (None: all admitted)
        if len(adm.late):

            def original(i: int) -> dict[str, Any]:
                j = int(np.searchsorted(starts, i, side="right")) - 1
                return frames[j][1].row(i - int(starts[j]), named=True)

            out[3] = late_records(self.cfg.step_id, adm, ts, original)
            pos = adm.ok
            kept = pos.tolist()
            keys = [keys[i] for i in kept]
            columns = [[c[i] for i in kept] for c in columns]
            sides = sides[pos]
            if not keys:
                return
        if len(keys) < _COLUMNS_FROM:  # a few rows: the row loop, as it was
            self._row_loop(frames, starts, ids, pos, keys, adm.ts, sides, columns, out)
            return
        usual, matched = self._usual_rows(keys, adm.kid, adm.ts, sides)
        # a prediction labelled on arrival is never stored: its row leaves from its frame
        fresh = usual & matched & (sides == LEFT)
        stored = np.zeros(n, dtype=bool)
        stored[slice(None) if pos is None else pos] = ~fresh
        for j, (side, frame) in enumerate(frames):
            a, b = int(starts[j]), int(starts[j + 1])
            keep = stored[a:b]
            if keep.all():
                self.stores[side].add(frame, ids[a:b])
            elif keep.any():  # whole, the rest stored dead: no gather
                self.stores[side].add(frame, ids[a:b], keep)
        self.call = (frames, starts)
        call_ids = ids if pos is None else ids[pos]
        call_pos = np.arange(len(keys)) if pos is None else pos
        ts_ok = adm.ts
        # Rows that are not usual go through the row loop, their counts deferred; then the
        # usual ones, a side at a time; then every labelled prediction is counted in arrival
        # order (a match's place: the larger of its two row ids, the row that came second).
        events: list[tuple] = []
        check: set[str] = set()
        if not usual.all():
            slow = np.flatnonzero(~usual).tolist()
            slow_keys = [keys[i] for i in slow]
            self._promote(slow_keys)
            side_list = sides[slow].tolist()
            y, proba, version = columns
            deferred: list[tuple] = []
            first = len(out[0])
            check = self._match(
                list(zip(slow_keys, call_ids[slow].tolist())),
                side_list,
                [
                    (y[i], proba[i], version[i]) if s == LEFT else y[i]
                    for i, s in zip(slow, side_list)
                ],
                ts_ok[slow].tolist(),
                out[0],
                deferred,
            )
            if deferred:
                parts, truths, guesses, probas = zip(*deferred)
                where = np.array([max(x[1], x[3]) for x in out[0][first:]], dtype=np.int64)
                index: dict[int, int] = {}  # each part once, by identity
                of = np.fromiter(
                    (index.setdefault(id(p), len(index)) for p in parts), np.int64, len(parts)
                )
                distinct = list({id(p): p for p in parts}.values())
                events.append((distinct, of, truths, guesses, probas, where))
        for side, rows in ((LEFT, usual & (sides == LEFT)), (1, usual & (sides != LEFT))):
            if not rows.any():
                continue
            if rows.all():
                picked = (keys, ts_ok, call_ids, call_pos, columns, matched)
            else:
                at = np.flatnonzero(rows)
                got = at.tolist()
                picked = (
                    [keys[i] for i in got],
                    ts_ok[at],
                    call_ids[at],
                    call_pos[at],
                    [[c[i] for i in got] for c in columns],
                    matched[at],
                )
            usual_rows = self._usual_predictions if side == LEFT else self._usual_labels
            found = usual_rows(*picked, out)
            if found is not None:
                events.append(found)
        if events:
            _count(events)
        if check:
            self._expire(check, out)

    def _row_loop(
        self,
        frames: list[tuple[int, pl.DataFrame]],
        starts: np.ndarray,
        ids: np.ndarray,
        pos: np.ndarray | None,
        keys: list[str],
        ts: np.ndarray,
        sides: np.ndarray,
        columns: list[list[Any]],
        out: list,
    ) -> None:
        """A call's admitted rows (at ``pos``; ``None``: all) stored and matched one by one."""
        alive = None
        if pos is not None:
            alive = np.zeros(len(ids), dtype=bool)
            alive[pos] = True
        for j, (side, frame) in enumerate(frames):
            a, b = int(starts[j]), int(starts[j + 1])
            self.stores[side].add(frame, ids[a:b], None if alive is None else alive[a:b])
        self._promote(keys)
        side_list = sides.tolist()
        y, proba, version = columns
        read = [
            (y[i], proba[i], version[i]) if s == LEFT else y[i] for i, s in enumerate(side_list)
        ]
        row_ids = (ids if pos is None else ids[pos]).tolist()
        self._step(list(zip(keys, row_ids)), side_list, read, ts.tolist(), out)

    def _usual_rows(
        self, keys: list[str], kid: np.ndarray, ts: np.ndarray, sides: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Which admitted rows are usual, and which of them meet the item waiting for them.

        A row is usual when its id comes once in the call, nothing of its own
        side waits for the id, and at most one item of the other side does:
        then it either waits alone (nothing waited) or labels / is labelled by
        that item (its time within ``max_delay``), and its id needs no expiry
        check. Usual rows are matched on columns, a run of one side at a
        time; the others by :meth:`_match`, in arrival order, so every
        window's counts and sums come in the order of the row loop.
        """
        n = len(keys)
        other_t = np.full(n, _NO_ITEM, dtype=np.int64)
        mine = np.zeros(n, dtype=bool)
        cuts = (np.flatnonzero(sides[1:] != sides[:-1]) + 1).tolist()
        for a, b in zip([0, *cuts], [*cuts, n]):  # a block of one side: C-speed look-ups
            block = keys[a:b]
            side = int(sides[a])
            lone, other_lone = self.lone[side], self.lone[1 - side]
            own, other = (self.preds, self.labels) if side == LEFT else (self.labels, self.preds)
            waiting = list(map(other_lone.get, block))
            if waiting.count(None) < len(block):
                other_t[a:b] = np.fromiter(
                    (_NO_ITEM if w is None else w[0] for w in waiting), np.int64, b - a
                )
            if other:  # more than one item waits, or the row loop holds it: not usual
                other_t[a:b][np.fromiter(map(other.__contains__, block), bool, b - a)] = _MANY
            for mine_now in (lone, own):
                if mine_now and any(map(mine_now.__contains__, block)):
                    mine[a:b] |= np.fromiter(map(mine_now.__contains__, block), bool, b - a)
        delay = self.cfg.max_delay
        left = sides == LEFT
        # a prediction at t meets a label in [t, t + delay], a label at t a prediction in [t - delay, t]
        lo = np.where(left, ts, ts - delay)
        hi = np.where(left, ts + delay, ts)
        some = (other_t != _MANY) & (other_t != _NO_ITEM)
        matched = some & (other_t >= lo) & (other_t <= hi)
        usual = ~mine & (matched | (other_t == _NO_ITEM))
        ordered = np.sort(kid)  # ids that come more than once in the call (a sort: 1/6 of unique)
        twice = ordered[1:][ordered[1:] == ordered[:-1]]
        if len(twice):
            usual &= ~np.isin(kid, twice)
        return usual, matched

    def _usual_predictions(
        self,
        keys: list[str],
        ts: np.ndarray,
        ids: np.ndarray,
        pos: np.ndarray,
        columns: list[list[Any]],
        matched: np.ndarray,
        out: list,
    ) -> tuple | None:
        """Usual predictions: counted in their windows, labelled by the label that waited for
        them (their rows leave from their frames in :meth:`_emit`), or stored; the labelled
        ones to count (see :func:`_count`)."""
        cfg = self.cfg
        y, proba, version = columns
        parts, part_of = window_parts(self.parts, ts, version, cfg.window, cfg.new_stats)
        predicted = np.bincount(part_of, minlength=len(parts)).tolist()
        for part, count in zip(parts, predicted):
            part.predictions += count
        found = None
        hit = np.flatnonzero(matched)
        if len(hit):
            if len(hit) == len(keys):
                guesses, probas, hit_keys = y, proba, keys
            else:
                rows = hit.tolist()
                guesses, probas = [y[i] for i in rows], [proba[i] for i in rows]
                hit_keys = [keys[i] for i in rows]
            # (t, id, label) of the label that waited alone for each
            _, label_ids, truths = zip(*map(self.lone[1].pop, hit_keys))
            self.fresh.append((pos[hit], label_ids))
            found = (parts, part_of[hit], truths, guesses, probas, ids[hit])
        if len(hit) < len(keys):
            waiting = _rows_at(
                np.flatnonzero(~matched) if len(hit) else None, keys, ts, ids, y, proba, version
            )
            self.lone[0].update((k, (t, i, a, b, c)) for k, t, i, a, b, c in waiting)
        return found if len(hit) else None

    def _usual_labels(
        self,
        keys: list[str],
        ts: np.ndarray,
        ids: np.ndarray,
        pos: np.ndarray,
        columns: list[list[Any]],
        matched: np.ndarray,
        out: list,
    ) -> tuple | None:
        """Usual labels: each labels the prediction that waited for it, or is stored; the
        labelled predictions to count (see :func:`_count`)."""
        cfg = self.cfg
        y = columns[0]
        found = None
        hit = np.flatnonzero(matched)
        if len(hit):
            rows = hit.tolist()
            pop = self.lone[0].pop
            waited = [pop(keys[i]) for i in rows]  # (t, id, y_pred, proba, version)
            pred_t = np.array([p[0] for p in waited], dtype=np.int64)
            versions = [p[4] for p in waited]
            parts, part_of = window_parts(self.parts, pred_t, versions, cfg.window, cfg.new_stats)
            truths = [y[i] for i in rows]
            guesses, probas = [p[2] for p in waited], [p[3] for p in waited]
            found = (parts, part_of, truths, guesses, probas, ids[hit])
            label_ids = ids[hit].tolist()
            out[0] += [
                (keys[i], p[1], truth, label_id)
                for i, p, truth, label_id in zip(rows, waited, truths, label_ids)
            ]
        if len(hit) < len(keys):
            waiting = _rows_at(np.flatnonzero(~matched) if len(hit) else None, keys, ts, ids, y)
            self.lone[1].update((k, (t, i, a)) for k, t, i, a in waiting)
        return found

    def _promote(self, keys: list[str]) -> None:
        """The lone items of ``keys`` into ``preds`` and ``labels``, as the row loop holds them."""
        for lone, held in zip(self.lone, (self.preds, self.labels)):
            if lone:
                for key in keys:
                    item = lone.pop(key, None)
                    if item is not None:
                        held[key] = [item]

    def _flush(self, keys: list[str], out: list) -> None:
        self._promote(keys)
        super()._flush(keys, out)

    def on_eof(self) -> tuple[list, bool]:
        self._promote([*self.lone[0], *self.lone[1]])
        return super().on_eof()

    def size(self) -> int:
        return super().size() + len(self.lone[0]) + len(self.lone[1])

    def _unmatched(self, key: str, labels: list[tuple], out: list) -> None:
        self.unmatched += [(key, x[1]) for x in labels]  # rejected in _emit, one gather

    def _emit(self, out: list) -> list:
        """Labelled predictions as one frame (their columns and the label column), the
        unlabelled ones as another; their rows leave the stores."""
        preds, labels = self.stores
        gone_preds, gone_labels = self.gone
        if self.unmatched:
            keys, ids = zip(*self.unmatched)
            step_id = self.cfg.step_id
            out[2] += [
                Rejected(step_id, "UnmatchedLabel", _UNMATCHED.format(key), row)
                for key, row in zip(keys, labels.gather(ids).to_dicts())
            ]
            gone_labels += ids
            self.unmatched.clear()
        labelled = self._fresh_rows()
        n_labelled, n_unlabelled = len(out[0]), len(out[1])
        if n_labelled or n_unlabelled:  # one gather of the predictions for both
            ids = [p for _, p, _, _ in out[0]] + [i for _, i in out[1]]
            rows = preds.gather(ids)
            gone_preds += ids
            if n_labelled:
                label_ids = [x for _, _, _, x in out[0]]
                label = _store_column(labels, label_ids, self.cfg.label)
                done = rows.slice(0, n_labelled) if n_unlabelled else rows
                labelled.append(_with_column(done, label))
                gone_labels += label_ids
            if n_unlabelled:
                out[1] = [rows.slice(n_labelled)]
        out[0] = labelled
        if gone_preds:
            preds.drop(gone_preds)
            gone_preds.clear()
        if gone_labels:
            labels.drop(gone_labels)
            gone_labels.clear()
        return [tuple(out)] if any(out) else []

    def _fresh_rows(self) -> list[pl.DataFrame]:
        """The predictions labelled on arrival, taken from their frames with the label column;
        their labels leave the store."""
        if not self.fresh:
            return []
        frames, starts = self.call
        pos = np.concatenate([p for p, _ in self.fresh])
        label_ids = [x for _, ids in self.fresh for x in ids]
        self.fresh.clear()
        self.call = ([], np.zeros(1))
        j = np.searchsorted(starts, pos, side="right") - 1
        parts = []
        for f in np.unique(j).tolist():
            rows = (pos[j == f] - starts[f]).astype(np.uint32)
            frame = frames[f][1]
            parts.append(frame if len(rows) == frame.height else frame[pl.Series(rows)])
        rows = parts[0] if len(parts) == 1 else pl.concat(parts, how="diagonal_relaxed")
        label = _store_column(self.stores[1], label_ids, self.cfg.label)
        self.gone[1].extend(label_ids)
        return [_with_column(rows, label)]

    def _data(self) -> dict[str, Any]:
        data = super()._data()
        for name, lone in zip(("preds", "labels"), self.lone):  # as the row loop holds them
            data[name] = {**{k: [list(v)] for k, v in lone.items()}, **data[name]}
        stores = [s.snapshot_data() for s in self.stores]
        return {**data, "stores": stores, "next_id": self.next_id}


def _rows_at(positions: np.ndarray | None, *columns: list | np.ndarray) -> Any:
    """The rows at ``positions`` (``None``: all) of parallel columns (lists or NumPy arrays),
    as an iterator of tuples.

    Examples:
        >>> list(_rows_at(np.array([2, 0]), ["a", "b", "c"], np.array([1, 2, 3])))
        [('c', 3), ('a', 1)]
    """
    if positions is None:
        return zip(*(c.tolist() if isinstance(c, np.ndarray) else c for c in columns))
    at = positions.tolist()
    return zip(
        *(
            c[positions].tolist() if isinstance(c, np.ndarray) else [c[i] for i in at]
            for c in columns
        )
    )


def _count(events: list[tuple]) -> None:
    """Labelled predictions counted in their window parts, in arrival order.

    ``events``: groups of ``(parts, part_of, truths, guesses, probas, where)``,
    each group in arrival order (``part_of``: each one's index in ``parts``,
    ``where``: its place in the arrivals); the groups are merged by place, so
    each part's sums come in the order the row loop makes them.
    """
    if len(events) == 1:
        parts, part_of, truths, guesses, probas, _ = events[0]
    else:
        index: dict[int, int] = {}  # id(part) -> place in parts (a part may be in many groups)
        parts, of, where = [], [], []
        truths, guesses, probas = [], [], []
        for group_parts, group_of, t, g, p, w in events:
            remap = []
            for part in group_parts:
                j = index.setdefault(id(part), len(parts))
                if j == len(parts):
                    parts.append(part)
                remap.append(j)
            of.append(np.array(remap, dtype=np.int64)[group_of])
            where.append(w)
            truths += t
            guesses += g
            probas += p
        order = np.argsort(np.concatenate(where), kind="stable")
        part_of = np.concatenate(of)[order]
        got = order.tolist()
        truths = [truths[i] for i in got]
        guesses = [guesses[i] for i in got]
        probas = [probas[i] for i in got]
    labelled = np.bincount(part_of, minlength=len(parts)).tolist()
    for j, (part, count) in enumerate(zip(parts, labelled)):
        if not count:
            continue
        part.labelled += count
        if count == len(truths):
            part.stats.add_many(truths, guesses, probas)
        else:
            take = np.flatnonzero(part_of == j).tolist()
            part.stats.add_many(
                [truths[i] for i in take], [guesses[i] for i in take], [probas[i] for i in take]
            )


def _with_column(frame: pl.DataFrame, column: pl.Series) -> pl.DataFrame:
    """``frame`` with ``column`` added (or replaced)."""
    if column.name in frame.columns:
        return frame.with_columns(column)
    return frame.hstack([column])  # no query engine: a third of with_columns


def _store_column(store: RowStore, ids: list[int], name: str) -> pl.Series:
    """Column ``name`` of the stored rows of ``ids``, in that order (one column gathered)."""
    assert store.frame is not None  # the ids were stored
    pos = np.searchsorted(store.ids, np.asarray(ids, dtype=np.int64))
    return store.frame.get_column(name)[pl.Series(pos.astype(np.uint32))]  # gather(ndarray): ~20x
