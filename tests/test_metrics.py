"""streamml.metrics and streamml.progress: counts scraped from a real run, and progress lines."""

from __future__ import annotations

import importlib
import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from datetime import timedelta
from pathlib import Path

import bytewax.operators as op
import polars as pl
import pytest
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSink, TestingSource, run_main
from streamml.operators import featurize

from streamml import metrics
from streamml.broker import EmbeddedBroker
from streamml.progress import progress_interval
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

model = CallableModel(lambda x: 2 * x.sum(axis=1), outputs="score", shape=(1,), version="v7")
flow = Dataflow("metered")
src = kafka.source("in", flow, brokers=os.environ["BOOTSTRAP"], topics=os.environ["TOPIC"],
                   value_serde=JsonSerde(), frames=True)
scored = infer("score", src.oks, model, inputs=["x"], max_wait=timedelta(0))
op.output("out", op.merge("all", scored.oks, scored.errs, src.errs), StdOutSink())
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
            port, proc, lambda s: s.get(_events("score", "oks"), 0) == 600, "600 scored rows"
        )
        # Rows, not batches: every event of every port, and in = out + rejected at each step.
        assert first[_events("in", "oks")] == 640 and first[_events("in", "errs")] == 20
        assert first[_events("score", "in")] == 640 and first[_events("score", "errs")] == 40
        wait = 'streamml_infer_queue_wait_seconds_count{step="metered.score"}'
        latency = 'streamml_model_latency_seconds_count{step="metered.score"}'
        assert first[wait] == first[latency] >= 1  # one of each per model call
        assert first['streamml_model_info{step="metered.score",version="v7"}'] == 1
        assert first['streamml_batch_rows_sum{step="metered.score"}'] == 640

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


def test_every_public_operator_counts_its_events() -> None:
    """A new operator that forgets ``@instrumented`` under ``@operator`` is caught here."""
    missing = []
    for family in ("featurize", "infer", "anomaly", "join"):
        module = importlib.import_module(f"streamml.operators.{family}")
        for name in module.__all__:
            fn = getattr(module, name)
            if hasattr(fn, "_op_cls") and not metrics.is_instrumented(fn):  # a Bytewax operator
                missing.append(f"{family}.{name}")
    assert missing == [], f"add @instrumented (streamml.metrics) under @operator: {missing}"


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
