"""The operator cases of the contract suite (``test_contract.py``), and how to run and compare them.

A :class:`Case` says how to build one frame-mode operator on its input
streams (one, or two for a join), which input it takes (:func:`table`: a
few keys, event times on a one-minute grid arriving out of order within the
operator's lateness, and a few rows a day old that are late whatever the
batching), and which of its input columns are numeric. :func:`run` builds a
dataflow of a case and runs it; :func:`canonical` turns every output stream
into a multiset of comparable rows (frames concatenated and read as dicts,
floats rounded to 9 significant digits, rejections as their error type and
original item), so two runs compare with ``==``.

Times are on a one-minute grid, and every duration the operators are given
(windows, lateness, cooldown, gap) is whole minutes, so the wall-clock idle
advance of the anomaly operators (a quiet key's watermark moves with the
wall clock) cannot reach a held row or a deadline within a test's seconds.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

import bytewax.operators as op
import numpy as np
import polars as pl
from bytewax.dataflow import Dataflow, Stream
from bytewax.inputs import DynamicSource, StatelessSourcePartition
from bytewax.recovery import RecoveryConfig
from bytewax.testing import TestingSource, cluster_main, run_main

from streamml.errors import Rejected
from streamml.models import CallableModel
from streamml.testing import capture

T0 = datetime(2024, 1, 1, tzinfo=timezone.utc)
MIN = timedelta(minutes=1)
KEYS = ("a", "b", "c", "d", "f", "g")  # CRC-32 mod 3: every one of 3 shards has keys
ANCIENT_ID = 100_000
"""Rows with an ``id`` at or above this are a day old: late whatever the cut, shards or workers."""
BAD_ID = 200_000
"""Rows the properties inject (bad keys, bad values) have an ``id`` at or above this."""
FAR = T0 + timedelta(days=1)
"""The time of injected bad rows: were one admitted, it would make every later row of its key late."""
CUT = 100
"""The default frame size: an input table is cut into frames of this many rows."""


# ------------------------------------------------------------------ input


def table(
    seed: int,
    n: int,
    *,
    jitter: float,
    ancient: int = 3,
    id0: int = 0,
    values: Sequence[str] = ("x", "y"),
    step: float = 1.0,
    ms: bool = False,
    ids_as_keys: bool = False,
) -> pl.DataFrame:
    """One side's rows in arrival order: ``k``, ``ts``, ``id``, float ``values`` and a payload ``at``.

    Row ``i`` has time ``T0 + round(i * step)`` minutes (with ``step < 1``
    some rows of a key share a time: ties, taken in arrival order) and
    arrives at position ``i + U[0, jitter)``: a row arrives after rows at
    most ``jitter * step`` minutes newer, so nothing is late when the
    lateness is longer. ``ancient`` rows a day old follow, after the first
    40 %, a row of their key: they are late on every run. ``ts`` is a UTC
    ``Datetime``, or with ``ms`` integer epoch milliseconds. With
    ``ids_as_keys`` each row's key is ``e{id}`` (an event id, as a label
    join keys its inputs).
    """
    rng = np.random.default_rng(seed)
    i = np.arange(n)
    minutes = np.round(i * step).astype(np.int64)
    x = rng.normal(10.0, 2.0, n)
    x[rng.random(n) < 0.06] += 25.0  # spikes, so anomaly windows open
    times = [T0 + int(m) * MIN for m in minutes]
    cols: dict[str, Any] = {
        "k": [f"e{id0 + j}" for j in i] if ids_as_keys else rng.choice(KEYS, n).tolist(),
        "ts": times,
        "id": (id0 + i).tolist(),
    }
    for j, name in enumerate(values):
        cols[name] = (x if j == 0 else rng.normal(0.0, 1.0, n)).tolist()
    cols["at"] = times  # a payload column: carried along, never read
    frame = pl.DataFrame(cols, schema=_schema(values))
    order = np.argsort(i + rng.uniform(0.0, jitter, n), kind="stable")
    frame = frame[order]
    if not ancient:
        return frame.with_columns(pl.col("ts").dt.epoch("ms")) if ms else frame
    at = sorted(rng.choice(np.arange(int(0.4 * n), n), ancient, replace=False).tolist())
    parts, last = [], 0
    for j, pos in enumerate(at):
        parts.append(frame.slice(last, pos - last))
        old = frame.row(pos - 1, named=True)  # its key has a row before it on this side
        old |= {"ts": T0 - timedelta(days=1) + j * MIN, "id": ANCIENT_ID + id0 + j}
        parts.append(pl.DataFrame([old], schema=frame.schema))
        last = pos
    parts.append(frame.slice(last))
    frame = pl.concat(parts)
    return frame.with_columns(pl.col("ts").dt.epoch("ms")) if ms else frame


def _schema(values: Sequence[str]) -> dict[str, Any]:
    return {
        "k": pl.String,
        "ts": pl.Datetime("us", "UTC"),
        "id": pl.Int64,
        **{name: pl.Float64 for name in values},
        "at": pl.Datetime("us", "UTC"),
    }


def in_order(frame: pl.DataFrame) -> pl.DataFrame:
    """The rows that are not a day old, in event-time order."""
    return frame.filter(pl.col("id") < ANCIENT_ID).sort("ts", maintain_order=True)


def cut(frame: pl.DataFrame, cuts: Sequence[int] | None = None) -> list[pl.DataFrame]:
    """``frame`` cut into frames at ``cuts`` (row positions); by default every :data:`CUT` rows."""
    if cuts is None:
        cuts = range(CUT, frame.height, CUT)
    bounds = [0, *sorted({c for c in cuts if 0 < c < frame.height}), frame.height]
    return [frame.slice(a, b - a) for a, b in zip(bounds, bounds[1:])]


def bad_rows(like: pl.DataFrame, changes: Sequence[Mapping[str, Any]], id0: int) -> pl.DataFrame:
    """Rows of ``like``'s schema, each a valid row of a known key at :data:`FAR` with ``changes``."""
    base = like.row(0, named=True)
    far = FAR if isinstance(like.schema["ts"], pl.Datetime) else int(FAR.timestamp() * 1000)
    rows = [{**base, "ts": far, "id": id0 + i, **change} for i, change in enumerate(changes)]
    return pl.DataFrame(rows, schema=like.schema)


