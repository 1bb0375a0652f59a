"""Run a model at the edge, on each read, before the records leave the device.

An :class:`EdgeModel` pairs a :class:`streamml.models.Model` with a
``prepare`` function that turns a read's raw values (log lines, image
files) into the model's input batch. The model runs once per read, not once
per record. Its outputs for a record become a JSON object (one field per
output, plus ``model_version``), sent

- ``send="with"``: beside the raw data, in the record's
  ``streamml-result`` header (the value stays the raw bytes);
- ``send="instead"``: as the record's value (the raw data stays on the device).

A record the model cannot take (``prepare`` or the model raises on it) is
sent raw, with the reason in a ``streamml-error`` header: never dropped,
and the rest of its read still gets results (the read is retried one record
at a time to find the bad ones).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np
import orjson

if TYPE_CHECKING:  # importing the runtimes (ONNX Runtime...) costs the agent's start 0.4 s
    from streamml.models import Model

__all__ = ["ERROR_HEADER", "RESULT_HEADER", "EdgeModel", "note_header"]

logger = logging.getLogger(__name__)

RESULT_HEADER = "streamml-result"
ERROR_HEADER = "streamml-error"
RESULT_NOTE, ERROR_NOTE = b"r", b"e"  # the spool's note: a kind byte, then the header value

Prepare = Callable[[Sequence[bytes]], "np.ndarray | Mapping[str, np.ndarray]"]


@dataclass(frozen=True)
class EdgeModel:
    """A model the agent runs on every read (see the module docstring).

    Args:
        model: Any :class:`streamml.models.Model` (ONNX, a Python callable...).
        prepare: ``values -> batch``: the model's input for these raw values,
            first dimension ``len(values)``.
        send: ``"with"`` (result in a header, raw value kept) or
            ``"instead"`` (result as the value).

    Examples:
        >>> from streamml.models import CallableModel
        >>> edge = EdgeModel(
        ...     CallableModel(lambda x: x[:, 0], outputs="length", version="len-1"),
        ...     prepare=lambda values: np.array([[len(v)] for v in values], dtype=np.float32),
        ... )
        >>> values, notes = edge.apply([b"short", b"a longer line"])
        >>> values[0], notes[0]
        (b'short', b'r{"length":5.0,"model_version":"len-1"}')
    """

    model: Model
    prepare: Prepare
    send: Literal["with", "instead"] = "with"

    def __post_init__(self) -> None:
        if self.send not in ("with", "instead"):
            raise ValueError(f"send must be 'with' or 'instead'; got {self.send!r}")
        if not callable(self.prepare):
            raise TypeError("prepare must be a function of a list of bytes values")

    def _rows(self, values: Sequence[bytes]) -> list[bytes]:
        outputs = self.model.predict(self.prepare(values))
        columns = {name: np.asarray(arr) for name, arr in outputs.items()}
        for name, arr in columns.items():
            if arr.ndim == 0 or arr.shape[0] != len(values):
                raise ValueError(
                    f"output {name!r} has shape {arr.shape}; expected {len(values)} rows first"
                )
        lists = {name: arr.tolist() for name, arr in columns.items()}
        version = self.model.version
        return [
            orjson.dumps(
                {**{name: col[i] for name, col in lists.items()}, "model_version": version},
                option=orjson.OPT_SERIALIZE_NUMPY,
            )
            for i in range(len(values))
        ]

    def apply(self, values: Sequence[bytes]) -> tuple[list[bytes], list[bytes | None]]:
        """Values and notes (result or error, one per record) for one read."""
        try:
            rows: list[bytes | Exception] = list(self._rows(values))
        except Exception:  # noqa: BLE001 - find the bad records one by one
            rows = []
            for value in values:
                try:
                    rows.extend(self._rows([value]))
                except Exception as exc:  # noqa: BLE001 - the record goes on, with the reason
                    rows.append(exc)
        out_values: list[bytes] = []
        notes: list[bytes | None] = []
        for value, row in zip(values, rows):
            if isinstance(row, Exception):
                reason = f"{type(row).__name__}: {row}"
                out_values.append(value)
                notes.append(ERROR_NOTE + reason.encode())
            elif self.send == "with":
                out_values.append(value)
                notes.append(RESULT_NOTE + row)
            else:
                out_values.append(row)
                notes.append(None)
        return out_values, notes


def note_header(note: bytes) -> tuple[str, bytes]:
    """The Kafka header a spooled note becomes.

    Examples:
        >>> note_header(b'r{"score":0.5}')
        ('streamml-result', b'{"score":0.5}')
    """
    return (RESULT_HEADER if note[:1] == RESULT_NOTE else ERROR_HEADER, note[1:])
