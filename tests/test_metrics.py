"""streamml.metrics and streamml.progress: counts scraped from a real run, and progress lines."""

from __future__ import annotations

import importlib
import inspect
import json
import os
import pkgutil
import re
import socket
import subprocess
import sys
import time
import urllib.request
from datetime import timedelta
from pathlib import Path
from typing import Any

import bytewax.operators as op
import polars as pl
import pytest
import streamml.operators
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSink, TestingSource, run_main
from streamml.operators import featurize

import streamml
from streamml import kafka, metrics
from streamml.broker import EmbeddedBroker
from streamml.frames import to_frames, to_rows
from streamml.objectstore import parquet_sink
from streamml.progress import progress_interval
from streamml.serde import JsonSerde
from streamml.testing import produce_all

FLOW = """
import os
from datetime import timedelta

import bytewax.operators as op
from bytewax.connectors.stdio import StdOutSink
from bytewax.dataflow import Dataflow
from streamml.operators.infer import infer

from streamml import kafka
from streamml.models import CallableModel
from streamml.serde import JsonSerde

brokers = os.environ["BOOTSTRAP"]
model = CallableModel(lambda x: 2 * x.sum(axis=1), outputs="score", shape=(1,), version="v7")
flow = Dataflow("metered")
src = kafka.source("in", flow, brokers=brokers, topics=os.environ["TOPIC"],
                   value_serde=JsonSerde(), frames=True)
scored = infer("score", src.oks, model, inputs=["x"], max_wait=timedelta(0))
unwritten = kafka.sink("out", scored.oks, brokers=brokers, topic=os.environ["TOPIC"] + "-out",
                       value_serde=JsonSerde())
kafka.dead_letter_sink("dlq", op.merge("all", scored.errs, src.errs, unwritten), brokers=brokers,
                       topic=os.environ["TOPIC"] + "-dlq")
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _samples(text: str) -> dict[str, float]:
    """``{'name{labels}': value}`` of a Prometheus text scrape."""
    return {
        line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line and not line.startswith("#")
    }


def _scrape(port: int) -> dict[str, float]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            return _samples(r.read().decode())
    except OSError:
        return {}


def _wait_for(port: int, proc: subprocess.Popen, done, what: str) -> dict[str, float]:
    """Scrape until ``done(samples)``; a slow machine gets minutes, a dead process fails at once."""
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"the flow exited ({proc.returncode}) before {what}"
        samples = _scrape(port)
        if samples and done(samples):
            return samples
        time.sleep(0.2)
    raise AssertionError(f"no scrape showed {what}; last: {samples}")


def _events(step: str, port: str) -> str:
    return f'streamml_events_total{{port="{port}",step="metered.{step}"}}'


@pytest.mark.integration
def test_a_running_flow_is_scraped_with_its_counts_lag_and_model(
    broker: EmbeddedBroker, topic_name: str, tmp_path: Path
) -> None:
    broker.create_topic(topic_name, partitions=2)
    broker.create_topic(f"{topic_name}-out")
    broker.create_topic(f"{topic_name}-dlq")
    good = [json.dumps({"x": float(i)}).encode() for i in range(300)]
    null = [b'{"x": null}'] * 20  # decoded, then rejected by infer (MissingInput)
    garbage = [b"{not json"] * 10  # rejected by the source's decode
    for p in (0, 1):
        produce_all(
            broker.bootstrap, topic_name, [(None, v) for v in good + null + garbage], partition=p
        )
    (tmp_path / "metered_flow.py").write_text(FLOW)
    port = _free_port()
    env = {
        **os.environ,
        "BOOTSTRAP": broker.bootstrap,
        "TOPIC": topic_name,
        metrics.PORT_ENV: f"127.0.0.1:{port}",
        "STREAMML_PROGRESS": "0.01",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "bytewax.run", "metered_flow:flow"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        first = _wait_for(
            port,
            proc,
            lambda s: (
                s.get(_events("out", "delivered"), 0) == 600
                and s.get(_events("dlq", "delivered"), 0) == 60
            ),
            "600 scored rows and 60 dead letters delivered",
        )
        # Rows, not batches: every event of every port, and in = out + rejected at each step.
        assert first[_events("in", "oks")] == 640 and first[_events("in", "errs")] == 20
        assert first[_events("score", "in")] == 640 and first[_events("score", "errs")] == 40
        wait = 'streamml_infer_queue_wait_seconds_count{step="metered.score"}'
        latency = 'streamml_model_latency_seconds_count{step="metered.score"}'
        assert first[wait] == first[latency] >= 1  # one of each per model call
        assert first['streamml_model_info{step="metered.score",version="v7"}'] == 1
        assert first['streamml_batch_rows_sum{step="metered.score"}'] == 640
        # Sinks: in = delivered + rejected, each delivered row acknowledged by the broker.
        assert first[_events("out", "in")] == 600 and first[_events("out", "errs")] == 0
        assert first[_events("dlq", "in")] == 60

        # More data while it runs: counts move on, the lag of both partitions is read.
        for p in (0, 1):
            produce_all(broker.bootstrap, topic_name, [(None, v) for v in good], partition=p)
        lag = re.compile(r'bytewax_kafka_consumer_lag\{partition="([01])".*step_id="metered\.in\.')

        def caught_up(s: dict[str, float]) -> bool:
            lags = {lag.match(k).group(1): v for k, v in s.items() if lag.match(k)}
            return s.get(_events("score", "oks"), 0) == 1200 and lags == {"0": 0, "1": 0}

        _wait_for(port, proc, caught_up, "1,200 scored rows and zero lag on both partitions")
    finally:
        proc.terminate()
        _, stderr = proc.communicate(timeout=60)
    lines = [line for line in stderr.splitlines() if line.startswith("streamml metered.in:")]
    assert lines, stderr[-2000:]
    counts = [int(re.search(r": ([\d,]+) events read", x).group(1).replace(",", "")) for x in lines]
    assert counts == sorted(counts) and counts[-1] <= 1260
    assert re.search(r"events read, [\d,]+/s, lag ([\d,]+|\?)$", lines[-1])


def test_rows_are_counted_per_port_in_equals_out_plus_rejected_plus_late() -> None:
    """A frame counts its rows: a rolling step's in = oks + errs + late."""
    t = [0, 10_000, 5_000, 20_000, 1_000, 30_000]  # 5,000 and 1,000 come late; 30,000 has no key
    frames = [
        pl.DataFrame({"k": ["a"] * 3, "t": t[:3], "x": [1.0, 2.0, 3.0]}),
        pl.DataFrame({"k": ["a", "a", None], "t": t[3:], "x": [4.0, 5.0, 6.0]}),
    ]
    flow = Dataflow("metrics_ports")
    up = op.input("in", flow, TestingSource(frames))
    out = featurize.rolling(
        "roll",
        up,
        key="k",
        timestamp="t",
        fields=["x"],
        window=timedelta(seconds=60),
        max_delay=timedelta(0),
        shards=1,
    )
    got = {name: [] for name in ("oks", "errs", "late")}
    for name, items in got.items():
        op.output(name, getattr(out, name), TestingSink(items))
    run_main(flow)
    count = {port: metrics.events("metrics_ports.roll", port) for port in ("in", *got)}
    assert count == {"in": 6.0, "oks": 3.0, "errs": 1.0, "late": 2.0}
    assert count["oks"] == sum(f.height for f in got["oks"])
    assert count["errs"] == len(got["errs"]) and count["late"] == len(got["late"])