# ------------------------------------------------------------------ cases


@dataclass(frozen=True)
class Case:
    """How the contract suite builds, feeds and reads one operator.

    Attributes:
        name: The test id.
        build: ``(input streams, shards) -> {output name: stream}``; the
            names include ``"errs"`` and, for event time, ``"late"``.
        tables: The valid input, one table per side, in arrival order.
        numeric: The numeric input columns (bad values go there).
        event_time: Whether the operator has event time (lateness).
        rows: Whether the operator takes ``(key, row)`` items, not frames:
            its build turns each input frame into its rows (:func:`as_rows`),
            and what it rejects holds ``(key, row)``.
        skip: Properties that do not apply, with the reason.
        xfail: Properties that fail today, with the finding.
    """

    name: str
    build: Callable[[list[Stream], int], dict[str, Stream]]
    tables: Callable[[], list[pl.DataFrame]]
    numeric: tuple[str, ...]
    event_time: bool = True
    rows: bool = False
    skip: Mapping[str, str] = field(default_factory=dict)
    xfail: Mapping[str, str] = field(default_factory=dict)


def _rolling(**window: Any) -> Callable[[list[Stream], int], dict[str, Stream]]:
    from streamml.operators.featurize import rolling

    def build(ups: list[Stream], shards: int) -> dict[str, Stream]:
        out = rolling(
            "roll",
            ups[0],
            key="k",
            timestamp="ts",
            fields=["x", "y"],
            max_delay=5 * MIN,
            shards=shards,
            **window,
        )
        return {"oks": out.oks, "errs": out.errs, "late": out.late}

    return build


