"""One shard of :func:`~streamml.operators.infer.infer`: batching, the model call, and splitting a batch it raised on.

Each shard is a ``stateful_batch`` logic (:class:`_InferLogic`) holding a
:class:`~streamml.operators._batching.DynamicBatcher` that asks Bytewax for a
notification at its oldest row's deadline.

Frames and events share every step after routing — batching, the model
call, splitting a batch the model raised on, the overlap thread, swaps,
counters and snapshots. Only reading the inputs (:mod:`.inputs`) and
attaching the outputs (:mod:`.outputs`) differ, through a small adapter per
kind (:class:`_Rows`, :class:`_Frames`).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from itertools import repeat
from typing import Any, NamedTuple

import numpy as np
import polars as pl
from bytewax.operators import StatefulBatchLogic

from streamml.errors import Rejected
from streamml.models import Model
from streamml.models.protocol import ModelUnavailable, RowErrors

from .._batching import DynamicBatcher
from .adaptive import AdaptiveBatchSize
from .copies import CopyPool
from .inputs import frame_tensors, row_tensors
from .models import Loader, Served, Watcher, check_compatible, serve
from .outputs import attach_frame, attach_rows, version_column
from .overlap import COLLECT_EVERY_S, ModelThread
from .recovery import record
from .routing import Chunk, Rejects
from .stats import InferStats

# The log name of the infer step, as before the shard logic had a module of its own.
logger = logging.getLogger("streamml.operators.infer.operator")

Part = list | pl.DataFrame  # what a batch is: (key, event) pairs, or a frame


class _Result(NamedTuple):
    oks: list[Any]
    errs: list[Rejected]


@dataclass(frozen=True)
class _Config:
    step_id: str
    inputs: Any
    outputs: Any
    version_field: str | None
    wait_field: str | None
    max_batch: int
    max_wait_s: float
    overlap: bool
    watch: str | os.PathLike[str] | None
    watch_interval_s: float
    watch_initial: tuple[int, int] | None
    loader: Loader
    stats: InferStats
    target_s: float | None = None  # adaptive batch size: the model latency per call to hold
    copies: CopyPool | None = None  # copies=N > 1: the model copies of this step in this process


# -- the two kinds of batch -------------------------------------------------------------


class _Rows:
    """Adapter for a batch of ``(key, event)`` pairs."""

    tensors = staticmethod(row_tensors)

    @staticmethod
    def take(part: list, keep: np.ndarray) -> list:
        return [part[i] for i in keep.tolist()]

    @staticmethod
    def originals(part: list, rows: list[int]) -> list[Any]:
        return [part[i] for i in rows]

    @staticmethod
    def slice(part: list, lo: int, hi: int) -> list:
        return part[lo:hi]

    @staticmethod
    def attach(
        cfg: _Config, served: Served, part: list, outs: dict, waits: Any, errs: list
    ) -> list:
        extras: list[tuple[str, Iterable[Any]]] = []
        if cfg.version_field is not None:
            extras.append((cfg.version_field, repeat(served.model.version, len(part))))
        if waits is not None:
            extras.append((cfg.wait_field, waits.tolist()))
        return attach_rows(served.outputs, part, outs, extras, cfg.step_id, errs)


class _Frames:
    """Adapter for a batch that is one ``polars.DataFrame``."""

    tensors = staticmethod(frame_tensors)

    @staticmethod
    def take(part: pl.DataFrame, keep: np.ndarray) -> pl.DataFrame:
        return part[keep]

    @staticmethod
    def originals(part: pl.DataFrame, rows: list[int]) -> list[Any]:
        return part[rows].to_dicts()

    @staticmethod
    def slice(part: pl.DataFrame, lo: int, hi: int) -> pl.DataFrame:
        return part.slice(lo, hi - lo)

    @staticmethod
    def attach(
        cfg: _Config, served: Served, part: pl.DataFrame, outs: dict, waits: Any, errs: list
    ) -> list:
        extras: list[Any] = []
        if cfg.version_field is not None:
            extras.append(version_column(cfg.version_field, served.model.version, len(part)))
        if waits is not None:
            extras.append(pl.Series(cfg.wait_field, waits))
        out = attach_frame(served.outputs, part, outs, extras, cfg.step_id, errs)
        return [] if out is None or out.is_empty() else [out]


def _unit(part: Part) -> type[_Rows] | type[_Frames]:
    return _Frames if isinstance(part, pl.DataFrame) else _Rows


# -- the model call ---------------------------------------------------------------------------


def _call_model(served: Served, columns: dict[str, np.ndarray], n: int) -> dict[str, Any]:
    """Run the model on ``n`` rows; the outputs to attach, each with ``n`` rows."""
    outs = served.predict(columns)
    picked = {}
    for name in served.outputs.needed:
        values = outs[name]
        problem = _rows_problem(name, values, n)
        if problem is not None:
            raise ValueError(problem)
        picked[name] = values
    return picked


def _rows_problem(name: str, values: Any, n: int) -> str | None:
    """Why output ``name`` does not hold one row per input row, or None when it does.

    Examples:
        >>> print(_rows_problem("score", np.zeros((0,), np.float32), 1))
        the model's output 'score' is a float32 array of shape (0,): 0 rows for a batch of 1 input rows; a model must return one row per input row (a first axis of length 1), so check that it does not drop rows or reduce over the batch
        >>> print(_rows_problem("score", 0.5, 2))
        the model's output 'score' is a float scalar: no rows for a batch of 2 input rows; a model must return one row per input row (a first axis of length 2), so check that it does not drop rows or reduce over the batch
        >>> _rows_problem("score", [1.0, 2.0], 2) is None
        True
    """
    try:
        rows: int | None = len(values)
    except TypeError:  # a scalar, or a 0-d array
        rows = None
    if rows == n:
        return None
    if isinstance(values, np.ndarray):
        what = f"a {values.dtype} array of shape {values.shape}"
    elif rows is not None:
        what = f"a {type(values).__name__} of {rows} items"
    else:
        what = f"a {type(values).__name__} scalar"
    rows_text = "no rows" if rows is None else f"{rows} rows"
    return (
        f"the model's output {name!r} is {what}: {rows_text} for a batch of {n} input rows; a model "
        f"must return one row per input row (a first axis of length {n}), so check that it does "
        "not drop rows or reduce over the batch"
    )


def _answered_runs(
    needed: Iterable[str], exc: RowErrors, n: int
) -> list[tuple[int, int, dict[str, Any]]]:
    """The answered rows of a batch of ``n`` as runs ``(lo, hi, outputs)``; ``ValueError`` if they do not fit.

    Examples:
        >>> exc = RowErrors({"y": np.array([10, 12, 13])}, {1: "bad", 4: "bad"})
        >>> [(lo, hi, o["y"].tolist()) for lo, hi, o in _answered_runs(["y"], exc, 5)]
        [(0, 1, [10]), (2, 4, [12, 13])]
        >>> _answered_runs(["y"], RowErrors({}, {0: "bad"}), 1)
        []
        >>> _answered_runs(["y"], exc, 4)
        Traceback (most recent call last):
        ...
        ValueError: it names rows [1, 4] of a batch of 4 rows
    """
    errors = exc.errors
    if any(not isinstance(r, (int, np.integer)) or not 0 <= r < n for r in errors):
        raise ValueError(f"it names rows {sorted(errors)} of a batch of {n} rows")
    answered = np.setdiff1d(np.arange(n), np.fromiter(errors, np.int64, len(errors)))
    if not len(answered):
        return []
    picked = {}
    for name in needed:
        if name not in exc.outputs:
            raise ValueError(f"its outputs lack {name!r}; they have {sorted(exc.outputs)}")
        problem = _rows_problem(name, exc.outputs[name], len(answered))
        if problem is not None:
            raise ValueError(problem)
        picked[name] = exc.outputs[name]
    breaks = np.flatnonzero(np.diff(answered) != 1) + 1
    runs, at = [], 0
    for chunk in np.split(answered, breaks):
        lo, hi = int(chunk[0]), int(chunk[-1]) + 1
        runs.append((lo, hi, {k: v[at : at + hi - lo] for k, v in picked.items()}))
        at += hi - lo
    return runs


def _timed_call(
    served: Served, columns: dict[str, np.ndarray], n: int
) -> tuple[dict[str, Any], float]:
    started = time.monotonic()
    outs = _call_model(served, columns, n)
    return outs, time.monotonic() - started


class _Batch:
    """One model call's worth of rows, from assembly until its outputs are attached."""

    __slots__ = (
        "part",
        "unit",
        "columns",
        "bad",
        "waits",
        "arrivals",
        "wait_values",
        "served",
        "future",
    )

    def __init__(self, part, unit, columns, bad, waits, arrivals, wait_values, served) -> None:
        self.part: Part = part  # the rows the model scores
        self.unit: type[_Rows] | type[_Frames] = unit
        self.columns: dict[str, np.ndarray] = columns
        self.bad: int = bad  # rows rejected before the call
        self.waits: list[float] = waits
        self.arrivals: list[tuple[int, float]] = arrivals
        self.wait_values: np.ndarray | None = wait_values
        self.served: Served = served  # the model serving when the batch was cut
        self.future = None

    def __len__(self) -> int:
        return len(self.part)


