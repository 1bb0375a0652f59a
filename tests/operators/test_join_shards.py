"""The joins' batched timestamps (the fast path against reading item by item) and routing."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from hypothesis import given
from hypothesis import strategies as st
from streamml.operators.join import TableReady
from streamml.operators.join._shards import LEFT, RIGHT, read_groups

EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def ts(e: dict[str, Any]) -> datetime:
    return e["ts"]


def ts_again(e: dict[str, Any]) -> datetime:  # the same, but another function: general path
    return e["ts"]


def micros(dt: datetime) -> int:
    d = dt - EPOCH
    return (d.days * 86_400 + d.seconds) * 1_000_000 + d.microseconds


_TIMES = st.datetimes(
    min_value=datetime(1900, 1, 1), max_value=datetime(2200, 1, 1), timezones=st.just(timezone.utc)
)
_VALUES = st.one_of(
    _TIMES.map(lambda t: {"ts": t}),
    st.just({"ts": "2024-01-01"}),  # not a datetime
    st.just({"ts": datetime(2024, 1, 1)}),  # naive
    st.just({}),  # no timestamp
)


@given(st.lists(st.tuples(st.sampled_from([LEFT, RIGHT]), st.text(max_size=3), _VALUES)))
def test_grouped_times_match_reading_item_by_item(batch) -> None:
    """read_groups (one getter per chunk, a batched fast path) gives what reading each item
    alone gives: the readable pairs in arrival order with their times and sides, and one
    BadTimestamp per other item."""
    chunks: list = []
    for side, key, value in batch:  # runs of one side, as tag_sides(grouped=True) sends them
        if chunks and chunks[-1][0] == side:
            chunks[-1][1].append((key, value))
        else:
            chunks.append((side, [(key, value)]))
    errs: list = []
    pairs, times, sides = read_groups("j", chunks, (ts, ts_again), errs)
    good = [(s, k, v) for s, k, v in batch if isinstance(v.get("ts"), datetime) and v["ts"].tzinfo]
    assert pairs == [(k, v) for _, k, v in good]
    assert times.tolist() == [micros(v["ts"]) for _, _, v in good]
    assert sides.tolist() == [s for s, _, _ in good]
    bad = [(k, v) for s, k, v in batch if (s, k, v) not in good]
    assert [(r.step_id, r.error_type, r.original) for r in errs] == [
        ("j", "BadTimestamp", o) for o in bad
    ]


def _reference_tags(left, right, shards):
    """The per-item tagging tag_sides did before chunks, grouped by shard in arrival order."""
    import zlib

    from streamml.operators.join._shards import CONTROL

    per_shard: dict[str, list] = {}
    for side, batch in ((LEFT, left), (RIGHT, right)):
        for item in batch:
            if type(item) is TableReady:
                for s in range(shards):
                    per_shard.setdefault(str(s), []).append((CONTROL, "", item))
            else:
                k, v = item
                per_shard.setdefault(str(zlib.crc32(k.encode()) % shards), []).append((side, k, v))
    return per_shard


@given(
    st.lists(st.tuples(st.text(max_size=2), st.integers()), max_size=20),
    st.lists(
        st.one_of(
            st.tuples(st.text(max_size=2), st.integers()),
            st.builds(TableReady, st.just("t"), st.integers(0, 2), st.just(3)),
        ),
        max_size=20,
    ),
    st.integers(1, 4),
    st.booleans(),
)
def test_chunks_keep_each_shards_items_in_arrival_order(left, right, shards, memo) -> None:
    import bytewax.operators as op
    from bytewax.dataflow import Dataflow
    from bytewax.testing import TestingSink, TestingSource, run_main
    from streamml.operators.join._shards import tag_sides

    flow = Dataflow("tags")
    # One batch per side, the left before the right: arrival order is fixed.
    lefts = op.input("left", flow, TestingSource(left, batch_size=max(len(left), 1)))
    rights = op.input("right", flow, TestingSource(right, batch_size=max(len(right), 1)))
    got: list = []
    op.output(
        "out", tag_sides("t", lefts, rights, shards, TableReady, memo=memo).chunks, TestingSink(got)
    )
    run_main(flow)
    per_shard: dict[str, list] = {}
    for shard, chunk in got:
        assert chunk and type(chunk) is list
        per_shard.setdefault(shard, []).extend(chunk)
    want = _reference_tags(left, right, shards)
    for shard in want:  # the right side's order per shard (the sides may interleave)
        assert [x for x in per_shard[shard] if x[0] != LEFT] == [
            x for x in want[shard] if x[0] != LEFT
        ]
        assert [x for x in per_shard[shard] if x[0] == LEFT] == [
            x for x in want[shard] if x[0] == LEFT
        ]
    assert set(per_shard) == set(want)
