"""The dynamic batcher: requests that arrive together share a call, and one bad request fails alone."""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest

from streamml.models import CallableModel, ModelInputError, TensorSpec
from streamml.serve.batcher import Batcher
from streamml.serve.errors import RequestError


class Recording:
    """A model that doubles its input, records each call's rows, and refuses negative values."""

    def __init__(self, refuse: str = "value") -> None:
        self.calls: list[int] = []
        self.refuse = refuse
        self.version = "r1"
        self.inputs = {"x": TensorSpec(np.dtype(np.float32), (None,))}
        self.outputs = ("y",)

    def predict(self, inputs):  # noqa: ANN001, ANN201 - the Model protocol
        x = inputs["x"]
        self.calls.append(len(x))
        if (x < 0).any():
            if self.refuse == "input":
                raise ModelInputError("negative values are not features")
            raise ValueError("cannot score a negative value")
        return {"y": x * 2}


def _submit_all(batcher: Batcher, batches: list[np.ndarray]) -> list:
    async def run() -> list:
        # gather starts every submit before the batcher's task first runs: they arrive together
        out = await asyncio.gather(
            *(batcher.submit({"x": b}, len(b)) for b in batches), return_exceptions=True
        )
        await batcher.close()
        return out

    return asyncio.run(run())


def test_requests_that_arrive_together_share_calls_of_at_most_max_batch_rows() -> None:
    model = Recording()
    seen: list[tuple[int, int]] = []
    batcher = Batcher(model, max_batch=8, max_wait_s=0.0, on_batch=lambda r, n: seen.append((r, n)))
    sizes = [3, 1, 4, 2, 5, 8, 1]
    batches = [np.full((n, 2), i, np.float32) for i, n in enumerate(sizes)]
    answers = _submit_all(batcher, batches)
    for i, (n, answer) in enumerate(zip(sizes, answers, strict=True)):
        np.testing.assert_array_equal(answer["y"], np.full((n, 2), 2 * i, np.float32))
    # the oldest request and, in arrival order, those that still fit in 8 rows; one that
    # does not fit waits for the next call, which it heads
    assert model.calls == [8, 8, 8]
    assert seen == [(8, 3), (8, 3), (8, 1)]


def test_only_requests_whose_rows_have_the_same_shape_share_a_call() -> None:
    model = Recording()
    batcher = Batcher(model, max_batch=100, max_wait_s=0.0)
    batches = [
        np.ones((1, 2), np.float32),
        np.ones((2, 3), np.float32),
        np.ones((3, 2), np.float32),
    ]
    answers = _submit_all(batcher, batches)
    assert [a["y"].shape for a in answers] == [(1, 2), (2, 3), (3, 2)]
    assert model.calls == [4, 2]


@pytest.mark.parametrize(("refuse", "status"), [("value", 500), ("input", 400)])
def test_a_request_the_model_fails_on_fails_alone(refuse: str, status: int) -> None:
    model = Recording(refuse)
    batcher = Batcher(model, max_batch=100, max_wait_s=0.0)
    good, bad = np.ones((2, 1), np.float32), -np.ones((1, 1), np.float32)
    answers = _submit_all(batcher, [good, bad, good])
    assert isinstance(answers[1], RequestError) and answers[1].status == status
    assert "negative" in str(answers[1])
    for answer in (answers[0], answers[2]):
        np.testing.assert_array_equal(answer["y"], 2 * good)
    assert model.calls == [5, 2, 1, 2]  # together, then each alone


def test_a_model_returning_the_wrong_number_of_rows_is_a_500_that_says_so() -> None:
    spec = {"x": TensorSpec(np.dtype(np.float32), (1,))}
    model = CallableModel(lambda x: x[:1], outputs="y", inputs=spec)
    batcher = Batcher(model, max_batch=10, max_wait_s=0.0)
    (answer,) = _submit_all(batcher, [np.ones((3, 1), np.float32)])
    assert isinstance(answer, RequestError) and answer.status == 500
    assert "returned 1 rows of output 'y' for 3 input rows" in str(answer)


def test_a_request_waits_up_to_max_wait_for_company() -> None:
    model = Recording()
    batcher = Batcher(model, max_batch=10, max_wait_s=60.0)

    async def run() -> list:
        first = asyncio.ensure_future(batcher.submit({"x": np.ones((2, 1), np.float32)}, 2))
        await asyncio.sleep(0)  # the batcher now waits, with 2 of 10 rows
        await asyncio.sleep(0)
        assert model.calls == []
        second = batcher.submit({"x": np.ones((8, 1), np.float32)}, 8)  # fills the batch
        out = await asyncio.gather(first, second)
        await batcher.close()
        return out

    answers = asyncio.run(run())
    assert [len(a["y"]) for a in answers] == [2, 8]
    assert model.calls == [10]  # one call: the full batch ran without waiting out the 60 s


def test_close_answers_every_queued_request_first() -> None:
    release = threading.Event()
    model = CallableModel(lambda x: (release.wait(30), x)[1], outputs="y", shape=(1,))
    batcher = Batcher(model, max_batch=1, max_wait_s=0.0)

    async def run() -> list:
        pending = [
            asyncio.ensure_future(batcher.submit({"input": np.full((1, 1), i, np.float32)}, 1))
            for i in range(3)
        ]
        await asyncio.sleep(0)
        closing = asyncio.ensure_future(batcher.close())
        await asyncio.sleep(0)
        with pytest.raises(RuntimeError, match="closed"):
            await batcher.submit({"input": np.ones((1, 1), np.float32)}, 1)
        release.set()
        await closing
        return [p.result()["y"].item() for p in pending]

    assert asyncio.run(run()) == [0.0, 1.0, 2.0]
