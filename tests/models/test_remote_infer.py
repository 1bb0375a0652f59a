"""A remote model inside ``infer``: a server killed mid-stream, refusing rows, answering garbage, slow, or gone."""

from __future__ import annotations

import threading
from collections import defaultdict
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import bytewax.operators as op
import numpy as np
import pytest
from bytewax.dataflow import Dataflow
from bytewax.errors import BytewaxRuntimeError
from bytewax.recovery import RecoveryConfig, init_db_dir
from bytewax.testing import TestingSink, TestingSource, run_main
from streamml.operators.infer import infer

from streamml.models.remote import CircuitBreaker, RemoteModel, RemoteUnavailable, Retry
from tests.models.test_remote_server import FaultyServer, expected_scores

FAST = Retry(budget=30.0, initial=0.02, maximum=0.2)


def _events(n: int, seed: int = 0) -> list[tuple[str, dict[str, Any]]]:
    x = np.random.default_rng(seed).uniform(0, 10, size=(n, 4)).astype(np.float32)
    return [(f"k{i % 7}", {"id": i, "features": x[i]}) for i in range(n)]


def _run(events: Any, model: RemoteModel, **kwargs: Any) -> tuple[list, list]:
    flow = Dataflow("remote")
    up = op.input("in", flow, TestingSource(events, batch_size=kwargs.pop("batch_size", 50)))
    out = infer("score", up, model, inputs="features", max_wait=timedelta(milliseconds=5), **kwargs)
    oks: list = []
    errs: list = []
    op.output("oks", out.oks, TestingSink(oks))
    op.output("errs", out.errs, TestingSink(errs))
    run_main(flow)
    return oks, errs


def _check_scored_once_in_order(oks: list, events: list, ids: set[int]) -> None:
    got = [e["id"] for _, e in oks]
    assert sorted(got) == sorted(ids)  # every one, none twice
    by_key = defaultdict(list)
    for key, e in oks:
        by_key[key].append(e["id"])
    assert all(seq == sorted(seq) for seq in by_key.values())  # per-key order kept
    x = np.stack([events[i][1]["features"] for i in got])
    np.testing.assert_allclose([e["score"] for _, e in oks], expected_scores(x), rtol=1e-6)


def test_a_server_killed_mid_stream_and_restarted_loses_nothing() -> None:
    events = _events(3000)
    server = FaultyServer("--die-after", "8").start()  # dies answering its 8th request

    def restart() -> None:
        server.proc.wait()
        server.args = []
        server.start()

    supervisor = threading.Thread(target=restart)
    supervisor.start()
    try:
        model = RemoteModel(
            server.url,
            "double-sum",
            max_rows=25,
            max_in_flight=4,
            retry=FAST,
            breaker=CircuitBreaker(reset=0.2),
        )
        oks, errs = _run(events, model, max_batch=100)
        supervisor.join()
        stats = model.stats()
    finally:
        supervisor.join()
        server.kill()
    assert errs == []
    _check_scored_once_in_order(oks, events, set(range(len(events))))
    assert stats["retries"] >= 1


@pytest.fixture(scope="module")
def strict() -> Iterator[FaultyServer]:
    with FaultyServer("--refuse-negative", "--garbage-over", "1000") as server:
        yield server


def test_only_refused_and_garbage_rows_go_to_errs_and_no_row_is_scored_twice(
    strict: FaultyServer,
) -> None:
    events = _events(2000, seed=1)
    negative, huge = {17, 400, 401, 1999}, {5, 1234}
    for i in negative:
        events[i][1]["features"][0] = -1.0
    for i in huge:
        events[i][1]["features"][0] = 5000.0
    model = RemoteModel(strict.url, "double-sum", max_rows=32, retry=FAST)
    before = strict.stats()["rows"]
    oks, errs = _run(events, model, max_batch=256)
    model.close()
    good = set(range(len(events))) - negative - huge
    _check_scored_once_in_order(oks, events, good)
    assert strict.stats()["rows"] - before == len(good)  # the service scored each good row once
    reasons = {r.original[1]["id"]: (r.error_type, r.reason) for r in errs}
    assert set(reasons) == negative | huge
    for i in negative:
        assert reasons[i][0] == "ModelError"
        assert "RemoteRejected: HTTP 400: features[0][0] = -1 is negative" in reasons[i][1]
    for i in huge:
        assert "BadAnswer" in reasons[i][1] and "answered garbage" in reasons[i][1]


