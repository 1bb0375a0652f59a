"""RemoteModel against real server processes on loopback: splitting, concurrency, refusals, garbage, outages."""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamml.models import Model
from streamml.models.protocol import ModelUnavailable, RowErrors
from streamml.models.remote import (
    BadAnswer,
    CircuitBreaker,
    JsonRest,
    OpenInference,
    RemoteModel,
    RemoteUnavailable,
    Retry,
)
from tests.models.test_remote_server import FaultyServer, expected_scores

FAST = Retry(budget=20.0, initial=0.02, maximum=0.2)


@pytest.fixture(scope="module")
def healthy() -> Iterator[FaultyServer]:
    with FaultyServer() as server:
        yield server


@pytest.fixture(scope="module")
def strict() -> Iterator[FaultyServer]:
    with FaultyServer("--refuse-negative", "--garbage-over", "1000") as server:
        yield server


def _rows(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 10, size=(n, 4)).astype(np.float32)


def test_described_by_the_server_metadata_and_labelled_with_its_version(
    healthy: FaultyServer,
) -> None:
    model = RemoteModel(healthy.url, "double-sum", retry=FAST)
    assert isinstance(model, Model)
    assert model.version == "double-sum@3"
    assert model.outputs == ("score",)
    [(name, spec)] = model.inputs.items()
    assert (name, spec.dtype, spec.shape) == ("features", np.dtype("float32"), (4,))
    model.close()