class _Search:
    """Scoring a batch's rows: the answered runs, the rows at fault, and the model calls made.

    When the model raises on rows ``lo:hi``, the rows a :class:`RowErrors`
    names are the failures; any other error splits the rows in halves until
    each failing row is alone.

    Examples:
        >>> from streamml.models import CallableModel
        >>> def no_negatives(x):
        ...     if (x < 0).any():
        ...         raise ValueError("negative")
        ...     return x[:, 0]
        >>> model = CallableModel(no_negatives, outputs="y", shape=(1,))
        >>> search = _Search(serve(model, "x", None, None), {"input": np.array([[1.0], [-1.0], [2.0]])})
        >>> search.predict(0, 3)
        >>> [(lo, hi, o["y"].tolist()) for lo, hi, o in search.segments], search.failures, search.calls
        ([(0, 1, [1.0]), (2, 3, [2.0])], [(1, "model 'v1' raised ValueError: negative")], 2)
    """

    __slots__ = ("served", "columns", "segments", "failures", "calls")

    def __init__(self, served: Served, columns: dict[str, np.ndarray]) -> None:
        self.served = served
        self.columns = columns
        self.segments: list[tuple[int, int, dict[str, Any]]] = []  # answered runs: lo, hi, outputs
        self.failures: list[tuple[int, str]] = []  # row, reason
        self.calls = 0  # model calls that answered

    def predict(self, lo: int, hi: int) -> None:
        """Score rows ``lo:hi``; when the model raises, find the bad rows (:meth:`failed`)."""
        part = {n: a[lo:hi] for n, a in self.columns.items()}
        try:
            outs = _call_model(self.served, part, hi - lo)
        except Exception as exc:
            self.failed(lo, hi, exc)
            return
        self.calls += 1
        self.segments.append((lo, hi, outs))

    def failed(self, lo: int, hi: int, exc: Exception) -> None:
        """Rows ``lo:hi`` raised ``exc``: the rows a :class:`RowErrors` names, else split.

        :class:`ModelUnavailable` blames no row: it is raised again and stops the flow.
        """
        if isinstance(exc, ModelUnavailable):
            raise exc
        version = self.served.model.version
        if isinstance(exc, RowErrors):
            try:
                runs = _answered_runs(self.served.outputs.needed, exc, hi - lo)
            except ValueError as bad:  # a model's bug: search for the rows as for any error
                exc = ValueError(f"the model raised RowErrors that do not fit its batch: {bad}")
            else:
                self.calls += 1
                for row, reason in sorted(exc.errors.items()):
                    self.failures.append(
                        (lo + row, f"model {version!r} failed on the row: {reason}")
                    )
                for a, b, outs in runs:
                    self.segments.append((lo + a, lo + b, outs))
                return
        if hi - lo == 1:  # one row raised: it is the failure
            self.failures.append((lo, f"model {version!r} raised {type(exc).__name__}: {exc}"))
            return
        mid = (lo + hi) // 2  # more rows raised together: score them by halves
        self.predict(lo, mid)
        self.predict(mid, hi)