def test_a_slow_service_holds_the_stream_back_with_bounded_memory() -> None:
    max_batch = 20
    pulled = [0]
    lags: list[int] = []

    def source() -> Iterator[tuple[str, dict[str, Any]]]:
        for event in _events(1500, seed=2):
            pulled[0] += 1
            yield event

    def lag(_step: str, _item: Any) -> None:
        lags.append(pulled[0] - len(lags) - 1)

    with FaultyServer("--delay", "0.01") as slow:
        model = RemoteModel(slow.url, "double-sum", max_rows=5, max_in_flight=2, retry=FAST)
        flow = Dataflow("slow")
        up = op.input("in", flow, TestingSource(source(), batch_size=10))
        out = infer("score", up, model, inputs="features", max_batch=max_batch)
        op.inspect("lag", out.oks, lag)
        errs: list = []
        op.output("errs", out.errs, TestingSink(errs))
        run_main(flow)
        stats = slow.stats()
        model.close()
    assert errs == [] and len(lags) == 1500
    # The source is not read while the model's calls are full: at most the batches infer keeps
    # in flight (8), the one being cut and a source read wait at any time, never the stream.
    assert max(lags) <= 10 * max_batch + 10
    assert stats["max_in_flight"] <= 2


def test_a_service_down_past_the_retry_budget_stops_the_flow_with_a_clear_error() -> None:
    server = FaultyServer().start()
    model = RemoteModel(
        server.url, "double-sum", retry=Retry(budget=0.5, initial=0.02, maximum=0.1)
    )
    server.kill()
    with pytest.raises(BytewaxRuntimeError) as stopped:
        _run(_events(50), model, max_batch=10)
    model.close()
    cause = stopped.value.__cause__
    assert isinstance(cause, RemoteUnavailable)
    assert "no answer from" in str(cause) and "within the retry budget of 0.5 s" in str(cause)


def test_after_an_outage_stopped_the_flow_recovery_resumes_and_nothing_is_lost(
    tmp_path: Path,
) -> None:
    events = _events(1200, seed=3)
    init_db_dir(tmp_path, 1)
    server = FaultyServer("--die-after", "6").start()  # dies answering its 6th request
    budget = Retry(budget=0.5, initial=0.02, maximum=0.1)

    def run(model: RemoteModel, sink: list) -> None:
        flow = Dataflow("remote_recovery")
        up = op.input("in", flow, TestingSource(events, batch_size=20))
        out = infer("score", up, model, inputs="features", max_batch=100)
        op.output("oks", out.oks, TestingSink(sink))
        run_main(flow, epoch_interval=timedelta(0), recovery_config=RecoveryConfig(str(tmp_path)))

    first: list = []
    try:
        with pytest.raises(BytewaxRuntimeError) as stopped:
            run(RemoteModel(server.url, "double-sum", max_rows=50, retry=budget), first)
        assert isinstance(stopped.value.__cause__, RemoteUnavailable)
        server.kill()
        server.args = []
        server.start()  # the service is back: resume from the last snapshot
        second: list = []
        run(RemoteModel(server.url, "double-sum", max_rows=50, retry=budget), second)
    finally:
        server.kill()
    assert 0 < len(first) < len(events)
    scored = {e["id"]: e["score"] for _, e in first + second}
    assert sorted(scored) == list(range(len(events)))  # nothing lost
    x = np.stack([e["features"] for _, e in events])
    np.testing.assert_allclose(
        [scored[i] for i in range(len(events))], expected_scores(x), rtol=1e-6
    )
