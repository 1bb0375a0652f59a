"""Model rollouts from a control topic, each taking effect at the event time it names.

A rollout message is JSON: ``{"version": "v2-gbm", "model_path": "/models/v2-gbm.onnx",
"effective_at": "2026-03-02T10:00:00+00:00"}``. Without ``effective_at`` it
takes effect as soon as it is read; with it, it is held until the
transactions' event time reaches that instant, so a rollout can be scheduled
("v2 from 10:00") and lands at the same place in the stream on every replay.
Released messages go to the ``control=`` stream of
:func:`streamml.operators.infer.infer`, which swaps models between batches
without stopping the dataflow.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import bytewax.operators as op
from bytewax.dataflow import Stream, operator
from bytewax.operators import StatefulBatchLogic

from streamml.errors import Rejected, reject
from streamml.kafka import Record
from streamml.models import Model, OnnxModel

__all__ = ["RolloutOut", "load_rollout", "parse_rollout", "scheduled_rollouts"]

_NOW = -1  # effective_at of a message that takes effect at once


@dataclass(frozen=True)
class RolloutOut:
    """The streams of :func:`scheduled_rollouts`."""

    control: Stream[dict[str, Any]]
    """Rollout messages, each once the event time has reached its ``effective_at``."""

    errs: Stream[Rejected]
    """Messages that are not a rollout (no ``version`` or ``model_path``, a bad time)."""


def parse_rollout(value: Any) -> tuple[int, dict[str, Any]]:
    """``(effective_at in epoch ms, message)`` of a rollout message; raises ValueError if malformed.

    Examples:
        >>> parse_rollout({"version": "v2", "model_path": "v2.onnx",
        ...                "effective_at": "2026-03-02T10:00:00Z"})[0]
        1772445600000
    """
    if not isinstance(value, Mapping):
        raise ValueError(f"a rollout message is a JSON object; got {type(value).__name__}")
    for field in ("version", "model_path"):
        if not isinstance(value.get(field), str) or not value[field]:
            raise ValueError(f"a rollout message needs a non-empty text {field!r}")
    at = value.get("effective_at")
    if at is None:
        return _NOW, dict(value)
    when = datetime.fromisoformat(str(at).replace("Z", "+00:00"))
    if when.tzinfo is None:
        raise ValueError(f"effective_at must carry a time zone; got {at!r}")
    return int(when.timestamp() * 1000), dict(value)


def load_rollout(message: Mapping[str, Any]) -> Model:
    """The model a released rollout message names, labelled with its version (``infer``'s loader)."""
    return OnnxModel(message["model_path"], version=message["version"], intra_op_threads=1)


class _GateState:
    """Rollouts waiting for their time, and the latest event time seen.

    Eviction: a rollout leaves when the event time reaches it (or at end of input).
    """

    def __init__(self) -> None:
        self.clock = _NOW
        self.waiting: list[tuple[int, int, dict[str, Any]]] = []  # (at, arrival, message)
        self.arrivals = 0

    def copy(self) -> _GateState:
        new = _GateState()
        new.clock, new.waiting, new.arrivals = self.clock, list(self.waiting), self.arrivals
        return new


class _GateLogic(StatefulBatchLogic[Any, Any, _GateState]):
    def __init__(self, step_id: str, state: _GateState) -> None:
        self.step_id = step_id
        self.state = state

    def on_batch(self, values: list[tuple[str, Any]]) -> tuple[list, bool]:
        state, out = self.state, []
        for kind, value in values:
            if kind == "t":
                state.clock = max(state.clock, value)
                continue
            try:
                at, message = parse_rollout(value.value if type(value) is Record else value)
            except Exception as exc:  # noqa: BLE001 - bad data goes to errs
                out.append(reject(self.step_id, exc, value))
                continue
            state.waiting.append((at, state.arrivals, message))
            state.arrivals += 1
        state.waiting.sort(key=lambda w: (w[0], w[1]))
        while state.waiting and state.waiting[0][0] <= state.clock:
            out.append(state.waiting.pop(0)[2])
        return out, False

    def on_eof(self) -> tuple[list, bool]:
        released = [m for _, _, m in self.state.waiting]  # to infer, which reports bad models
        self.state.waiting.clear()
        return released, False

    def snapshot(self) -> _GateState:
        return self.state.copy()


def _is_message(item: object) -> bool:
    return type(item) is dict


@operator
def scheduled_rollouts(step_id: str, messages: Stream[Any], clock: Stream[datetime]) -> RolloutOut:
    """Hold each rollout message until the event time on ``clock`` reaches its ``effective_at``.

    ``messages`` are rollout dicts (or :class:`~streamml.kafka.Record` s of
    them, straight from :func:`streamml.kafka.source`); ``clock`` carries
    event times of the scored stream (one per batch is enough). Messages are
    released in ``effective_at`` order; those still held at end of input are
    released then.

    Examples:
        >>> from datetime import datetime, timezone
        >>> from bytewax.dataflow import Dataflow
        >>> from bytewax.testing import TestingSource, TestingSink, run_main
        >>> at = lambda h: datetime(2026, 3, 2, h, tzinfo=timezone.utc)
        >>> flow = Dataflow("rollout_doc")
        >>> msgs = op.input("msgs", flow, TestingSource([
        ...     {"version": "v2", "model_path": "v2.onnx", "effective_at": "2026-03-02T10:00:00Z"},
        ...     {"version": "v3"}]))
        >>> clock = op.input("clock", flow, TestingSource([at(9), at(11)]))
        >>> out = scheduled_rollouts("rollout", msgs, clock)
        >>> got, errs = [], []
        >>> op.output("control", out.control, TestingSink(got))
        >>> op.output("errs", out.errs, TestingSink(errs))
        >>> run_main(flow)
        >>> [m["version"] for m in got], [e.error_type for e in errs]
        (['v2'], ['ValueError'])
    """

    def ticks(batch: list[datetime]) -> list[tuple[str, tuple[str, int]]]:
        return [("gate", ("t", int(max(batch).timestamp() * 1000)))] if batch else []

    timed = op.flat_map_batch("clock", clock, ticks)
    keyed = op.map("messages", messages, lambda m: ("gate", ("m", m)))
    full_id = f"{step_id}.gate"

    def build(resume: _GateState | None) -> _GateLogic:
        return _GateLogic(full_id, _GateState() if resume is None else resume)

    gated = op.stateful_batch("gate", op.merge("both", keyed, timed), build)
    split = op.branch("split", op.key_rm("unkey", gated), _is_message)
    return RolloutOut(control=split.trues, errs=split.falses)
