"""Training data from the online code: replay, point-in-time labels, online/offline consistency."""

from __future__ import annotations

import math
from datetime import datetime, timedelta, timezone

import bytewax.operators as op
import orjson
import polars as pl
import pytest
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSink, TestingSource, run_main
from hypothesis import given, settings
from hypothesis import strategies as st
from streamml.operators.featurize import rolling
from streamml.operators.training import (
    KafkaTopic,
    check_consistency,
    join_labels,
    replay,
    training_table,
)

from streamml.testing import produce_all

WINDOW = timedelta(seconds=10)
DELAY = timedelta(seconds=5)


def features(step_id, frames):
    """The featurization under test: the same function the online flow would call."""
    return rolling(
        step_id,
        frames,
        key="id",
        timestamp="ms",
        window=WINDOW,
        fields=["x"],
        aggregates=["count", "mean"],
        max_delay=timedelta(days=1),  # any arrival order of these 1970 events is on time
    )


def events_frame(events: list[tuple[str, int, float]]) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "i": list(range(len(events))),
            "id": [k for k, _, _ in events],
            "ms": [t for _, t, _ in events],
            "x": [x for _, _, x in events],
        },
        schema={"i": pl.Int64, "id": pl.String, "ms": pl.Int64, "x": pl.Float64},
    )


def brute_features(events, i):
    """count and mean of x over the key's events in (t - window, t], ties up to this arrival."""
    k, t, _ = events[i]
    w = WINDOW // timedelta(milliseconds=1)
    xs = [
        x
        for j, (k2, t2, x) in enumerate(events)
        if k2 == k and t - w < t2 <= t and (t2 < t or j <= i)
    ]
    return len(xs), sum(xs) / len(xs)


def brute_label(labels, k, t):
    """The earliest label of key k in [t, t + delay]; at one instant, the last given."""
    d = DELAY // timedelta(milliseconds=1)
    found = [(lt, -n, y) for n, (k2, lt, y) in enumerate(labels) if k2 == k and t <= lt <= t + d]
    return min(found)[2] if found else None


keys = st.sampled_from(["a", "b", "c"])
times = st.integers(0, 40).map(lambda s: s * 1000)  # whole seconds: ties are common
event_lists = st.lists(st.tuples(keys, times, st.integers(-50, 50).map(float)), max_size=30)
label_lists = st.lists(st.tuples(keys, times, st.integers(0, 10**6)), max_size=20)


@settings(max_examples=40)
@given(events=event_lists, labels=label_lists, batch_size=st.integers(1, 8))
def test_training_table_matches_bruteforce(events, labels, batch_size):
    label_frame = pl.DataFrame(
        {
            "id": [k for k, _, _ in labels],
            "ms": [t for _, t, _ in labels],
            "y": [y for *_, y in labels],
        },
        schema={"id": pl.String, "ms": pl.Int64, "y": pl.Int64},
    )
    out = training_table(
        features,
        events_frame(events),
        label_frame,
        key="id",
        timestamp="ms",
        label="y",
        label_delay=DELAY,
        batch_size=batch_size,
    )
    assert out.rejected == []
    rows = {r["i"]: r for r in out.table.to_dicts()} if events else {}
    assert sorted(rows) == list(range(len(events)))
    for i, (k, t, _) in enumerate(events):
        count, mean = brute_features(events, i)
        assert rows[i]["x_count_10s"] == count
        assert math.isclose(rows[i]["x_mean_10s"], mean, rel_tol=1e-9, abs_tol=1e-9)
        assert rows[i]["y"] == brute_label(labels, k, t)


def test_labels_at_the_edges_of_the_delay():
    feats = pl.DataFrame({"id": ["a"] * 3, "ms": [0, 10_000, 20_000]})
    labs = pl.DataFrame(
        {"id": ["a", "a", "a", "a"], "ms": [-1, 5_000, 15_001, 20_000], "y": [9, 1, 2, 3]}
    )
    out, bad = join_labels(feats, labs, key="id", timestamp="ms", label="y", label_delay=DELAY)
    # -1 is before the event (never a label from the past); 15_001 is 1 ms past 10_000 + 5 s.
    assert out["y"].to_list() == [1, None, 3]
    assert bad == []