def _linear(x: np.ndarray) -> np.ndarray:
    """Row by row (no reduction across rows), so a row's score does not depend on its batch."""
    return 2.0 * x[:, 0] - 0.5 * x[:, 1]


def _infer(ups: list[Stream], shards: int) -> dict[str, Stream]:
    from streamml.operators.infer import infer

    model = CallableModel(_linear, outputs="score", shape=(2,), dtype=np.float64, version="lin")
    # max_wait of an hour: a batch runs when 32 rows wait or at the end, never by the clock
    out = infer(
        "infer",
        ups[0],
        model,
        inputs=["x", "y"],
        key="k",
        shards=shards,
        max_batch=32,
        max_wait=timedelta(hours=1),
    )
    return {"oks": out.oks, "errs": out.errs}


def _shadow(ups: list[Stream], shards: int) -> dict[str, Stream]:
    from streamml.operators.infer import shadow

    live = CallableModel(_linear, outputs="score", shape=(2,), dtype=np.float64, version="lin")
    candidate = CallableModel(
        lambda x: 2.0 * x[:, 0], outputs="score", shape=(2,), dtype=np.float64, version="x2"
    )
    out = shadow(
        "shadow",
        ups[0],
        live,
        candidate,
        compare="score",
        share=0.5,  # keys b, c, f, g of the six
        key="k",
        inputs=["x", "y"],
        shards=shards,
        max_batch=32,
        max_wait=timedelta(hours=1),
    )
    return {"oks": out.oks, "errs": out.errs, "shadow": out.shadow}


def _model_of(key: Any) -> str:
    if not isinstance(key, str):
        raise TypeError(f"a key is text; got {type(key).__name__}")
    return "low" if key < "d" else "high"


def _load_segment(name: str) -> CallableModel:
    weight = {"low": 1.0, "high": -3.0}[name]
    return CallableModel(
        lambda x: weight * _linear(x), outputs="score", shape=(2,), dtype=np.float64, version=name
    )


def _by_key(ups: list[Stream], shards: int) -> dict[str, Stream]:
    from streamml.operators.infer import infer_by_key

    # no shards: each Bytewax batch is scored as it comes, by its keys' models
    out = infer_by_key(
        "by_key",
        as_rows("rows", ups[0]),
        model_for=_model_of,
        load=_load_segment,
        max_models=1,
        inputs=["x", "y"],
        max_batch=32,
    )
    return {"oks": out.oks, "errs": out.errs}


def _score(ups: list[Stream], shards: int) -> dict[str, Stream]:
    from streamml.operators.anomaly import ZScore, score

    out = score(
        "score",
        ups[0],
        key="k",
        timestamp="ts",
        scorer=ZScore("x", window=30 * MIN, min_points=3),
        lateness=5 * MIN,
        shards=shards,
    )
    return {"oks": out.oks, "errs": out.errs, "late": out.late}


def _windows(ups: list[Stream], shards: int) -> dict[str, Stream]:
    from streamml.operators.anomaly import FixedThreshold, ZScore, anomaly_windows

    out = anomaly_windows(
        "aw",
        ups[0],
        key="k",
        timestamp="ts",
        threshold=FixedThreshold(2.0, close_below=1.0),
        score=ZScore("x", window=30 * MIN, min_points=5),
        cooldown=3 * MIN,
        gap=10 * MIN,
        lateness=5 * MIN,
        alerts=True,
        shards=shards,
    )
    return {"windows": out.windows, "opened": out.opened, "errs": out.errs, "late": out.late}


def _inactivity(ups: list[Stream], shards: int) -> dict[str, Stream]:
    from streamml.operators.anomaly import inactivity

    # one state: the flow's event time says when a key fell silent (no shards to vary)
    out = inactivity("quiet", ups[0], key="k", timestamp="ts", after=8 * MIN, lateness=5 * MIN)
    return {"alerts": out.alerts, "errs": out.errs, "late": out.late}