def test_a_batch_of_rows_and_frames_counts_rows_and_sizes_each_frame() -> None:
    """Rows count one each and a frame its height; the batch-size histogram sees each frame,
    or the batch's length when it holds no frame."""
    from prometheus_client import CollectorRegistry, Counter, Histogram

    registry = CollectorRegistry()
    counting = metrics._Counting(emit=True)
    counting.events = Counter("e", "events", registry=registry)
    counting.sizes = Histogram("s", "sizes", buckets=(1, 4, 16), registry=registry)
    mixed = [("k", 1), pl.DataFrame({"x": [1, 2, 3]}), ("k", 2), pl.DataFrame({"x": [4] * 10})]
    assert counting(mixed) is mixed
    assert counting([("k", 3)] * 4) == [("k", 3)] * 4
    assert registry.get_sample_value("e_total") == 15 + 4
    assert registry.get_sample_value("s_count") == 3  # two frames, one batch of rows
    assert registry.get_sample_value("s_sum") == 3 + 10 + 4


def _public_operators() -> dict[str, Any]:
    """Every Bytewax operator in the ``__all__`` of a public module of streamml or its operators."""
    found = {}
    for package in (streamml, streamml.operators):
        for info in pkgutil.walk_packages(package.__path__, f"{package.__name__}."):
            if info.name.rsplit(".", 1)[-1].startswith("_"):
                continue
            module = importlib.import_module(info.name)
            for name in getattr(module, "__all__", ()):
                fn = getattr(module, name)
                if hasattr(fn, "_op_cls"):  # made by bytewax.dataflow.operator
                    found[f"{info.name}.{name}"] = fn
    return found


def test_every_public_operator_and_sink_counts_its_events() -> None:
    """An operator or sink that forgets ``@instrumented``, or a sink ``delivered``, is caught here."""
    found = _public_operators()
    assert {"streamml.kafka.sink", "streamml.objectstore.parquet_sink"} <= set(found)
    assert "streamml.operators.infer.infer" in found and "streamml.frames.to_rows" in found
    missing = [name for name, fn in found.items() if not metrics.is_instrumented(fn)]
    assert missing == [], f"add @instrumented (streamml.metrics) under @operator: {missing}"
    uncounted_sinks = [
        name
        for name, fn in found.items()
        if "output" in (names := inspect.unwrap(fn).__code__.co_names)  # calls op.output
        and "delivered" not in names
    ]
    assert uncounted_sinks == [], f"wrap the sink in streamml.metrics.delivered: {uncounted_sinks}"


