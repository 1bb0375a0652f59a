"""What a remote model raises: a refused input, a garbage answer, a service that is gone.

The first two are about the rows of one request: the remote model sends
that request's rows again in halves until it finds the rows at fault, then
raises :class:`~streamml.models.protocol.RowErrors` naming each with the
message — the service's own reason for a refused row — and the inference
operator (:func:`streamml.operators.infer.infer`) sends those rows to
``errs`` and scores the rest.

:class:`RemoteUnavailable` is different on purpose: it is a
:class:`~streamml.models.protocol.ModelUnavailable`, which the operator
raises again instead of rejecting rows, and the dataflow stops with it. A
service that is down says nothing about any row: routing every row to
``errs`` would turn an outage into data loss, while stopping lets Bytewax
recovery resume from the last snapshot once it is back.
"""

from __future__ import annotations

from streamml.models.protocol import ModelUnavailable

__all__ = ["BadAnswer", "RemoteRejected", "RemoteUnavailable"]


class RemoteRejected(ValueError):
    """The service refused these rows (HTTP 400, 413 or 422); the message is its reason.

    Examples:
        >>> str(RemoteRejected("HTTP 400: input 'x' has a negative value"))
        "HTTP 400: input 'x' has a negative value"
    """


class BadAnswer(ValueError):
    """The service answered 2xx with something that is not an answer for these rows."""


class RemoteUnavailable(ModelUnavailable):
    """The service could not be reached within the retry budget, or refuses every request.

    A :class:`~streamml.models.protocol.ModelUnavailable`: it stops the
    dataflow instead of rejecting rows (see the module's docstring).

    Examples:
        >>> issubclass(RemoteUnavailable, ModelUnavailable)
        True
    """