def _inactivity_rows(ups: list[Stream], shards: int) -> dict[str, Stream]:
    from streamml.operators.anomaly import inactivity

    rows = as_rows("rows", ups[0])
    out = inactivity("quiet", rows, timestamp=_row_ts, after=8 * MIN, lateness=5 * MIN)
    return {"alerts": out.alerts, "errs": out.errs, "late": out.late}


def _join(ups: list[Stream], shards: int) -> dict[str, Stream]:
    from streamml.operators.join import interval_join

    out = interval_join(
        "ij",
        ups[0],
        ups[1],
        key="k",
        left_ts="ts",
        lower=-3 * MIN,
        upper=5 * MIN,
        lateness=JOIN_LATENESS,
        how="left",
        shards=shards,
    )
    return {"oks": out.oks, "errs": out.errs, "late": out.late}


def _online_scale(ups: list[Stream], shards: int) -> dict[str, Stream]:
    from streamml.operators.featurize import online_scale

    out = online_scale("z", ups[0], key="k", fields=["x", "y"], shards=shards, ttl=None)
    return {"oks": out.oks, "errs": out.errs}


def _window_agg(ups: list[Stream], shards: int) -> dict[str, Stream]:
    from bytewax.operators.windowing import TumblingWindower
    from streamml.operators.featurize import window_agg

    out = window_agg(
        "win",
        ups[0],
        key="k",
        timestamp="ts",
        windower=TumblingWindower(10 * MIN, align_to=T0),
        fields={"x": ["count", "mean", "max"], "y": ["sum"]},
        max_delay=5 * MIN,
        idle_advance=False,
        shards=shards,
    )
    return {"oks": out.oks, "errs": out.errs, "late": out.late}


ENRICH_ROWS = {k: {"site": f"site-{k}", "x": float(i)} for i, k in enumerate(KEYS[:-1])}
"""The enrichment table: every key but the last has a row (the last one's rows are misses), and
each row's ``x`` clashes with the events' ``x`` column."""


class _Changelog(DynamicSource):
    """The enrichment table's changelog: every row and its ``TableReady`` in one batch, on worker 0.

    A dynamic source keeps no state (the contract's snapshot check reads every stored state as
    an operator's record); on a resume it emits the rows again, the same upserts.
    """

    def __init__(self, items: list[Any]) -> None:
        self.items = items

    def build(self, step_id: str, worker_index: int, worker_count: int) -> Any:
        return _ChangelogPart(self.items if worker_index == 0 else [])


class _ChangelogPart(StatelessSourcePartition):
    def __init__(self, items: list[Any]) -> None:
        self.items = list(items)

    def next_batch(self) -> list[Any]:
        if not self.items:
            raise StopIteration
        items, self.items = self.items, []
        return items


def _enrich(ups: list[Stream], shards: int) -> dict[str, Stream]:
    from streamml.operators.join import TableReady, enrich

    changelog = [*ENRICH_ROWS.items(), TableReady("table", 0, 1)]
    table = op.input("table", ups[0].flow(), _Changelog(changelog))
    out = enrich("en", ups[0], table, key="k", shards=shards)
    return {"oks": out.oks, "errs": out.errs}


JOIN_LATENESS = 450 * MIN
"""Longer than the whole input's span: which rows are late must not depend on how the two
inputs interleave (a scheduling matter), so only the day-old rows, late behind rows of their own
side, are late."""


def _one_side() -> list[pl.DataFrame]:
    return [table(1, 600, jitter=4.0, step=0.8)]


def _one_side_ms() -> list[pl.DataFrame]:
    return [table(5, 600, jitter=4.0, step=0.8, ms=True)]


