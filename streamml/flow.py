"""Every rejection ends somewhere: find, refuse and collect a dataflow's unconsumed error streams.

Bytewax drops the items of a stream that no step consumes, without a word. A
streamml operator's ``errs`` or ``late`` stream left unconnected therefore
loses its events silently, and a pipeline of a dozen operators has a dozen
such streams to wire by hand. This module walks a built
:class:`bytewax.dataflow.Dataflow` (its public ``substeps`` and ports) and

- :func:`unconsumed_rejections` lists every rejection stream nothing reads;
- :func:`collect_rejections` merges all of them into one stream, in one call,
  for :func:`streamml.kafka.dead_letter_sink`;
- :func:`check_flow` refuses a flow that still has one, naming the step and
  port and saying how to fix it.

A rejection stream is an output port of an operator whose return type says
it carries :class:`~streamml.errors.Rejected` records (``errs:
Stream[Rejected]`` in its output dataclass, or ``-> Stream[Rejected]`` like
:func:`streamml.kafka.sink`): every streamml operator, and a user's own
operator typed the same way. Where the type cannot be read (an operator
defined inside a function), ports named ``errs`` and ``late`` count.
"""

from __future__ import annotations

import dataclasses
import sys
import typing
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import bytewax.operators as op
from bytewax.dataflow import Dataflow, Operator, Stream

from streamml.errors import Rejected

__all__ = [
    "RejectionPort",
    "UnconsumedRejections",
    "check_flow",
    "collect_rejections",
    "unconsumed_rejections",
]


@dataclass(frozen=True)
class RejectionPort:
    """An output port of a step that carries :class:`~streamml.errors.Rejected` records.

    Attributes:
        step_id: The step's full id (``flow.step.inner``).
        port: The port's name (``errs``, ``late``, or ``down`` for an
            operator that returns one stream of rejections).
        stream_id: The id of the stream the port carries.
    """

    step_id: str
    port: str
    stream_id: str

    def __str__(self) -> str:
        return f"{self.step_id!r} port {self.port!r}"


class UnconsumedRejections(ValueError):
    """A flow has rejection streams that no step reads: their events would be dropped silently.

    Attributes:
        ports: The :class:`RejectionPort` s nothing consumes.
    """

    def __init__(self, flow_id: str, ports: list[RejectionPort]) -> None:
        self.ports = ports
        listed = "; ".join(map(str, ports))
        super().__init__(
            f"flow {flow_id!r}: {len(ports)} rejection stream(s) are consumed by no step, so "
            f"their events would be dropped without a trace: {listed}. Send them to a "
            "dead-letter sink in one call, after the last operator: "
            "kafka.dead_letter_sink('dead_letters', "
            "streamml.flow.collect_rejections('rejections', src.errs), brokers=..., topic=...); "
            "or connect each one yourself (op.merge into your sink, or op.output)"
        )


def _return_type(step: Operator) -> Any:
    """The return annotation of the operator function that built ``step``, or None if unknown."""
    cls = type(step)
    fn = getattr(sys.modules.get(cls.__module__), cls.__name__, None)
    if fn is None or not callable(fn):
        return None
    try:
        return typing.get_type_hints(fn).get("return")
    except Exception:  # an annotation that does not resolve says nothing about rejections
        return None


def _carries_rejections(annotation: Any) -> bool:
    return typing.get_origin(annotation) is Stream and typing.get_args(annotation) == (Rejected,)


def _rejection_port_names(step: Operator) -> list[str]:
    ret = _return_type(step)
    if ret is None:  # an operator defined in a function, or with unresolvable annotations
        return [name for name in type(step).dwn_names if name in ("errs", "late")]
    if _carries_rejections(ret):
        return ["down"]
    if isinstance(ret, type) and dataclasses.is_dataclass(ret):
        try:
            hints = typing.get_type_hints(ret)
        except Exception:
            return []
        return [f.name for f in dataclasses.fields(ret) if _carries_rejections(hints.get(f.name))]
    return []


def _walk(steps: list[Operator]) -> Iterator[Operator]:
    """Every step at every depth, each before the steps it contains."""
    for step in steps:
        yield step
        yield from _walk(step.substeps)


def _inputs(step: Operator) -> set[str]:
    return {sid for name in step.ups_names for sid in getattr(step, name).stream_ids.values()}


