"""The one rejection record every streamml error stream carries.

Any step that cannot process an item — bytes that do not decode, a record with
a missing field, a NaN feature, a model that raised — emits a
:class:`Rejected` on its ``errs`` stream instead of raising. Because every
operator uses the same type, any error stream can go straight into
:func:`streamml.kafka.dead_letter_sink`.
"""

from __future__ import annotations

from typing import Any, NamedTuple

__all__ = ["Rejected", "reject"]


class Rejected(NamedTuple):
    """An item a step could not process, with the reason.

    Attributes:
        step_id: The step that rejected the item (its full Bytewax step id
            where known, else the id the user gave the operator).
        error_type: A short machine-readable kind, e.g. ``"DecodeError"``,
            ``"MissingField"``, ``"NonFinite"``, ``"Late"``.
        reason: A human-readable message saying what was wrong.
        original: The item as it reached the step: a
            :class:`streamml.kafka.Record`, a raw Kafka message, or a user
            event. The dead-letter sink keeps its bytes and Kafka coordinates.

    Examples:
        >>> r = Rejected("decode", "DecodeError", "not JSON", b"{oops")
        >>> r.error_type, r.original
        ('DecodeError', b'{oops')
    """

    step_id: str
    error_type: str
    reason: str
    original: Any


def reject(step_id: str, exc: BaseException, original: Any) -> Rejected:
    """Build a :class:`Rejected` from an exception.

    Examples:
        >>> reject("parse", ValueError("bad number"), "x")
        Rejected(step_id='parse', error_type='ValueError', reason='bad number', original='x')
    """
    return Rejected(step_id, type(exc).__name__, str(exc) or repr(exc), original)
