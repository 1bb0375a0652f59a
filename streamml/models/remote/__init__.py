"""Remote models: a model served by another process, called over HTTP from the dataflow.

:class:`RemoteModel` satisfies :class:`streamml.models.Model`, so the
inference operator calls it like an in-process model, once per batch. It
speaks the Open Inference Protocol (:class:`OpenInference`: Triton, KServe,
MLServer, ``streamml serve``) or any JSON REST API (:class:`JsonRest`),
with concurrent requests, retries (:class:`Retry`), a circuit breaker
(:class:`CircuitBreaker`) and back-pressure.
"""

from streamml.models.remote.errors import BadAnswer, RemoteRejected, RemoteUnavailable
from streamml.models.remote.model import RemoteModel
from streamml.models.remote.policy import CircuitBreaker, Retry
from streamml.models.remote.protocols import JsonRest, OpenInference

__all__ = [
    "BadAnswer",
    "CircuitBreaker",
    "JsonRest",
    "OpenInference",
    "RemoteModel",
    "RemoteRejected",
    "RemoteUnavailable",
    "Retry",
]