def unconsumed_rejections(flow: Dataflow) -> list[RejectionPort]:
    """The rejection streams of ``flow`` that no step reads, outermost step first.

    A stream counts as read when a step outside the operator that emits it
    takes it as an input. An operator that hands on an inner operator's
    ``errs`` unchanged is reported once, as the outer step's port.

    Examples:
        >>> import bytewax.operators as op
        >>> import polars as pl
        >>> from datetime import timedelta
        >>> from bytewax.testing import TestingSource
        >>> from streamml.operators import featurize
        >>> flow = Dataflow("unconsumed_eg")
        >>> frames = op.input("in", flow, TestingSource([pl.DataFrame({"k": ["a"], "t": [0], "x": [1.0]})]))
        >>> feats = featurize.rolling("roll", frames, key="k", timestamp="t", fields=["x"],
        ...                           window=timedelta(seconds=10), shards=1)
        >>> [str(p) for p in unconsumed_rejections(flow)]
        ["'unconsumed_eg.roll' port 'errs'", "'unconsumed_eg.roll' port 'late'"]
    """
    steps = list(_walk(flow.substeps))
    readers: dict[str, list[str]] = {}
    for step in steps:
        for sid in _inputs(step):
            readers.setdefault(sid, []).append(step.step_id)
    found: list[RejectionPort] = []
    seen: set[str] = set()
    for step in steps:
        names = _rejection_port_names(step)
        own = {s.step_id for s in _walk([step])} if names else set()
        for name in names:
            sid = getattr(step, name).stream_id
            if sid in seen or any(r not in own for r in readers.get(sid, ())):
                continue
            seen.add(sid)
            found.append(RejectionPort(step.step_id, name, sid))
    return found


def check_flow(flow: Dataflow) -> Dataflow:
    """Refuse a flow in which a rejection stream is read by no step; return the flow otherwise.

    Call it where the flow is built (``return check_flow(flow)``), so that a
    forgotten ``errs`` or ``late`` stream stops the build with the step and
    port named, instead of dropping events at run time.

    Raises:
        UnconsumedRejections: a ``ValueError`` listing every such port and
            how to connect them.

    Examples:
        >>> import bytewax.operators as op
        >>> from bytewax.testing import TestingSink, TestingSource
        >>> from streamml.frames import to_frames
        >>> flow = Dataflow("check_eg")
        >>> rows = op.input("in", flow, TestingSource([{"x": 1.0}]))
        >>> frames = to_frames("frames", rows)
        >>> op.output("out", frames.oks, TestingSink([]))
        >>> check_flow(flow)
        Traceback (most recent call last):
        ...
        streamml.flow.UnconsumedRejections: flow 'check_eg': 1 rejection stream(s) are consumed by no step, ...
        >>> op.output("dead", collect_rejections("rejections", frames.errs), TestingSink([]))
        >>> check_flow(flow) is flow
        True
    """
    missing = unconsumed_rejections(flow)
    if missing:
        raise UnconsumedRejections(flow.flow_id, missing)
    return flow


def collect_rejections(step_id: str, *ups: Stream[Rejected]) -> Stream[Rejected]:
    """``ups`` and every other rejection stream of their flow that no step reads yet, as one stream.

    Call it once, after the last operator that can reject, and give the
    result to :func:`streamml.kafka.dead_letter_sink`: every ``errs`` and
    ``late`` stream of every operator (and the error stream of every
    :func:`streamml.kafka.sink`) ends there, so none can be forgotten.
    ``ups`` are rejection streams the type of no operator announces — your
    own validation step's rejects — or, when you have none, any operator's
    ``errs`` (the source's), which tells the call which flow to gather.
    Streams you have already connected elsewhere are left alone.

    Args:
        step_id: Unique ID.
        ups: At least one stream of :class:`~streamml.errors.Rejected`.

    Returns:
        One stream of every rejection.

    Examples:
        >>> import bytewax.operators as op
        >>> from bytewax.testing import TestingSink, TestingSource, run_main
        >>> from streamml.frames import to_frames
        >>> flow = Dataflow("collect_eg")
        >>> rows = op.input("in", flow, TestingSource([{"x": 1.0}, "not a row", {"x": -2.0}]))
        >>> frames = to_frames("frames", rows)
        >>> mine = op.filter_map("negative", rows, lambda r: Rejected("negative", "Negative", "x < 0", r)
        ...                      if isinstance(r, dict) and r["x"] < 0 else None)
        >>> out, dead = [], []
        >>> op.output("out", frames.oks, TestingSink(out))
        >>> op.output("dead", collect_rejections("rejections", mine), TestingSink(dead))
        >>> run_main(check_flow(flow))
        >>> sorted((r.error_type, str(r.original)) for r in dead)
        [('BadItem', 'not a row'), ('Negative', "{'x': -2.0}")]
    """
    if not ups:
        raise ValueError(
            "collect_rejections needs at least one stream of the flow: your own rejections, "
            "or any operator's errs (e.g. the source's src.errs)"
        )
    given = {s.stream_id for s in ups}
    # Bytewax resolves streams by id: a handle on each unread port is the first stream
    # with its id swapped in (Stream is a frozen dataclass; stream_id is its public field).
    found = [
        dataclasses.replace(ups[0], stream_id=port.stream_id)
        for port in unconsumed_rejections(ups[0].flow())
        if port.stream_id not in given
    ]
    return op.merge(step_id, *ups, *found)