def _two_sides() -> list[pl.DataFrame]:
    return [
        table(2, 400, jitter=10.0, values=("x", "y")),
        table(3, 270, jitter=10.0, id0=50_000, values=("z",), step=1.5),
    ]


def _as_row_pairs(item: Any) -> list[Any]:
    """A frame's rows as ``(k, row)`` pairs (any other item as it is, for the operator to judge)."""
    if isinstance(item, pl.DataFrame):
        return [(row["k"], row) for row in item.to_dicts()]
    return [item]


def as_rows(step_id: str, up: Stream) -> Stream:
    """The input of a row operator: each frame's rows, one batch per frame, as ``(k, row)``."""
    return op.flat_map(step_id, up, _as_row_pairs)


def _row_ts(row: Mapping[str, Any]) -> datetime:
    return row["ts"]


def _table_id(row: Mapping[str, Any]) -> dict[str, Any]:
    return {"table_id": row["id"]}


def _asof(ups: list[Stream], shards: int) -> dict[str, Stream]:
    from streamml.operators.join import asof_join

    out = asof_join(
        "asof",
        as_rows("events", ups[0]),
        as_rows("table", ups[1]),
        ts=_row_ts,
        table_ts=_row_ts,
        value=_table_id,
        default={},
        lateness=JOIN_LATENESS,
        shards=shards,
    )
    return {"oks": out.oks, "errs": out.errs, "late": out.late}


def _label(ups: list[Stream], shards: int) -> dict[str, Stream]:
    from streamml.operators.join import label_join

    out = label_join(
        "lj",
        as_rows("preds", ups[0]),
        as_rows("labels", ups[1]),
        ts=_row_ts,
        max_delay=3 * MIN,
        window=30 * MIN,
        task="regression",
        prediction="x",
        label="x",
        lateness=JOIN_LATENESS,
        shards=shards,
    )
    return {
        "labelled": out.labelled,
        "unlabelled": out.unlabelled,
        "metrics": out.metrics,
        "errs": out.errs,
        "late": out.late,
    }


def _label_frames(ups: list[Stream], shards: int) -> dict[str, Stream]:
    from streamml.operators.join import label_join

    out = label_join(
        "lj",
        ups[0],
        ups[1],
        key="k",
        ts="ts",
        max_delay=3 * MIN,
        window=30 * MIN,
        task="regression",
        prediction="x",
        label="x",
        lateness=JOIN_LATENESS,
        shards=shards,
    )
    return {
        "labelled": out.labelled,
        "unlabelled": out.unlabelled,
        "metrics": out.metrics,
        "errs": out.errs,
        "late": out.late,
    }


def _labels_of(preds: pl.DataFrame, seed: int, jitter: float, ancient: int = 3) -> pl.DataFrame:
    """Labels of four in five predictions (not the day-old ones), 0-4 minutes after each (a
    label more than 3 minutes late labels nothing), in arrival order within ``jitter`` rows,
    and ``ancient`` labels a day old, each after a label of its id."""
    rng = np.random.default_rng(seed)
    base = preds.filter(pl.col("id") < ANCIENT_ID).sort("id")
    base = base.filter(pl.Series(rng.random(base.height) < 0.8))
    delay = pl.Series(rng.integers(0, 5, base.height)) * MIN
    labels = base.with_columns(
        ts=pl.col("ts") + delay,
        id=pl.col("id") + 50_000,
        x=pl.col("x") + pl.Series(rng.normal(0.0, 1.0, base.height)),
    ).sort("ts", maintain_order=True)
    order = np.argsort(np.arange(labels.height) + rng.uniform(0.0, jitter, labels.height))
    labels = labels[order]
    at = sorted(rng.choice(np.arange(1, labels.height), ancient, replace=False).tolist())
    parts, last = [], 0
    for j, pos in enumerate(at):
        parts.append(labels.slice(last, pos - last))
        old = labels.row(pos - 1, named=True) | {
            "ts": T0 - timedelta(days=1) + j * MIN,
            "id": ANCIENT_ID + 50_000 + j,
        }
        parts.append(pl.DataFrame([old], schema=labels.schema))
        last = pos
    parts.append(labels.slice(last))
    return pl.concat(parts)