def test_label_rows_without_key_or_time_are_rejected_not_dropped():
    feats = pl.DataFrame({"id": ["a"], "ms": [0]})
    labs = pl.DataFrame({"id": ["a", None, "a"], "ms": [1, 2, None], "y": [1, 2, 3]})
    out, bad = join_labels(feats, labs, key="id", timestamp="ms", label="y", label_delay=DELAY)
    assert out["y"].to_list() == [1]
    assert [(r.error_type, r.original["y"]) for r in bad] == [
        ("MissingField", 2),
        ("MissingField", 3),
    ]


def test_misconfiguration_raises_with_what_to_do(tmp_path):
    feats = pl.DataFrame({"id": ["a"], "ms": [0], "y": [0]})
    labs = pl.DataFrame({"id": ["a"], "ms": [0], "y": [1]})
    with pytest.raises(ValueError, match="label_delay must be a timedelta >= 0"):
        join_labels(feats, labs, key="id", timestamp="ms", label="y", label_delay=-DELAY)
    with pytest.raises(ValueError, match="already feature columns"):
        join_labels(feats, labs, key="id", timestamp="ms", label="y", label_delay=DELAY)
    with pytest.raises(ValueError, match=r"\.parquet, \.ndjson or \.jsonl"):
        replay(features, tmp_path / "events.csv")
    with pytest.raises(ValueError, match="batch_size"):
        replay(features, feats, batch_size=0)


def test_bad_events_in_the_replay_are_reported():
    events = pl.DataFrame(
        {"i": [0, 1, 2], "id": ["a", "a", None], "ms": [0, 1000, 2000], "x": [1.0, math.nan, 2.0]}
    )
    out = training_table(
        features,
        events,
        pl.DataFrame({"id": ["a"], "ms": [0], "y": [1]}),
        key="id",
        timestamp="ms",
        label="y",
        label_delay=DELAY,
    )
    assert out.table["i"].to_list() == [0]
    assert sorted(r.error_type for r in out.rejected) == ["BadKey", "NonFinite"]


EVENTS = [
    ("a", 0, 1.0),
    ("b", 0, 4.0),
    ("a", 3000, 3.0),
    ("a", 3000, 5.0),
    ("b", 12_000, 8.0),
    ("a", 15_000, 7.0),
]
LABELS = pl.DataFrame({"id": ["a", "b", "a"], "ms": [2000, 14_000, 15_000], "y": [1, 0, 1]})


def test_parquet_and_ndjson_files_replay_like_the_frame(tmp_path):
    events = events_frame(EVENTS)
    events.write_parquet(tmp_path / "events.parquet")
    LABELS.write_ndjson(tmp_path / "labels.ndjson")
    from_frame = training_table(
        features, events, LABELS, key="id", timestamp="ms", label="y", label_delay=DELAY
    )
    from_files = training_table(
        features,
        tmp_path / "events.parquet",
        tmp_path / "labels.ndjson",
        key="id",
        timestamp="ms",
        label="y",
        label_delay=DELAY,
        batch_size=2,
    )
    assert from_files.table.sort("i").equals(from_frame.table.sort("i"))
    assert from_frame.table.sort("i").select("x_count_10s", "x_mean_10s", "y").rows() == [
        (1.0, 1.0, 1),
        (1.0, 4.0, None),
        (2.0, 2.0, None),
        (3.0, 3.0, None),
        (1.0, 8.0, 0),
        (1.0, 7.0, 1),
    ]


def online_run(events: pl.DataFrame, batch_size: int) -> pl.DataFrame:
    """The 'online' flow: its own dataflow, other batching, and a sink to a list."""
    flow = Dataflow("online")
    batches = [events.slice(i, batch_size) for i in range(0, events.height, batch_size)]
    out: list[pl.DataFrame] = []
    op.output(
        "sink",
        features("features", op.input("in", flow, TestingSource(batches))).oks,
        TestingSink(out),
    )
    run_main(flow)
    return pl.concat(out)


def test_consistency_passes_on_the_online_output_and_finds_each_difference():
    events = events_frame(EVENTS)
    online = online_run(events, batch_size=1)
    assert check_consistency(features, events, online, key="id", timestamp="ms").ok

    # One feature off by more than the tolerance, one within it, one row lost, one extra.
    changed = online.with_columns(
        pl.when(pl.col("i") == 2)
        .then(pl.col("x_mean_10s") + 1e-3)
        .when(pl.col("i") == 4)
        .then(pl.col("x_mean_10s") * (1 + 1e-12))
        .otherwise(pl.col("x_mean_10s"))
        .alias("x_mean_10s")
    )
    extra = changed.filter(pl.col("i") == 0).with_columns(ms=pl.lit(99_000, pl.Int64))
    changed = pl.concat([changed.filter(pl.col("i") != 5), extra])
    found = check_consistency(
        features,
        events,
        changed.sample(fraction=1.0, shuffle=True, seed=1),
        key="id",
        timestamp="ms",
        match_on=["i"],  # the rows come shuffled: pair the two rows of a at 3 s by event id
    )
    assert not found.ok
    assert found.mismatches.select("i", "column").rows() == [(2, "x_mean_10s")]
    assert found.only_offline["i"].to_list() == [5]
    assert found.only_online.select("i", "ms").rows() == [(0, 99_000)]