def test_a_parquet_sink_and_frame_conversions_count_in_delivered_and_rejected(
    tmp_path: Path,
) -> None:
    rows = [{"t": 1_000 * i, "x": float(i)} for i in range(5)] + [{"t": None, "x": 9.0}, 7]
    flow = Dataflow("metrics_sinks")
    frames = to_frames("frames", op.input("in", flow, TestingSource(rows)))
    rejected = parquet_sink("lake", frames.oks, path=str(tmp_path), time="t")
    back = to_rows("rows", op.input("again", flow, TestingSource([pl.DataFrame(rows[:5])])))
    got: list[Any] = []
    op.output("errs", op.merge("all", frames.errs, rejected), TestingSink(got))
    op.output("rows_out", back, TestingSink([]))
    run_main(flow)
    count = {
        (step, port): metrics.events(f"metrics_sinks.{step}", port)
        for step, ports in {
            "frames": ("in", "oks", "errs"),
            "lake": ("in", "delivered", "errs"),
            "rows": ("in", "down"),
        }.items()
        for port in ports
    }
    written = pl.read_parquet(tmp_path / "**" / "*.parquet").height
    assert written == 5 and len(got) == 2  # the int row (to_frames) and the null time (the sink)
    assert count == {
        ("frames", "in"): 7.0,
        ("frames", "oks"): 6.0,
        ("frames", "errs"): 1.0,
        ("lake", "in"): 6.0,
        ("lake", "delivered"): 5.0,
        ("lake", "errs"): 1.0,
        ("rows", "in"): 5.0,
        ("rows", "down"): 5.0,
    }


def test_metrics_off_builds_no_counting_steps(monkeypatch: pytest.MonkeyPatch) -> None:
    def steps() -> list[str]:
        flow = Dataflow("switch")
        frames = to_frames("frames", op.input("in", flow, TestingSource([{"x": 1}])))
        op.output("out", frames.oks, metrics.delivered(TestingSink([])))
        sink = type(flow.substeps[2].sink).__name__
        return [s.step_name for s in flow.substeps[1].substeps] + [sink]

    assert steps() == [
        "count_in",
        "frames",
        "oks",
        "errs",
        "count_oks",
        "count_errs",
        "_CountedDynamicSink",
    ]
    monkeypatch.setenv(metrics.SWITCH_ENV, "off")
    assert steps() == ["frames", "oks", "errs", "TestingSink"]
    monkeypatch.setenv(metrics.SWITCH_ENV, "maybe")
    with pytest.raises(ValueError, match="STREAMML_METRICS must be on or off"):
        steps()


def test_serve_from_env_refuses_what_is_not_a_port(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(metrics.PORT_ENV, "metrics")
    with pytest.raises(ValueError, match="STREAMML_METRICS_PORT must be PORT or HOST:PORT"):
        metrics.serve_from_env()
    with pytest.raises(ValueError, match="port must be an int from 0 to 65535"):
        metrics.serve(70000)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with pytest.raises(OSError, match="give each Bytewax process its own STREAMML_METRICS"):
            metrics.serve(taken.getsockname()[1], "127.0.0.1")
    monkeypatch.setenv("STREAMML_PROGRESS", "often")
    with pytest.raises(ValueError, match="STREAMML_PROGRESS must be the seconds"):
        progress_interval(None)
    with pytest.raises(ValueError, match="positive timedelta"):
        progress_interval(timedelta(0))


@pytest.mark.integration
def test_a_bounded_run_ends_with_a_last_progress_line(
    broker: EmbeddedBroker, topic_name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    broker.create_topic(topic_name, partitions=2)
    for p, n in ((0, 150), (1, 70)):
        values = [json.dumps({"x": i}).encode() for i in range(n)] + [b"{bad"]
        produce_all(broker.bootstrap, topic_name, [(None, v) for v in values], partition=p)
    flow = Dataflow("progressed")
    src = kafka.source(
        "in",
        flow,
        brokers=broker.bootstrap,
        topics=topic_name,
        value_serde=JsonSerde(),
        tail=False,
        batch_size=50,
        progress=timedelta(hours=1),  # no line on the way: only the last one
    )
    op.output("oks", src.oks, TestingSink([]))
    op.output("errs", src.errs, TestingSink([]))
    run_main(flow)
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    assert re.fullmatch(
        r"streamml progressed\.in: 222 events read, [\d,]+/s, [\d,]+\.\d\d s, end of input",
        lines[0],
    )