def _predictions_and_labels() -> list[pl.DataFrame]:
    preds = table(8, 400, jitter=10.0, values=("x",), ids_as_keys=True)
    return [preds, _labels_of(preds, 9, jitter=10.0)]


_ROWS_SKIP = {
    "bad_frame": "a row operator holds no frame: a payload column of another dtype is a value "
    "carried in its row's dict, and the injected rows are valid rows at a far time",
}


CASES = [
    Case(
        "rolling_time",
        _rolling(
            window=30 * MIN, aggregates=("count", "mean", "std", "max", "last", "delta", "p50")
        ),
        _one_side,
        ("x", "y"),
    ),
    Case(
        "rolling_count",
        _rolling(last=5, aggregates=("count", "mean", "std", "min", "last")),
        _one_side_ms,
        ("x", "y"),
    ),
    Case(
        "infer",
        _infer,
        lambda: [table(4, 600, jitter=4.0, ancient=0)],
        ("x", "y"),
        event_time=False,
        skip={
            "order": "infer has no event time: rows are scored as they come, nothing is late "
            "and there is no order to be out of",
        },
    ),
    Case(
        "shadow",
        _shadow,
        lambda: [table(10, 600, jitter=4.0, ancient=0)],
        ("x", "y"),
        event_time=False,
        skip={
            "order": "shadow has no event time: rows are scored as they come",
            "bad_frame": "a row of the candidate's keys comes out twice by design (on oks and "
            "on shadow), where the property counts each odd row once; its other checks (no "
            "crash, nothing else changes) pass",
        },
    ),
    Case(
        "infer_by_key",
        _by_key,
        lambda: [table(11, 600, jitter=4.0, ancient=0)],
        ("x", "y"),
        event_time=False,
        rows=True,
        skip={
            **_ROWS_SKIP,
            "order": "infer_by_key has no event time: rows are scored as they come",
            "snapshot": "infer_by_key keeps no state in the dataflow (each batch is scored as "
            "it comes); its cache of loaded models is loaded again after a resume",
        },
    ),
    Case("anomaly_score", _score, _one_side, ("x",)),
    Case("anomaly_windows", _windows, _one_side_ms, ("x",)),
    Case(
        "anomaly_inactivity",
        _inactivity,
        _one_side,
        (),
        skip={
            "bad_frame": "inactivity reads only the key and time columns: a payload column of "
            "another dtype clashes with nothing, and the injected rows are valid data of their "
            "keys, which moves their silences, so 'nothing else changes' cannot hold",
        },
    ),
    Case("anomaly_inactivity_rows", _inactivity_rows, _one_side, (), rows=True, skip=_ROWS_SKIP),
    Case("interval_join", _join, _two_sides, ()),
    Case(
        "online_scale",
        _online_scale,
        lambda: [table(6, 600, jitter=4.0, ancient=0)],
        ("x", "y"),
        event_time=False,
        skip={
            "order": "online_scale has no event time: each key's rows are scaled in arrival "
            "order, so an order is what it computes on",
            "bad_frame": "online_scale holds no rows: a payload column of another dtype clashes "
            "with nothing, the injected rows are valid and count in their key's statistics, so "
            "'nothing else changes' cannot hold",
        },
    ),
    Case(
        "window_agg",
        _window_agg,
        _one_side,
        ("x", "y"),
        skip={
            "bad_frame": "window_agg keeps no payload column (only each row's key, time and "
            "numbers): a payload column of another dtype clashes with nothing, the injected rows "
            "are valid and their far time moves their key's watermark, so 'nothing else "
            "changes' cannot hold",
        },
    ),
    Case(
        "enrich",
        _enrich,
        lambda: [table(7, 600, jitter=4.0)],
        (),
        event_time=False,
        skip={
            "order": "enrich has no event time: each event is joined with the table row current "
            "when it is processed, so there is no order to be out of",
            "bad_values": "enrich reads no value of an event but its key: a NaN, a null or a "
            "text payload is carried to the output as it is, never rejected",
        },
    ),
    Case("asof_join", _asof, _two_sides, (), rows=True, skip=_ROWS_SKIP),
    Case("label_join", _label, _predictions_and_labels, ("x",), rows=True, skip=_ROWS_SKIP),
    Case("label_join_frames", _label_frames, _predictions_and_labels, ("x",)),
]


