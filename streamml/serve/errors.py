"""The one error type a request can end in, with the HTTP status it answers."""

from __future__ import annotations

__all__ = ["RequestError"]


class RequestError(Exception):
    """A request the server refuses: its HTTP status and a message for the client.

    The Open Inference Protocol answers every failure with ``{"error": message}``;
    the status says whose fault it is (400 bad tensor, 404 unknown model,
    413 too large, 500 the model failed).

    Examples:
        >>> err = RequestError(404, "unknown model 'nope'")
        >>> err.status, str(err)
        (404, "unknown model 'nope'")
    """

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