class _InferLogic(StatefulBatchLogic[Any, _Result, dict]):
    """One shard: a dynamic batcher in front of the served model.

    State: the waiting rows (evicted within ``max_wait``, or at end of
    input), the batches in the model thread (at most ``MAX_IN_FLIGHT``,
    collected in order at every callback and all at end of input), and the
    control item that installed the current model.
    """

    def __init__(self, cfg: _Config, served: Served, pending: list[Part]) -> None:
        self._cfg = cfg
        self._served = served
        self._batcher: DynamicBatcher = DynamicBatcher(
            max_batch=cfg.max_batch, max_wait_s=cfg.max_wait_s
        )
        self._sizer = (
            AdaptiveBatchSize(target_s=cfg.target_s, max_batch=cfg.max_batch)
            if cfg.target_s is not None
            else None
        )
        if self._sizer is not None:
            self._batcher.max_batch = self._sizer.size
        now = time.monotonic()
        for part in pending:
            self._batcher.push(part, now)
        self._thread = ModelThread(
            enabled=cfg.overlap,
            name=cfg.step_id,
            threads=1 if cfg.copies is None else cfg.copies.n,
        )
        self._shard: int | None = None
        self._watcher = (
            Watcher(cfg.watch, interval_s=cfg.watch_interval_s, seen=cfg.watch_initial)
            if cfg.watch is not None
            else None
        )

    # -- Bytewax callbacks -------------------------------------------------
    def on_batch(self, values: list[Any]) -> tuple[Iterable[_Result], bool]:
        now = time.monotonic()
        result = _Result([], [])
        self._collect(result, wait=False)
        for v in values:
            kind = type(v)
            if kind is Chunk:
                self._shard = v.shard
                self._batcher.push(v.part, now)
            elif kind is Rejects:
                result.errs.extend(v.rejected)
                self._cfg.stats._record(started=now, ended=now, rejected=len(v.rejected))
            else:
                self._run_all(self._batcher.flush(), result)
                self._install(v.item, v.token, v.report, result)
        return self._step(now, result), self.RETAIN

    def on_notify(self) -> tuple[Iterable[_Result], bool]:
        result = _Result([], [])
        self._collect(result, wait=False)
        return self._step(time.monotonic(), result), self.RETAIN

    def on_eof(self) -> tuple[Iterable[_Result], bool]:
        result = _Result([], [])
        self._run_all(self._batcher.flush(), result)
        self._collect(result, wait=True)
        self._thread.shutdown()
        return ([result] if result.oks or result.errs else []), self.RETAIN

    def notify_at(self) -> datetime | None:
        times = [self._batcher.deadline()]
        if self._watcher is not None:
            times.append(self._watcher.next_poll)
        if len(self._thread):
            times.append(time.monotonic() + COLLECT_EVERY_S)
        times = [t for t in times if t is not None]
        if not times:
            return None
        return datetime.now(timezone.utc) + timedelta(
            seconds=max(0.0, min(times) - time.monotonic())
        )

    def snapshot(self) -> dict[str, Any]:
        source = self._served.source
        # Batches in the model thread have not been emitted: they resume as waiting rows.
        parts = [b.part for b in self._thread if len(b)] + self._batcher.pending()
        # A model object may not pickle (and an ONNX one is its whole file): keep references only.
        return record(parts, None if isinstance(source, Model) else source)

    # -- batching ------------------------------------------------------------
    def _step(self, now: float, result: _Result) -> list[_Result]:
        if self._watcher is not None:
            self._poll(now, result)
        self._run_all(self._batcher.due(now), result)
        self._collect(result, wait=False)
        return [result] if result.oks or result.errs else []

    def _run_all(self, batches: Iterable[tuple[Part, list]], result: _Result) -> None:
        for part, arrivals in batches:
            batch = self._prepare(part, arrivals, result)
            if self._thread.learning:
                self._collect(result, wait=True)  # learn the model's speed from its first call
            if not len(batch) or not self._thread.worth_it(len(batch)):
                self._collect(result, wait=True)  # calls in flight first: order is kept
                self._finish(batch, result)
                continue
            while self._thread.full:
                self._finish(self._thread.oldest(), result)
            self._thread.submit(batch, _timed_call, batch.served, batch.columns, len(batch))

    def _collect(self, result: _Result, *, wait: bool) -> None:
        """Attach the outputs of finished model calls, oldest first (all of them if ``wait``)."""
        for batch in self._thread.finished(wait=wait):
            self._finish(batch, result)

    def _prepare(self, part: Part, arrivals: list, result: _Result) -> _Batch:
        """Stack a batch's model inputs; rows that cannot be scored go to ``result.errs``."""
        cfg, served, unit = self._cfg, self._served, _unit(part)
        started = time.monotonic()
        waits = [started - arrived for _, arrived in arrivals]
        columns, bad = unit.tensors(part, served.inputs)
        wait_values = None
        if cfg.wait_field is not None:
            wait_values = np.repeat(np.array(waits), [count for count, _ in arrivals])
        if bad:
            rows = sorted(bad)
            mask = np.ones(len(part), dtype=bool)
            mask[rows] = False
            keep = np.flatnonzero(mask)
            for i, original in zip(rows, unit.originals(part, rows), strict=True):
                etype, reason = bad[i]
                result.errs.append(Rejected(cfg.step_id, etype, reason, original))
            part = unit.take(part, keep)
            columns = {n: a[keep] for n, a in columns.items()}
            if wait_values is not None:
                wait_values = wait_values[keep]
        return _Batch(part, unit, columns, len(bad), waits, arrivals, wait_values, served)

    def _finish(self, batch: _Batch, result: _Result) -> None:
        """Wait for the batch's model call (or make it) and emit its rows."""
        part, served, unit, n = batch.part, batch.served, batch.unit, len(batch)
        search = _Search(served, batch.columns)
        model_seconds = 0.0
        if batch.future is not None:
            try:
                outs, model_seconds = batch.future.result()
                search.calls += 1
                search.segments.append((0, n, outs))
            except Exception as exc:  # as a direct call would: the rows it names, or split
                started = time.monotonic()
                search.failed(0, n, exc)
                model_seconds = time.monotonic() - started
        elif n:
            started = time.monotonic()
            search.predict(0, n)
            model_seconds = time.monotonic() - started
        segments, failures = search.segments, search.failures
        self._thread.learned(n, model_seconds)
        if self._sizer is not None and search.calls == 1 and not failures:
            self._sizer.observe(n, model_seconds)
            self._batcher.max_batch = self._sizer.size
        errs_before = len(result.errs)
        for lo, hi, outs in segments:
            waits = batch.wait_values[lo:hi] if batch.wait_values is not None else None
            rows = part if (lo, hi) == (0, n) else unit.slice(part, lo, hi)
            result.oks.extend(unit.attach(self._cfg, served, rows, outs, waits, result.errs))
        output_errors = len(result.errs) - errs_before
        if failures:
            originals = unit.originals(part, [i for i, _ in failures])
            for (_, reason), original in zip(failures, originals, strict=True):
                result.errs.append(Rejected(self._cfg.step_id, "ModelError", reason, original))
        if n:
            self._cfg.stats._observe_call(max(batch.waits), model_seconds)
        self._cfg.stats._record(
            started=min(arrived for _, arrived in batch.arrivals),
            ended=time.monotonic(),
            batches=search.calls,
            scored=sum(hi - lo for lo, hi, _ in segments) - output_errors,
            rejected=batch.bad + len(failures) + output_errors,
            model_errors=len(failures),
            model_seconds=model_seconds,
            max_wait=max(batch.waits),
        )

    # -- model swaps ---------------------------------------------------------
    def _install(self, item: Any, cache_key: Any, report: bool, result: _Result) -> None:
        cfg = self._cfg
        try:
            model = cfg.loader.load(item, cache_key)
            served = serve(model, cfg.inputs, cfg.outputs, item, cfg.copies)
            check_compatible(self._served, served)
        except Exception as exc:
            if report:  # one shard speaks for all
                logger.warning("%s: model rejected, keeping %s: %s", cfg.step_id, self.version, exc)
                cfg.stats._count_model(installed=False)
                result.errs.append(
                    Rejected(cfg.step_id, "ModelRejected", f"{type(exc).__name__}: {exc}", item)
                )
            return
        before, self._served = self._served.model.version, served
        if report:
            logger.info("%s: now serving model %s", cfg.step_id, model.version)
            cfg.stats._count_model(installed=True)
            cfg.stats._serving(model.version, before)

    @property
    def version(self) -> str:
        return self._served.model.version

    def _poll(self, now: float, result: _Result) -> None:
        seen = self._watcher.changed(now)
        if seen is None:
            return
        path = str(self._watcher.path)
        self._run_all(self._batcher.flush(), result)
        self._install(path, ("watch", path, seen), self._shard == 0, result)