# ------------------------------------------------------------------ running


def run(
    case: Case,
    sides: Sequence[Sequence[Any]],
    *,
    shards: int = 3,
    workers: int = 1,
    recovery: RecoveryConfig | None = None,
    whole: Sequence[int] = (),
) -> dict[str, list]:
    """Run ``case`` on ``sides`` (each a list of stream items) and return every output stream.

    Each source emits one item (frame) per batch; the sides listed in
    ``whole`` emit all their items in their first batch.
    """
    flow = Dataflow(f"contract_{case.name}")
    ups = [
        op.input(f"in{i}", flow, TestingSource(list(items), len(items) if i in whole else 1))
        for i, items in enumerate(sides)
    ]
    outs: dict[str, list] = {"errs": [], "late": []}
    outs.update(capture(case.build(ups, shards)))
    interval = timedelta(0) if recovery is not None else None
    if workers == 1:
        run_main(flow, epoch_interval=interval, recovery_config=recovery)
    else:
        cluster_main(
            flow,
            [],
            0,
            epoch_interval=interval,
            recovery_config=recovery,
            worker_count_per_proc=workers,
        )
    return outs


def frames_of(tables: Sequence[pl.DataFrame], cuts: Sequence[Sequence[int] | None] = ()) -> list:
    """Each side's table cut into frames (``cuts[i]`` for side ``i``, default cuts otherwise)."""
    return [cut(t, cuts[i] if i < len(cuts) else None) for i, t in enumerate(tables)]


def _value(v: Any) -> Any:
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return v
        return 0.0 if abs(v) < 1e-9 else float(f"{v:.9g}")
    if isinstance(v, Rejected):
        return ("Rejected", v.error_type, _value(v.original))
    if isinstance(v, Mapping):
        return tuple(sorted((str(k), _value(x)) for k, x in v.items()))
    if isinstance(v, (list, tuple)):
        return tuple(_value(x) for x in v)
    if isinstance(v, np.ndarray):
        return _value(v.tolist())
    return v


def rows(items: Sequence[Any]) -> list[Any]:
    """A stream's items as rows: each frame's rows as dicts, a column another frame lacks as null."""
    frames = [x for x in items if isinstance(x, pl.DataFrame)]
    out = [x for x in items if not isinstance(x, pl.DataFrame)]
    names = {name: None for f in frames for name in f.columns}
    for f in frames:
        out += [names | row for row in f.to_dicts()]
    return out


def canonical(outs: Mapping[str, Sequence[Any]]) -> dict[str, Counter]:
    """Every output stream as a multiset of comparable rows."""
    return {name: Counter(repr(_value(r)) for r in rows(items)) for name, items in outs.items()}


def ids(rejections: Sequence[Rejected]) -> list[Any]:
    """The ``id`` of each rejected row (the original itself when it is not a row)."""
    originals = (row_of(r.original) for r in rejections)
    return sorted(
        (o["id"] if isinstance(o, Mapping) and "id" in o else o for o in originals), key=repr
    )


def row_of(original: Any) -> Any:
    """The row of a rejected ``(key, row)`` pair (a row operator's); anything else as it is."""
    if type(original) is tuple and len(original) == 2 and isinstance(original[1], Mapping):
        return original[1]
    return original
