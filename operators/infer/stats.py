"""Counters of an :func:`~streamml.operators.infer.infer` step: batches, rows, errors, swaps, time.

One :class:`InferStats` per step, shared by its shards in a process and
updated once per batch (never per row), so reading it costs the hot path
nothing. It also feeds the step's Prometheus metrics (:mod:`streamml.metrics`):
queue wait and model latency per model call, and the version serving.
"""

from __future__ import annotations

import threading
from typing import Any

from streamml.metrics import MODEL_INFO, MODEL_LATENCY, QUEUE_WAIT

__all__ = ["InferStats"]


class InferStats:
    """Counters of one :func:`~streamml.operators.infer.infer` step, shared by its shards in a process.

    Read them at any time (they are updated once per batch), e.g. log
    :meth:`as_dict` from a timer or after ``run_main``.

    Attributes:
        batches: Model calls that succeeded (retries after a split count too).
        scored: Rows (events or frame rows) that got a prediction.
        rejected: Rows sent to the error stream (bad input, bad key, model error).
        model_errors: Rows the model raised on, found by splitting batches.
        swaps: Models installed while running.
        models_rejected: Models that failed to load or validate.
        model_seconds: Time spent inside the model.
        max_wait_seconds: Longest time a row waited for its batch.

    Examples:
        >>> s = InferStats()
        >>> s.scored, s.mean_batch_size
        (0, 0.0)
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.batches = 0
        self.scored = 0
        self.rejected = 0
        self.model_errors = 0
        self.swaps = 0
        self.models_rejected = 0
        self.model_seconds = 0.0
        self.max_wait_seconds = 0.0
        self._first: float | None = None
        self._last: float | None = None
        self._step: str | None = None
        self._wait: Any = None
        self._latency: Any = None

    def _bind(self, step: str, version: str) -> None:
        """Report to the Prometheus metrics of the step with this full id, serving ``version``."""
        self._step = step
        self._wait = QUEUE_WAIT.labels(step=step)
        self._latency = MODEL_LATENCY.labels(step=step)
        self._serving(version)

    def _serving(self, version: str, before: str | None = None) -> None:
        """``version`` now serves (in place of ``before``)."""
        if self._step is None:
            return
        if before is not None and before != version:
            MODEL_INFO.labels(step=self._step, version=before).set(0)
        MODEL_INFO.labels(step=self._step, version=version).set(1)

    def _observe_call(self, wait: float, seconds: float) -> None:
        """One model call: its oldest row waited ``wait`` s, the model took ``seconds``."""
        if self._wait is not None:
            self._wait.observe(wait)
            self._latency.observe(seconds)

    @property
    def mean_batch_size(self) -> float:
        """Rows scored per successful model call."""
        return self.scored / self.batches if self.batches else 0.0

    @property
    def events_per_second(self) -> float:
        """Rows scored per second of wall time since the first batch arrived."""
        if self._first is None or self._last is None or self._last <= self._first:
            return 0.0
        return self.scored / (self._last - self._first)

    def as_dict(self) -> dict[str, float]:
        """Every counter and derived rate, for logging."""
        return {
            "batches": self.batches,
            "scored": self.scored,
            "rejected": self.rejected,
            "model_errors": self.model_errors,
            "swaps": self.swaps,
            "models_rejected": self.models_rejected,
            "model_seconds": self.model_seconds,
            "max_wait_seconds": self.max_wait_seconds,
            "mean_batch_size": self.mean_batch_size,
            "events_per_second": self.events_per_second,
        }

    def _record(
        self,
        *,
        started: float,
        ended: float,
        batches: int = 0,
        scored: int = 0,
        rejected: int = 0,
        model_errors: int = 0,
        model_seconds: float = 0.0,
        max_wait: float = 0.0,
    ) -> None:
        with self._lock:
            if self._first is None:
                self._first = started
            self._last = ended
            self.batches += batches
            self.scored += scored
            self.rejected += rejected
            self.model_errors += model_errors
            self.model_seconds += model_seconds
            self.max_wait_seconds = max(self.max_wait_seconds, max_wait)

    def _count_model(self, *, installed: bool) -> None:
        with self._lock:
            if installed:
                self.swaps += 1
            else:
                self.models_rejected += 1

    def __repr__(self) -> str:
        return f"InferStats({self.as_dict()})"
