"""What a remote model raises: a refused input, a garbage answer, a service that is gone.

The first two are ordinary exceptions about the rows of one call: the
inference operator (:func:`streamml.operators.infer.infer`) splits a batch a
model raised on until it finds the rows, and sends those to ``errs`` with
the message — the service's own reason for a refused row.

:class:`RemoteUnavailable` is different on purpose: it derives from
``BaseException`` (like ``KeyboardInterrupt``), so ``except Exception`` —
and the operator's per-row splitting — lets it through and the dataflow
stops with it. A service that is down says nothing about any row: routing
every row to ``errs`` would turn an outage into data loss, while stopping
lets Bytewax recovery resume from the last snapshot once it is back.
"""

from __future__ import annotations

__all__ = ["BadAnswer", "RemoteRejected", "RemoteUnavailable"]


class RemoteRejected(ValueError):
    """The service refused these rows (HTTP 400, 413 or 422); the message is its reason.

    Examples:
        >>> str(RemoteRejected("HTTP 400: input 'x' has a negative value"))
        "HTTP 400: input 'x' has a negative value"
    """


class BadAnswer(ValueError):
    """The service answered 2xx with something that is not an answer for these rows."""


class RemoteUnavailable(BaseException):  # noqa: N818 - reads as what happened, like TimeoutError
    """The service could not be reached within the retry budget, or refuses every request.

    A ``BaseException``: it stops the dataflow instead of rejecting rows (see
    the module's docstring).

    Examples:
        >>> issubclass(RemoteUnavailable, Exception)
        False
    """
