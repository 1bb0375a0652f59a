"""The dynamic batcher: requests that arrive together share one model call."""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from streamml.models.protocol import Model, ModelInputError
from streamml.serve.errors import RequestError

__all__ = ["Batcher"]

logger = logging.getLogger(__name__)


@dataclass
class _Pending:
    feeds: dict[str, np.ndarray]
    rows: int
    shapes: tuple[tuple[int, ...], ...]
    arrived: float
    done: asyncio.Future[dict[str, np.ndarray]] = field(repr=False)


class Batcher:
    """Queue requests for one model version and run them in batches.

    A batch runs when ``max_batch`` rows wait or when its oldest request has
    waited ``max_wait_s`` (with 0 it runs whatever arrived together), like
    :func:`streamml.operators.infer.infer` and Triton's dynamic batcher. While
    the model runs, new requests queue and go into the next call, so under load
    batches grow by themselves. Only requests whose rows have the same shapes
    share a call. The model runs in one thread of its own, off the event loop:
    calls to one version never overlap.

    If a shared call fails, each of its requests is run alone, so one bad
    request fails only itself (400 for an input the model refuses, 500 for any
    other model error).

    Args:
        model: The model version this batcher serves.
        max_batch: Most rows per model call.
        max_wait_s: Longest a request waits for its batch to fill, in seconds.
        on_batch: Called with (rows, requests) after every model call (metrics).

    Examples:
        >>> from streamml.models import CallableModel
        >>> model = CallableModel(lambda x: x * 2, outputs="y", shape=(1,))
        >>> async def two_requests():
        ...     batcher = Batcher(model, max_batch=8, max_wait_s=0.01, on_batch=print)
        ...     one = np.array([[1.0]], np.float32)
        ...     two = np.array([[2.0], [3.0]], np.float32)
        ...     outs = await asyncio.gather(batcher.submit({"input": one}, 1),
        ...                                 batcher.submit({"input": two}, 2))
        ...     await batcher.close()
        ...     return [o["y"].ravel().tolist() for o in outs]
        >>> asyncio.run(two_requests())
        3 2
        [[2.0], [4.0, 6.0]]
    """

    def __init__(
        self,
        model: Model,
        *,
        max_batch: int,
        max_wait_s: float,
        on_batch: Callable[[int, int], None] | None = None,
    ) -> None:
        self.model = model
        self._max_batch = max_batch
        self._max_wait = max_wait_s
        self._on_batch = on_batch
        self._queue: deque[_Pending] = deque()
        self._queued_rows = 0
        self._wakeup: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="streamml-serve-model")

    async def submit(self, feeds: dict[str, np.ndarray], rows: int) -> dict[str, np.ndarray]:
        """Queue one request's checked feeds; returns its rows of every output."""
        if self._closing:
            raise RuntimeError("the batcher is closed")
        loop = asyncio.get_running_loop()
        if self._task is None:
            self._wakeup = asyncio.Event()
            self._task = loop.create_task(self._run())
        shapes = tuple(a.shape[1:] for a in feeds.values())
        pending = _Pending(feeds, rows, shapes, loop.time(), loop.create_future())
        self._queue.append(pending)
        self._queued_rows += rows
        self._wakeup.set()
        return await pending.done

    async def close(self) -> None:
        """Answer every queued request, then stop (the model's thread too)."""
        self._closing = True
        if self._task is not None:
            self._wakeup.set()
            await self._task
        self._executor.shutdown(wait=True)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        wakeup = self._wakeup
        while True:
            if not self._queue:
                if self._closing:
                    return
                wakeup.clear()
                await wakeup.wait()
                continue
            deadline = self._queue[0].arrived + self._max_wait
            while self._queued_rows < self._max_batch and not self._closing:
                left = deadline - loop.time()
                if left <= 0:
                    break
                wakeup.clear()
                try:
                    await asyncio.wait_for(wakeup.wait(), left)
                except asyncio.TimeoutError:
                    break
            await self._call(self._take())

    def _take(self) -> list[_Pending]:
        """The oldest request and those after it with its row shapes, up to max_batch rows."""
        first = self._queue[0]
        batch, rest, rows = [], deque(), 0
        for pending in self._queue:
            if pending.shapes == first.shapes and rows + pending.rows <= self._max_batch:
                batch.append(pending)
                rows += pending.rows
            else:
                rest.append(pending)
        self._queue = rest
        self._queued_rows -= rows
        return batch

    async def _call(self, batch: list[_Pending]) -> None:
        batch = [p for p in batch if not p.done.cancelled()]
        if not batch:
            return
        try:
            outputs = await self._predict(batch)
        except Exception as exc:  # noqa: BLE001 - reported to the requests, never raised
            if len(batch) > 1:
                for pending in batch:
                    await self._call([pending])
            elif not batch[0].done.cancelled():
                batch[0].done.set_exception(_as_request_error(exc))
            return
        at = 0
        for pending in batch:
            if not pending.done.cancelled():
                pending.done.set_result(
                    {name: out[at : at + pending.rows] for name, out in outputs.items()}
                )
            at += pending.rows

    async def _predict(self, batch: list[_Pending]) -> dict[str, Any]:
        rows = sum(p.rows for p in batch)
        if len(batch) == 1:
            feeds = batch[0].feeds
        else:
            feeds = {
                name: np.concatenate([p.feeds[name] for p in batch]) for name in batch[0].feeds
            }
        loop = asyncio.get_running_loop()
        outputs = await loop.run_in_executor(self._executor, self.model.predict, feeds)
        if self._on_batch is not None:
            self._on_batch(rows, len(batch))
        checked = {}
        for name, out in outputs.items():
            arr = np.asarray(out)
            if arr.ndim < 1 or arr.shape[0] != rows:
                raise RuntimeError(
                    f"the model returned {arr.shape[0] if arr.ndim else 'a scalar'} rows of "
                    f"output {name!r} for {rows} input rows"
                )
            checked[name] = arr
        return checked


def _as_request_error(exc: Exception) -> RequestError:
    if isinstance(exc, ModelInputError):
        return RequestError(400, f"the model refused the input: {exc}")
    logger.warning("model call failed: %r", exc)
    return RequestError(500, f"the model failed: {type(exc).__name__}: {exc}")
