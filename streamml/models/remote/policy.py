"""How a remote model rides out a flaky service: retries with backoff, and a circuit breaker.

:class:`Retry` says how long to keep trying one request and how long to
wait between tries (exponential backoff with jitter, so many callers do not
retry in step). :class:`CircuitBreaker` is shared by every request of one
model: after ``failures`` transient failures in a row it opens, and for
``reset`` seconds no request is sent at all — callers wait instead of
hammering a service that is down — then one probe goes; its success closes
the breaker, its failure opens it again.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from dataclasses import dataclass

__all__ = ["CircuitBreaker", "Retry"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Retry:
    """Retries of one request after a transient failure (connection refused or reset, 5xx, 429, timeout).

    Attributes:
        budget: Seconds to keep retrying one request before the model gives up
            with :class:`~streamml.models.remote.RemoteUnavailable`.
        initial: The first backoff, in seconds.
        maximum: The longest backoff.
        multiplier: How much the backoff grows after each failure.

    The wait after the ``k``-th failure is drawn uniformly from half to all of
    ``min(maximum, initial * multiplier**k)`` ("equal jitter").

    Examples:
        >>> r = Retry(initial=0.1, maximum=1.0)
        >>> [0.05 <= r.delay(0) <= 0.1, 0.5 <= r.delay(10) <= 1.0]
        [True, True]
        >>> Retry(budget=-1)
        Traceback (most recent call last):
        ...
        ValueError: Retry.budget must be >= 0 seconds; got -1
    """

    budget: float = 30.0
    initial: float = 0.05
    maximum: float = 2.0
    multiplier: float = 2.0

    def __post_init__(self) -> None:
        if not self.budget >= 0:
            raise ValueError(f"Retry.budget must be >= 0 seconds; got {self.budget}")
        if not 0 < self.initial <= self.maximum:
            raise ValueError(
                f"Retry needs 0 < initial <= maximum; got initial={self.initial}, "
                f"maximum={self.maximum}"
            )
        if not self.multiplier >= 1:
            raise ValueError(f"Retry.multiplier must be >= 1; got {self.multiplier}")

    def delay(self, failures: int) -> float:
        """Seconds to wait after ``failures + 1`` failures in a row."""
        ceiling = min(self.maximum, self.initial * self.multiplier ** min(failures, 64))
        return ceiling / 2 + random.uniform(0, ceiling / 2)


class CircuitBreaker:
    """Stops sending to a service that keeps failing, and probes it until it is back.

    Thread-safe; one per remote model, shared by all its requests.

    Args:
        failures: Transient failures in a row that open the breaker.
        reset: Seconds it stays open before one probe request may go.

    Examples:
        >>> b = CircuitBreaker(failures=2, reset=60.0)
        >>> b.wait(now=0.0), b.failure(now=0.0), b.failure(now=0.0), b.state
        (0.0, None, None, 'open')
        >>> b.wait(now=10.0)  # open: no request for another 50 s
        50.0
        >>> b.wait(now=61.0), b.wait(now=61.0)  # one probe goes; the others wait for it
        (0.0, 0.05)
        >>> b.success(); b.state
        'closed'
    """

    PROBE_POLL = 0.05
    """How often a caller looks again while another caller's probe is out."""

    def __init__(self, *, failures: int = 5, reset: float = 1.0) -> None:
        if not isinstance(failures, int) or failures < 1:
            raise ValueError(f"CircuitBreaker.failures must be an int >= 1; got {failures!r}")
        if not reset > 0:
            raise ValueError(f"CircuitBreaker.reset must be > 0 seconds; got {reset}")
        self._threshold = failures
        self._reset = reset
        self._lock = threading.Lock()
        self._failed = 0  # transient failures in a row
        self._open_until: float | None = None  # None: closed
        self._probing = False

    @property
    def state(self) -> str:
        """``"closed"`` (sending), ``"open"`` (not sending) or ``"probing"``."""
        if self._open_until is None:
            return "closed"
        return "probing" if self._probing else "open"

    def wait(self, now: float | None = None) -> float:
        """Seconds the caller must wait before sending; 0.0 means send now."""
        now = time.monotonic() if now is None else now
        with self._lock:
            if self._open_until is None:
                return 0.0
            if now < self._open_until:
                return self._open_until - now
            if self._probing:
                return self.PROBE_POLL
            self._probing = True  # this caller's request is the probe
            return 0.0

    def success(self) -> None:
        """A request got an answer: the service is up."""
        with self._lock:
            if self._open_until is not None:
                logger.info("remote model: the service answers again; circuit closed")
            self._failed, self._open_until, self._probing = 0, None, False

    def failure(self, now: float | None = None) -> None:
        """A request failed transiently; open the breaker after ``failures`` in a row (or a failed probe)."""
        now = time.monotonic() if now is None else now
        with self._lock:
            self._failed += 1
            if self._probing or self._failed >= self._threshold:
                if self._open_until is None:
                    logger.warning(
                        "remote model: %d failures in a row; circuit open for %.2f s",
                        self._failed,
                        self._reset,
                    )
                self._open_until, self._probing = now + self._reset, False