@pytest.mark.integration
def test_topic_from_offset_zero_gives_the_same_table(broker, topic_name):
    broker.create_topic(topic_name, partitions=1)
    events = events_frame(EVENTS)
    produce_all(
        broker.bootstrap,
        topic_name,
        [(r["id"].encode(), orjson.dumps(r)) for r in events.to_dicts()],
    )
    from_topic = training_table(
        features,
        KafkaTopic(broker.bootstrap, topic_name),
        LABELS,
        key="id",
        timestamp="ms",
        label="y",
        label_delay=DELAY,
    )
    from_frame = training_table(
        features, events, LABELS, key="id", timestamp="ms", label="y", label_delay=DELAY
    )
    assert from_topic.rejected == []
    cols = ["i", "id", "ms", "x", "x_count_10s", "x_mean_10s", "y"]
    assert from_topic.table.select(cols).sort("i").equals(from_frame.table.select(cols).sort("i"))
    # The online flow's output, checked against a replay of the topic.
    assert check_consistency(
        features,
        KafkaTopic(broker.bootstrap, topic_name),
        online_run(events, 2),
        key="id",
        timestamp="ms",
    ).ok


def test_datetime_columns_of_different_units_join_on_the_instant():
    t0 = datetime(2024, 1, 1, tzinfo=timezone.utc)
    feats = pl.DataFrame({"id": ["a", "a"], "time": [t0, t0 + timedelta(seconds=10)]}).with_columns(
        pl.col("time").dt.cast_time_unit("ns")
    )
    labs = pl.DataFrame(
        {"id": ["a", "a"], "at": [t0 + DELAY, t0 + timedelta(seconds=16)], "y": [1, 2]}
    ).with_columns(pl.col("at").dt.cast_time_unit("ms").dt.convert_time_zone("Europe/Paris"))
    out, _ = join_labels(
        feats, labs, key="id", timestamp="time", label="y", label_delay=DELAY, label_timestamp="at"
    )
    assert out["y"].to_list() == [1, None]  # 16 s is 1 s past the second event's delay
    naive = labs.with_columns(pl.col("at").dt.replace_time_zone(None))
    with pytest.raises(ValueError, match="naive Datetime"):
        join_labels(
            feats,
            naive,
            key="id",
            timestamp="time",
            label="y",
            label_delay=DELAY,
            label_timestamp="at",
        )
    with pytest.raises(ValueError, match="cast one so the same key compares equal"):
        join_labels(
            feats,
            labs.with_columns(id=pl.lit(1)),
            key="id",
            timestamp="time",
            label="y",
            label_delay=DELAY,
            label_timestamp="at",
        )


@settings(max_examples=15)
@given(
    events=event_lists.filter(bool),
    online_batch=st.integers(1, 8),
    pick=st.integers(0, 10**6),
    bump=st.floats(1e-6, 1e3),
)
def test_consistency_finds_exactly_the_changed_value(events, online_batch, pick, bump):
    frame = events_frame(events)
    online = online_run(frame, online_batch)
    assert check_consistency(features, frame, online, key="id", timestamp="ms", match_on=["i"]).ok
    i = pick % len(events)
    changed = online.with_columns(
        pl.when(pl.col("i") == i).then(pl.col("x_mean_10s") + bump).otherwise(pl.col("x_mean_10s"))
    )
    found = check_consistency(features, frame, changed, key="id", timestamp="ms", match_on=["i"])
    assert found.mismatches.select("i", "column").rows() == [(i, "x_mean_10s")]
    assert found.only_offline.height == found.only_online.height == 0


def test_consistency_refuses_to_compare_nothing():
    events = pl.DataFrame({"id": ["a"], "ms": [0], "x": [1.0]})
    with pytest.raises(ValueError, match="no columns to compare"):
        check_consistency(features, events, events, key="id", timestamp="ms", columns=[])