@settings(max_examples=25)
@given(n=st.integers(1, 200), max_rows=st.integers(1, 70), in_flight=st.integers(1, 5))
def test_any_split_answers_every_row_in_order(
    healthy: FaultyServer, n: int, max_rows: int, in_flight: int
) -> None:
    model = RemoteModel(
        healthy.url,
        "double-sum",
        max_rows=max_rows,
        max_in_flight=in_flight,
        retry=FAST,
        warmup=False,
    )
    x = _rows(n, seed=n)
    try:
        out = model.predict(x)
    finally:
        model.close()
    np.testing.assert_allclose(out["score"], expected_scores(x), rtol=1e-6)
    assert model.stats()["requests"] == 1 + -(-n // max_rows)  # the metadata, then the rows


def test_requests_in_flight_never_exceed_the_cap() -> None:
    with FaultyServer("--delay", "0.05") as slow:
        model = RemoteModel(slow.url, "double-sum", max_rows=2, max_in_flight=3, retry=FAST)
        x = _rows(40)
        np.testing.assert_allclose(model.predict(x)["score"], expected_scores(x), rtol=1e-6)
        stats = slow.stats()
        model.close()
    assert stats["requests"] == 1 + 20  # the warm-up, then 40 rows in requests of 2
    assert 1 < stats["max_in_flight"] <= 3


def test_refused_rows_are_named_with_the_services_reason_and_no_good_row_is_sent_twice(
    strict: FaultyServer,
) -> None:
    model = RemoteModel(strict.url, "double-sum", max_rows=4, retry=FAST)
    x = _rows(16)
    x[9, 0] = -2.5  # its request (rows 8-11) is refused; the other three are answered
    x[14, 0] = -1.0  # and so is rows 12-15's
    before = strict.stats()["rows"]
    with pytest.raises(RowErrors) as caught:
        model.predict(x)
    assert caught.value.errors == {
        9: "RemoteRejected: HTTP 400: features[0][0] = -2.5 is negative",
        14: "RemoteRejected: HTTP 400: features[0][0] = -1 is negative",
    }
    good = [i for i in range(16) if i not in (9, 14)]
    np.testing.assert_allclose(caught.value.outputs["score"], expected_scores(x[good]), rtol=1e-6)
    # The refused requests were sent again in halves ([8, 9] [10, 11], then [8] [9]):
    # every good row was scored by the service exactly once.
    assert strict.stats()["rows"] - before == len(good)
    model.close()


def test_a_garbage_answer_is_a_clear_error(strict: FaultyServer) -> None:
    model = RemoteModel(strict.url, "double-sum", retry=FAST)
    x = _rows(5)
    x[2, 0] = 5000.0
    with pytest.raises(RowErrors) as caught:
        model.predict(x)
    model.close()
    # Its request of five rows was answered with four; sent again in halves, row 2 is found.
    assert list(caught.value.errors) == [2]
    assert caught.value.errors[2].startswith("BadAnswer: ")
    assert "answered garbage: output 'score' has shape" in caught.value.errors[2]
    np.testing.assert_allclose(
        caught.value.outputs["score"], expected_scores(x[[0, 1, 3, 4]]), rtol=1e-6
    )
    with FaultyServer("--garbage-always") as html, pytest.raises(ValueError, match="not JSON"):
        RemoteModel(html.url, "double-sum", retry=FAST)


def test_misconfiguration_fails_when_built(healthy: FaultyServer) -> None:
    with pytest.raises(ValueError, match="v2/models/nope refuses the request: HTTP 404"):
        RemoteModel(healthy.url, "nope", retry=FAST)
    with pytest.raises(ValueError, match="max_rows must be an int >= 1"):
        RemoteModel(healthy.url, "double-sum", max_rows=0)
    with pytest.raises(ValueError, match="url must be http"):
        RemoteModel("ftp://example", "double-sum")
    dead = FaultyServer()  # never started: connection refused
    with pytest.raises(ValueError, match="no answer from .* within the retry budget of 0.3 s"):
        RemoteModel(dead.url, "double-sum", retry=Retry(budget=0.3, initial=0.02, maximum=0.05))


def test_an_outage_past_the_budget_raises_unavailable_and_the_breaker_stops_sending() -> None:
    server = FaultyServer().start()
    model = RemoteModel(
        server.url,
        "double-sum",
        retry=Retry(budget=1.0, initial=0.01, maximum=0.02),
        breaker=CircuitBreaker(failures=3, reset=30.0),
    )
    server.kill()
    tried = model.stats()["requests"]
    with pytest.raises(RemoteUnavailable, match="within the retry budget of 1 s") as caught:
        model.predict(_rows(3))
    assert isinstance(caught.value, ModelUnavailable)  # infer raises it again: no row blamed
    # Three failures open the breaker for 30 s, longer than the budget: no fourth try.
    assert model.stats()["requests"] - tried == 3
    model.close()


def test_retries_ride_out_a_restart() -> None:
    server = FaultyServer().start()
    model = RemoteModel(server.url, "double-sum", retry=FAST, breaker=CircuitBreaker(reset=0.1))
    server.kill()
    x = _rows(10)
    with ThreadPoolExecutor(1) as caller:
        future = caller.submit(model.predict, x)
        while not model.stats()["retries"] and not future.done():
            time.sleep(0.01)  # until a try has failed against the dead server
        server.start()
        np.testing.assert_allclose(future.result()["score"], expected_scores(x), rtol=1e-6)
    server.kill()
    model.close()


def test_json_rest_mapping_to_any_endpoint(healthy: FaultyServer) -> None:
    # A hand-written mapping onto the same endpoint, as for any JSON API.
    def request(feeds: dict[str, np.ndarray]) -> dict:
        x = feeds["x"]
        return {"inputs": [{"name": "features", "datatype": "FP32", "shape": x.shape, "data": x}]}

    def response(answer: dict) -> dict:
        return {"total": answer["outputs"][0]["data"]}

    from streamml.models import TensorSpec

    model = RemoteModel(
        healthy.url,
        JsonRest(
            "/v2/models/double-sum/infer", request=request, response=response, outputs=["total"]
        ),
        inputs={"x": TensorSpec(np.dtype("float32"), (4,))},
        max_rows=3,
        retry=FAST,
    )
    x = _rows(7)
    np.testing.assert_allclose(model.predict(x)["total"], expected_scores(x), rtol=1e-6)
    assert model.version == f"{healthy.url}/v2/models/double-sum/infer"
    model.close()


def test_open_inference_request_format() -> None:
    from streamml.models import TensorSpec

    proto = OpenInference("m", outputs=["b"])
    specs = {"x": TensorSpec(np.dtype("int64"), (2,))}
    body, headers = proto.encode({"x": np.array([[1, 2], [3, 4]])}, specs)
    assert headers is None
    body = orjson.loads(body)
    assert body == {
        "inputs": [{"name": "x", "shape": [2, 2], "datatype": "INT64", "data": [1, 2, 3, 4]}],
        "outputs": [{"name": "b"}],
    }
    for garbage, message in [
        (b'{"outputs": 3}', "no 'outputs' list"),
        (b'{"outputs": [{"name": "b", "datatype": "BYTES", "data": []}]}', "not a numeric"),
        (b'{"outputs": [{"name": "b", "datatype": "FP32", "shape": [3], "data": [1]}]}', "shape"),
        (b'{"outputs": [{"name": "b", "datatype": "FP32", "shape": [], "data": 1}]}', "rows"),
    ]:
        with pytest.raises(BadAnswer, match=message):
            proto.decode(garbage, 2)


def test_a_try_that_times_out_is_retried_until_the_budget() -> None:
    with FaultyServer("--delay", "2") as slow:  # answers after 2 s: every 0.2 s try times out
        slow_model = RemoteModel(
            slow.url,
            "double-sum",
            timeout=0.2,
            retry=Retry(budget=1.0, initial=0.02, maximum=0.05),
            warmup=False,
        )
        with pytest.raises(RemoteUnavailable, match="ReadTimeoutError"):
            slow_model.predict(_rows(2))
        assert slow_model.stats()["retries"] >= 2
        slow_model.close()


_INT64 = st.integers(-(2**63), 2**63 - 1)  # what JSON serializers write
_JSON = st.recursive(
    st.none() | st.booleans() | _INT64 | st.floats() | st.text(max_size=5),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)
_TENSOR = st.fixed_dictionaries(
    {
        "name": st.sampled_from(["y", "z", 3]),
        "datatype": st.sampled_from(["FP16", "FP32", "INT64", "UINT8", "BOOL", "BYTES", None]),
    },
    optional={
        "shape": _JSON | st.lists(st.integers(-2, 4), max_size=3),
        "data": _JSON | st.lists(st.floats() | _INT64 | st.sampled_from([1e300, -1]), max_size=6),
        "parameters": _JSON
        | st.fixed_dictionaries({"binary_data_size": st.integers(-2, 20) | _JSON}),
    },
)


@pytest.mark.filterwarnings("error")  # a number overflowing its datatype is garbage, not inf
@settings(max_examples=300)
@given(
    answer=st.binary(max_size=64)
    | _JSON.map(orjson.dumps)
    | st.fixed_dictionaries({"outputs": st.lists(_TENSOR, max_size=3)}).map(orjson.dumps),
    tail=st.binary(max_size=16),
    rows=st.integers(0, 3),
    binary=st.booleans(),
)
def test_any_answer_decodes_to_rows_or_raises_bad_answer(
    answer: bytes, tail: bytes, rows: int, binary: bool
) -> None:
    proto = OpenInference("m", binary=binary)
    body = answer + tail if binary else answer
    try:
        outs, _ = proto.decode(body, rows, header_length=len(answer) if binary else None)
    except BadAnswer:
        return
    assert all(isinstance(a, np.ndarray) and len(a) == rows for a in outs.values())
